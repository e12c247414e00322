"""Download attachments safely: allowed hosts only, a streaming byte cap, a timeout, no redirects."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import aiohttp

from models.errors import UploadError

CHUNK = 64 * 1024


class DownloadError(UploadError):
    """The attachment could not be fetched or is not acceptable; one sentence for the person."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_url(url: str, allowed_hosts: tuple[str, ...]) -> None:
    """Only Discord's CDN (or what EASEL_ATTACHMENT_HOSTS allows); https, or http on loopback for tests."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if host not in allowed_hosts and netloc not in allowed_hosts:
        raise DownloadError("That attachment is not hosted on Discord, so I won't fetch it.")
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
        raise DownloadError("That attachment link is not https, so I won't fetch it.")


async def download(
    url: str, *, session: aiohttp.ClientSession, allowed_hosts: tuple[str, ...], max_bytes: int, timeout_s: float
) -> bytes:
    """The attachment's bytes, read in chunks and abandoned as soon as they pass max_bytes."""
    check_url(url, allowed_hosts)
    limit_mb = max_bytes / 2**20
    try:
        async with session.get(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                raise DownloadError(f"Discord did not hand me that attachment (HTTP {response.status}); try uploading it again.")
            if response.content_length is not None and response.content_length > max_bytes:
                raise DownloadError(f"That file is larger than {limit_mb:.0f} MB.")
            data = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise DownloadError(f"That file is larger than {limit_mb:.0f} MB.")
            return bytes(data)
    except TimeoutError:
        raise DownloadError(f"Downloading that attachment took longer than {timeout_s:.0f} seconds.") from None
    except aiohttp.ClientError:
        raise DownloadError("I couldn't download that attachment; try uploading it again.") from None
