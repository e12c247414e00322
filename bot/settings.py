"""Settings: read once at start from the environment and an optional .env file, validated there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_API_BASE = "https://discord.com/api/v10"
DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")
MB = 2**20


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it should be."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments, an optional 'export ', and matching quotes around values."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


@dataclass(frozen=True)
class Settings:
    token: str = field(default="", repr=False)  # never printed or logged
    discord_api_base: str = DEFAULT_API_BASE  # EASEL_DISCORD_API_BASE
    attachment_hosts: tuple[str, ...] = DISCORD_CDN_HOSTS
    device: str = "auto"
    guild_id: int | None = None  # sync commands to this guild only: instant, for development
    upload_limit_mb: float = 10.0  # largest file we post (Discord's limit for the context may be lower)
    download_limit_mb: float = 25.0  # largest attachment we download
    max_pixels: int = 40_000_000
    download_timeout_s: float = 30.0
    cooldown_s: float = 5.0
    max_jobs_per_user: int = 2
    max_jobs_per_guild: int = 8
    max_queue: int = 64
    max_batch: int = 8
    max_batch_megapixels: float = 0.0  # 0: the device's default (4 on the CPU, unbounded on GPUs)
    batch_wait_ms: int = 20
    preload: bool = True
    shutdown_grace_s: float = 30.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # /healthz and /metrics, off when unset
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")) -> Settings:
        """Environment variables win over the .env file; unknown EASEL_* names are an error (typos)."""
        merged: dict[str, str] = read_env_file(env_file) if env_file is not None and env_file.is_file() else {}
        merged.update(os.environ if env is None else env)
        known = {f"EASEL_{f.name.upper()}" for f in fields(cls)} | {"EASEL_CACHE_DIR", "EASEL_WHEELHOUSE"}
        unknown = sorted(k for k in merged if k.startswith("EASEL_") and k not in known)
        if unknown:
            raise SettingsError(f"Unknown setting {unknown[0]}; see README.md, Configuration.")
        values: dict[str, object] = {"token": merged.get("DISCORD_TOKEN", "").strip()}
        for f in fields(cls):
            raw = merged.get(f"EASEL_{f.name.upper()}")
            if raw is None or raw == "" or f.name == "token":
                continue
            values[f.name] = _parse(f.name, raw, f.type)
        return cls(**values)  # type: ignore[arg-type]

    @property
    def upload_limit(self) -> int:
        return int(self.upload_limit_mb * MB)

    @property
    def download_limit(self) -> int:
        return int(self.download_limit_mb * MB)


def _parse(name: str, raw: str, kind: object) -> object:
    variable = f"EASEL_{name.upper()}"
    try:
        if name == "attachment_hosts":
            hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
            if not hosts:
                raise ValueError
            return hosts
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes", "on")
        return raw
    except ValueError:
        raise SettingsError(f"{variable}={raw!r} is not valid; see README.md, Configuration.") from None
