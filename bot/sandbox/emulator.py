"""A loopback Discord: the REST API, the gateway and the attachment CDN on 127.0.0.1.

It speaks Discord's documented payloads (API v10) closely enough for the real discord.py client:
login, gateway HELLO/IDENTIFY/READY/GUILD_CREATE, heartbeats, RESUME after a dropped
connection, sharding (a guild's events go to shard `(guild_id >> 22) % shard_count`, as
Discord routes them, DMs to shard 0; a wrong shard is refused with close code 4010 or 4011),
command sync, INTERACTION_CREATE for slash commands (attachments resolved and served from the
CDN; in a server or in a DM with the bot), autocomplete and button clicks, the interaction
callback and webhook endpoints a bot answers through (multipart uploads included), reading a
channel's messages and deleting one. Everything the bot sends is recorded per interaction, with
timestamps, for tests and for `easel demo`.

It is no kinder than Discord, since a lenient emulator hides lost answers:
- one initial response per interaction (40060), within 3 s of delivery (10062);
- a follow-up sent while the deferred original is still loading resolves that original and keeps
  the defer's visibility, whatever its own flags say;
- once the original is deleted, every webhook call on it answers 10008;
- the interaction token works for 15 minutes from the interaction's creation (then 50027);
- files over the context's `attachment_size_limit` are refused with 40005;
- a command is delivered only in the contexts it was declared for (`contexts`: a DM invocation of
  a guild-only command is refused, as Discord's client would not even offer it);
- only the person who ran a command sees its ephemeral messages, so only they can press their
  buttons (`click(..., message=...)` plays a crafted or stale client's press);
- an ephemeral message is no channel message: deleting it by channel and id answers 10008, and
  reading the channel's messages never lists it;
- every REST answer carries Discord's rate-limit headers; past a per-route bucket or the global
  50 requests/s (interaction endpoints are exempt from that one) the answer is a 429, as
  Discord's front end serves it, and the request is not processed (see `RateLimiter`);
- mentions in what the bot posts or edits ping as Discord resolves them: `allowed_mentions`
  (absent: users, roles and everyone), escapes and code spans, and the bot's MENTION_EVERYONE
  for @everyone, @here and roles (`Record.pings`);
- reading a guild channel's messages needs the bot's VIEW_CHANNEL (else 50001); without
  READ_MESSAGE_HISTORY the list is empty, as Discord documents (`bot_permissions`).
`lose_answer` plays a request Discord processed whose answer never arrived (a 502 from
Cloudflare, or a reset connection). Time rules read `clock`, so tests move time instead of
waiting for it; rate-limit windows run on `rate_clock` (real time by default), since the client
sleeps real time before it retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import math
import re
import secrets
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from aiohttp import WSMsgType, web
from PIL import Image

from bot.replies import is_interim

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL, LOADING = 1 << 6, 1 << 7
MEMBER_PERMISSIONS = 2248473465835073  # a plain member's, in the channel: no Manage Messages
VIEW_CHANNEL, MANAGE_MESSAGES, READ_MESSAGE_HISTORY, MENTION_EVERYONE = 1 << 10, 1 << 13, 1 << 16, 1 << 17
GUILD_CONTEXT, BOT_DM_CONTEXT = 0, 1
ATTACHMENT_OPTION = 11
ACK_WINDOW_S = 3.0
TOKEN_LIFETIME_S = 15 * 60
_counter = itertools.count()


def snowflake(age_s: float = 0.0) -> int:
    """A Discord id: milliseconds since Discord's epoch in the top bits, so created_at is now (minus age_s)."""
    return ((int((time.time() - age_s) * 1000) - DISCORD_EPOCH_MS) << 22) | (next(_counter) % (1 << 22))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def json_response(payload: Any, status: int = 200) -> web.Response:
    """discord.py parses a body as JSON only when Content-Type is exactly application/json."""
    return web.Response(body=json.dumps(payload).encode(), status=status, headers={"Content-Type": "application/json"})


def discord_error(code: int, errors: dict[str, Any] | None = None) -> web.Response:
    """Discord's JSON error body and HTTP status for the codes the emulator enforces (`errors`: 50035's details)."""
    status, message = DISCORD_ERRORS[code]
    return json_response({"message": message, "code": code, **({"errors": errors} if errors else {})}, status)


def invalid_field(name: str, code: str, message: str) -> web.Response:
    """50035 for one query or body field, with Discord's per-field detail."""
    return discord_error(50035, {name: {"_errors": [{"code": code, "message": message}]}})


DISCORD_ERRORS = {
    10003: (404, "Unknown Channel"),
    10008: (404, "Unknown Message"),
    10015: (404, "Unknown Webhook"),
    10062: (404, "Unknown interaction"),
    40005: (413, "Request entity too large"),
    40060: (400, "Interaction has already been acknowledged."),
    50001: (403, "Missing Access"),
    50027: (401, "Invalid Webhook Token"),
    50035: (400, "Invalid Form Body"),
}


# -- rate limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """A rate-limit bucket: `limit` requests per `window_s` seconds for each value of its routes' major parameter."""

    name: str
    limit: int
    window_s: float
    interaction: bool = False  # an interaction endpoint: exempt from the global limit

    @property
    def hash(self) -> str:
        """X-RateLimit-Bucket: opaque, and the same whatever the major parameter, as Discord's is."""
        return hashlib.sha256(self.name.encode()).hexdigest()[:32]


BUCKETS = {bucket.name: bucket for bucket in (
    Bucket("identity", 5, 5.0),
    Bucket("gateway", 5, 5.0),
    Bucket("commands", 5, 20.0),
    Bucket("interaction-callback", 5, 2.0, interaction=True),
    Bucket("interaction-webhook", 5, 2.0, interaction=True),
    Bucket("channel-messages", 5, 5.0),
    Bucket("delete-message", 5, 1.0),
    Bucket("delete-old-message", 3, 1.0),
)}
GLOBAL_BUCKET = Bucket("global", 50, 1.0)
YOUNG_MESSAGE_S = 10.0  # deleting a message at least this old falls in the stricter bucket


@dataclass
class Window:
    """One bucket's current window for one major parameter; like Discord's, it starts at its first request."""

    resets_at: float
    count: int = 0


class RateLimiter:
    """Discord's REST rate limits. Discord publishes only the global figure; the rest are what people
    measured against it (threads in discord/discord-api-docs unless named):

    | bucket               | routes                                             | limit  | per                    | why |
    |----------------------|----------------------------------------------------|--------|------------------------|-----|
    | global               | every REST route but the interaction endpoints     | 50/1 s | bot token (else IP)    | documented |
    | interaction-callback | POST /interactions/{id}/{token}/callback           | 5/2 s  | interaction            | "identical to webhook rate limits", keyed per interaction (#2701) |
    | interaction-webhook  | POST /webhooks/{app}/{token}, GET/PATCH/DELETE @original, shared | 5/2 s | interaction token | 5/2 s per interaction measured (#2701); webhooks 5/2 s (#367) |
    | channel-messages     | GET /channels/{id}/messages                        | 5/5 s  | channel                | 5 reported (#8161); 5/5 s per resource group (purple-discord #378) |
    | delete-message       | DELETE /channels/{id}/messages/{id}, an id under 10 s old | 5/1 s | channel        | #8330 |
    | delete-old-message   | the same for an id 10 s old or more (even unknown: #8330 saw the young bucket) | 3/1 s | channel | #1295, #8330, eris #1173 |
    | commands             | PUT /applications/{app}[/guilds/{guild}]/commands  | 5/20 s | guild (global: app)    | about 5 writes/20 s observed (hermes-agent #16713) |
    | identity, gateway    | GET /users/@me, /oauth2/applications/@me; GET /gateway[/bot] | 5/5 s | bot | nothing published: the common 5/5 s |

    Not modelled: the 30/60 s per channel some report on webhook posts (unconfirmed for interactions,
    #367, #2701), 30/120 s for deleting messages over two weeks old (emulated messages never are),
    and the 10,000 invalid requests per 10 minutes that earn a Cloudflare ban.
    Every request counts against the global limit, a refused one too; a refused request is not processed.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.windows: dict[tuple[str, str], Window] = {}
        self.refused: Counter[str] = Counter()  # 429s served, by bucket name ("global" for the global limit)

    def admit(self, bucket: Bucket, major: str, caller: str) -> dict[str, str] | web.Response:
        """Count one request: its X-RateLimit headers, or Discord's 429 (then the request must not be processed)."""
        now = self.clock()
        if not bucket.interaction:
            everything = self._window(GLOBAL_BUCKET, caller, now)
            if everything.count >= GLOBAL_BUCKET.limit:
                return self._refuse(GLOBAL_BUCKET, everything, now, self._peek(bucket, major, now))
            everything.count += 1
        window = self._window(bucket, major, now)
        if window.count >= bucket.limit:
            return self._refuse(bucket, window, now, rate_headers(bucket, window, now))
        window.count += 1
        return rate_headers(bucket, window, now)

    def _window(self, bucket: Bucket, major: str, now: float) -> Window:
        key = (bucket.name, major)
        window = self.windows.get(key)
        if window is None or now >= window.resets_at:
            window = self.windows[key] = Window(now + bucket.window_s)
        return window

    def _peek(self, bucket: Bucket, major: str, now: float) -> dict[str, str]:
        """A bucket's headers without counting a request (a 429 from the global limit carries them too)."""
        window = self.windows.get((bucket.name, major))
        return rate_headers(bucket, window if window is not None and now < window.resets_at else Window(now + bucket.window_s), now)

    def _refuse(self, bucket: Bucket, window: Window, now: float, headers: dict[str, str]) -> web.Response:
        """The 429 as Discord serves it; without `Via` discord.py takes it for a Cloudflare ban and gives up."""
        self.refused[bucket.name] += 1
        retry_after = _ceil_ms(window.resets_at - now)
        is_global = bucket is GLOBAL_BUCKET
        response = json_response({"message": "You are being rate limited.", "retry_after": retry_after, "global": is_global}, 429)
        response.headers.update(headers)
        response.headers.update({"Retry-After": str(math.ceil(retry_after)), "X-RateLimit-Scope": "global" if is_global else "user",
                                 "Via": "1.1 google"})
        if is_global:
            response.headers["X-RateLimit-Global"] = "true"
        return response


def rate_headers(bucket: Bucket, window: Window, now: float) -> dict[str, str]:
    reset_after = _ceil_ms(window.resets_at - now)
    return {"X-RateLimit-Limit": str(bucket.limit), "X-RateLimit-Remaining": str(max(bucket.limit - window.count, 0)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}", "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket.hash}


def _ceil_ms(seconds: float) -> float:
    """Discord's millisecond precision, never rounding a wait down to nothing."""
    return max(math.ceil(seconds * 1000) / 1000, 0.001)


def major_parameter(match: Mapping[str, str]) -> str:
    """The route's top-level resource, which Discord keys buckets on: a channel, a guild, or a webhook
    (an interaction) with its token."""
    for keys in (("channel",), ("guild",), ("app", "token"), ("iid", "token")):
        if all(key in match for key in keys):
            return "/".join(match[key] for key in keys)
    return ""


def message_age_s(message_id: str) -> float:
    """How old a message id says it is (0 for what is no id: Discord puts unknown messages in the young bucket)."""
    if not message_id.isdigit():
        return 0.0
    return time.time() - ((int(message_id) >> 22) + DISCORD_EPOCH_MS) / 1000


# -- faults ----------------------------------------------------------------------------------------

Losable = Literal["callback", "followup", "edit_original", "get_original", "delete_original", "delete_message",
                  "channel_messages"]
LossKind = Literal["502", "reset"]
CLOUDFLARE_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
                  b"<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n")


@dataclass(frozen=True)
class RestRoute:
    """What Discord's front end knows of a REST route: its bucket, and its name for `lose_answer`."""

    bucket: Bucket
    losable: Losable | None = None


@dataclass(frozen=True)
class Fault:
    """An answer lost after its request was processed: what the bot never heard."""

    route: Losable
    how: LossKind
    status: int  # the answer that was lost
    at: float  # on the emulator's clock


def lost(request: web.Request, how: LossKind) -> web.Response:
    """Cloudflare's 502 page instead of the answer; or the connection reset (RST) before any answer, in which
    case the response returned is never sent."""
    if how == "reset" and request.transport is not None:
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
    return web.Response(status=502, body=CLOUDFLARE_502, headers={"Content-Type": "text/html"})


# -- mentions --------------------------------------------------------------------------------------

# Scanned left to right, as Discord's markdown reads: an escape or a code span hides what it covers.
MARKUP = re.compile(r"""
    \\[^0-9A-Za-z\s]            # an escaped character is shown as typed
  | (`+)[\s\S]*?[^`]\1(?!`)     # inline code and code blocks: shown as typed
  | <@!?(?P<user>\d+)>
  | <@&(?P<role>\d+)>
  | @(?P<everyone>everyone|here)
""", re.VERBOSE)
PingKind = Literal["user", "role", "everyone", "here"]


@dataclass(frozen=True)
class Ping:
    """Whom one message notified: a user or a role (by id), or the channel (`everyone`, `here`)."""

    message_id: str
    kind: PingKind
    id: int | None = None


@dataclass(frozen=True)
class Mentions:
    """What a message's content pings once `allowed_mentions` and the author's permissions have had their say."""

    users: tuple[int, ...] = ()
    roles: tuple[int, ...] = ()
    everyone: tuple[Literal["everyone", "here"], ...] = ()

    def pings(self, message_id: str) -> list[Ping]:
        return ([Ping(message_id, "user", u) for u in self.users] + [Ping(message_id, "role", r) for r in self.roles]
                + [Ping(message_id, kind) for kind in self.everyone])


def resolve_mentions(content: str, allowed: Mapping[str, Any] | None, *, in_guild: bool, may_mention_everyone: bool) -> Mentions:
    """Discord's rules: without `allowed_mentions` users, roles and everyone parse; with it only its `parse`
    kinds and listed ids. @everyone, @here and (the emulator's roles being unmentionable) roles need the
    author's MENTION_EVERYONE, which interaction responses take from the bot; none of them exist in a DM."""
    parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse") or [])
    listed_users = {str(u) for u in (allowed or {}).get("users") or []}
    listed_roles = {str(r) for r in (allowed or {}).get("roles") or []}
    server_wide = in_guild and may_mention_everyone
    users, roles, everyone = [], [], []
    for token in MARKUP.finditer(content):
        if (user := token["user"]) and ("users" in parse or user in listed_users):
            users.append(int(user))
        elif (role := token["role"]) and server_wide and ("roles" in parse or role in listed_roles):
            roles.append(int(role))
        elif token["everyone"] and server_wide and "everyone" in parse:
            everyone.append(token["everyone"])
    return Mentions(tuple(dict.fromkeys(users)), tuple(dict.fromkeys(roles)), tuple(dict.fromkeys(everyone)))


def mentions_conflict(data: Mapping[str, Any]) -> web.Response | None:
    """Discord refuses allowed_mentions that both parse a kind and list ids of it."""
    allowed = data.get("allowed_mentions") or {}
    for kind in ("users", "roles"):
        if kind in (allowed.get("parse") or []) and allowed.get(kind):
            return invalid_field("allowed_mentions", "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                                 f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.')
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height as Discord reports them, or None for what it cannot size (then it omits both)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - a crafted file can fail in any of Pillow's parsers
        return None


@dataclass(frozen=True)
class Upload:
    """A file a test person attaches to a command; declared_size lets a test lie like a bad client."""

    filename: str
    data: bytes
    content_type: str | None = "image/png"
    declared_size: int | None = None


@dataclass
class Session:
    """One gateway connection's session: which shard it is, and its events for RESUME replay."""

    ws: web.WebSocketResponse
    shard: tuple[int, int]  # [shard_id, shard_count] as identified
    id: str = field(default_factory=lambda: secrets.token_hex(16))
    sequence: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def owns(self, guild_id: int | None) -> bool:
        """Discord's routing: a guild's events to shard (guild_id >> 22) % count; DMs to shard 0."""
        shard_id, count = self.shard
        return shard_id == (0 if guild_id is None else (guild_id >> 22) % count)


@dataclass
class Record:
    """Everything the bot did with one interaction, and what the person who started it sees.

    Times (sent_at, created_at, acknowledged_at, answered_at, edits) are on the emulator's clock.
    """

    id: int
    token: str
    payload: dict[str, Any]
    sent_at: float
    created_at: float  # the token's 15 minutes count from here (earlier than sent_at for a late delivery)
    acknowledged_at: float | None = None
    answered_at: float | None = None  # when answered() first held
    callback_type: int | None = None
    choices: list[dict[str, Any]] | None = None  # autocomplete answers
    original: dict[str, Any] | None = None
    original_files: dict[str, bytes] = field(default_factory=dict)
    edits: list[tuple[float, str]] = field(default_factory=list)  # (time, content) of each edit of the original
    followups: list[dict[str, Any]] = field(default_factory=list)
    followup_files: list[dict[str, bytes]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)  # follow-ups deleted from the channel
    deleted: bool = False
    pings: list[Ping] = field(default_factory=list)  # everyone its public messages notified, edits included
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def loading(self) -> bool:
        """The person still sees "… is thinking"."""
        return self.original is not None and not self.deleted and bool(self.original["flags"] & LOADING)

    def visible(self) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
        """(message, files) the person can see now: the original once resolved and not deleted, then the follow-ups."""
        shown = list(zip(self.followups, self.followup_files))
        if self.original is not None and not self.deleted and not self.loading:
            shown.insert(0, (self.original, self.original_files))
        return shown

    @property
    def channel_messages(self) -> list[dict[str, Any]]:
        """Its messages in the channel: the original (loading or not) unless deleted, and the follow-ups, less
        the ephemeral ones."""
        messages = ([self.original] if self.original is not None and not self.deleted else []) + self.followups
        return [m for m in messages if not m["flags"] & EPHEMERAL]

    @property
    def public(self) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
        """What everyone in the channel sees."""
        return [(m, f) for m, f in self.visible() if not m["flags"] & EPHEMERAL]

    @property
    def ephemeral_messages(self) -> list[str]:
        """The texts only the person who asked sees."""
        return [m["content"] for m, _ in self.visible() if m["flags"] & EPHEMERAL]

    @property
    def files(self) -> dict[str, bytes]:
        return {name: data for _, files in self.public for name, data in files.items()}

    @property
    def content(self) -> str:
        return "\n".join(m["content"] for m, _ in self.public)

    @property
    def components(self) -> list[dict[str, Any]]:
        return [row for m, _ in self.public for row in m.get("components", [])]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c]

    @property
    def private_custom_ids(self) -> list[str]:
        """The buttons on the messages only the asker sees (their Cancel button while waiting)."""
        return [c["custom_id"] for m, _ in self.visible() if m["flags"] & EPHEMERAL
                for row in m.get("components", []) for c in row.get("components", []) if "custom_id" in c]

    @property
    def asker(self) -> int:
        return int(_user_of(self.payload)["id"])

    def message_with(self, custom_id: str) -> dict[str, Any]:
        """The visible message carrying a button (for a click on it)."""
        for message, _ in self.visible():
            if any(c.get("custom_id") == custom_id for row in message.get("components", []) for c in row.get("components", [])):
                return message
        raise KeyError(f"no button {custom_id!r} on a message of this interaction")

    def answered(self) -> bool:
        """The person has their outcome: a message with files, or any text that is not a step on the way
        (progress, or the private "posted below" line before the public result), or autocomplete choices."""
        return self.choices is not None or any(files or not is_interim(m["content"]) for m, files in self.visible())

    async def wait(self, predicate: Callable[[Record], bool] = answered, timeout: float = 60.0) -> Record:
        """Wait (in real time, `timeout` as a safety net) until the predicate holds."""
        end = time.monotonic() + timeout
        while not predicate(self):
            self.changed.clear()
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"interaction {self.id} not answered in {timeout:.0f} s: {self.summary()}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass
        return self

    def summary(self) -> str:
        return (f"callback={self.callback_type} loading={self.loading} public={self.content!r} files={list(self.files)} "
                f"ephemeral={self.ephemeral_messages} deleted={self.deleted}")


class DiscordEmulator:
    def __init__(self, *, heartbeat_interval_ms: int = 41250, attachment_size_limit: int = 10 * 2**20,
                 clock: Callable[[], float] = time.monotonic, shard_count: int = 1, guilds: int = 1,
                 rate_clock: Callable[[], float] = time.monotonic, enforce_rate_limits: bool = True) -> None:
        """`shard_count` is what GET /gateway/bot recommends and IDENTIFY must use at least;
        `guilds` servers, ids spaced so that consecutive ones fall on consecutive shards.
        Rate limits are on, as on Discord; `enforce_rate_limits=False` only for a test that must not meet them."""
        self.clock = clock
        self.limiter = RateLimiter(rate_clock)
        self.enforce_rate_limits = enforce_rate_limits
        self.bot_permissions = MEMBER_PERMISSIONS  # the bot's in every guild channel: app_permissions, and what it may read
        self.faults: list[Fault] = []  # every answer lose_answer lost, in order
        self._losses: dict[Losable, deque[LossKind]] = {}
        self._routes: dict[web.AbstractRoute, RestRoute] = {}
        self.token = "emulated." + secrets.token_urlsafe(24)
        self.application_id = snowflake()
        self.guild_ids = [snowflake() + (k << 22) for k in range(guilds)]
        self.guild_id = self.guild_ids[0]
        self.channel_id = snowflake()
        self.shard_count = shard_count
        self.bot_user = {"id": str(self.application_id), "username": "Easel", "discriminator": "0", "global_name": None,
                         "avatar": None, "bot": True, "flags": 0, "public_flags": 0, "verified": True, "mfa_enabled": False}
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.attachment_size_limit = attachment_size_limit
        self.commands: dict[str, dict[str, Any]] = {}
        self.command_syncs = 0
        self.moderators: set[int] = set()  # people with Manage Messages in the channel
        self.dm_channels: dict[int, int] = {}  # person -> their DM channel with the bot
        self.records: dict[str, Record] = {}  # by interaction token
        self.cdn: dict[str, Upload] = {}
        self.cdn_delay_s = 0.0
        self.upload_delay_s = 0.0  # a slow link: uploads of result files take this long
        self.uploads_in_flight = 0
        self.sessions: dict[str, Session] = {}  # by session id; a RESUME finds its own
        self.sockets: list[web.WebSocketResponse] = []
        self.identified = asyncio.Event()  # some shard is ready (see ready_for for a given guild)
        self.shard_ready: dict[int, asyncio.Event] = {}
        self.resumes = 0
        self.heartbeats = 0
        self._send_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- life cycle --------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 2**20, middlewares=[self._front])
        rest: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]], str, Losable | None]] = [
            ("GET", "/users/@me", self.get_me, "identity", None),
            ("GET", "/oauth2/applications/@me", self.get_application, "identity", None),
            ("GET", "/gateway/bot", self.get_gateway_bot, "gateway", None),
            ("GET", "/gateway", self.get_gateway, "gateway", None),
            ("PUT", "/applications/{app}/commands", self.put_commands, "commands", None),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self.put_commands, "commands", None),
            ("POST", "/interactions/{iid}/{token}/callback", self.post_callback, "interaction-callback", "callback"),
            ("GET", "/webhooks/{app}/{token}/messages/@original", self.get_original, "interaction-webhook", "get_original"),
            ("PATCH", "/webhooks/{app}/{token}/messages/@original", self.patch_original, "interaction-webhook", "edit_original"),
            ("DELETE", "/webhooks/{app}/{token}/messages/@original", self.delete_original, "interaction-webhook",
             "delete_original"),
            ("POST", "/webhooks/{app}/{token}", self.post_followup, "interaction-webhook", "followup"),
            ("GET", "/channels/{channel}/messages", self.get_channel_messages, "channel-messages", "channel_messages"),
            ("DELETE", "/channels/{channel}/messages/{message}", self.delete_message, "delete-message", "delete_message"),
        ]
        for method, path, handler, bucket, losable in rest:
            self._routes[app.router.add_route(method, f"/api/v10{path}", handler)] = RestRoute(BUCKETS[bucket], losable)
        app.router.add_route("GET", "/gateway", self.gateway)
        app.router.add_route("GET", "/attachments/{channel}/{attachment}/{filename}", self.get_attachment)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- Discord's front end: rate limits, lost answers ------------------------------------------------

    @web.middleware
    async def _front(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Rate limits before the API sees a request (a 429 is never processed), the answers lose_answer loses after."""
        route = self._routes.get(request.match_info.route)
        if route is None:  # the gateway and the CDN are not the REST API
            return await handler(request)
        headers: dict[str, str] = {}
        if self.enforce_rate_limits:
            admitted = self.limiter.admit(self._bucket(route, request.match_info), major_parameter(request.match_info),
                                          request.headers.get("Authorization") or request.remote or "")
            if isinstance(admitted, web.Response):
                return admitted
            headers = admitted
        response = await handler(request)
        response.headers.update(headers)
        how = self._next_loss(route.losable, response.status)
        return response if how is None else lost(request, how)

    @staticmethod
    def _bucket(route: RestRoute, match: Mapping[str, str]) -> Bucket:
        """The route's bucket; deleting a message 10 s old or more falls in a stricter one, as on Discord."""
        if route.bucket.name == "delete-message" and message_age_s(match["message"]) >= YOUNG_MESSAGE_S:
            return BUCKETS["delete-old-message"]
        return route.bucket

    @property
    def rate_limited(self) -> int:
        """429s served so far, all buckets and the global limit together."""
        return sum(self.limiter.refused.values())

    @property
    def rate_limited_buckets(self) -> Counter[str]:
        """429s served so far by bucket name ("global" for the global limit)."""
        return self.limiter.refused

    def lose_answer(self, route: Losable, how: LossKind = "502", times: int = 1) -> None:
        """Process the next `times` requests on `route` exactly as usual (state changes), then lose the answer:
        Cloudflare's 502 page, which discord.py retries (a POST then lands twice), or a reset connection,
        which discord.py raises on Linux (it retries only BSD's and Windows' ECONNRESET). Logged in `faults`."""
        if route not in get_args(Losable) or how not in get_args(LossKind) or times < 1:
            raise ValueError(f"cannot lose {times} answer(s) of {route!r} by {how!r}")
        self._losses.setdefault(route, deque()).extend([how] * times)

    def _next_loss(self, route: Losable | None, status: int) -> LossKind | None:
        if route is None or not self._losses.get(route):
            return None
        how = self._losses[route].popleft()
        self.faults.append(Fault(route, how, status, self.clock()))
        return how

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def cdn_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- REST: identity, gateway, commands ----------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def get_me(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        return json_response(self.bot_user)

    async def get_application(self, request: web.Request) -> web.Response:
        owner = {"id": str(snowflake()), "username": "owner", "discriminator": "0", "global_name": "Owner", "avatar": None}
        return json_response({
            "id": str(self.application_id), "name": "Easel", "icon": None, "description": "", "summary": "",
            "bot_public": True, "bot_require_code_grant": False, "owner": owner, "verify_key": secrets.token_hex(32),
            "flags": 0, "team": None, "bot": self.bot_user, "interactions_endpoint_url": None, "tags": [],
            "redirect_uris": [], "approximate_guild_count": 1,
        })

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        return json_response({"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}})

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def put_commands(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        body = await request.json()
        self.command_syncs += 1
        stored = []
        for command in body:
            command = {**command, "id": str(snowflake()), "application_id": str(self.application_id),
                       "version": str(snowflake()), "type": command.get("type", 1)}
            if "guild" in request.match_info:
                command["guild_id"] = request.match_info["guild"]
            self.commands[command["name"]] = command
            stored.append(command)
        return json_response(stored)

    # -- REST: answering interactions -------------------------------------------------------------

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        """JSON, or multipart with payload_json and files[n] as discord.py sends uploads."""
        if not request.content_type.startswith("multipart/"):
            return (await request.json() if request.can_read_body else {}), {}
        form = await request.post()
        payload = json.loads(str(form["payload_json"]))
        files = {field.filename: field.file.read() for key, field in form.items()
                 if key.startswith("files[") and isinstance(field, web.FileField)}
        return payload, files

    def _attachment(self, filename: str, data: bytes, size: tuple[int, int] | None) -> dict[str, Any]:
        """An attachment object for a file now on the CDN; `size` (width, height) is measured by the caller."""
        attachment_id = snowflake()
        # Discord's CDN links are signed: expiry, issue time and an HMAC, which grant access to the file.
        expires, issued = int(time.time()) + 86_400, int(time.time())
        url = (f"http://{self.cdn_host}/attachments/{self.channel_id}/{attachment_id}/{filename}"
               f"?ex={expires:x}&is={issued:x}&hm={secrets.token_hex(32)}&")
        self.cdn[str(attachment_id)] = Upload(filename, data, _content_type(filename))
        meta: dict[str, Any] = {"id": str(attachment_id), "filename": filename, "size": len(data), "url": url,
                                "proxy_url": url, "content_type": _content_type(filename)}
        if size is not None:
            meta.update(width=size[0], height=size[1])
        return meta

    def _attachments(self, files: Mapping[str, bytes]) -> list[dict[str, Any]]:
        """The bot's own uploads, sized in line: its files are no crafted input, and sizing them keeps the
        request's state change in one step."""
        return [self._attachment(name, blob, image_size(blob)) for name, blob in files.items()]

    def _message(self, record: Record, data: Mapping[str, Any], flags: int, attachments: list[dict[str, Any]]) -> dict[str, Any]:
        message = {
            "id": str(snowflake()), "type": 20 if record.payload["type"] == 2 else 0, "channel_id": record.payload["channel_id"],
            **({"guild_id": record.payload["guild_id"]} if "guild_id" in record.payload else {}), "author": self.bot_user,
            "content": data.get("content") or "",
            "timestamp": now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False, "mentions": [],
            "mention_roles": [], "attachments": attachments, "embeds": data.get("embeds") or [], "pinned": False,
            "flags": flags, "components": data.get("components") or [], "webhook_id": str(self.application_id),
            "application_id": str(self.application_id),
            "interaction_metadata": {"id": str(record.id), "type": record.payload["type"], "user": _user_of(record.payload),
                                     "authorizing_integration_owners": record.payload["authorizing_integration_owners"]},
        }
        self._mention(record, message, data)
        return message

    def _mention(self, record: Record, message: dict[str, Any], data: Mapping[str, Any]) -> None:
        """Fill the message's mention fields from its content, as Discord does on every create and edit, and log
        whom it pinged (an ephemeral message notifies no one else)."""
        found = resolve_mentions(message["content"], data.get("allowed_mentions"), in_guild="guild_id" in record.payload,
                                 may_mention_everyone=bool(self.bot_permissions & MENTION_EVERYONE))
        message.update(mentions=[self.person(u) for u in found.users], mention_roles=[str(r) for r in found.roles],
                       mention_everyone=bool(found.everyone))
        if not message["flags"] & EPHEMERAL:
            record.pings.extend(found.pings(message["id"]))

    def _record(self, token: str) -> Record | None:
        return self.records.get(token)

    def _changed(self, record: Record) -> None:
        if record.answered_at is None and record.answered():
            record.answered_at = self.clock()
        record.changed.set()

    def _webhook(self, request: web.Request, *, original: bool) -> Record | web.Response:
        """The interaction behind a webhook call, or Discord's refusal: unknown or expired token,
        or (for the original's endpoints, and for follow-ups too) a deleted original."""
        record = self._record(request.match_info["token"])
        if record is None or record.callback_type is None:
            return discord_error(10015)
        if self.clock() - record.created_at > TOKEN_LIFETIME_S:
            return discord_error(50027)
        if record.deleted or (original and record.original is None):
            return discord_error(10008)
        return record

    async def _webhook_body(self, request: web.Request, *, original: bool
                            ) -> tuple[Record, dict[str, Any], dict[str, bytes]] | web.Response:
        """The interaction and the body of a webhook call that sends a message, or Discord's refusal."""
        record = self._webhook(request, original=original)
        if isinstance(record, web.Response):
            return record
        uploaded = await self._upload(request, record)
        if isinstance(uploaded, web.Response):
            return uploaded
        return mentions_conflict(uploaded[0]) or (record, *uploaded)

    async def _upload(self, request: web.Request, record: Record) -> tuple[dict[str, Any], dict[str, bytes]] | web.Response:
        """The body, arriving over a link as slow as upload_delay_s; files over the context's limit answer 40005."""
        if request.content_type.startswith("multipart/") and self.upload_delay_s:
            self.uploads_in_flight += 1  # the body is still on its way over a slow link
            await asyncio.sleep(self.upload_delay_s)
            self.uploads_in_flight -= 1
        body, files = await self._body(request)
        if sum(map(len, files.values())) > record.payload["attachment_size_limit"]:
            return discord_error(40005)
        return body, files

    async def post_callback(self, request: web.Request) -> web.Response:
        record = self._record(request.match_info["token"])
        if record is None or str(record.id) != request.match_info["iid"]:
            return discord_error(10062)
        if record.callback_type is not None:
            return discord_error(40060)
        if self.clock() - record.sent_at > ACK_WINDOW_S:
            return discord_error(10062)
        uploaded = await self._upload(request, record)
        if isinstance(uploaded, web.Response):
            return uploaded
        body, files = uploaded
        kind, data = body["type"], body.get("data") or {}
        if refused := mentions_conflict(data):
            return refused
        record.acknowledged_at, record.callback_type = self.clock(), kind
        resource: dict[str, Any] = {"type": kind}
        if kind == 8:  # autocomplete result
            record.choices = data.get("choices", [])
        elif kind == 6 and record.payload["type"] != 3:  # "deferred update" acknowledges a button press only
            return discord_error(50035)
        elif kind in (4, 5):
            flags = (data.get("flags") or 0) & EPHEMERAL | (LOADING if kind == 5 else 0)
            record.original = self._message(record, data, flags, self._attachments(files))
            record.original_files = dict(files)
            resource["message"] = record.original
        self._changed(record)
        response = {"interaction": {"id": str(record.id), "type": record.payload["type"],
                                    "response_message_id": record.original["id"] if record.original else None,
                                    "response_message_loading": kind == 5,
                                    "response_message_ephemeral": bool(record.original and record.original["flags"] & EPHEMERAL)},
                    "resource": resource}
        return json_response(response)

    async def get_original(self, request: web.Request) -> web.Response:
        record = self._webhook(request, original=True)
        if isinstance(record, web.Response):
            return record
        return json_response(record.original)

    async def patch_original(self, request: web.Request) -> web.Response:
        accepted = await self._webhook_body(request, original=True)
        if isinstance(accepted, web.Response):
            return accepted
        return json_response(self._edit_original(*accepted))

    def _edit_original(self, record: Record, body: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
        """Resolve or edit the original; its flags stay (an edit cannot change who sees it).

        `attachments` in the body lists the existing files to keep (by id); new files are added."""
        assert record.original is not None
        message = dict(record.original)
        message["flags"] = message["flags"] & ~LOADING
        for key in ("content", "components", "embeds"):
            if key in body:
                message[key] = body[key] or ([] if key != "content" else "")
        if "content" in body:
            self._mention(record, message, body)
        if "attachments" in body or files:
            kept_ids = {str(a.get("id")) for a in body.get("attachments", [])}
            kept = [a for a in message["attachments"] if a["id"] in kept_ids]
            record.original_files = {a["filename"]: record.original_files[a["filename"]] for a in kept
                                     if a["filename"] in record.original_files}
            message["attachments"] = kept + self._attachments(files)
            record.original_files.update(files)
        message["edited_timestamp"] = now_iso()
        record.original = message
        record.edits.append((self.clock(), message["content"]))
        self._changed(record)
        return message

    async def delete_original(self, request: web.Request) -> web.Response:
        record = self._webhook(request, original=True)
        if isinstance(record, web.Response):
            return record
        record.deleted = True
        self._changed(record)
        return web.Response(status=204)

    async def post_followup(self, request: web.Request) -> web.Response:
        accepted = await self._webhook_body(request, original=False)
        if isinstance(accepted, web.Response):
            return accepted
        record, body, files = accepted
        if record.loading:  # Discord resolves the deferred original instead, with the defer's visibility
            return json_response(self._edit_original(record, body, files))
        flags = (body.get("flags") or 0) & EPHEMERAL
        message = self._message(record, body, flags, self._attachments(files))
        if record.original is not None:  # Discord names the original on follow-ups only
            message["interaction_metadata"]["original_response_message_id"] = record.original["id"]
        record.followups.append(message)
        record.followup_files.append(files)
        self._changed(record)
        return json_response(message)

    def channel_messages(self, channel_id: int | str) -> list[dict[str, Any]]:
        """A channel's messages as Discord lists them, newest first: public originals and follow-ups (ephemeral
        ones are no channel messages, deleted ones are gone)."""
        channel = str(channel_id)
        messages = [m for r in self.records.values() if r.payload.get("channel_id") == channel for m in r.channel_messages]
        return sorted(messages, key=lambda m: int(m["id"]), reverse=True)

    async def get_channel_messages(self, request: web.Request) -> web.Response:
        """GET /channels/{id}/messages: a guild channel needs the bot's VIEW_CHANNEL (else 50001), and without
        READ_MESSAGE_HISTORY Discord answers with no messages rather than an error; a DM with the bot needs neither."""
        if not self._authorised(request):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        channel = request.match_info["channel"]
        dm = channel in {str(c) for c in self.dm_channels.values()}
        if not dm and channel not in {self._channel(g)["id"] for g in self.guild_ids}:
            return discord_error(10003)
        if not dm and not self.bot_permissions & VIEW_CHANNEL:
            return discord_error(50001)
        query = history_query(request.query)
        if isinstance(query, web.Response):
            return query
        if not dm and not self.bot_permissions & READ_MESSAGE_HISTORY:
            return json_response([])
        return json_response(history_page(self.channel_messages(channel), *query))

    async def delete_message(self, request: web.Request) -> web.Response:
        """The bot deletes one of its channel messages (a follow-up; never an ephemeral one)."""
        if not self._authorised(request):
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        channel, message_id = request.match_info["channel"], request.match_info["message"]
        for record in self.records.values():
            for i, message in enumerate(record.followups):
                if message["id"] == message_id and message["channel_id"] == channel and not message["flags"] & EPHEMERAL:
                    record.removed.append(record.followups.pop(i))
                    record.followup_files.pop(i)
                    self._changed(record)
                    return web.Response(status=204)
        return discord_error(10008)

    async def get_attachment(self, request: web.Request) -> web.StreamResponse:
        upload = self.cdn.get(request.match_info["attachment"])
        if upload is None:
            return web.Response(status=404)
        if self.cdn_delay_s:
            await asyncio.sleep(self.cdn_delay_s)
        return web.Response(body=upload.data, headers={"Content-Type": upload.content_type or "application/octet-stream"})

    # -- gateway ---------------------------------------------------------------------------------

    async def gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 2**20)
        await ws.prepare(request)
        self.sockets.append(ws)
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                await self._on_gateway_message(ws, json.loads(message.data))
        finally:
            self.sockets.remove(ws)
        return ws

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            if not ws.closed:
                await ws.send_str(json.dumps(payload))

    async def _on_gateway_message(self, ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
        op, data = message.get("op"), message.get("d")
        if op == 1:
            self.heartbeats += 1
            await self._send(ws, {"op": 11})
        elif op == 2:
            if data.get("token") != self.token:
                await ws.close(code=4004, message=b"Authentication failed.")
                return
            shard_id, count = data.get("shard") or (0, 1)
            if count < self.shard_count:
                await ws.close(code=4011, message=b"Sharding required.")
                return
            if not 0 <= shard_id < count:
                await ws.close(code=4010, message=b"Invalid shard.")
                return
            session = Session(ws, (shard_id, count))
            self.sessions = {k: v for k, v in self.sessions.items() if v.shard[0] != shard_id}
            self.sessions[session.id] = session
            guilds = [g for g in self.guild_ids if session.owns(g)]
            await self._dispatch_to(session, "READY", {
                "v": 10, "user": self.bot_user, "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
                "session_id": session.id, "resume_gateway_url": self.gateway_url, "shard": [shard_id, count],
                "application": {"id": str(self.application_id), "flags": 0}, "private_channels": [], "relationships": [],
                "presences": [], "user_settings": {}, "guild_join_requests": [], "geo_ordered_rtc_regions": [],
            })
            for guild in guilds:
                await self._dispatch_to(session, "GUILD_CREATE", self._guild(guild))
            self.shard_ready.setdefault(shard_id, asyncio.Event()).set()
            self.identified.set()
        elif op == 6:
            session = self.sessions.get(data.get("session_id"))
            if data.get("token") != self.token or session is None:
                await self._send(ws, {"op": 9, "d": False})
                return
            session.ws = ws
            self.resumes += 1
            for event in session.events:
                if event["s"] > (data.get("seq") or 0):
                    await self._send(ws, event)
            await self._dispatch_to(session, "RESUMED", {})

    async def _dispatch(self, name: str, data: dict[str, Any]) -> None:
        """Send an event to the shard that owns its guild (DMs: shard 0)."""
        guild = data.get("guild_id")
        session = next(s for s in self.sessions.values() if s.owns(int(guild) if guild else None))
        await self._dispatch_to(session, name, data)

    async def _dispatch_to(self, session: Session, name: str, data: dict[str, Any]) -> None:
        """Send an event on one session's connection; it is also kept so a RESUME can replay it."""
        session.sequence += 1
        event = {"op": 0, "t": name, "s": session.sequence, "d": data}
        session.events.append(event)
        await self._send(session.ws, event)

    async def ready_for(self, guild_id: int) -> None:
        """Wait until the shard that owns `guild_id` is connected."""
        await self.identified.wait()
        while not any(s.owns(guild_id) for s in self.sessions.values()):
            shard = (guild_id >> 22) % next(iter(self.sessions.values())).shard[1]
            await self.shard_ready.setdefault(shard, asyncio.Event()).wait()

    async def ask_to_reconnect(self) -> None:
        """Op 7, as Discord sends before moving a session: the client reconnects and resumes."""
        for ws in list(self.sockets):
            await self._send(ws, {"op": 7, "d": None})

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's gateway connection as Discord does on a hiccup; 4000 is resumable."""
        for ws in list(self.sockets):
            await ws.close(code=code, message=b"Unknown error")

    def _guild(self, guild_id: int) -> dict[str, Any]:
        everyone = {"id": str(guild_id), "name": "@everyone", "permissions": "2248473465835073", "position": 0,
                    "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        me = {"user": self.bot_user, "roles": [], "joined_at": now_iso(), "deaf": False, "mute": False, "flags": 0}
        return {
            "id": str(guild_id), "name": "Easel sandbox", "icon": None, "splash": None, "discovery_splash": None,
            "owner_id": str(snowflake()), "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "roles": [everyone], "emojis": [],
            "features": [], "mfa_level": 0, "application_id": None, "system_channel_id": None, "system_channel_flags": 0,
            "rules_channel_id": None, "joined_at": now_iso(), "large": False, "unavailable": False, "member_count": 2,
            "voice_states": [], "members": [me], "channels": [self._channel(guild_id)], "threads": [], "presences": [],
            "max_members": 500000, "vanity_url_code": None, "description": None, "banner": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US", "public_updates_channel_id": None,
            "nsfw_level": 0, "stage_instances": [], "stickers": [], "guild_scheduled_events": [],
            "premium_progress_bar_enabled": False, "soundboard_sounds": [],
        }

    def _channel(self, guild_id: int) -> dict[str, Any]:
        channel_id = self.channel_id if guild_id == self.guild_id else guild_id + 1  # each guild's own #art
        return {"id": str(channel_id), "type": 0, "guild_id": str(guild_id), "name": "art", "position": 0,
                "permission_overwrites": self._bot_overwrites(), "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0, "flags": 0}

    def _bot_overwrites(self) -> list[dict[str, Any]]:
        """The bot's member overwrite when bot_permissions differ from @everyone's, so that discord.py's cache
        computes in the channel the same permissions that app_permissions states."""
        if self.bot_permissions == MEMBER_PERMISSIONS:
            return []
        return [{"id": str(self.application_id), "type": 1, "allow": str(self.bot_permissions & ~MEMBER_PERMISSIONS),
                 "deny": str(MEMBER_PERMISSIONS & ~self.bot_permissions)}]

    # -- driving the bot, as people in the server would ------------------------------------------

    def person(self, user_id: int, name: str = "person") -> dict[str, Any]:
        return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name.title(), "avatar": None}

    def interaction(self, kind: int, data: dict[str, Any], user_id: int = 1001, message: dict[str, Any] | None = None,
                    size_limit: int | None = None, age_s: float = 0.0, guild_id: int | None = None, dm: bool = False) -> Record:
        """An interaction as Discord delivers it, in a guild (default the first) or a DM with the bot,
        recorded but not yet dispatched (invoke and click send it). In a guild, `member.permissions`
        are the person's in the channel (Manage Messages for moderators)."""
        interaction_id, token = snowflake(age_s), "interaction." + secrets.token_urlsafe(32)
        sent_at = self.clock()
        guild_id = guild_id or self.guild_id
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(self.application_id), "type": kind, "data": data,
            "token": token, "version": 1, "app_permissions": str(self.bot_permissions), "locale": "en-US",
            "entitlements": [], "attachment_size_limit": size_limit or self.attachment_size_limit,
        }
        if dm:  # a DM with the bot: no server, no member, the person as `user`
            dm_channel = self.dm_channels.setdefault(user_id, snowflake())
            payload.update(channel_id=str(dm_channel), channel=_dm_channel(dm_channel, user_id), user=self.person(user_id),
                           context=BOT_DM_CONTEXT, authorizing_integration_owners={"0": "0"})
        else:
            permissions = MEMBER_PERMISSIONS | (MANAGE_MESSAGES if user_id in self.moderators else 0)
            channel = self._channel(guild_id)
            payload.update(guild_id=str(guild_id), channel_id=channel["id"], channel=channel,
                           member={"user": self.person(user_id), "roles": [], "joined_at": now_iso(), "deaf": False,
                                   "mute": False, "flags": 0, "pending": False, "nick": None, "avatar": None,
                                   "permissions": str(permissions)},
                           guild_locale="en-US", context=GUILD_CONTEXT, authorizing_integration_owners={"0": str(guild_id)})
        if message is not None:
            payload["message"] = message
        record = Record(interaction_id, token, payload, sent_at, sent_at - age_s)
        self.records[token] = record
        return record

    async def _options(self, name: str, values: Mapping[str, Any], focused: str | None = None) -> tuple[list[dict], dict]:
        """Options as Discord sends them, typed from the synced command; uploads become resolved attachments,
        sized in a thread: Pillow walks a crafted header byte by byte, which must not stall the bot's loop."""
        declared = {o["name"]: o["type"] for o in self.commands[name].get("options", [])}
        options, resolved = [], {}
        for key, value in values.items():
            if key not in declared:
                raise KeyError(f"/{name} has no option {key!r}")
            option: dict[str, Any] = {"name": key, "type": declared[key]}
            if declared[key] == ATTACHMENT_OPTION:
                meta = self._attachment(value.filename, value.data, await asyncio.to_thread(image_size, value.data))
                meta.pop("content_type")
                if value.content_type is not None:  # Discord omits the field when it cannot tell
                    meta["content_type"] = value.content_type
                if value.declared_size is not None:
                    meta["size"] = value.declared_size
                self.cdn[meta["id"]] = value
                resolved[meta["id"]] = meta
                option["value"] = meta["id"]
            else:
                option["value"] = value
            if key == focused:
                option["focused"] = True
            options.append(option)
        return options, ({"attachments": resolved} if resolved else {})

    async def invoke(self, name: str, options: Mapping[str, Any] | None = None, *, user_id: int = 1001,
                     attachment_size_limit: int | None = None, age_s: float = 0.0, guild_id: int | None = None,
                     dm: bool = False) -> Record:
        """A person runs /name with these options in a guild (default the first) or, `dm`, in a DM
        with the bot; returns the record of what the bot does.

        age_s makes the interaction look that much older (its id encodes when it was created), as
        when Discord delivers an event late: its token expires that much sooner, while the 3-second
        acknowledgement window still counts from now.
        """
        await self.ready_for(guild_id or self.guild_id)
        command = self.commands[name]
        if dm and not usable_in_dms(command):
            raise PermissionError(f"/{name} is declared for servers only: Discord does not offer it in a DM")
        opts, resolved = await self._options(name, options or {})
        data = {"id": command["id"], "name": name, "type": 1, "options": opts, **_guild_of(command)}
        if resolved:
            data["resolved"] = resolved
        record = self.interaction(2, data, user_id, None, attachment_size_limit, age_s, guild_id, dm)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record

    async def autocomplete(self, name: str, options: Mapping[str, Any], focused: str, *, user_id: int = 1001) -> list[dict[str, Any]]:
        command = self.commands[name]
        opts, _ = await self._options(name, options, focused)
        data = {"id": command["id"], "name": name, "type": 1, "options": opts, **_guild_of(command)}
        record = self.interaction(4, data, user_id, None, None)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        await record.wait(lambda r: r.choices is not None, timeout=10)
        return record.choices or []

    async def click(self, on: Record, custom_id: str, *, user_id: int = 1001, message: dict[str, Any] | None = None) -> Record:
        """A person presses a button on a message a previous interaction produced. Only the asker sees
        its ephemeral messages, so only they can press those buttons. `message`: the press comes
        from this copy of the message (a stale client's, or a crafted request), unchecked."""
        data = {"custom_id": custom_id, "component_type": 2}
        if message is None:
            message = on.message_with(custom_id)
            if message["flags"] & EPHEMERAL and user_id != on.asker:
                raise PermissionError(f"person {user_id} cannot see the ephemeral message that carries {custom_id!r}")
        guild = on.payload.get("guild_id")  # pressed where the message is: its server, or the DM
        record = self.interaction(3, data, user_id, message, None, guild_id=int(guild) if guild else None, dm=guild is None)
        await self._dispatch("INTERACTION_CREATE", record.payload)
        return record


def history_query(query: Mapping[str, str]) -> tuple[int, str | None, int] | web.Response:
    """(limit, anchor, id) from GET /channels/{id}/messages' query: `limit` 1-100 (default 50) and at most one
    of `before`, `after`, `around`, which Discord documents as mutually exclusive; else its 50035."""
    raw = query.get("limit", "50")
    if not raw.lstrip("-").isdigit():
        return invalid_field("limit", "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.')
    limit = int(raw)
    if limit < 1:
        return invalid_field("limit", "NUMBER_TYPE_MIN", "int value should be greater than or equal to 1.")
    if limit > 100:
        return invalid_field("limit", "NUMBER_TYPE_MAX", "int value should be less than or equal to 100.")
    anchors = [key for key in ("before", "after", "around") if key in query]
    if len(anchors) > 1:
        return discord_error(50035)
    if not anchors:
        return limit, None, 0
    if not query[anchors[0]].isdigit():
        return invalid_field(anchors[0], "NUMBER_TYPE_COERCE", f'Value "{query[anchors[0]]}" is not snowflake.')
    return limit, anchors[0], int(query[anchors[0]])


def history_page(messages: list[dict[str, Any]], limit: int, anchor: str | None, at: int) -> list[dict[str, Any]]:
    """One page of a channel's messages (given newest first), newest first: the newest `limit`; the nearest
    `limit` older than `before` or newer than `after`; or `around`: up to limit // 2 newer, the rest at or before it."""
    if anchor is None:
        return messages[:limit]
    if anchor == "before":
        return [m for m in messages if int(m["id"]) < at][:limit]
    newer = [m for m in reversed(messages) if int(m["id"]) > at]  # oldest first
    if anchor == "after":
        return newer[:limit][::-1]
    older = [m for m in messages if int(m["id"]) <= at]
    return newer[:limit // 2][::-1] + older[:limit - limit // 2]


def _guild_of(command: Mapping[str, Any]) -> dict[str, Any]:
    """An interaction's data names the guild only when the command was registered to that guild."""
    return {"guild_id": command["guild_id"]} if "guild_id" in command else {}


def usable_in_dms(command: Mapping[str, Any]) -> bool:
    """Discord's rule: a guild command never; a global one if its contexts include DMs (none declared: everywhere)."""
    return "guild_id" not in command and BOT_DM_CONTEXT in (command.get("contexts") or [BOT_DM_CONTEXT])


def _dm_channel(channel_id: int, user_id: int) -> dict[str, Any]:
    return {"id": str(channel_id), "type": 1, "last_message_id": None, "flags": 0,
            "recipients": [{"id": str(user_id), "username": "person", "discriminator": "0", "global_name": None, "avatar": None}]}


def _user_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    return payload.get("member", {}).get("user") or payload.get("user") or {}


def _content_type(filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
            "txt": "text/plain"}.get(suffix, "application/octet-stream")
