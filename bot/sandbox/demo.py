"""`easel demo`: the real bot against the loopback Discord, driven through every command.

No Discord account or network needed: it starts the emulator, starts EaselBot against it, runs
/stylize, /dream (and presses its Morph button), /fix, one bad upload, one refusal (a cooldown),
/doodle (and its Morph button), a /fix its asker cancels, and the deletion of the /dream grid
by its asker; saves the posted files and `replies.json` (who saw which text) into a folder, and
prints where.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from bot.app import EaselBot, make_bot
from bot.sandbox.emulator import DiscordEmulator, Record, Upload
from bot.settings import Settings
from models import samples
from models.images import log_stream

DOODLE_TEXT = "春眠不觉晓，处处闻啼鸟。| Spring sleep knows no dawn; everywhere I hear birds. 2026"


def blurred_photo() -> bytes:
    """A sample photo with a soft-focus blur, as /fix would receive it."""
    image = Image.open(io.BytesIO(samples.photo("coffee"))).convert("RGB").filter(ImageFilter.GaussianBlur(2.0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def truncated_photo() -> bytes:
    """The first half of a JPEG, as an interrupted upload leaves it: only decoding finds out."""
    data = samples.photo("cat")
    return data[: len(data) // 2]


def sandbox_settings(emulator: DiscordEmulator, device: str) -> Settings:
    """Default limits (the cooldown included); each demo step is another person, except the refusal's."""
    return Settings(token=emulator.token, discord_api_base=emulator.api_base, attachment_hosts=(emulator.cdn_host,),
                    device=device)


async def start_bot(emulator: DiscordEmulator, settings: Settings) -> tuple[EaselBot, asyncio.Task[None]]:
    bot = make_bot(settings)
    running = asyncio.create_task(bot.start(settings.token.get_secret_value()))
    waiting = asyncio.create_task(emulator.identified.wait())
    await asyncio.wait([running, waiting], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        waiting.cancel()
        await running  # re-raise why the bot could not start
    return bot, running


def save(record: Record, out: Path, step: str) -> list[Path]:
    paths = []
    for name, data in record.files.items():
        path = out / f"{step}-{name}"
        path.write_bytes(data)
        paths.append(path)
    return paths


async def demo(out: Path, device: str) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    emulator = DiscordEmulator()
    await emulator.start()
    bot, running = await start_bot(emulator, sandbox_settings(emulator, device))
    dream: Record | None = None

    async def cancelled() -> Record:
        """A /fix whose asker presses Cancel as soon as their private progress message shows it."""
        record = await emulator.invoke("fix", {"photo": Upload("blurry.jpg", blurred_photo(), "image/jpeg")}, user_id=10)
        await record.wait(lambda r: bool(r.private_custom_ids), timeout=600)
        await emulator.click(record, record.private_custom_ids[0], user_id=10)
        return record

    async def deleted() -> Record:
        """The /dream grid's asker presses its Delete button: the grid leaves the channel."""
        assert dream is not None
        await emulator.click(dream, next(c for c in dream.custom_ids if c.startswith("easel:delete:")), user_id=3)
        return await dream.wait(lambda r: not r.public, timeout=60)

    steps: list[tuple[str, Any]] = [
        ("1-stylize", lambda: emulator.invoke("stylize", {"content": Upload("astronaut.jpg", samples.photo("astronaut"), "image/jpeg"),
                                                          "style": Upload("painting.png", samples.painting())}, user_id=1)),
        ("2-stylize-preset", lambda: emulator.invoke("stylize", {"content": Upload("coffee.jpg", samples.photo("coffee"), "image/jpeg"),
                                                                 "preset": "19", "strength": 0.85}, user_id=2)),
        ("3-dream", lambda: emulator.invoke("dream", {"count": 9, "seed": 2024}, user_id=3)),
        ("4-dream-morph", None),
        ("5-fix", lambda: emulator.invoke("fix", {"photo": Upload("blurry.jpg", blurred_photo(), "image/jpeg")}, user_id=5)),
        ("6-bad-upload", lambda: emulator.invoke("fix", {"photo": Upload("photo.jpg", truncated_photo(), "image/jpeg")}, user_id=6)),
        ("7-refused-cooldown", lambda: emulator.invoke("dream", {"count": 4}, user_id=6)),  # the same person, at once
        ("8-doodle", lambda: emulator.invoke("doodle", {"text": DOODLE_TEXT, "seed": 2024}, user_id=8)),
        ("9-doodle-morph", None),
        ("10-cancelled", cancelled),
        ("11-deleted", deleted),
    ]
    report, last = [], None
    try:
        for step, action in steps:
            started = time.monotonic()
            if action is None:  # press Morph on the previous step's reply
                assert last is not None
                record = await emulator.click(last, next(c for c in last.custom_ids if ":morph:" in c),
                                              user_id=int(step.split("-")[0]))
            else:
                record = await action()
            await record.wait(lambda r: r.answered() or bool(r.removed), timeout=600)  # an outcome, or deleted
            if step == "3-dream":
                dream = record
            last = record
            report.append({"step": step, "acknowledged_s": round((record.acknowledged_at or started) - record.sent_at, 3),
                           "answered_s": round(time.monotonic() - started, 2),
                           "everyone_sees": record.content, "only_the_asker_sees": record.ephemeral_messages,
                           "deleted_from_the_channel": [m["content"] for m in record.removed],
                           "files": [str(p) for p in save(record, out, step)]})
    finally:
        await bot.close()
        await running
        await emulator.stop()
    (out / "replies.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def main(out: Path, device: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=log_stream())
    print(f"Starting the loopback Discord and the bot (models load first; this takes a few seconds)...")
    for row in asyncio.run(demo(out, device)):
        print(f"\n{row['step']}: acknowledged in {row['acknowledged_s']} s, answered in {row['answered_s']} s")
        if row["everyone_sees"]:
            print(f"  everyone sees: {row['everyone_sees']}")
        for text in row["only_the_asker_sees"]:
            print(f"  only the asker sees: {text}")
        for text in row["deleted_from_the_channel"]:
            print(f"  deleted, so nobody sees any more: {text}")
        for path in row["files"]:
            print(f"  saved {path}")
    print(f"\nAll replies are in {out.resolve()} (the texts, and who saw them, in replies.json)")
