"""bot.attachments.download against a real HTTP server on loopback: the cap, the timeout, no redirects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bot.attachments import CHUNK, DownloadError, download


async def chunked(request: web.Request) -> web.StreamResponse:
    """No Content-Length: only the streaming cap can stop it."""
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for _ in range(64):
        await response.write(b"\0" * CHUNK)
    return response


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(body=b"late")


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/small")


async def small(request: web.Request) -> web.Response:
    return web.Response(body=b"\x89PNG tiny")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/small", small)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


async def fetch(host: str, path: str, max_bytes: int = 2**20, timeout_s: float = 10) -> bytes:
    async with aiohttp.ClientSession() as session:
        return await download(f"http://{host}{path}", session=session, allowed_hosts=(host,), max_bytes=max_bytes,
                              timeout_s=timeout_s)


async def test_a_small_file_arrives_whole(server):
    assert await fetch(server, "/small") == b"\x89PNG tiny"


async def test_a_body_without_length_is_cut_at_the_cap(server):
    with pytest.raises(DownloadError, match="larger than 1 MB"):
        await fetch(server, "/chunked", max_bytes=2**20)  # the server would send 4 MiB


async def test_a_slow_download_times_out_with_a_sentence(server):
    with pytest.raises(DownloadError, match="longer than 2 seconds"):
        await fetch(server, "/slow", timeout_s=2)


async def test_redirects_are_not_followed(server):
    """A redirect could point anywhere, past the host allow-list."""
    with pytest.raises(DownloadError, match="HTTP 302"):
        await fetch(server, "/redirect")
