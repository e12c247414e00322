"""/healthz and /metrics over HTTP (aiohttp), bound to localhost unless configured otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from bot.app import EaselBot


def health(bot: EaselBot) -> dict[str, Any]:
    """Healthy when the gateway is connected, the pool runs, and every enabled model is loaded
    (with EASEL_PRELOAD=false models load on first use, so their absence is no fault)."""
    status = bot.pool.status()
    wanted = set(bot.pool.tasks) if bot.pool.config.preload else set()
    loaded = [sorted(d["models"]) for d in status["devices"]]
    checks = {
        "gateway_connected": bot.connected(),
        "pool_running": bool(status["started"] and not status["closing"]),
        "models_loaded": bool(loaded) and all(set(m) >= wanted for m in loaded),
    }
    return {"ok": all(checks.values()), **checks, "queued": status["queued"], "running": status["running"],
            "devices": [d["device"] for d in status["devices"]], "models": loaded[0] if loaded else []}


class HealthServer:
    def __init__(self, bot: EaselBot, host: str, port: int) -> None:
        self.bot, self.host, self.port = bot, host, port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        report = health(self.bot)
        return web.json_response(report, status=200 if report["ok"] else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.bot.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
