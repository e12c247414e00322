"""What a task is to the pool: plan cheaply, prepare inputs, run a batch, finish one result.

The pool calls `plan` on the event loop when a job is submitted (header parsing and option
checks only, so a bad upload is refused before it queues), then, on the device's worker
thread: `prepare` each job of a batch, one `run` for the whole batch, `finish` each job.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from models.errors import UserError
from models.images import Limits
from models.jobs import Job, Result


class OptionError(UserError):
    """An option is missing or out of range; the message names it."""


@dataclass(frozen=True)
class Plan:
    key: Hashable  # jobs with equal keys may share a batch
    cost: float  # rough work in megapixel-equivalents, for queue-wait estimates


@dataclass
class RunContext:
    """Where and how a batch runs; `shrink` > 0 asks for a smaller-memory attempt after an OOM."""

    device: torch.device
    reduced_dtype: torch.dtype | None = None  # autocast dtype where a task allows it
    channels_last: bool = False
    shrink: int = 0
    progress: Callable[[float], None] = field(default=lambda fraction: None)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @contextlib.contextmanager
    def autocast(self, allowed: bool) -> Iterator[None]:
        if allowed and self.reduced_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.reduced_dtype):
                yield
        else:
            yield


class Task(ABC):
    name: ClassVar[str]
    weights: ClassVar[tuple[str, ...]]  # registry keys this task loads

    @abstractmethod
    def plan(self, job: Job, limits: Limits) -> Plan: ...

    @abstractmethod
    def load(self, device: torch.device, channels_last: bool) -> Any:
        """Build the networks with their weights on `device`, in eval mode."""

    @abstractmethod
    def prepare(self, job: Job, limits: Limits) -> Any: ...

    @abstractmethod
    def run(self, nets: Any, items: list[Any], ctx: RunContext) -> list[Any]: ...

    @abstractmethod
    def finish(self, job: Job, item: Any, output: Any) -> Result: ...

    def warmup_jobs(self) -> list[Job]:
        """Tiny jobs run once at start so the first real request is not slowed by lazy initialisation."""
        return []


def option_float(options: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = options.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be a number between {lo:g} and {hi:g}.") from None
    if not lo <= value <= hi:
        raise OptionError(f"{name} must be between {lo:g} and {hi:g}, not {value:g}.")
    return value


def option_int(options: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and value.lstrip("-").isdigit()):
        raise OptionError(f"{name} must be a whole number between {lo} and {hi}.")
    value = int(value)
    if not lo <= value <= hi:
        raise OptionError(f"{name} must be between {lo} and {hi}, not {value}.")
    return value


def option_choice(options: Mapping[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = str(options.get(name, default))
    if value not in choices:
        raise OptionError(f"{name} must be one of {', '.join(choices)}.")
    return value


def image_input(job: Job, name: str) -> bytes:
    try:
        return job.images[name]
    except KeyError:
        raise OptionError(f"This needs an image called {name!r}.") from None


def to_tensor(image: Any) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float tensor in 0..1."""
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def to_image(tensor: torch.Tensor) -> Any:
    """(3, H, W) tensor in 0..1 -> PIL RGB image."""
    from PIL import Image

    array = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")
