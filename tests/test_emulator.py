"""The loopback Discord refuses what Discord refuses: each reply rule, over plain HTTP or through the real
discord.py client, on a clock the test moves."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import discord as dpy  # the `discord` fixture below is the emulator
import pytest
import pytest_asyncio
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route
from PIL import Image

from bot.sandbox.emulator import (
    EPHEMERAL,
    MEMBER_PERMISSIONS,
    MENTION_EVERYONE,
    READ_MESSAGE_HISTORY,
    VIEW_CHANNEL,
    DiscordEmulator,
    Fault,
    Ping,
    Record,
    Upload,
    snowflake,
)


class Clock:
    """Time that passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Person:
    """Answers one interaction over the emulator's REST API, as any client library would."""

    def __init__(self, emulator: DiscordEmulator, session: aiohttp.ClientSession, record: Record) -> None:
        self.record, self.session = record, session
        self.callback_url = f"{emulator.api_base}/interactions/{record.id}/{record.token}/callback"
        self.webhook = f"{emulator.api_base}/webhooks/{emulator.application_id}/{record.token}"

    async def call(self, method: str, url: str, body: dict[str, Any] | None = None,
                   files: dict[str, bytes] | None = None) -> tuple[int, Any]:
        if files:
            form = aiohttp.FormData()
            form.add_field("payload_json", json.dumps(body or {}))
            for i, (name, data) in enumerate(files.items()):
                form.add_field(f"files[{i}]", data, filename=name, content_type="application/octet-stream")
            request = self.session.request(method, url, data=form)
        else:
            request = self.session.request(method, url, json=body)
        async with request as response:
            return response.status, (await response.json() if response.status != 204 else None)

    async def respond(self, kind: int, data: dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> tuple[int, Any]:
        return await self.call("POST", self.callback_url, {"type": kind, "data": data or {}}, files)

    async def followup(self, content: str, flags: int = 0, files: dict[str, bytes] | None = None) -> tuple[int, Any]:
        return await self.call("POST", self.webhook, {"content": content, "flags": flags}, files)

    async def original(self, method: str, body: dict[str, Any] | None = None, files: dict[str, bytes] | None = None) -> tuple[int, Any]:
        return await self.call(method, f"{self.webhook}/messages/@original", body, files)


def error(code: int, message: str) -> dict[str, Any]:
    return {"message": message, "code": code}


UNKNOWN_MESSAGE, EXPIRED = error(10008, "Unknown Message"), error(50027, "Invalid Webhook Token")


@pytest_asyncio.fixture
async def discord() -> AsyncIterator[tuple[DiscordEmulator, Clock, aiohttp.ClientSession]]:
    clock = Clock()
    emulator = DiscordEmulator(clock=clock, attachment_size_limit=1000)
    await emulator.start()
    async with aiohttp.ClientSession() as session:
        yield emulator, clock, session
    await emulator.stop()


def person(discord, *, age_s: float = 0.0) -> Person:
    emulator, _, session = discord
    return Person(emulator, session, emulator.interaction(2, {"name": "dream"}, age_s=age_s))


@pytest.mark.parametrize("defer_flags, followup_flags", [(EPHEMERAL, 0), (0, EPHEMERAL)])
async def test_a_follow_up_while_the_original_loads_becomes_it_with_the_defers_visibility(discord, defer_flags, followup_flags):
    you = person(discord)
    assert (await you.respond(5, {"flags": defer_flags}))[0] == 200
    assert you.record.loading and not you.record.visible()
    status, message = await you.followup("first", followup_flags)
    assert status == 200 and message["id"] == you.record.original["id"]  # the original, resolved
    assert message["flags"] == defer_flags  # its own flags were ignored
    assert not you.record.loading and not you.record.followups
    status, second = await you.followup("second", followup_flags)  # now a message of its own, with its own flags
    assert status == 200 and second["id"] != message["id"] and second["flags"] == followup_flags
    seen = [(m["content"], bool(m["flags"] & EPHEMERAL)) for m, _ in you.record.visible()]
    assert seen == [("first", bool(defer_flags)), ("second", bool(followup_flags))]


async def test_after_the_original_is_deleted_every_call_on_it_answers_10008(discord):
    you = person(discord)
    await you.respond(5, {"flags": EPHEMERAL})
    assert (await you.original("DELETE"))[0] == 204
    assert await you.followup("sorry", EPHEMERAL) == (404, UNKNOWN_MESSAGE)
    assert await you.original("GET") == (404, UNKNOWN_MESSAGE)
    assert await you.original("PATCH", {"content": "sorry"}) == (404, UNKNOWN_MESSAGE)
    assert await you.original("DELETE") == (404, UNKNOWN_MESSAGE)
    assert not you.record.visible()  # the person sees nothing at all


async def test_the_token_lives_15_minutes_from_the_interactions_creation(discord):
    _, clock, _ = discord
    you, late = person(discord), person(discord, age_s=600)  # Discord delivered `late` ten minutes after it was made
    await you.respond(5)
    await late.respond(5)
    clock.now += 15 * 60 - 600 - 0.5
    assert (await late.original("PATCH", {"content": "still here"}))[0] == 200
    clock.now += 1
    assert await late.original("PATCH", {"content": "too late"}) == (401, EXPIRED)
    clock.now += 599
    assert (await you.original("PATCH", {"content": "just in time"}))[0] == 200
    clock.now += 1
    assert await you.original("PATCH", {"content": "too late"}) == (401, EXPIRED)
    assert await you.original("GET") == (401, EXPIRED)
    assert await you.followup("too late") == (401, EXPIRED)
    assert await you.original("DELETE") == (401, EXPIRED)
    assert [m["content"] for m, _ in you.record.visible()] == ["just in time"]


async def test_the_initial_response_must_come_within_3_seconds(discord):
    _, clock, _ = discord
    quick, slow = person(discord), person(discord)
    clock.now += 2.9
    assert (await quick.respond(5))[0] == 200
    clock.now += 0.2
    assert await slow.respond(5) == (404, error(10062, "Unknown interaction"))
    assert slow.record.callback_type is None


async def test_a_second_initial_response_answers_40060(discord):
    you = person(discord)
    assert (await you.respond(4, {"content": "hello", "flags": EPHEMERAL}))[0] == 200
    assert await you.respond(4, {"content": "again"}) == (400, error(40060, "Interaction has already been acknowledged."))
    assert you.record.ephemeral_messages == ["hello"]


async def test_a_patch_with_attachments_keeps_exactly_the_listed_files(discord):
    you = person(discord)
    await you.respond(5)
    _, message = await you.original("PATCH", {"content": "two"}, {"a.png": b"a" * 10, "b.png": b"b" * 10})
    assert set(you.record.original_files) == {"a.png", "b.png"}
    kept = next(a for a in message["attachments"] if a["filename"] == "b.png")
    await you.original("PATCH", {"content": "text only"})  # no attachments key: the files stay
    assert set(you.record.original_files) == {"a.png", "b.png"}
    _, message = await you.original("PATCH", {"attachments": [{"id": kept["id"]}]}, {"c.png": b"c" * 10})
    assert set(you.record.original_files) == {"b.png", "c.png"} == {a["filename"] for a in message["attachments"]}
    await you.original("PATCH", {"attachments": []})
    assert you.record.original_files == {} and you.record.original["content"] == "text only"


async def test_files_over_the_contexts_upload_limit_answer_40005(discord):
    you = person(discord)  # this context allows 1000 bytes
    await you.respond(5)
    too_large = (413, error(40005, "Request entity too large"))
    assert await you.followup("big", files={"big.png": b"x" * 1001}) == too_large
    assert await you.original("PATCH", {"content": "big"}, {"a.png": b"x" * 600, "b.png": b"x" * 600}) == too_large
    assert you.record.loading and not you.record.visible()  # nothing was posted
    assert (await you.followup("fits", files={"ok.png": b"x" * 1000}))[0] == 200


# -- rate limits ------------------------------------------------------------------------------------


async def fetch(session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None,
                **kwargs: Any) -> tuple[int, Mapping[str, str], Any]:
    """(status, headers, body): JSON when Discord says so, else the text (Cloudflare's pages are HTML)."""
    async with session.request(method, url, json=body, **kwargs) as response:
        is_json = response.content_type == "application/json"
        return response.status, response.headers, await (response.json() if is_json else response.text())


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-RateLimit-Reset-After", "X-RateLimit-Bucket")


async def test_past_its_bucket_a_request_gets_discords_429_and_is_not_processed(discord):
    emulator, _, session = discord
    you = person(discord)
    await you.respond(4, {"content": "hello"})
    url = f"{you.webhook}/messages/@original"
    answers = [await fetch(session, "PATCH", url, {"content": f"edit {n}"}) for n in range(1, 6)]  # 5 per 2 s per token
    assert [status for status, _, _ in answers] == [200] * 5
    assert all(all(h in headers for h in RATE_HEADERS) for _, headers, _ in answers)
    assert [headers["X-RateLimit-Remaining"] for _, headers, _ in answers] == ["4", "3", "2", "1", "0"]
    assert len({headers["X-RateLimit-Bucket"] for _, headers, _ in answers}) == 1
    status, headers, body = await fetch(session, "PATCH", url, {"content": "one too many"})
    assert status == 429 and set(body) == {"message", "retry_after", "global"}
    assert body["message"] == "You are being rate limited." and body["global"] is False and 0 < body["retry_after"] <= 2
    assert headers["Retry-After"] == str(int(-(-body["retry_after"] // 1)))  # whole seconds, rounded up
    assert (headers["X-RateLimit-Scope"], headers["Via"], headers["X-RateLimit-Remaining"]) == ("user", "1.1 google", "0")
    assert you.record.original["content"] == "edit 5" and len(you.record.edits) == 5  # the refused edit never happened
    assert emulator.rate_limited == 1 and emulator.rate_limited_buckets == Counter({"interaction-webhook": 1})


async def test_the_global_limit_is_50_requests_a_second_and_interaction_endpoints_are_exempt():
    clock = Clock()  # the windows' time, frozen: exactly 50 requests fit in this second
    emulator = DiscordEmulator(rate_clock=clock)
    await emulator.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bot {emulator.token}"}) as session:
            channels = [f"{emulator.api_base}/channels/{snowflake()}/messages" for _ in range(60)]  # 60 buckets of their own
            answers = await asyncio.gather(*(fetch(session, "GET", url) for url in channels))
            assert Counter(status for status, _, _ in answers) == Counter({404: 50, 429: 10})
            _, headers, body = next(a for a in answers if a[0] == 429)
            assert body == {"message": "You are being rate limited.", "retry_after": 1.0, "global": True}
            assert (headers["X-RateLimit-Global"], headers["X-RateLimit-Scope"], headers["Via"]) == ("true", "global", "1.1 google")
            you = Person(emulator, session, emulator.interaction(2, {"name": "dream"}))
            assert (await you.respond(5))[0] == 200  # interaction endpoints are not bound by it
            assert (await you.followup("still served"))[0] == 200
            assert (await fetch(session, "GET", f"{emulator.api_base}/users/@me"))[0] == 429
            clock.now += 1.0
            assert (await fetch(session, "GET", f"{emulator.api_base}/users/@me"))[0] == 200
        assert emulator.rate_limited == 11 and emulator.rate_limited_buckets == Counter({"global": 11})
    finally:
        await emulator.stop()


async def test_deleting_a_message_10_seconds_old_falls_in_a_stricter_bucket(discord):
    emulator, _, session = discord
    auth = {"Authorization": f"Bot {emulator.token}"}
    channel = f"{emulator.api_base}/channels/{emulator.channel_id}/messages"
    young, old = [await fetch(session, "DELETE", f"{channel}/{snowflake(age_s)}", headers=auth) for age_s in (0, 60)]
    assert young[0] == old[0] == 404 and young[1]["X-RateLimit-Bucket"] != old[1]["X-RateLimit-Bucket"]
    assert (young[1]["X-RateLimit-Limit"], old[1]["X-RateLimit-Limit"]) == ("5", "3")
    more_old = [await fetch(session, "DELETE", f"{channel}/{snowflake(60)}", headers=auth) for _ in range(3)]
    assert [status for status, _, _ in more_old] == [404, 404, 429]
    assert emulator.rate_limited_buckets == Counter({"delete-old-message": 1})


async def test_rate_limits_are_off_only_when_a_test_says_so():
    emulator = DiscordEmulator(enforce_rate_limits=False)
    await emulator.start()
    try:
        async with aiohttp.ClientSession() as session:
            you = Person(emulator, session, emulator.interaction(2, {"name": "dream"}))
            await you.respond(5)
            answers = [await fetch(session, "PATCH", f"{you.webhook}/messages/@original", {"content": str(n)}) for n in range(8)]
        assert [status for status, _, _ in answers] == [200] * 8 and "X-RateLimit-Limit" not in answers[0][1]
        assert emulator.rate_limited == 0
    finally:
        await emulator.stop()


# -- the real discord.py client ------------------------------------------------------------------------

COMMAND = {"name": "look", "description": "Look at a photo", "type": 1,
           "options": [{"name": "photo", "description": "A photo", "type": 11, "required": False}]}


class Bot(dpy.Client):
    """The smallest real discord.py bot: it hands every interaction to the test."""

    def __init__(self) -> None:
        super().__init__(intents=dpy.Intents(guilds=True), guild_ready_timeout=0.2)  # READY sooner: one guild comes at once
        self.interactions: asyncio.Queue[dpy.Interaction] = asyncio.Queue()

    async def on_interaction(self, interaction: dpy.Interaction) -> None:
        self.interactions.put_nowait(interaction)


@pytest_asyncio.fixture
async def live(monkeypatch) -> AsyncIterator[tuple[DiscordEmulator, Bot]]:
    """The emulator (real time) with discord.py logged in, connected and its one command synced."""
    emulator = DiscordEmulator()
    await emulator.start()
    monkeypatch.setattr(Route, "BASE", emulator.api_base)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(emulator.gateway_url))
    bot = Bot()
    await bot.login(emulator.token)
    connection = asyncio.create_task(bot.connect(reconnect=False))
    await asyncio.wait_for(bot.wait_until_ready(), 30)
    await bot.http.bulk_upsert_global_commands(emulator.application_id, [COMMAND])
    yield emulator, bot
    await bot.close()
    await connection
    await emulator.stop()


async def run_look(emulator: DiscordEmulator, bot: Bot, **kwargs: Any) -> tuple[Record, dpy.Interaction]:
    """A person runs /look; returns its record and the interaction as discord.py received it."""
    record = await emulator.invoke("look", **kwargs)
    return record, await asyncio.wait_for(bot.interactions.get(), 10)


async def test_discord_py_waits_out_a_429_and_then_its_request_lands(live):
    emulator, bot = live
    record, interaction = await run_look(emulator, bot)
    await interaction.response.send_message("hello")
    async with aiohttp.ClientSession() as session:  # another client spends the token's bucket
        spent = [await fetch(session, "GET", f"{emulator.api_base}/webhooks/{emulator.application_id}/{record.token}"
                             "/messages/@original") for _ in range(5)]
    assert [status for status, _, _ in spent] == [200] * 5
    await interaction.edit_original_response(content="after the wait")  # 429, sleeps retry_after, then 200
    assert record.original["content"] == "after the wait"
    assert emulator.rate_limited == 1 and emulator.rate_limited_buckets == Counter({"interaction-webhook": 1})


# -- lost answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["502", "reset"])
async def test_a_lost_answer_was_processed_all_the_same(discord, how):
    emulator, clock, session = discord
    you = person(discord)
    await you.respond(5)
    emulator.lose_answer("edit_original", how)
    url = f"{you.webhook}/messages/@original"
    if how == "502":
        status, headers, page = await fetch(session, "PATCH", url, {"content": "landed"})
        assert status == 502 and headers["Content-Type"].startswith("text/html") and "cloudflare" in page
    else:
        with pytest.raises(aiohttp.ClientConnectionError):  # no answer at all: the connection was reset
            await fetch(session, "PATCH", url, {"content": "landed"})
    assert you.record.original["content"] == "landed" and not you.record.loading  # yet it was done
    assert emulator.faults == [Fault("edit_original", how, 200, clock.now)]
    assert (await fetch(session, "PATCH", url, {"content": "heard"}))[0] == 200  # one answer lost, the next one arrives


async def test_discord_py_retries_a_lost_follow_up_so_it_is_posted_twice(live):
    """The hazard the bot must avoid: a POST whose 502 discord.py retries lands again."""
    emulator, bot = live
    record, interaction = await run_look(emulator, bot)
    await interaction.response.send_message("working on it")
    emulator.lose_answer("followup")
    message = await interaction.followup.send("your result", wait=True)
    assert [m["content"] for m in record.followups] == ["your result", "your result"]
    assert message.id == int(record.followups[1]["id"]) and [f.route for f in emulator.faults] == ["followup"]


async def test_a_lost_defer_is_retried_and_discord_answers_40060(live):
    emulator, bot = live
    record, interaction = await run_look(emulator, bot)
    emulator.lose_answer("callback")
    with pytest.raises(dpy.HTTPException) as refused:
        await interaction.response.defer(ephemeral=True, thinking=True)
    assert refused.value.code == 40060 and not interaction.response.is_done()  # discord.py thinks nothing was sent
    assert record.callback_type == 5 and record.loading  # while the person sees "thinking…"


async def test_discord_py_raises_on_a_reset_follow_up_that_landed(live):
    emulator, bot = live
    record, interaction = await run_look(emulator, bot)
    await interaction.response.send_message("working on it")
    emulator.lose_answer("followup", "reset")
    with pytest.raises(aiohttp.ClientConnectionError):  # Linux's ECONNRESET is not one discord.py retries
        await interaction.followup.send("your result")
    assert [m["content"] for m in record.followups] == ["your result"]


async def test_lose_answer_refuses_what_it_cannot_lose(discord):
    emulator, _, _ = discord
    with pytest.raises(ValueError):
        emulator.lose_answer("login")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        emulator.lose_answer("followup", "timeout")  # type: ignore[arg-type]


# -- a channel's messages -----------------------------------------------------------------------------


async def test_a_channel_lists_its_public_messages_newest_first_to_discord_py(live):
    emulator, bot = live
    (_, first), (_, second), (_, third) = [await run_look(emulator, bot) for _ in range(3)]
    await first.response.send_message("first")
    await second.response.send_message("only you see this", ephemeral=True)
    follow_up = await second.followup.send("second", wait=True)
    await third.response.defer(thinking=True)  # public: its original is a channel message
    await third.followup.send("third")  # resolves it
    gone = await third.followup.send("deleted", wait=True)
    await third.channel.get_partial_message(gone.id).delete()
    history = [m async for m in first.channel.history(limit=10)]
    assert [m.content for m in history] == ["third", "second", "first"]
    assert [m.interaction_metadata.id for m in history] == [third.id, second.id, first.id]  # "did my reply land?"
    assert history[1].interaction_metadata.original_response_message_id == int(emulator.records[second.token].original["id"])
    assert [m.content async for m in first.channel.history(before=follow_up)] == ["first"]
    assert [m.content async for m in first.channel.history(after=history[2])] == ["second", "third"]  # oldest first
    assert {m.content async for m in first.channel.history(limit=3, around=follow_up)} == {"first", "second", "third"}


async def test_a_dm_with_the_bot_lists_its_messages(live):
    emulator, bot = live
    record, interaction = await run_look(emulator, bot, dm=True)
    await interaction.response.send_message("in your DMs")
    assert [m.content async for m in interaction.channel.history()] == ["in your DMs"]
    assert emulator.channel_messages(record.payload["channel_id"])[0]["content"] == "in your DMs"


async def test_reading_messages_needs_view_channel_and_without_history_finds_none(live):
    emulator, bot = live
    _, interaction = await run_look(emulator, bot)
    await interaction.response.send_message("posted")
    emulator.bot_permissions = MEMBER_PERMISSIONS & ~READ_MESSAGE_HISTORY
    assert [m async for m in interaction.channel.history()] == []  # Discord's documented answer: nothing, and no error
    _, later = await run_look(emulator, bot)
    assert not later.app_permissions.read_message_history and later.app_permissions.view_channel
    emulator.bot_permissions = MEMBER_PERMISSIONS & ~VIEW_CHANNEL
    with pytest.raises(dpy.Forbidden) as refused:
        [m async for m in interaction.channel.history()]
    assert refused.value.code == 50001


async def test_the_history_query_is_checked_as_discord_does(discord):
    emulator, _, session = discord
    auth = {"Authorization": f"Bot {emulator.token}"}
    url = f"{emulator.api_base}/channels/{emulator.channel_id}/messages"
    for query, field, code in [({"limit": "0"}, "limit", "NUMBER_TYPE_MIN"), ({"limit": "101"}, "limit", "NUMBER_TYPE_MAX"),
                               ({"before": "soon"}, "before", "NUMBER_TYPE_COERCE")]:
        status, _, body = await fetch(session, "GET", url, params=query, headers=auth)
        assert status == 400 and body["code"] == 50035 and body["errors"][field]["_errors"][0]["code"] == code
    status, _, body = await fetch(session, "GET", url, params={"before": "1", "after": "1"}, headers=auth)
    assert status == 400 and body["code"] == 50035  # documented as mutually exclusive
    assert (await fetch(session, "GET", f"{emulator.api_base}/channels/{snowflake()}/messages", headers=auth))[2] == \
        error(10003, "Unknown Channel")
    assert (await fetch(session, "GET", url))[0] == 401


# -- mentions ------------------------------------------------------------------------------------------

NOBODY: tuple[list[int], list[int], bool] = ([], [], False)


@pytest.mark.parametrize("content, allowed, pinged", [
    ("hi <@11> and <@!12>, <@11> again", None, ([11, 12], [], False)),
    ("<@&21>, read this", None, ([], [21], False)),
    ("@everyone look", None, ([], [], True)),
    ("@here look", None, ([], [], True)),
    (r"\<@11> \@everyone \<@&21> \@here", None, NOBODY),
    ("`<@11>` and ```\n@everyone <@&21>\n``` and ``@here``", None, NOBODY),
    ("<@11> <@&21> @everyone", {"parse": []}, NOBODY),
    ("<@11> <@12> <@&21> @here", {"parse": ["users"]}, ([11, 12], [], False)),
    ("<@11> <@12> <@&21> <@&22> @everyone", {"users": ["12"], "roles": ["21"]}, ([12], [21], False)),
])
async def test_mentions_ping_as_discord_resolves_them(discord, content, allowed, pinged):
    you = person(discord)
    await you.respond(4, {"content": "public"})
    body = {"content": content, **({"allowed_mentions": allowed} if allowed is not None else {})}
    status, message = await you.call("POST", you.webhook, body)
    users, roles, everyone = pinged
    assert status == 200
    assert ([int(u["id"]) for u in message["mentions"]], [int(r) for r in message["mention_roles"]],
            message["mention_everyone"]) == pinged
    kinds = [Ping(message["id"], "user", u) for u in users] + [Ping(message["id"], "role", r) for r in roles]
    assert you.record.pings[:len(kinds)] == kinds and bool(you.record.pings[len(kinds):]) == everyone


async def test_an_edit_pings_and_an_ephemeral_message_pings_no_one_else(discord):
    private, public = person(discord), person(discord)
    await private.respond(5, {"flags": EPHEMERAL})
    _, message = await private.followup("<@11> @everyone")  # resolves the private original
    assert [u["id"] for u in message["mentions"]] == ["11"] and message["mention_everyone"]  # the fields say so...
    assert private.record.pings == []  # ...but only the asker sees it
    await public.respond(4, {"content": "working"})
    assert public.record.pings == []
    _, edited = await public.original("PATCH", {"content": "<@11>, done"})
    assert public.record.pings == [Ping(edited["id"], "user", 11)]


async def test_without_mention_everyone_only_users_ping_and_a_dm_has_no_everyone(discord):
    emulator, _, session = discord
    emulator.bot_permissions = MEMBER_PERMISSIONS & ~MENTION_EVERYONE
    you = person(discord)
    await you.respond(4, {"content": "@everyone <@&21> <@11>"})
    assert [(p.kind, p.id) for p in you.record.pings] == [("user", 11)]
    emulator.bot_permissions = MEMBER_PERMISSIONS
    in_dm = Person(emulator, session, emulator.interaction(2, {"name": "dream"}, dm=True))
    await in_dm.respond(4, {"content": "@everyone @here <@&21>"})
    assert in_dm.record.pings == [] and not in_dm.record.original["mention_everyone"]


async def test_allowed_mentions_that_parse_and_list_users_are_refused(discord):
    you = person(discord)
    await you.respond(4, {"content": "public"})
    status, body = await you.call("POST", you.webhook, {"content": "<@11>", "allowed_mentions": {"parse": ["users"], "users": ["11"]}})
    assert status == 400 and body["code"] == 50035 and "allowed_mentions" in body["errors"]
    assert not you.record.followups and you.record.pings == []


async def test_discord_py_reads_the_mentions_discord_resolved(live):
    emulator, bot = live
    record, interaction = await run_look(emulator, bot)
    await interaction.response.send_message("here you go")
    someone = snowflake()
    text = f"<@{someone}> @everyone"
    quiet = await interaction.followup.send(text, allowed_mentions=dpy.AllowedMentions.none(), wait=True)
    assert quiet.raw_mentions == [someone] and quiet.mentions == [] and not quiet.mention_everyone and record.pings == []
    loud = await interaction.followup.send(text, wait=True)  # discord.py sends no allowed_mentions unless told
    assert [m.id for m in loud.mentions] == [someone] and loud.mention_everyone
    assert [(p.kind, p.id) for p in record.pings] == [("user", someone), ("everyone", None)]


# -- uploads a person attaches ------------------------------------------------------------------------


def jpeg_with_fill(fill_bytes: int) -> bytes:
    """A valid 8x6 JPEG with `fill_bytes` of 0xFF padding before its frame header, which Pillow skips one byte at a time."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff" * fill_bytes + data[2:]


async def test_sizing_a_crafted_upload_does_not_stall_the_event_loop(live):
    emulator, bot = live
    crafted = Upload("slow.jpg", jpeg_with_fill(4 * 2**20), "image/jpeg")
    invoking = asyncio.create_task(run_look(emulator, bot, options={"photo": crafted}))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bot {emulator.token}"}) as session:
        answering = asyncio.create_task(fetch(session, "GET", f"{emulator.api_base}/users/@me"))
        done, _ = await asyncio.wait({invoking, answering}, return_when=asyncio.FIRST_COMPLETED)
        assert answering in done and not invoking.done()  # the emulator answered while the upload was being sized
    _, interaction = await invoking
    (attachment,) = interaction.data["resolved"]["attachments"].values()
    assert (attachment["width"], attachment["height"]) == (8, 6)
