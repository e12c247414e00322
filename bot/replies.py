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

Exactly once when Discord stumbles: an answer can be lost after Discord processed the request
(a 502, a reset connection). Edits are safe to repeat, and discord.py repeats them. Creating a
response or a message is not: a lost defer is looked up (the private original exists, or its
repeat is refused with 40060) instead of failing the command, and the public result is posted
with no automatic repeat, then looked for in the channel before it is ever posted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import discord
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

from models.errors import EaselError
from models.jobs import Progress, Result

log = logging.getLogger("easel.replies")

WORKING = {"stylize": "🎨 Painting", "dream": "🧬 Dreaming up faces", "fix": "🔧 Restoring your photo", "doodle": "✍️ Writing"}
WAITING = "⏳"
DONE = "✅ Done: posted below for everyone."
UNSURE = ("Discord lost track of your result while I was posting it, and I can't see this channel to check; "
          "if it isn't above, please run the command again.")
ALREADY_ACKNOWLEDGED = 40060
ACKNOWLEDGED = "easel:acknowledged"  # in Interaction.extras: the defer landed, though discord.py never heard
POST_ATTEMPTS = 3
LOOK_BACK = 50  # channel messages searched for a result whose answer was lost


class AnswerLost(Exception):
    """Discord may have done what was asked, but its answer never arrived (a 5xx, a broken connection)."""


class ResultUncertain(EaselError):
    """The result may or may not be public, and the channel cannot be read to find out."""

    outcome = "uncertain"


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


class _Unretried:
    """An aiohttp session whose lost answers raise AnswerLost, before discord.py's retry loop sees them."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, *args: Any, **kwargs: Any) -> _Answer:
        return _Answer(self._session.request(*args, **kwargs))


class _Answer:
    def __init__(self, pending: Any) -> None:
        self._pending = pending  # aiohttp's request context manager

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            response = await self._pending.__aenter__()
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise AnswerLost(f"no answer: {error!r}") from error
        if response.status >= 500:
            await self._pending.__aexit__(None, None, None)
            raise AnswerLost(f"HTTP {response.status}")
        return response

    async def __aexit__(self, *exc: object) -> None:
        await self._pending.__aexit__(*exc)


class _OneAttempt(AsyncWebhookAdapter):
    """discord.py's interaction and webhook calls, sent once: it repeats a request whose answer was
    lost, which for a follow-up posts a processed message twice. Rate limits (429) still wait and retry."""

    async def request(self, route: Any, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        return await super().request(route, _Unretried(session), **kwargs)  # type: ignore[arg-type]


_ONE_ATTEMPT = _OneAttempt()


@contextlib.contextmanager
def _once() -> Iterator[None]:
    """Inside: this task's interaction and webhook calls are sent once (discord.py reads its adapter from a ContextVar)."""
    token = async_context.set(_ONE_ATTEMPT)
    try:
        yield
    finally:
        async_context.reset(token)


def acknowledged(interaction: discord.Interaction) -> bool:
    return interaction.response.is_done() or bool(interaction.extras.get(ACKNOWLEDGED))


async def defer(interaction: discord.Interaction) -> None:
    """Acknowledge at once with a private "thinking" message: progress and errors will be edits of it.

    If the answer is lost, the private original tells whether Discord took the defer; only if it
    did not is it sent again (a repeat refused with 40060 means an earlier one had landed)."""
    async def send() -> None:
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as error:
            if error.code != ALREADY_ACKNOWLEDGED:
                raise

    await _exactly_once("a defer", send, lambda: _has_original(interaction))
    interaction.extras[ACKNOWLEDGED] = True


async def _has_original(interaction: discord.Interaction) -> bool:
    try:
        await interaction.original_response()
    except discord.NotFound:
        return False
    return True


async def send_result(interaction: discord.Interaction, result: Result, text: str, view: discord.ui.View | None) -> None:
    """The result in public, exactly once. The private original is resolved first: a follow-up sent
    while it still loads would become it, private. If the upload then fails, the caller's error edit
    replaces DONE; if its answer is lost, the channel says whether it landed before it is sent again."""
    await interaction.edit_original_response(content=DONE, view=None)

    async def send() -> None:
        await interaction.followup.send(text, files=result_files(result), view=view if view is not None else discord.utils.MISSING)

    await _exactly_once("a result's post", send, lambda: _posted(interaction))


async def _exactly_once(what: str, send: Callable[[], Awaitable[None]], landed: Callable[[], Awaitable[bool | None]]) -> None:
    """`send()` with discord.py's automatic repeat off; after a lost answer, `landed()` says whether
    Discord did it after all (None: it cannot tell) before it is sent again, at most POST_ATTEMPTS times."""
    for attempt in range(1, POST_ATTEMPTS + 1):
        try:
            with _once():
                await send()
            return
        except AnswerLost as lost:
            log.warning("the answer to %s was lost (%s, attempt %d): looking for it", what, lost, attempt)
            found = await landed()
            if found:
                return
            if found is None:
                raise ResultUncertain(UNSURE) from None
    raise AnswerLost(f"the answer to {what} was lost {POST_ATTEMPTS} times")


async def _posted(interaction: discord.Interaction) -> bool | None:
    """Whether a message answering this interaction is in its channel; None when the bot may not read it."""
    allowed = interaction.app_permissions
    channel = interaction.channel
    if not (allowed.view_channel and allowed.read_message_history) or not isinstance(channel, discord.abc.Messageable):
        return None
    try:
        async for message in channel.history(limit=LOOK_BACK):
            if message.interaction_metadata is not None and message.interaction_metadata.id == interaction.id:
                return True
    except discord.HTTPException as error:
        log.warning("could not read the channel to find a result: %s", error)
        return None
    return False


async def send_error(interaction: discord.Interaction, text: str) -> None:
    """One sentence only the asker sees: the initial response if there is none yet, else the private original, edited."""
    try:
        if not acknowledged(interaction):
            await interaction.response.send_message(text, ephemeral=True)
        else:
            await interaction.edit_original_response(content=text, attachments=[], view=None)
    except Exception as error:  # token expired, Discord down, or shutting down: nothing more we can tell them
        log.warning("could not deliver an error message (%r): %s", error, text)
