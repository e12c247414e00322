"""The asker controls their request: Cancel, Delete, where Easel may be used (DMs), and a daily quota.

The real bot (discord.py, the pool, real weights) against the loopback Discord emulator; jobs are
held with gates, days are turned with an injected clock: nothing waits on wall-clock time.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.controls import CANCEL_ANSWERS, NOT_YOURS_CANCEL, NOT_YOURS_DELETE
from bot.sandbox.demo import start_bot
from bot.sandbox.emulator import DiscordEmulator, Record, Upload
from models.jobs import CancelOutcome
from models.errors import Cancelled
from models.restore.net import KernelDeblurNet
from models.restore.tiling import _starts
from conftest import png_bytes
from test_bot import _hold_prepare, one_public_result, only_one_sentence, photo, sandbox_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(real_weights):
    emulator = DiscordEmulator(heartbeat_interval_ms=500)
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, preload=False))
    yield emulator, bot
    await bot.close()
    await running
    await emulator.stop()


def cancel_button(record: Record) -> str:
    (custom_id,) = record.private_custom_ids
    assert custom_id.startswith(f"easel:cancel:{record.asker}:")
    return custom_id


async def with_cancel_button(record: Record) -> str:
    """Wait until the asker's private progress message shows its Cancel button; return its custom_id."""
    await record.wait(lambda r: bool(r.private_custom_ids), timeout=60)
    return cancel_button(record)


async def test_cancel_while_queued_leaves_the_queue_at_once(sandbox):
    emulator, bot = sandbox
    hold, held = asyncio.Event(), asyncio.Event()
    dream = _hold_prepare(bot, hold, held)
    try:
        running = await emulator.invoke("dream", {"count": 1, "seed": 1}, user_id=101)
        await asyncio.wait_for(held.wait(), 60)
        waiting = await emulator.invoke("dream", {"count": 1, "seed": 2}, user_id=102)
        button = await with_cancel_button(waiting)
        as_shown = dict(waiting.message_with(button))
        pressed = await emulator.click(waiting, button, user_id=102)
        await waiting.wait()
        assert bot.pool.status()["queued"] == 0  # gone from the queue while the first job is still held
        assert pressed.callback_type == 6  # the press is acknowledged; the message itself says what happened
        again = await emulator.click(waiting, button, user_id=102, message=as_shown)  # a second, quick press
        await again.wait()
        assert only_one_sentence(again) == CANCEL_ANSWERS[CancelOutcome.ALREADY_CANCELLED]
    finally:
        hold.set()
        del dream.prepare
    assert only_one_sentence(waiting) == Cancelled.AS_ASKED and not waiting.private_custom_ids
    await running.wait()
    one_public_result(running)


async def test_cancel_while_running_stops_a_tiled_fix_and_spares_its_batch_mate(sandbox):
    """Two /fix jobs share a batch; the first is cancelled while its first tiles are on the device.
    Its remaining tiles are skipped, the second's all run, and its photo is the one it gets alone."""
    emulator, bot = sandbox
    width, height = 1200, 800  # six of the net's 512 px CPU tiles
    picture = png_bytes(Image.open(io.BytesIO(photo("coffee"))).resize((width, height)))
    cut = KernelDeblurNet.tiling["cpu"]
    tiles_per_photo = len(_starts(width, cut.tile, cut.overlap)) * len(_starts(height, cut.tile, cut.overlap))
    fix, loop = bot.pool.tasks["fix"], asyncio.get_running_loop()
    seen: list[int] = []  # tiles per forward call of the real network
    in_first, go_on = asyncio.Event(), asyncio.Event()

    def hook(module, args):
        seen.append(args[0].shape[0])
        if len(seen) == 1:
            loop.call_soon_threadsafe(in_first.set)
            asyncio.run_coroutine_threadsafe(go_on.wait(), loop).result(timeout=60)

    real_run = type(fix).run.__get__(fix)

    def observed_run(net, items, ctx):
        handle = net.register_forward_pre_hook(hook)
        try:
            return real_run(net, items, ctx)
        finally:
            handle.remove()

    hold, held = asyncio.Event(), asyncio.Event()
    dream = _hold_prepare(bot, hold, held)
    fix.run = observed_run  # on this instance only, undone below
    try:
        blocker = await emulator.invoke("dream", {"count": 1, "seed": 3}, user_id=201)
        await asyncio.wait_for(held.wait(), 60)
        cancelled = await emulator.invoke("fix", {"photo": Upload("a.png", picture)}, user_id=202)
        spared = await emulator.invoke("fix", {"photo": Upload("b.png", picture)}, user_id=203)
        button = await with_cancel_button(cancelled)
        while bot.pool.status()["queued"] < 2:  # both wait behind the held dream, to share a batch
            await asyncio.sleep(0.01)
        hold.set()
        await asyncio.wait_for(in_first.wait(), 120)  # the first tiles are in the network
        await emulator.click(cancelled, button, user_id=202)
        await cancelled.wait()
        assert only_one_sentence(cancelled) == Cancelled.AS_ASKED
        go_on.set()
        await spared.wait(timeout=180)
    finally:
        hold.set()
        go_on.set()
        del dream.prepare, fix.run
    one_public_result(spared)
    await blocker.wait()
    assert seen[0] < tiles_per_photo and sum(seen) - seen[0] == tiles_per_photo  # after the press, only the mate's tiles
    alone = await emulator.invoke("fix", {"photo": Upload("b.png", picture)}, user_id=204)  # the next job runs
    await alone.wait(timeout=180)
    one_public_result(alone)
    a, b = (np.asarray(Image.open(io.BytesIO(r.files["fixed.png"])), np.int16) for r in (spared, alone))
    assert a.shape == b.shape and int(np.abs(a - b).max()) <= 2  # the same photo, up to batch-size rounding


async def test_cancel_is_the_askers_alone_and_ends_with_the_result(sandbox):
    """Only the asker sees the Cancel button; a crafted press by anyone else is refused privately.
    After the result the button is gone, and a stale press says there was nothing left to cancel."""
    emulator, bot = sandbox
    hold, held = asyncio.Event(), asyncio.Event()
    dream = _hold_prepare(bot, hold, held)
    try:
        mine = await emulator.invoke("dream", {"count": 1, "seed": 4}, user_id=301)
        button = await with_cancel_button(mine)
        with pytest.raises(PermissionError):  # Discord shows another person's ephemeral message to nobody else
            await emulator.click(mine, button, user_id=302)
        as_shown = dict(mine.message_with(button))  # the private message with its button, as the asker's client shows it
        crafted = await emulator.click(mine, button, user_id=302, message=as_shown)
        await crafted.wait()
        assert only_one_sentence(crafted) == NOT_YOURS_CANCEL
    finally:
        hold.set()
        del dream.prepare
    await mine.wait()
    one_public_result(mine)  # it ran to the end
    assert not mine.private_custom_ids  # the DONE line has no Cancel button
    with pytest.raises(KeyError):
        await emulator.click(mine, button, user_id=301)
    stale = await emulator.click(mine, button, user_id=301, message=as_shown)  # pressed as the result arrived
    await stale.wait()
    assert only_one_sentence(stale) == CANCEL_ANSWERS[CancelOutcome.FINISHED]


async def test_delete_by_the_asker_or_a_moderator_only(sandbox):
    emulator, _ = sandbox
    emulator.moderators.add(403)
    results = [await emulator.invoke("dream", {"count": 1, "seed": 40 + i}, user_id=401 + i) for i in range(2)]
    for record in results:
        await record.wait()
        one_public_result(record)
    mine, theirs = results
    assert f"easel:delete:{mine.asker}" in mine.custom_ids
    refused = await emulator.click(mine, f"easel:delete:{mine.asker}", user_id=theirs.asker)
    await refused.wait()
    assert only_one_sentence(refused) == NOT_YOURS_DELETE and mine.public  # still there for everyone
    by_asker = await emulator.click(mine, f"easel:delete:{mine.asker}", user_id=mine.asker)
    by_moderator = await emulator.click(theirs, f"easel:delete:{theirs.asker}", user_id=403)
    for record, pressed in ((mine, by_asker), (theirs, by_moderator)):
        await record.wait(lambda r: not r.public)
        assert len(record.removed) == 1 and record.removed[0]["attachments"] and pressed.callback_type == 6


async def test_commands_are_declared_for_servers_only_unless_dms_are_allowed(sandbox):
    emulator, _ = sandbox
    assert {c["name"]: c["contexts"] for c in emulator.commands.values()} == {name: [0] for name in emulator.commands}
    with pytest.raises(PermissionError):  # not even offered in a DM
        await emulator.invoke("dream", {"count": 1}, user_id=501, dm=True)


async def start(emulator: DiscordEmulator, **settings):
    emulator.identified.clear()
    return await start_bot(emulator, sandbox_settings(emulator, preload=False, **settings))


async def test_dream_in_a_dm_when_allowed():
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start(emulator, allow_dms=True)
    try:
        assert all(sorted(c["contexts"]) == [0, 1] for c in emulator.commands.values())
        record = await emulator.invoke("dream", {"count": 1, "seed": 6}, user_id=601, dm=True)
        await record.wait(timeout=120)
        one_public_result(record)
        assert "guild_id" not in record.public[0][0]
    finally:
        await bot.close()
        await running
        await emulator.stop()


async def test_delete_still_works_after_a_restart_and_a_lost_request_says_so():
    """Delete routes by its custom_id in a new process. A Cancel left on a progress message by a
    process that went away names a job the new one never held: it says the request was lost."""
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start(emulator)
    try:
        record = await emulator.invoke("dream", {"count": 1, "seed": 7}, user_id=701)
        await record.wait(timeout=120)
        one_public_result(record)
        hold = asyncio.Event()
        dream = _hold_prepare(bot, hold)
        try:
            lost = await emulator.invoke("dream", {"count": 1, "seed": 8}, user_id=702)
            button = await with_cancel_button(lost)
            left_behind = dict(lost.message_with(button))  # the progress message, as the asker's client still shows it
        finally:
            hold.set()
            del dream.prepare
    finally:
        await bot.close()
        await running
    bot, running = await start(emulator)  # a new process: no view was ever registered in it
    try:
        await emulator.click(record, "easel:delete:701", user_id=701)
        await record.wait(lambda r: not r.public)
        pressed = await emulator.click(lost, button, user_id=702, message=left_behind)
        await pressed.wait()
        assert only_one_sentence(pressed) == CANCEL_ANSWERS[CancelOutcome.UNKNOWN]
    finally:
        await bot.close()
        await running
        await emulator.stop()


async def test_daily_quota_is_told_privately_resets_at_utc_midnight_and_survives_a_restart(tmp_path):
    """The quota is one dream's worth of work: the first runs, the second is refused with the reset
    time; once the (injected) clock passes midnight UTC it runs again; a restart remembers that."""
    emulator = DiscordEmulator()
    await emulator.start()
    evening = datetime(2026, 3, 1, 23, 0, tzinfo=UTC).timestamp()
    midnight = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    now = [evening]
    settings = dict(daily_quota=1e-6, quota_file=tmp_path / "quota.sqlite3")

    async def dream(seed: int) -> Record:
        record = await emulator.invoke("dream", {"count": 1, "seed": seed}, user_id=801)
        return await record.wait(timeout=120)

    bot, running = await start(emulator, **settings)
    bot.runner.quota.clock = lambda: now[0]
    try:
        one_public_result(await dream(1))
        refused = only_one_sentence(await dream(2))
        assert "quota" in refused and f"<t:{midnight}:R>" in refused
        other = await emulator.invoke("dream", {"count": 1, "seed": 3}, user_id=802)
        one_public_result(await other.wait(timeout=120))  # a quota is per person
        now[0] = midnight + 60.0  # a new day
        one_public_result(await dream(4))
    finally:
        await bot.close()
        await running
    bot, running = await start(emulator, **settings)
    bot.runner.quota.clock = lambda: now[0]
    try:
        assert f"<t:{midnight + 86_400}:R>" in only_one_sentence(await dream(5))  # today's use was kept
    finally:
        await bot.close()
        await running
        await emulator.stop()
