"""The bot's settings: the model side's (`models/settings.py`) plus Discord, fairness and serving.

Read once at start from the environment and a `.env` file (the environment wins), each value
checked against its range; unknown `EASEL_*` names are refused so typos show. The token is a
secret: it never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from models.errors import SettingsError
from models.jobs import DEFAULT_MAX_BYTES
from models.settings import MB, ModelSettings

__all__ = ["Settings", "SettingsError"]

DEFAULT_API_BASE = "https://discord.com/api/v10"
DISCORD_CDN_HOSTS = ("cdn.discordapp.com", "media.discordapp.net")


class Settings(ModelSettings):
    rejects_unknown: ClassVar[bool] = True

    token: SecretStr = Field(SecretStr(""), validation_alias="DISCORD_TOKEN")
    discord_api_base: str = Field(DEFAULT_API_BASE, pattern=r"^https?://\S+$")
    attachment_hosts: Annotated[tuple[str, ...], NoDecode] = Field(DISCORD_CDN_HOSTS, min_length=1)
    guild_id: int | None = Field(None, gt=0)  # sync commands to this guild only: instant, for development
    upload_limit_mb: float = Field(DEFAULT_MAX_BYTES / MB, gt=0, le=1024)  # Discord's limit for the context may be lower
    download_timeout_s: float = Field(30.0, gt=0, le=3600)
    cooldown_s: float = Field(5.0, ge=0, le=86_400)
    max_jobs_per_user: int = Field(2, ge=1, le=1000)
    allow_dms: bool = False  # commands usable in direct messages with the bot too (else servers only)
    daily_quota: float = Field(0.0, ge=0, le=1e9)  # units of work per person per UTC day (megapixel-equivalents); 0: none
    quota_file: Path | None = None  # where the day's use is kept; default <cache dir>/quota.sqlite3
    shutdown_grace_s: float = Field(30.0, ge=0, le=3600)
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(None, ge=1, le=65_535)  # /healthz and /metrics, off when unset
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shard_count: int | None = Field(None, ge=1, le=100_000)  # set: an AutoShardedBot over shard_ids (default all)
    shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None  # this process's shards, e.g. "0,1"

    @field_validator("attachment_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: object) -> object:
        return tuple(h.strip().lower() for h in value.split(",") if h.strip()) if isinstance(value, str) else value

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _shards(cls, value: object) -> object:
        return tuple(int(i) for i in value.split(",") if i.strip()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _shards_fit(self) -> Settings:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("EASEL_SHARD_IDS needs EASEL_SHARD_COUNT")
            if not self.shard_ids or any(not 0 <= i < self.shard_count for i in self.shard_ids):
                raise ValueError(f"EASEL_SHARD_IDS must be shard numbers from 0 to {self.shard_count - 1}")
        return self

    @property
    def holds_shard_zero(self) -> bool:
        """The process with shard 0 syncs the commands (once for all processes) and receives DMs."""
        return self.shard_ids is None or 0 in self.shard_ids

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def upload_limit(self) -> int:
        return int(self.upload_limit_mb * MB)

    @property
    def quota_path(self) -> Path:
        return self.quota_file or self.cache_dir / "quota.sqlite3"
