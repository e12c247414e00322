"""The pool's configuration: plain values, with the defaults every other layer takes from here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from models.images import Limits


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/easel, else ~/.cache/easel (EASEL_CACHE_DIR, read by the settings, overrides it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "easel"


@dataclass(frozen=True)
class PoolConfig:
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    max_batch: int = 8
    max_batch_megapixels: float = 0.0  # 0: 4 on the CPU (bigger batches overflow its caches), unbounded on GPUs
    batch_wait_s: float = 0.02
    max_queue: int = 64  # jobs waiting; beyond it new jobs are refused
    max_running_per_guild: int = 8  # one server's jobs running at once (over all devices); more wait their turn
    job_timeout_s: float = 600.0
    preload: bool = True  # load every model at start (else on first use)
    warmup: bool = True
    precision: str = "auto"  # auto (bf16/fp16 on CUDA where a task allows it, fp32 on CPU), fp32, bf16, fp16
    cpu_threads: int = 0  # 0: all cores
    limits: Limits = Limits()
    tasks: tuple[str, ...] | None = None  # task names to serve; None: every registered task
    cache_dir: Path = field(default_factory=default_cache_dir)  # converted weights; the settings pass EASEL_CACHE_DIR


@dataclass(frozen=True)
class RayConfig:
    """Where the Ray Serve application runs and how big it is (EASEL_RAY_* settings)."""

    address: str = ""  # an existing cluster ("ray://host:10001" or "host:6379"); empty: start a local Ray
    replicas: int = 1  # a fixed count, or autoscaling's minimum when max_replicas is larger
    max_replicas: int = 0  # 0: no autoscaling
    gpus_per_replica: float = 0.0  # fractions share a GPU between replicas
    cpus_per_replica: float = 1.0
