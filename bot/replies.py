"""What the person sees: the deferred response, queue position, progress, the result, or one sentence.

Every edit goes to the interaction's original response through Discord's REST webhooks, so a
gateway reconnect never loses a reply. Errors are ephemeral: only the person who asked sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import discord

from models.jobs import Progress, Result

log = logging.getLogger("easel.replies")

WORKING = {"stylize": "🎨 Painting", "dream": "🧬 Dreaming up faces", "fix": "🔧 Restoring your photo"}


def progress_text(task: str, progress: Progress) -> str:
    eta = f" (about {max(1, round(progress.eta_s))} s)" if progress.eta_s else ""
    if progress.state == "queued":
        if progress.position == 0:
            return f"⏳ You're next in line{eta}."
        ahead = "1 request" if progress.position == 1 else f"{progress.position} requests"
        return f"⏳ Waiting in line: {ahead} ahead of you{eta}."
    percent = f" {round(progress.fraction * 100)}%" if 0 < progress.fraction < 1 else ""
    return f"{WORKING.get(task, '⚙️ Working')}…{percent}"


class ProgressReporter:
    """Edits the deferred response with the latest progress, at most once per `interval`.

    The pool calls `update` for every change; only the newest text is sent, and `stop` waits for
    an edit in flight so a late progress edit can never overwrite the result.
    """

    def __init__(self, interaction: discord.Interaction, task: str, interval: float = 1.0) -> None:
        self.interaction, self.task, self.interval = interaction, task, interval
        self.latest: str | None = None
        self.sent: str | None = None
        self.sender: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()  # clear while an edit is in flight
        self.idle.set()
        self.stopped = False

    def update(self, progress: Progress) -> None:
        self.latest = progress_text(self.task, progress)
        if not self.stopped and (self.sender is None or self.sender.done()):
            self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        while not self.stopped and self.latest != self.sent:
            text = self.sent = self.latest
            self.idle.clear()
            try:
                await self.interaction.edit_original_response(content=text)
            except discord.HTTPException as error:
                log.warning("progress edit failed: %s", error)
                return
            finally:
                self.idle.set()
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """No more progress: let an edit in flight land (so it cannot overwrite the result), skip the rest."""
        self.stopped = True
        if self.sender is None or self.sender.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), 10)
        self.sender.cancel()


def result_files(result: Result) -> list[discord.File]:
    return [discord.File(io.BytesIO(f.data), filename=f.name) for f in result.files]


async def send_result(interaction: discord.Interaction, result: Result, text: str, view: discord.ui.View | None) -> None:
    await interaction.edit_original_response(content=text, attachments=result_files(result), view=view)


async def send_error(interaction: discord.Interaction, text: str) -> None:
    """One ephemeral sentence, whether or not the interaction was already deferred publicly."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)
    except Exception as error:  # token expired, Discord down, or shutting down: nothing more we can tell them
        log.warning("could not deliver an error message (%r): %s", error, text)
