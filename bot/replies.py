"""What the person sees: a private "thinking" response, queue position, progress, then the result, or one sentence.

Discord decides who sees the original response when it is first made, and a follow-up sent while
a deferred original is still loading becomes that original, with its visibility. So:

- a refusal before the defer (cooldown, per-user or per-server limit, not an image) is the
  initial response itself, ephemeral;
- otherwise the defer is ephemeral ("Easel is thinking…", only the asker sees it); queue position,
  progress (with the asker's Cancel button) and every later refusal or error are edits of it, so
  they reach that person alone;
- the result is public: the private original is first edited to DONE (resolving it, and taking the
  Cancel button away), and only then is the result sent as a follow-up, which is then its own,
  public message, with the asker's Delete button.

Every call goes through Discord's REST webhooks, so a gateway reconnect never loses a reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging

import discord

from models.jobs import Progress, Result

log = logging.getLogger("easel.replies")

WORKING = {"stylize": "🎨 Painting", "dream": "🧬 Dreaming up faces", "fix": "🔧 Restoring your photo", "doodle": "✍️ Writing"}
WAITING = "⏳"
DONE = "✅ Done: posted below for everyone."


def progress_text(task: str, progress: Progress) -> str:
    eta = f" (about {max(1, round(progress.eta_s))} s)" if progress.eta_s else ""
    if progress.state == "queued":
        if progress.position == 0:
            return f"{WAITING} You're next in line{eta}."
        ahead = "1 request" if progress.position == 1 else f"{progress.position} requests"
        return f"{WAITING} Waiting in line: {ahead} ahead of you{eta}."
    percent = f" {round(progress.fraction * 100)}%" if 0 < progress.fraction < 1 else ""
    return f"{WORKING.get(task, '⚙️ Working')}…{percent}"


def is_interim(text: str) -> bool:
    """A private line that is a step on the way (queue, progress, "posted below"), not an outcome."""
    return text == DONE or text.startswith((WAITING, "⚙️", *WORKING.values()))


class ProgressReporter:
    """Edits the deferred response with the latest progress, at most once per `interval`.

    The pool calls `update` for every change; only the newest text is sent, and `stop` waits for
    an edit in flight so a late progress edit can never overwrite the result.
    """

    def __init__(self, interaction: discord.Interaction, task: str, view: discord.ui.View | None = None,
                 interval: float = 1.0) -> None:
        """`view`: the buttons every progress edit carries (the asker's Cancel)."""
        self.interaction, self.task, self.view, self.interval = interaction, task, view, interval
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
                await self.interaction.edit_original_response(content=text, view=self.view)
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


async def defer(interaction: discord.Interaction) -> None:
    """Acknowledge at once with a private "thinking" message: progress and errors will be edits of it."""
    await interaction.response.defer(ephemeral=True, thinking=True)


async def send_result(interaction: discord.Interaction, result: Result, text: str, view: discord.ui.View | None) -> None:
    """The result in public. The private original is resolved first: a follow-up sent while it still
    loads would become it, private. If the upload then fails, the caller's error edit replaces DONE."""
    await interaction.edit_original_response(content=DONE, view=None)
    await interaction.followup.send(text, files=result_files(result), view=view if view is not None else discord.utils.MISSING)


async def send_error(interaction: discord.Interaction, text: str) -> None:
    """One sentence only the asker sees: the initial response if there is none yet, else the private original, edited."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
        else:
            await interaction.edit_original_response(content=text, attachments=[], view=None)
    except Exception as error:  # token expired, Discord down, or shutting down: nothing more we can tell them
        log.warning("could not deliver an error message (%r): %s", error, text)
