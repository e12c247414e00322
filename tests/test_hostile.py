"""One person must not spoil Easel for everyone: what a hostile or careless member, or a flaky
Discord, tried, through the real bot (discord.py, the pool, real weights) and the loopback Discord."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from discord.http import Route
from PIL import Image

from bot.markdown import escape
from bot.replies import UNSURE
from bot.sandbox.demo import start_bot
from bot.sandbox.emulator import MEMBER_PERMISSIONS, DiscordEmulator, Record, Upload
from models import images, samples

from models.jobs import Job
from models.tasks import TASKS
from odd_images import png_chunk
from test_bot import _hold_prepare, one_public_result, only_one_sentence, photo, sandbox_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

MB = 2**20
READ_MESSAGE_HISTORY = 1 << 16


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(real_weights) -> AsyncIterator[tuple[DiscordEmulator, object]]:
    """Uploads up to the default 25 MB (the crafted files are large), otherwise the tests' settings."""
    emulator = DiscordEmulator(heartbeat_interval_ms=500)
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, download_limit_mb=25, max_jobs_per_user=16))
    yield emulator, bot
    await bot.close()
    await running
    await emulator.stop()


def png_with_empty_chunks(count: int) -> bytes:
    """A valid 64x64 PNG with `count` empty ancillary chunks between its pixels and IEND."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, "PNG")
    data = buffer.getvalue()
    end = data.rindex(b"IEND") - 4
    return data[:end] + png_chunk(b"abCd", b"") * count + data[end:]


def jpeg_with_fill(count: int) -> bytes:
    """A valid 64x64 JPEG with `count` 0xFF fill bytes before its frame header (legal, and walked byte by byte)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, "JPEG")
    data = buffer.getvalue()
    frame = data.index(b"\xff\xc0")
    return data[:frame] + b"\xff" * count + data[frame:]


class LoopLag:
    """How late the event loop ran a task that asked to wake every 20 ms: the longest stall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(0.02)
            self.worst = max(self.worst, time.monotonic() - asked - 0.02)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._probe())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.mark.parametrize("crafted", [png_with_empty_chunks(2_000_000), jpeg_with_fill(24_000_000)], ids=["png-chunks", "jpeg-fill"])
async def test_a_crafted_upload_delays_nobody_while_ten_others_dream(sandbox, crafted):
    """Before: the header walk took 7-11 s of pure Python on the event loop and 9 of 10 people saw
    "The application did not respond". Now the probe runs on the CPU threads and is bounded."""
    emulator, _ = sandbox
    assert len(crafted) > 22 * MB
    with LoopLag() as lag:
        bad = await emulator.invoke("fix", {"photo": Upload("photo.png", crafted)}, user_id=1)
        others = [await emulator.invoke("dream", {"count": 1, "seed": i}, user_id=100 + i) for i in range(10)]
        await asyncio.gather(bad.wait(timeout=120), *(r.wait(timeout=120) for r in others))
    assert only_one_sentence(bad) == images.TOO_FRAGMENTED
    for record in others:
        one_public_result(record)
        assert record.acknowledged_at is not None and record.acknowledged_at - record.sent_at <= 3.0
    assert lag.worst < 0.5, f"the event loop stalled for {lag.worst:.2f} s"


def jpeg(width: int, height: int) -> bytes:
    image = Image.open(io.BytesIO(samples.photo("astronaut"))).convert("RGB").resize((width, height))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


async def test_a_huge_upload_at_a_tiny_size_teaches_the_estimate_no_wrong_speed(sandbox):
    """Before: a 40000x1000 content and style at size 64 cost its 64 px output, the estimator learnt
    a speed 10,000x too slow, and every ordinary /stylize after it was refused until a restart.
    Now the cost counts the decoding too: the next ordinary /stylize, queued, is quoted seconds."""
    emulator, bot = sandbox
    wide = jpeg(40000, 1000)
    huge = await emulator.invoke("stylize", {"content": Upload("wide.jpg", wide, "image/jpeg"),
                                             "style": Upload("wide-style.jpg", wide, "image/jpeg"), "size": 64}, user_id=201)
    one_public_result(await huge.wait(timeout=120))
    with holding_dream(bot) as held:
        ahead = await emulator.invoke("dream", {"count": 1, "seed": 1}, user_id=202)
        await held.wait()
        ordinary = await emulator.invoke("stylize", {"content": Upload("a.png", photo("astronaut", 512)),
                                                     "style": Upload("p.png", samples.painting(256)), "size": 512}, user_id=203)
        await ordinary.wait(lambda r: any("line" in text for _, text in r.edits) or r.answered(), timeout=60)
    assert 0 < quoted_seconds(ordinary) < 60, ordinary.edits
    one_public_result(await ordinary.wait(timeout=120))
    one_public_result(await ahead.wait(timeout=120))


async def test_tall_morphs_teach_the_estimate_no_wrong_speed(sandbox):
    """Before: after two Morphs of a tall page (costed by their glyphs alone), a 1 s Morph was
    quoted 275 s. Now a page's pixels and frames count: the short one is quoted seconds."""
    emulator, bot = sandbox
    tall = "|".join(["W W"] * 40)  # 40 lines, the tallest a 16-frame morph may be is 48
    for seed in (1, 2):
        record = await emulator.invoke("doodle", {"text": tall}, user_id=300 + seed)
        await record.wait(timeout=120)
        morph = await emulator.click(record, next(c for c in record.custom_ids if ":morph:" in c), user_id=300 + seed)
        one_public_result(await morph.wait(timeout=120))
    short = await emulator.invoke("doodle", {"text": "hi"}, user_id=303)
    await short.wait(timeout=60)
    with holding_dream(bot) as held:
        ahead = await emulator.invoke("dream", {"count": 1, "seed": 2}, user_id=304)
        await held.wait()
        morph = await emulator.click(short, next(c for c in short.custom_ids if ":morph:" in c), user_id=303)
        await morph.wait(lambda r: any("line" in text for _, text in r.edits) or r.answered(), timeout=60)
    assert 0 < quoted_seconds(morph) < 30, morph.edits
    one_public_result(await morph.wait(timeout=120))
    one_public_result(await ahead.wait(timeout=120))


@contextlib.contextmanager
def holding_dream(bot) -> Iterator[asyncio.Event]:
    """While inside, /dream's prepare waits (on the worker's threads) until the block ends: a job that
    runs a while. Yields the event set once a job is held."""
    gate, entered = asyncio.Event(), asyncio.Event()
    dream = _hold_prepare(bot, gate, entered)
    try:
        yield entered
    finally:
        gate.set()
        del dream.prepare


def quoted_seconds(record: Record) -> float:
    """The wait the person was quoted while queued ("... (about N s)."); 0 when none was shown."""
    quotes = [int(m[1]) for _, text in record.edits if (m := re.search(r"about (\d+) s\)", text))]
    assert not any("longer than I can keep" in text for _, text in record.edits), record.edits
    return max(quotes, default=0)


@pytest.mark.parametrize("route, how", [("callback", "502"), ("callback", "reset"), ("followup", "502"),
                                        ("followup", "reset"), ("edit_original", "502")])
async def test_an_answer_lost_after_discord_processed_it_gives_one_result(sandbox, route, how):
    """Before: a lost defer left the person "thinking" forever, a lost follow-up was posted twice,
    and a reset after the follow-up left a public result beside a private "something went wrong"."""
    emulator, bot = sandbox
    faults = len(emulator.faults)
    emulator.lose_answer(route, how)
    record = await emulator.invoke("dream", {"count": 1, "seed": 9}, user_id=400)
    await record.wait(timeout=60)
    await bot.runner.drain(timeout=60)  # the bot is done with it: nothing more will be posted
    assert len(emulator.faults) == faults + 1 and emulator.faults[-1].route == route
    one_public_result(record)


async def test_a_lost_result_the_bot_cannot_look_for_is_told_honestly(sandbox):
    """Without Read Message History the bot cannot see whether its lost post landed: it does not
    post again (no duplicate), and its private line says what it knows."""
    emulator, bot = sandbox
    emulator.bot_permissions = MEMBER_PERMISSIONS & ~READ_MESSAGE_HISTORY
    try:
        emulator.lose_answer("followup", "reset")
        record = await emulator.invoke("dream", {"count": 1, "seed": 10}, user_id=401)
        await record.wait(lambda r: UNSURE in r.ephemeral_messages, timeout=60)
        await bot.runner.drain(timeout=60)
    finally:
        emulator.bot_permissions = MEMBER_PERMISSIONS
    ((_, files),) = record.public
    assert files and record.ephemeral_messages == [UNSURE]


@pytest.mark.parametrize("name", ["<@123456789012345678>.png", "@everyone.png"])
async def test_a_file_name_pings_nobody_and_shows_as_typed(sandbox, name):
    emulator, _ = sandbox
    record = await emulator.invoke("stylize", {"content": Upload("a.png", photo("astronaut", 256)),
                                               "style": Upload(name, samples.painting(256)), "size": 128}, user_id=500)
    caption = one_public_result(await record.wait(timeout=120))
    assert escape(name) in caption and not record.pings


def truncated_png() -> bytes:
    """A PNG whose header is fine (it is admitted) but whose pixels stop halfway (its decode fails)."""
    data = photo("cat", 256)
    return data[:len(data) // 2]


async def test_concurrent_requests_cannot_overshoot_the_daily_quota(real_weights, tmp_path):
    """Before: two 3 MP /fix at once with a quota of 1 used 6 units (checked before, charged after), and
    so would two /dream count:16 with a quota of 0.2 use 0.52.
    Now a request's cost is reserved when it is admitted: the second is refused, and a request
    that fails after admission costs nothing."""
    emulator, api_base = DiscordEmulator(), Route.BASE  # discord.py's API base is process-wide: the module's bot's, restored below
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, daily_quota=0.2, quota_file=tmp_path / "quota.sqlite3",
                                                              preload=False))
    try:
        both = [await emulator.invoke("dream", {"count": 16, "seed": s}, user_id=601) for s in (1, 2)]  # 0.26 units each
        await asyncio.gather(*(r.wait(timeout=120) for r in both))
        served = [r for r in both if r.public]
        (told,) = [r for r in both if not r.public]
        assert len(served) == 1 and "quota of 0.2 units" in only_one_sentence(told)
        one_dream = TASKS["dream"].plan(Job("dream", {"count": 16}), images.Limits()).cost
        assert bot.runner.quota.used(601) == pytest.approx(one_dream)  # over the quota by one request's cost, at most
        failed = await emulator.invoke("fix", {"photo": Upload("cat.png", truncated_png())}, user_id=602)
        assert "damaged" in only_one_sentence(await failed.wait(timeout=120))
        assert bot.runner.quota.used(602) == 0
        one_public_result(await (await emulator.invoke("dream", {"count": 1, "seed": 3}, user_id=602)).wait(timeout=120))
    finally:
        await bot.close()
        await running
        await emulator.stop()
        Route.BASE = api_base


@pytest.fixture
def stderr_file(tmp_path) -> Iterator[Path]:
    """The process's fd 2 goes to a file for the test, as a terminal or a service's journal would take it."""
    saved = os.dup(2)
    with (tmp_path / "stderr.txt").open("wb") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield tmp_path / "stderr.txt"
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@pytest.fixture
def warnings_only(stderr_file) -> Iterator[Path]:
    """The log as `easel run` sets it up at EASEL_LOG_LEVEL=WARNING, on that stderr; undone after."""
    from bot.cli import setup_logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handler = setup_logging("WARNING")
    yield stderr_file
    root.removeHandler(handler)
    handler.close()
    root.setLevel(level)
    assert root.handlers == handlers


async def test_errors_keep_their_level_while_an_image_decodes(sandbox, warnings_only):
    """Before: while any decode ran, whatever was logged went into the decoders' capture and came
    out at INFO, so at WARNING an error and the reference id its person was given vanished."""
    emulator, bot = sandbox
    dream = bot.pool.tasks["dream"]
    inside, done = threading.Event(), threading.Event()

    def decoding() -> None:  # a decode on another thread, writing to the C-level stderr as libtiff does
        with images.quiet():
            os.write(2, b"TIFFReadDirectory: Warning, unknown field with tag 50341\n")
            inside.set()
            done.wait(60)

    def broken(nets, items, ctx):
        raise RuntimeError("a bug of ours")
    decode = asyncio.get_running_loop().run_in_executor(None, decoding)
    dream.run = broken  # on this instance only, undone below
    try:
        await asyncio.to_thread(inside.wait, 60)
        failing = await emulator.invoke("dream", {"count": 1, "seed": 1}, user_id=702)
        reference = re.search(r"reference (\w+)\)", only_one_sentence(await failing.wait(timeout=60)))
    finally:
        done.set()
        del dream.run
    await decode
    err = re.sub(r"\x1b\[[0-9;]*m", "", warnings_only.read_text())  # discord.py colours its log in a container
    assert reference and re.search(rf"ERROR +easel\.commands:? dream failed .*\(reference {reference[1]}\)", err), err
    assert "a bug of ours" in err and "decoder:" not in err and "INFO" not in err
