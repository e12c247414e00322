"""A burst of 200 people in one server, through the real bot and the loopback Discord; prints JSON.

    python -m bot.sandbox.burst [--device auto|cpu|cuda] [--people 200]

100 `/dream count:4`, 60 `/stylize size:512` and 40 `/fix` of a 768 px photo, each from a different
person, all sent at once, with the default settings. The emulator enforces Discord's rules (3 s to
acknowledge, 15-minute tokens, rate limits), so a late acknowledgement shows up as a person who saw
nothing, and every 429 the bot met is counted.
For each person it records what they ended with: their result in public, one sentence only they
see (and which), or nothing / a message left loading (lost).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import statistics
import time
from collections import Counter
from typing import Any

from PIL import Image

from bot.replies import DONE
from bot.sandbox.demo import start_bot
from bot.sandbox.emulator import DiscordEmulator, Record, Upload
from bot.settings import Settings
from models import samples
from models.images import log_stream

MIX = (("dream", 100), ("stylize", 60), ("fix", 40))


def photo_768() -> bytes:
    image = Image.open(io.BytesIO(samples.photo("coffee"))).convert("RGB")
    image = image.resize((768, round(768 * image.height / image.width)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def commands(people: int) -> list[tuple[str, dict[str, Any]]]:
    """The mix, scaled to `people` and interleaved, as a crowd's commands arrive."""
    total = sum(n for _, n in MIX)
    counts = {name: round(n * people / total) for name, n in MIX}
    counts["dream"] += people - sum(counts.values())
    fix_photo, content, style = photo_768(), samples.photo("astronaut"), samples.painting()
    options = {"dream": {"count": 4},
               "stylize": {"content": Upload("astronaut.jpg", content, "image/jpeg"), "style": Upload("painting.png", style),
                           "size": 512},
               "fix": {"photo": Upload("photo.jpg", fix_photo, "image/jpeg")}}
    spread = sorted((j / counts[name], name) for name, _ in MIX for j in range(counts[name]))  # each kind evenly
    return [(name, options[name]) for _, name in spread]


def outcome(record: Record) -> tuple[str, str]:
    """('served' | 'told' | 'lost', what the person saw)."""
    if record.loading or not record.visible():
        return "lost", "nothing" if not record.loading else "a message left loading"
    if len(record.public) == 1 and record.files and record.ephemeral_messages == [DONE]:
        return "served", record.content
    if not record.public and len(record.ephemeral_messages) == 1:
        return "told", record.ephemeral_messages[0]
    return "lost", record.summary()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def burst(people: int, device: str, timeout_s: float) -> dict[str, Any]:
    emulator = DiscordEmulator()
    await emulator.start()
    settings = Settings(token=emulator.token, discord_api_base=emulator.api_base, attachment_hosts=(emulator.cdn_host,),
                        device=device)
    bot, running = await start_bot(emulator, settings)
    try:
        crowd = commands(people)
        started = time.monotonic()
        records = await asyncio.gather(*(emulator.invoke(name, opts, user_id=10_000 + i) for i, (name, opts) in enumerate(crowd)))
        await asyncio.gather(*(r.wait(timeout=timeout_s) for r in records), return_exceptions=True)
        wall_s = time.monotonic() - started
    finally:
        await bot.close()
        await running
        await emulator.stop()
    acks = [r.acknowledged_at - r.sent_at for r in records if r.acknowledged_at is not None]
    kinds: dict[str, Counter[str]] = {"served": Counter(), "told": Counter(), "lost": Counter()}
    answered: dict[str, list[float]] = {}
    for (name, _), record in zip(crowd, records):
        kind, seen = outcome(record)
        kinds[kind][name if kind == "served" else seen] += 1
        if kind == "served":
            answered.setdefault(name, []).append(record.answered_at - record.sent_at)
    return {
        "people": people, "device": device, "settings": {"max_jobs_per_guild": settings.max_jobs_per_guild,
                                                         "max_jobs_per_user": settings.max_jobs_per_user,
                                                         "max_queue": settings.max_queue, "cooldown_s": settings.cooldown_s},
        "acknowledged": len(acks), "acknowledged_within_3s": sum(a <= 3.0 for a in acks),
        "ack_p50_s": round(percentile(acks, 0.5), 4), "ack_p99_s": round(percentile(acks, 0.99), 4),
        "ack_max_s": round(max(acks), 4),
        "served": sum(kinds["served"].values()), "served_by_command": dict(kinds["served"]),
        "served_answer_median_s": {k: round(statistics.median(v), 2) for k, v in answered.items()},
        "served_answer_max_s": {k: round(max(v), 2) for k, v in answered.items()},
        "told_privately": sum(kinds["told"].values()), "told": dict(kinds["told"]),
        "lost": sum(kinds["lost"].values()), "lost_detail": dict(kinds["lost"]),
        "rate_limited_429": emulator.rate_limited, "rate_limited_by_bucket": dict(emulator.rate_limited_buckets),
        "wall_s": round(wall_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting for answers after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=log_stream())
    print(json.dumps(asyncio.run(burst(args.people, args.device, args.timeout)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
