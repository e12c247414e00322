"""The loopback Discord refuses what Discord refuses: each reply rule, over plain HTTP, on a clock the test moves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.sandbox.emulator import EPHEMERAL, DiscordEmulator, Record


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
