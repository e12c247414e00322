"""The pool's whole vocabulary: plain data in (Job), image bytes out (Result).

Nothing here holds a tensor, a device or a callback, so a job can cross a process or network
boundary unchanged (the route to a Ray Serve backend).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

DEFAULT_MAX_BYTES = 10 * 2**20


@dataclass(frozen=True)
class Job:
    """One request: which task, its options (JSON-like values) and its input images (encoded bytes)."""

    task: str
    options: Mapping[str, Any] = field(default_factory=dict)
    images: Mapping[str, bytes] = field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES  # every output file must fit (Discord's upload limit)
    format: str = "auto"  # "auto", "png", "jpeg" or "webp" for stills
    user: str = ""  # who asked, and in which server: the queue serves servers, and people within them, in turn
    guild: str = ""  # empty outside a server (a DM, the command line)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # what `pool.cancel(id)` names: plain data, any backend


@dataclass(frozen=True)
class File:
    name: str
    data: bytes


@dataclass(frozen=True)
class Result:
    """Encoded output files (the first is the main one) and what was done, as plain data."""

    files: tuple[File, ...]
    info: Mapping[str, Any]


@dataclass(frozen=True)
class Progress:
    """What a waiting person can be told: queue position while queued, then a fraction while running."""

    state: str  # "queued" or "running"
    position: int = 0  # jobs ahead in the queue (0 = next)
    fraction: float = 0.0
    eta_s: float | None = None


class CancelOutcome(StrEnum):
    """What `pool.cancel(job_id)` found, so the person pressing Cancel is told the truth."""

    CANCELLED = "cancelled"  # it was waiting or running, and stops now
    ALREADY_CANCELLED = "already_cancelled"
    FINISHED = "finished"  # it ended before the press: done, failed or timed out
    UNKNOWN = "unknown"  # never held here, or forgotten since (a restart)
