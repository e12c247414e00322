"""`easel demo`: the real bot against the loopback Discord, driven through every command.

No Discord account or network needed: it starts the emulator, starts EaselBot against it, runs
/stylize, /dream (and presses its Morph button), /fix and one bad upload, saves what the bot
posted into a folder and prints where.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter

from bot.app import EaselBot
from bot.sandbox.emulator import DiscordEmulator, Record, Upload
from bot.settings import Settings
from models import samples


def blurred_photo() -> bytes:
    """A sample photo with a soft-focus blur, as /fix would receive it."""
    image = Image.open(io.BytesIO(samples.photo("coffee"))).convert("RGB").filter(ImageFilter.GaussianBlur(2.0))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def sandbox_settings(emulator: DiscordEmulator, device: str) -> Settings:
    return Settings(token=emulator.token, discord_api_base=emulator.api_base, attachment_hosts=(emulator.cdn_host,),
                    device=device, cooldown_s=0, max_jobs_per_user=8)


async def start_bot(emulator: DiscordEmulator, settings: Settings) -> tuple[EaselBot, asyncio.Task[None]]:
    bot = EaselBot(settings)
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
    steps: list[tuple[str, Any]] = [
        ("1-stylize", lambda: emulator.invoke("stylize", {"content": Upload("astronaut.jpg", samples.photo("astronaut"), "image/jpeg"),
                                                          "style": Upload("painting.png", samples.painting())})),
        ("2-stylize-preset", lambda: emulator.invoke("stylize", {"content": Upload("coffee.jpg", samples.photo("coffee"), "image/jpeg"),
                                                                 "preset": "19", "strength": 0.85})),
        ("3-dream", lambda: emulator.invoke("dream", {"count": 9, "seed": 2024})),
        ("4-dream-morph", None),
        ("5-fix", lambda: emulator.invoke("fix", {"photo": Upload("blurry.jpg", blurred_photo(), "image/jpeg")})),
        ("6-bad-upload", lambda: emulator.invoke("fix", {"photo": Upload("notes.txt", b"not a photo", "text/plain")})),
    ]
    report, dream = [], None
    try:
        for step, action in steps:
            started = time.monotonic()
            if action is None:
                assert dream is not None
                record = await emulator.click(dream, next(c for c in dream.custom_ids if ":morph:" in c))
            else:
                record = await action()
            await record.wait(timeout=600)
            if step == "3-dream":
                dream = record
            report.append({"step": step, "acknowledged_s": round((record.acknowledged_at or started) - record.sent_at, 3),
                           "answered_s": round(time.monotonic() - started, 2),
                           "reply": record.content or " / ".join(record.ephemeral_messages),
                           "files": [str(p) for p in save(record, out, step)]})
    finally:
        await bot.close()
        await running
        await emulator.stop()
    return report


def main(out: Path, device: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(f"Starting the loopback Discord and the bot (models load first; this takes a few seconds)...")
    for row in asyncio.run(demo(out, device)):
        print(f"\n{row['step']}: acknowledged in {row['acknowledged_s']} s, answered in {row['answered_s']} s\n  {row['reply']}")
        for path in row["files"]:
            print(f"  saved {path}")
    print(f"\nAll replies are in {out.resolve()}")
