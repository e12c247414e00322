"""The model side's settings (device, cache, input limits, the pool's queue and batching), validated.

Read from `EASEL_*` environment variables and a `.env` file alike (the environment wins), each
checked against its range; a bad value stops the program with one sentence naming the variable.
The bot's settings (`bot/settings.py`) extend these, so `python -m models` never imports the bot
and both read the same names. The defaults are the pool's own (`PoolConfig`, `Limits`): each
number is written once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.errors import SettingsError
from models.images import Limits
from models.pool.config import PoolConfig, RayConfig, default_cache_dir
from models.pool.devices import DEVICE_SPEC

MB = 2**20
PREFIX = "EASEL_"


def configured_cache_dir(env_file: Path | None = Path(".env")) -> Path:
    """EASEL_CACHE_DIR (environment or `env_file`), else $XDG_CACHE_HOME/easel, else ~/.cache/easel: the
    folder to pass to `models.weights` for callers that hold no settings of their own."""
    return ModelSettings.load(env_file).cache_dir


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True,
                                      validate_by_name=True, validate_by_alias=True)
    rejects_unknown: ClassVar[bool] = False  # the bot's full settings reject unknown EASEL_* names (typos)

    device: str = Field(PoolConfig.device, description="auto (every visible GPU, else the CPU), cpu, cuda or cuda:N")
    max_pixels: int = Field(Limits.max_pixels, ge=64 * 64, le=1_000_000_000, description="largest image accepted, in pixels")
    download_limit_mb: float = Field(Limits.max_bytes / MB, gt=0, le=1024, description="largest image file accepted")
    max_queue: int = Field(PoolConfig.max_queue, ge=1, le=100_000, description="jobs waiting before new ones are refused")
    max_batch: int = Field(PoolConfig.max_batch, ge=1, le=1024, description="largest batch")
    max_batch_megapixels: float = Field(PoolConfig.max_batch_megapixels, ge=0, description="0: the device's default")
    batch_wait_ms: int = Field(round(PoolConfig.batch_wait_s * 1000), ge=0, le=60_000)
    max_jobs_per_guild: int = Field(PoolConfig.max_running_per_guild, ge=1, le=100_000,
                                    description="one server's jobs running at once; the rest wait their turn")
    preload: bool = PoolConfig.preload
    backend: Literal["local", "ray"] = Field("local", description="local: this process's devices; ray: a Ray Serve app")
    ray_address: str = Field(RayConfig.address, description="an existing Ray cluster; empty: start a local Ray")
    ray_replicas: int = Field(RayConfig.replicas, ge=1, le=10_000, description="replicas, or autoscaling's minimum")
    ray_max_replicas: int = Field(RayConfig.max_replicas, ge=0, le=10_000, description="autoscale up to this (0: off)")
    ray_gpus_per_replica: float = Field(RayConfig.gpus_per_replica, ge=0, le=1, description="fractions share a GPU")
    ray_cpus_per_replica: float = Field(RayConfig.cpus_per_replica, gt=0, le=1024)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    wheelhouse: Path | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        spec = value.strip().lower()
        if DEVICE_SPEC.fullmatch(spec) is None:
            raise ValueError("it must be auto, cpu, cuda or cuda:N")
        return spec

    @field_validator("cache_dir", "wheelhouse")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @classmethod
    def load(cls, env_file: Path | None = Path(".env")) -> Self:
        """The settings from the environment and `env_file`; SettingsError names the first bad variable."""
        names = set(os.environ) | (set(dotenv_values(env_file)) if env_file is not None and env_file.is_file() else set())
        if cls.rejects_unknown:
            unknown = sorted(n for n in names if n.upper().startswith(PREFIX) and n.upper() not in cls.variables())
            if unknown:
                raise SettingsError(f"Unknown setting {unknown[0]}; see README.md, Configuration.")
        try:
            return cls(_env_file=env_file if env_file is not None and env_file.is_file() else None)
        except ValidationError as error:
            raise SettingsError(cls._sentence(error)) from None

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable name -> field name, for every setting."""
        return {(f.validation_alias if isinstance(f.validation_alias, str) else PREFIX + name.upper()): name
                for name, f in cls.model_fields.items()}

    @classmethod
    def _sentence(cls, error: ValidationError) -> str:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        variable = next((v for v, name in cls.variables().items() if field in (name, v)), field)
        why = first["msg"].removeprefix("Value error, ").replace("Input should", "it should")
        if not first["loc"]:  # a rule between settings: its sentence names them
            return f"{why}; see README.md, Configuration."
        shown = "" if "token" in variable.lower() else f"={first['input']!r}"  # never echo a secret
        return f"{variable}{shown} is not valid: {why}; see README.md, Configuration."

    @property
    def download_limit(self) -> int:
        return int(self.download_limit_mb * MB)

    @property
    def limits(self) -> Limits:
        return Limits(max_bytes=self.download_limit, max_pixels=self.max_pixels)

    def pool_config(self, **overrides: Any) -> PoolConfig:
        """The pool's configuration from these settings; `overrides` for what a caller decides (the CLI's --device)."""
        values: dict[str, Any] = dict(
            device=self.device, max_batch=self.max_batch, max_batch_megapixels=self.max_batch_megapixels,
            batch_wait_s=self.batch_wait_ms / 1000, max_queue=self.max_queue, max_running_per_guild=self.max_jobs_per_guild,
            preload=self.preload, limits=self.limits, cache_dir=self.cache_dir,
        )
        return PoolConfig(**{**values, **overrides})

    def ray_config(self) -> RayConfig:
        return RayConfig(address=self.ray_address, replicas=self.ray_replicas, max_replicas=self.ray_max_replicas,
                         gpus_per_replica=self.ray_gpus_per_replica, cpus_per_replica=self.ray_cpus_per_replica)
