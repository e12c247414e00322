"""/healthz and /metrics through real HTTP against a running bot on the emulator; the log lines."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from bot.sandbox.demo import start_bot
from bot.sandbox.emulator import DiscordEmulator, Upload
from bot.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_health_metrics_and_logs(real_weights, caplog):
    caplog.set_level(logging.INFO)
    emulator = DiscordEmulator()
    await emulator.start()
    port = free_port()
    settings = Settings(token=emulator.token, discord_api_base=emulator.api_base, attachment_hosts=(emulator.cdn_host,),
                        device="cpu", cooldown_s=0, http_port=port)
    bot, running = await start_bot(emulator, settings)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):  # the gateway handshake and READY finish shortly after start
                async with http.get(f"{base}/healthz") as response:
                    report = await response.json()
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
            assert report == {**report, "ok": True, "gateway_connected": True, "pool_running": True, "models_loaded": True}
            assert report["models"] == ["doodle", "dream", "fix", "stylize"]

            good = await emulator.invoke("dream", {"count": 2, "seed": 4})
            bad = await emulator.invoke("fix", {"photo": Upload("notes.png", b"not an image at all", "image/png")}, user_id=2)
            helped = await emulator.invoke("help", user_id=3)
            for record in (good, bad, helped):
                await record.wait()
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
                metrics = await response.text()
            for line in ('easel_commands_total{command="dream",outcome="ok"} 1.0',
                         'easel_commands_total{command="fix",outcome="bad_upload"} 1.0',
                         'easel_errors_total{kind="bad_upload"} 1.0',
                         'easel_commands_total{command="help",outcome="ok"} 1.0',
                         'easel_model_seconds_count{task="dream"} 1.0',
                         'easel_batch_size_count{task="dream"} 1.0',
                         "easel_download_bytes_count 1.0",
                         "easel_queue_length 0.0"):
                assert line in metrics, line

            await bot.pool.close(0)
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503 and (await response.json())["pool_running"] is False
    finally:
        await bot.close()
        await running
        await emulator.stop()

    lines = [r.getMessage() for r in caplog.records if r.name == "easel.commands"]
    assert any("command=dream" in l and "user=1001" in l and f"guild={emulator.guild_id}" in l and "outcome=ok" in l
               and "queue_s=" in l and "model_s=" in l for l in lines), lines
    assert any("command=help" in l and "user=3" in l and "outcome=ok" in l for l in lines), lines
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert emulator.token not in everything
    assert "/attachments/" not in everything  # no attachment URLs (their query strings are credentials on Discord)
