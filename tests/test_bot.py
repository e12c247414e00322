"""The real bot (discord.py, the pool, real weights) against the loopback Discord emulator."""

from __future__ import annotations

import asyncio
import io
import json
import re
import statistics
import time

import numpy as np
import pytest
import pytest_asyncio
import torch
from PIL import Image, ImageFilter

from bot.commands.doodle import unquote
from bot.replies import DONE, is_interim
from bot.runner import TOKEN_LIFETIME_S, TOKEN_MARGIN_S
from bot.sandbox.burst import burst
from bot.sandbox.demo import start_bot
from bot.sandbox.emulator import DiscordEmulator, Record, Upload
from bot.settings import Settings
from conftest import png_bytes, png_declaring
from models import samples

pytestmark = pytest.mark.asyncio(loop_scope="module")

MB = 2**20


def sandbox_settings(emulator: DiscordEmulator, **overrides) -> Settings:
    values = dict(token=emulator.token, discord_api_base=emulator.api_base, attachment_hosts=(emulator.cdn_host,), device="cpu",
                  cooldown_s=0, max_jobs_per_user=4, max_jobs_per_guild=64, max_queue=64, download_limit_mb=5)
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def discord_sandbox(real_weights):
    emulator = DiscordEmulator(heartbeat_interval_ms=500)
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator))
    yield emulator, bot
    await bot.close()
    await running
    await emulator.stop()


def image_of(record: Record, name: str) -> Image.Image:
    return Image.open(io.BytesIO(record.files[name]))


def same_picture(a: Image.Image, b: Image.Image) -> bool:
    """Equal up to float rounding that reaches the 8-bit file. The two requests may run in one batch
    or in two, and oneDNN's kernels (summation orders) differ per batch size and CPU: a face within
    half a level can round to the neighbouring level, which the 2x Lanczos upscale (weights summing
    to at most 1.3 in magnitude) turns into at most 2 levels. Another seed differs by tens of levels."""
    diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
    return a.size == b.size and int(diff.max()) <= 2 and float(diff.mean()) <= 0.05


def photo(name: str, size: int | None = None) -> bytes:
    image = Image.open(io.BytesIO(samples.photo(name))).convert("RGB")
    if size:
        image.thumbnail((size, size))
    return png_bytes(image)


def only_one_sentence(record: Record) -> str:
    """The person sees exactly one sentence, only they see it, nothing is left loading, and the channel sees nothing."""
    assert not record.loading and not record.public, record.summary()
    (text,) = record.ephemeral_messages
    assert not is_interim(text) and text.endswith((".", "!")) and "Traceback" not in text and "\n" not in text
    return text


def one_public_result(record: Record) -> str:
    """The channel sees one message with the result; the asker's private "thinking" became the short DONE line."""
    assert not record.loading, record.summary()
    ((message, files),) = record.public
    assert files and record.ephemeral_messages == [DONE], record.summary()
    return message["content"]


async def answers_the_next_command(emulator: DiscordEmulator, user_id: int) -> None:
    after = await emulator.invoke("dream", {"count": 1, "seed": user_id}, user_id=user_id)
    await after.wait()
    one_public_result(after)


async def test_commands_are_declared_so_discords_ui_validates_them(discord_sandbox):
    emulator, _ = discord_sandbox
    assert set(emulator.commands) == {"stylize", "dream", "fix", "doodle", "help", "status"}
    options = {c: {o["name"]: o for o in emulator.commands[c].get("options", [])} for c in emulator.commands}
    assert options["stylize"]["content"]["type"] == 11 and options["stylize"]["content"]["required"]
    assert options["stylize"]["style"]["type"] == 11 and not options["stylize"]["style"].get("required")
    assert options["stylize"]["preset"]["autocomplete"] is True
    assert (options["stylize"]["strength"]["min_value"], options["stylize"]["strength"]["max_value"]) == (0.0, 1.0)
    assert (options["stylize"]["size"]["min_value"], options["stylize"]["size"]["max_value"]) == (64, 2048)  # the task's own range
    assert (options["dream"]["count"]["min_value"], options["dream"]["count"]["max_value"]) == (1, 16)
    assert options["fix"]["photo"]["type"] == 11
    assert options["doodle"]["text"]["required"] and options["doodle"]["text"]["max_length"] == 200
    assert (options["doodle"]["neatness"]["min_value"], options["doodle"]["neatness"]["max_value"]) == (0.0, 1.0)
    assert [c["value"] for c in options["doodle"]["ink"]["choices"]] == ["blue", "black", "sepia", "red", "green"]
    for command in emulator.commands.values():
        assert 0 < len(command["description"]) <= 100
        assert all(0 < len(o["description"]) <= 100 for o in command.get("options", []))


async def test_stylize_with_a_style_image(discord_sandbox):
    emulator, _ = discord_sandbox
    content = photo("astronaut", 384)
    record = await emulator.invoke("stylize", {"content": Upload("astronaut.png", content),
                                               "style": Upload("painting.png", samples.painting()), "size": 320})
    await record.wait()
    one_public_result(record)
    result = image_of(record, "stylized.png").convert("RGB")
    assert result.size == (320, 320)
    original = np.asarray(Image.open(io.BytesIO(content)).convert("RGB").resize((320, 320)), np.float32)
    assert np.abs(np.asarray(result, np.float32) - original).mean() > 20  # painted, not copied
    assert "painting.png" in record.content and "320×320" in record.content


async def test_stylize_with_presets_and_their_autocomplete(discord_sandbox):
    emulator, _ = discord_sandbox
    choices = await emulator.autocomplete("stylize", {"preset": "swirl"}, "preset")
    assert choices == [{"name": "19 · Starry swirls", "value": "19"}]
    blend = await emulator.autocomplete("stylize", {"preset": "3:1,12:1"}, "preset")
    assert blend[0]["value"] == "3:1,12:1"
    record = await emulator.invoke("stylize", {"content": Upload("cat.jpg", samples.photo("cat"), "image/jpeg"),
                                               "preset": "3:1,12:1", "preserve_colors": True})
    await record.wait()
    assert image_of(record, "stylized.png").size == (451, 300)
    assert "Electric abstract (50%)" in record.content and "colours kept" in record.content


@pytest.mark.parametrize("preset, with_style, words", [(None, False, "style image or choose a preset"),
                                                        ("4", True, "one of the two"), ("99", False, "0 to 25")])
async def test_stylize_option_mistakes_are_one_sentence(discord_sandbox, preset, with_style, words):
    emulator, _ = discord_sandbox
    cat = Upload("cat.jpg", samples.photo("cat"), "image/jpeg")
    options = {"content": cat, **({"preset": preset} if preset else {}), **({"style": cat} if with_style else {})}
    record = await emulator.invoke("stylize", options, user_id=2001)
    await record.wait()
    assert words in only_one_sentence(record)


async def test_dream_posts_a_reproducible_grid_with_its_seed_and_buttons(discord_sandbox):
    emulator, _ = discord_sandbox
    first = await emulator.invoke("dream", {"count": 9, "seed": 77, "truncation": 0.7})
    second = await emulator.invoke("dream", {"count": 9, "seed": 77, "truncation": 0.7}, user_id=1002)
    await first.wait()
    await second.wait()
    one_public_result(first)
    assert same_picture(image_of(first, "faces.png"), image_of(second, "faces.png"))
    assert image_of(first, "faces.png").size == (3 * 128 + 4 * 4, 3 * 128 + 4 * 4)  # 3x3 faces
    assert "9 faces" in first.content and "seed **77**" in first.content
    assert first.custom_ids == ["easel:dream:reroll:77:9:70", "easel:dream:vary:77:9:70", "easel:dream:morph:77:9:70",
                                "easel:delete:1001"]


async def test_dream_buttons_reroll_vary_and_morph(discord_sandbox):
    emulator, _ = discord_sandbox
    grid = await emulator.invoke("dream", {"count": 4, "seed": 5})
    await grid.wait()
    reroll, vary, morph = [await emulator.click(grid, custom_id) for custom_id in grid.custom_ids if ":dream:" in custom_id]
    for record in (reroll, vary, morph):
        await record.wait()
        one_public_result(record)  # the presser's own "thinking", private; the new faces, public
    assert "seed **5**" not in reroll.content and reroll.files["faces.png"] != grid.files["faces.png"]
    assert "variations" in vary.content and image_of(vary, "faces.png").size == image_of(grid, "faces.png").size
    animation = image_of(morph, "morph.gif")
    assert animation.n_frames == 24 and "Morph from seed **5**" in morph.content


TRICKY_TEXT = "春眠不觉晓 | **not bold** @everyone <@1001> `code` ☃ a\\b"  # markdown, pings, a backslash, a snowman


async def test_doodle_posts_the_text_handwritten_with_its_seed_and_buttons(discord_sandbox):
    emulator, _ = discord_sandbox
    record = await emulator.invoke("doodle", {"text": TRICKY_TEXT, "seed": 42, "ink": "sepia"})
    await record.wait()
    one_public_result(record)
    page = image_of(record, "doodle.png")
    assert page.format == "PNG" and page.width > 200 and page.height > 100
    assert "seed **42**" in record.content and "sepia ink" in record.content and "can't write ☃" in record.content
    assert unquote(record.content) == TRICKY_TEXT  # quoted verbatim: the buttons read it back
    assert not re.search(r"(?<!\\)[@<]", record.content)  # mentions are escaped: shown, never a ping
    assert record.custom_ids == ["easel:doodle:new:42:65:sepia", "easel:doodle:morph:42:65:sepia", "easel:delete:1001"]


async def test_doodle_new_hand_and_morph_write_the_same_text(discord_sandbox):
    emulator, _ = discord_sandbox
    first = await emulator.invoke("doodle", {"text": TRICKY_TEXT, "seed": 7, "neatness": 0.6})
    await first.wait()
    new, morph = [await emulator.click(first, custom_id) for custom_id in first.custom_ids if ":doodle:" in custom_id]
    for record in (new, morph):
        await record.wait()
        one_public_result(record)
    assert "seed **7**" not in new.content and "neatness 0.6" in new.content and unquote(new.content) == TRICKY_TEXT
    assert new.files["doodle.png"] != first.files["doodle.png"]
    animation = image_of(morph, "morph.gif")
    assert animation.n_frames == 16 and "Morph from hand **7**" in morph.content and unquote(morph.content) == TRICKY_TEXT


@pytest.mark.parametrize("text, words", [("☃ ♫", "can't write any of those"), ("   ", "Give me some text"),
                                         ("写" * 201, "at most 200")])
async def test_doodle_text_it_cannot_write_is_one_sentence(discord_sandbox, text, words):
    emulator, _ = discord_sandbox
    record = await emulator.invoke("doodle", {"text": text}, user_id=2002)
    await record.wait()
    assert words in only_one_sentence(record)


async def test_fix_returns_a_sharper_photo_and_a_before_after_view(discord_sandbox):
    emulator, _ = discord_sandbox
    sharp = Image.open(io.BytesIO(samples.photo("coffee"))).convert("RGB")
    blurry = sharp.filter(ImageFilter.GaussianBlur(1.5))
    record = await emulator.invoke("fix", {"photo": Upload("blurry.png", png_bytes(blurry))})
    await record.wait(timeout=180)
    fixed = image_of(record, "fixed.png").convert("RGB")
    assert fixed.size == blurry.size and image_of(record, "before-after.png").width > 0

    def error(image: Image.Image) -> float:
        return float(np.abs(np.asarray(image, np.float32) - np.asarray(sharp, np.float32)).mean())
    assert error(fixed) < error(blurry)  # closer to the sharp original than what was sent


@pytest.mark.parametrize("upload, words", [
    (Upload("notes.txt", b"these are my notes", "text/plain"), "not an image"),
    (Upload("notes.png", b"these are my notes, named like a picture", "image/png"), "not an image I can read"),
    (Upload("cut.png", png_bytes(Image.new("RGB", (300, 200), (9, 90, 200)))[:400]), "truncated or damaged"),
    (Upload("bomb.png", png_declaring(60_000, 60_000)), "decompression bomb"),
    (Upload("empty.png", b""), "empty"),
    (Upload("huge.png", b"\0" * 64, declared_size=50 * MB), "the limit is 5 MB"),
    (Upload("liar.png", b"\x89PNG" + b"\0" * (6 * MB), declared_size=1000), "larger than 5 MB"),
])
async def test_bad_uploads_get_one_private_sentence_and_the_bot_carries_on(discord_sandbox, upload, words):
    """Refused before the defer (declared type or size) or found after the download (content): either way
    the person sees one sentence only they see, never a loading message left behind."""
    emulator, bot = discord_sandbox
    record = await emulator.invoke("fix", {"photo": upload}, user_id=3001)
    await record.wait()
    assert words in only_one_sentence(record)
    await answers_the_next_command(emulator, 3002)


@pytest.mark.parametrize("failure, words", [
    (torch.OutOfMemoryError("CUDA out of memory."), "too large for this server's GPU memory"),
    (RuntimeError("a bug of ours"), "something went wrong on my side (reference "),
])
async def test_failures_on_our_side_are_one_sentence_and_the_bot_carries_on(discord_sandbox, caplog, failure, words):
    """Out of memory at every size is a sentence about size; a bug is an apology with a reference id that
    is also in the log, next to the traceback."""
    emulator, bot = discord_sandbox
    dream = bot.pool.tasks["dream"]

    def broken(nets, items, ctx):
        raise failure
    dream.run = broken  # on this instance only, undone below
    try:
        record = await emulator.invoke("dream", {"count": 1, "seed": 1}, user_id=8001)
        await record.wait()
    finally:
        del dream.run
    text = only_one_sentence(record)
    assert words in text
    if isinstance(failure, torch.OutOfMemoryError):
        assert "reference" not in text
    else:
        reference = re.search(r"reference (\w+)\)", text)
        assert reference and f"reference {reference[1]}" in caplog.text and "a bug of ours" in caplog.text
    await answers_the_next_command(emulator, 8002)


async def test_a_job_that_outlasts_its_deadline_is_stopped_with_one_sentence(discord_sandbox):
    """Delivered so late that its token leaves 2 s of work (after the upload margin): the pool stops the
    held job at that deadline and the person is told, privately, within the token's life."""
    emulator, _ = discord_sandbox
    hold = asyncio.Event()
    dream = _hold_prepare(discord_sandbox[1], hold)
    try:
        record = await emulator.invoke("dream", {"count": 1, "seed": 6}, user_id=8101,
                                       age_s=TOKEN_LIFETIME_S - TOKEN_MARGIN_S - 2)
        await record.wait(timeout=60)
    finally:
        hold.set()
        del dream.prepare
    assert "took longer than 2 seconds" in only_one_sentence(record)
    await answers_the_next_command(emulator, 8102)


async def test_a_burst_of_20_interactions_is_acknowledged_in_time_and_answered(discord_sandbox):
    emulator, _ = discord_sandbox
    cat, painting, coffee = photo("cat", 256), samples.painting(256), photo("coffee", 320)
    commands = []
    for i in range(20):
        if i % 5 in (0, 1):
            commands.append(("dream", {"count": 4, "seed": i}))
        elif i % 5 in (2, 3):
            commands.append(("stylize", {"content": Upload("cat.png", cat), "style": Upload("p.png", painting), "size": 256}))
        else:
            commands.append(("fix", {"photo": Upload("coffee.png", coffee)}))
    started = time.monotonic()
    records = await asyncio.gather(*(emulator.invoke(name, options, user_id=5000 + i) for i, (name, options) in enumerate(commands)))
    await asyncio.gather(*(r.wait(timeout=600) for r in records))
    acks = [r.acknowledged_at - r.sent_at for r in records]
    assert max(acks) < 3.0
    for r in records:
        one_public_result(r)
    totals: dict[str, list[float]] = {}
    for (name, _), r in zip(commands, records):
        totals.setdefault(name, []).append(r.answered_at - r.sent_at)
    print("\nburst:", json.dumps({
        "acknowledge_p95_s": round(sorted(acks)[int(0.95 * (len(acks) - 1))], 4), "acknowledge_max_s": round(max(acks), 4),
        "end_to_end_median_s": {k: round(statistics.median(v), 2) for k, v in totals.items()},
        "end_to_end_max_s": {k: round(max(v), 2) for k, v in totals.items()},
        "wall_s": round(time.monotonic() - started, 2)}))
    queued = [r for r in records if any("Waiting in line" in text for _, text in r.edits)]
    assert queued, "with 20 at once, some people must have been shown their place in the queue"


async def test_a_gateway_disconnect_mid_job_still_delivers_the_result(discord_sandbox):
    emulator, _ = discord_sandbox
    resumes = emulator.resumes
    record = await emulator.invoke("fix", {"photo": Upload("coffee.jpg", samples.photo("coffee"), "image/jpeg")}, user_id=6001)
    await record.wait(lambda r: r.callback_type is not None, timeout=10)
    await emulator.drop_gateway(4000)
    await record.wait(timeout=300)
    assert record.files
    for _ in range(100):
        if emulator.resumes > resumes:
            break
        await asyncio.sleep(0.1)
    assert emulator.resumes == resumes + 1  # discord.py resumed the same session
    later = await emulator.invoke("dream", {"count": 1, "seed": 3}, user_id=6002)  # events flow again
    await later.wait()
    assert later.files


async def test_the_bot_heartbeats_and_follows_a_reconnect_request(discord_sandbox):
    emulator, _ = discord_sandbox
    beats, resumes = emulator.heartbeats, emulator.resumes
    await asyncio.sleep(1.6)  # the sandbox asks for a heartbeat every 0.5 s
    assert emulator.heartbeats >= beats + 2
    await emulator.ask_to_reconnect()
    for _ in range(100):
        if emulator.resumes > resumes:
            break
        await asyncio.sleep(0.1)
    assert emulator.resumes == resumes + 1
    after = await emulator.invoke("dream", {"count": 1, "seed": 4}, user_id=6003)
    await after.wait()
    assert after.files


async def test_results_fit_the_upload_limit_of_the_context(discord_sandbox):
    emulator, _ = discord_sandbox
    record = await emulator.invoke("stylize", {"content": Upload("astronaut.jpg", samples.photo("astronaut"), "image/jpeg"),
                                               "preset": "3"}, attachment_size_limit=120_000, user_id=7001)
    await record.wait()
    (data,) = record.files.values()
    posted = Image.open(io.BytesIO(data))
    assert len(data) <= 120_000 and f"{posted.width}×{posted.height}" in record.content  # the size actually posted
    fixed = await emulator.invoke("fix", {"photo": Upload("coffee.jpg", samples.photo("coffee"), "image/jpeg")},
                                  attachment_size_limit=150_000, user_id=7003)
    await fixed.wait(timeout=180)
    assert len(fixed.files) == 2 and sum(map(len, fixed.files.values())) <= 150_000  # one message, both files


async def test_work_that_would_outlive_the_interaction_token_is_refused(discord_sandbox):
    emulator, _ = discord_sandbox
    record = await emulator.invoke("dream", {"count": 2}, age_s=14 * 60 + 50, user_id=7002)
    await record.wait()
    assert "15 minutes" in only_one_sentence(record)


async def test_help_and_status_answer_only_the_asker(discord_sandbox):
    emulator, _ = discord_sandbox
    helped = await emulator.invoke("help")
    status = await emulator.invoke("status")
    await helped.wait()
    await status.wait()
    assert all(f"/{name}" in helped.ephemeral_messages[0] for name in ("stylize", "dream", "fix", "doodle"))
    assert "Queue:" in status.ephemeral_messages[0] and "CPU" in status.ephemeral_messages[0]
    assert re.search(r"\*\*Requests:\*\* \d+ being handled", status.ephemeral_messages[0])


# Tests from here on run their own emulator and bot: discord.py's API base is process-wide, so the
# shared sandbox above is not used after them.

async def test_the_burst_benchmark_leaves_nobody_without_an_answer():
    """`python -m bot.sandbox.burst`, small: with the default limits, each person is served or told privately why not."""
    report = await burst(people=10, device="cpu", timeout_s=300)
    assert report["lost"] == 0 and report["acknowledged"] == 10
    assert report["served"] + report["told_privately"] == 10
    assert report["served"] >= min(10, report["settings"]["max_jobs_per_guild"])  # the server's cap: 8 at a time


async def test_doodle_buttons_work_on_a_message_from_before_a_restart():
    """Nothing is kept in memory: a new bot process reads seed, neatness and ink from the custom_id
    and the text from the message the button is on."""
    emulator = DiscordEmulator()
    await emulator.start()
    try:
        bot, running = await start_bot(emulator, sandbox_settings(emulator))
        before = await emulator.invoke("doodle", {"text": "重启以后 after a restart", "seed": 5, "ink": "red"})
        await before.wait(timeout=120)
        await bot.wait_until_ready()  # a bot closed before it is ready leaves discord.py's ready task dangling
        await bot.close()
        await running
        emulator.identified.clear()
        bot, running = await start_bot(emulator, sandbox_settings(emulator))
        new, morph = [await emulator.click(before, custom_id) for custom_id in before.custom_ids if ":doodle:" in custom_id]
        for record in (new, morph):
            await record.wait(timeout=120)
            one_public_result(record)
        assert new.files and "red ink" in new.content and unquote(new.content) == "重启以后 after a restart"
        assert image_of(morph, "morph.gif").n_frames == 16 and "Morph from hand **5**" in morph.content
    finally:
        await bot.close()
        await running
        await emulator.stop()


async def test_cooldown_per_user_caps_and_a_full_queue_are_polite():
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, cooldown_s=30, max_jobs_per_user=1,
                                                              max_queue=1, max_batch=1, preload=False))
    try:
        first = await emulator.invoke("dream", {"count": 1, "seed": 1}, user_id=1)
        again = await emulator.invoke("dream", {"count": 1, "seed": 2}, user_id=1)
        await again.wait()
        assert "cooldown" in only_one_sentence(again)
        await first.wait(timeout=120)
        bot.runner.limiter.cooldown_s = 0
        hold, held = asyncio.Event(), asyncio.Event()
        dream = _hold_prepare(bot, hold, held)  # undone below
        crowd = [await emulator.invoke("dream", {"count": 1, "seed": 10}, user_id=100)]
        await asyncio.wait_for(held.wait(), 60)  # one runs (held)
        crowd.append(await emulator.invoke("dream", {"count": 1, "seed": 11}, user_id=101))
        while bot.pool.status()["queued"] < 1:  # one waits in the queue of 1
            await asyncio.sleep(0.01)
        crowd.append(await emulator.invoke("dream", {"count": 1, "seed": 12}, user_id=102))
        await crowd[2].wait(timeout=30)  # ... and the third is turned away
        assert "busy" in only_one_sentence(crowd[2])
        mine = await emulator.invoke("dream", {"count": 1, "seed": 9}, user_id=100)
        await mine.wait()
        assert "already have a request running" in only_one_sentence(mine)
        hold.set()
        await asyncio.gather(crowd[0].wait(timeout=120), crowd[1].wait(timeout=120))
        one_public_result(crowd[0])
        one_public_result(crowd[1])
        await answers_the_next_command(emulator, 200)
    finally:
        del dream.prepare
        await bot.close()
        await running
        await emulator.stop()


def _hold_prepare(bot, gate: asyncio.Event, entered: asyncio.Event | None = None):
    """Make /dream's prepare wait for `gate` (setting `entered` once a job is held); returns the task,
    whose `prepare` the caller deletes after."""
    dream = bot.pool.tasks["dream"]
    dream.prepare = _blocking(type(dream).prepare.__get__(dream), gate, entered)  # on this instance only
    return dream


def _blocking(prepare, gate: asyncio.Event, entered: asyncio.Event | None = None):
    """Hold the worker inside prepare until `gate` is set (a job that takes a while)."""
    loop = asyncio.get_running_loop()

    def held(job, limits):
        if entered is not None:
            loop.call_soon_threadsafe(entered.set)
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=60)
        return prepare(job, limits)
    return held


async def test_shutdown_mid_job_apologises_and_buttons_from_before_a_restart_still_work():
    """A job cut off by shutdown ends as one private sentence; after a restart, a button on a message
    the previous process posted still works (its custom_id carries everything)."""
    emulator = DiscordEmulator()
    await emulator.start()
    settings = sandbox_settings(emulator, shutdown_grace_s=0)
    bot, running = await start_bot(emulator, settings)
    hold, held, closing, dream = asyncio.Event(), asyncio.Event(), None, None
    try:
        grid = await emulator.invoke("dream", {"count": 4, "seed": 21}, user_id=1)
        await grid.wait(timeout=120)
        one_public_result(grid)
        dream = _hold_prepare(bot, hold, held)
        cut_off = await emulator.invoke("dream", {"count": 1, "seed": 22}, user_id=2)
        await asyncio.wait_for(held.wait(), 60)  # its job is on the device
        closing = asyncio.create_task(bot.close())
        await cut_off.wait(timeout=60)
    finally:
        hold.set()
        await (closing or bot.close())
        await running
        if dream is not None:
            del dream.prepare  # the task objects outlive this bot
    assert "shutting down" in only_one_sentence(cut_off)
    emulator.identified.clear()
    bot, running = await start_bot(emulator, settings)  # a new process: no view was ever registered in it
    try:
        pressed = await emulator.click(grid, "easel:dream:vary:21:4:80", user_id=3)
        await pressed.wait(timeout=120)
        assert "variations of the first face of seed **21**" in one_public_result(pressed)
        await answers_the_next_command(emulator, 4)
    finally:
        await bot.close()
        await running
        await emulator.stop()


async def test_shutdown_waits_for_the_last_reply_to_upload():
    """The pool finishing a job is not the end: its result must reach Discord before the session closes."""
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator))
    emulator.upload_delay_s = 2.0
    record = await emulator.invoke("dream", {"count": 1, "seed": 5})
    await record.wait(lambda r: r.callback_type is not None, timeout=30)
    while not emulator.uploads_in_flight:
        await asyncio.sleep(0.01)  # the job is done and its reply is on the (slow) way
    await bot.close()
    await running
    await emulator.stop()
    assert record.files and "seed **5**" in record.content


async def test_sigterm_finishes_the_job_in_flight_then_exits_cleanly(tmp_path):
    """The real `python -m bot` process: SIGTERM mid-job still delivers that job, refuses new ones politely.
    It logs at DEBUG, and still prints no token and no signed attachment URL."""
    import os
    import signal
    import sys

    emulator = DiscordEmulator()
    await emulator.start()
    env = {**os.environ, "DISCORD_TOKEN": emulator.token, "EASEL_DISCORD_API_BASE": emulator.api_base,
           "EASEL_ATTACHMENT_HOSTS": emulator.cdn_host, "EASEL_DEVICE": "cpu", "EASEL_COOLDOWN_S": "0",
           "EASEL_SHUTDOWN_GRACE_S": "120", "EASEL_LOG_LEVEL": "DEBUG"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=tmp_path, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output = bytearray()

    async def drain() -> None:  # a full pipe would block the bot on its next log line
        while chunk := await process.stdout.read(65536):
            output.extend(chunk)
    draining = asyncio.create_task(drain())
    try:
        ready, exited = asyncio.create_task(emulator.identified.wait()), asyncio.create_task(process.wait())
        await asyncio.wait([ready, exited], timeout=180, return_when=asyncio.FIRST_COMPLETED)
        assert ready.done(), output.decode()[-2000:]
        big = Image.open(io.BytesIO(samples.photo("astronaut"))).convert("RGB").resize((1024, 1024))
        record = await emulator.invoke("fix", {"photo": Upload("big.png", png_bytes(big))})
        await record.wait(lambda r: any("Restoring" in text for _, text in r.edits), timeout=60)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        late = await emulator.invoke("dream", {"count": 1}, user_id=2)
        await late.wait(timeout=30)
        assert "shutting down" in only_one_sentence(late)
        await record.wait(timeout=180)
        assert record.files and image_of(record, "fixed.png").size == (1024, 1024)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        await draining
        log = output.decode()
        assert "Traceback" not in log, log[-3000:]
        assert "command=fix" in log  # the log is there ...
        for secret in (emulator.token, record.token, late.token, "/attachments/", "hm="):  # ... its secrets are not
            assert secret not in log, secret
    except (AssertionError, TimeoutError) as failure:
        raise AssertionError(f"{failure}\n--- the bot's output ---\n{output.decode()[-4000:]}") from failure
    finally:
        if process.returncode is None:
            process.kill()
        draining.cancel()
        await emulator.stop()


async def test_doodle_refuses_a_page_too_tall_in_one_sentence():
    """Its line breaks would make a page (and every morph frame of it) 14,000 pixels tall: refused before it queues."""
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, preload=False))
    try:
        record = await emulator.invoke("doodle", {"text": "W" * 30 + "|" * 169 + "W", "seed": 3})
        await record.wait()
        assert "I write at most 48 lines" in only_one_sentence(record)
        await bot.wait_until_ready()  # a bot closed before it is ready leaves discord.py's ready task dangling
    finally:
        await bot.close()
        await running
        await emulator.stop()
