"""One command, from interaction to reply: limits, defer, download, pool, result, and the log line.

    interaction -> Request (validated options + attachments) -> Job -> pool -> Result -> reply

Everything a person can cause ends as one sentence only they see; anything else is logged with a
short reference id that the person is given, and the bot carries on. Who sees what: bot/replies.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import discord

from bot import replies
from bot.attachments import DownloadError, download
from bot.controls import cancel_view, with_delete
from bot.markdown import escape
from bot.limits import Limiter
from bot.metrics import Metrics
from bot.quota import Quota
from bot.settings import Settings
from models.errors import BusyError, EaselError
from models.jobs import Job, Result
from models.pool import Pool

log = logging.getLogger("easel.commands")

TOKEN_LIFETIME_S = 15 * 60
TOKEN_MARGIN_S = 20  # leave time to upload the result before the interaction token expires


@dataclass
class Request:
    """A validated command: what to run and how to present it."""

    command: str
    task: str
    options: Mapping[str, Any]
    uploads: Mapping[str, discord.Attachment] = field(default_factory=dict)
    describe: Callable[[Result], str] = lambda result: ""
    view: Callable[[Result], discord.ui.View | None] = lambda result: None


def token_seconds_left(interaction: discord.Interaction) -> float:
    age = (discord.utils.utcnow() - interaction.created_at).total_seconds()
    return TOKEN_LIFETIME_S - age - TOKEN_MARGIN_S


class Runner:
    def __init__(self, pool: Pool, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.pool, self.settings, self.session, self.metrics = pool, settings, session, metrics
        self.limiter = Limiter(settings.cooldown_s, settings.max_jobs_per_user)
        self.quota = Quota(settings.quota_path, settings.daily_quota)
        self.active: set[asyncio.Task[None]] = set()  # commands being handled, replies included

    async def drain(self, timeout: float) -> None:
        """Wait for commands in flight to send their replies (before the HTTP session closes)."""
        if self.active:
            await asyncio.wait(set(self.active), timeout=timeout)

    def _precheck(self, request: Request) -> None:
        """Checks that need no download, so a wrong file is refused before we even defer."""
        for attachment in request.uploads.values():
            if attachment.content_type and not attachment.content_type.startswith("image/"):
                raise DownloadError(f"{escape(attachment.filename)} is not an image.")
            if attachment.size > self.settings.download_limit:
                raise DownloadError(f"{escape(attachment.filename)} is {attachment.size / 2**20:.1f} MB; "
                                    f"the limit is {self.settings.download_limit_mb:.0f} MB.")

    async def handle(self, interaction: discord.Interaction, request: Request) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.active.add(task)
        try:
            await self._handle(interaction, request)
        finally:
            self.active.discard(task)

    async def _handle(self, interaction: discord.Interaction, request: Request) -> None:
        started = time.monotonic()
        user, guild = interaction.user.id, interaction.guild_id
        outcome, info, slot, hold = "ok", {}, None, self.quota.hold(user)
        try:
            self.quota.check(user)
            slot = self.limiter.acquire(user)
            self._precheck(request)
            await replies.defer(interaction)
            result = await self._run(interaction, request, hold.reserve)
            info = dict(result.info)
            await replies.send_result(interaction, result, request.describe(result), with_delete(request.view(result), user))
            hold.deliver()  # only a result the person got counts against their quota
        except EaselError as error:
            outcome = error.outcome
            await replies.send_error(interaction, str(error))
        except Exception:
            outcome = "error"
            reference = uuid.uuid4().hex[:8]
            log.exception("%s failed for user %s in guild %s (reference %s)", request.command, user, guild, reference)
            await replies.send_error(interaction, f"Sorry, something went wrong on my side (reference {reference}).")
        finally:
            hold.release()  # a no-op once delivered
            if slot is not None:
                slot.release()
            self._record(request, user, guild, outcome, started, info)

    async def _run(self, interaction: discord.Interaction, request: Request, admit: Callable[[float], None]) -> Result:
        seconds_left = token_seconds_left(interaction)
        if seconds_left <= 0:
            raise BusyError("Discord gives me 15 minutes to answer and this request arrived too late to finish in time; "
                            "please run it again.")
        images = {}
        for name, attachment in request.uploads.items():
            images[name] = await download(attachment.url, session=self.session, allowed_hosts=self.settings.attachment_hosts,
                                          max_bytes=self.settings.download_limit, timeout_s=self.settings.download_timeout_s)
            self.metrics.download_bytes.observe(len(images[name]))
        max_bytes = min(self.settings.upload_limit, interaction.filesize_limit or self.settings.upload_limit)
        job = Job(request.task, dict(request.options), images, max_bytes=max_bytes,
                  user=str(interaction.user.id), guild=str(interaction.guild_id or ""))
        progress = replies.ProgressReporter(interaction, request.task, cancel_view(interaction.user.id, job.id))
        try:
            return await self.pool.submit(job, on_progress=progress.update, timeout=token_seconds_left(interaction), admit=admit)
        finally:
            await progress.stop()

    def answered_at_once(self, interaction: discord.Interaction, command: str, outcome: str = "ok") -> None:
        """The log line and metrics of a command answered without the pool (/help, /status, a refused option)."""
        self._record(Request(command, "", {}), interaction.user.id, interaction.guild_id, outcome, time.monotonic(), {})

    def _record(self, request: Request, user: int, guild: int | None, outcome: str, started: float, info: dict) -> None:
        """One log line and the metrics for a finished command (never the token, never attachment URLs)."""
        seconds = time.monotonic() - started
        self.metrics.commands.labels(request.command, outcome).inc()
        if outcome not in ("ok", "limited", "quota", "cancelled"):
            self.metrics.errors.labels(outcome).inc()
        if "model_s" in info:
            self.metrics.model_seconds.labels(request.task).observe(info["model_s"])
            self.metrics.batch_size.labels(request.task).observe(info.get("batch", 1))
        log.info("command=%s user=%s guild=%s options=%s outcome=%s queue_s=%s model_s=%s total_s=%.2f",
                 request.command, user, guild, dict(request.options), outcome, info.get("queue_s", "-"),
                 info.get("model_s", "-"), seconds)

