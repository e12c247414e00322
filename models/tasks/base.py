"""What a task is to the pool: plan cheaply, prepare inputs, run a batch, finish one result.

The pool calls `plan` on the event loop when a job is submitted (header parsing and option
checks only, so a bad upload is refused before it queues), then, on the device's worker
thread: `prepare` each job of a batch, one `run` for the whole batch, `finish` each job.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from models.images import ImageInfo, Limits
from models.jobs import Job, Result
from models.options import Option, OptionError
from models.weights import WeightsSpec

StateDict = dict[str, torch.Tensor]


# Decoding and resizing one megapixel of upload takes 0.01-0.02 s on a CPU core: about 0.005 of
# the work of one megapixel through a network (2-4 s on two cores, for /stylize and /fix alike).
DECODE_COST_PER_MEGAPIXEL = 0.005


@dataclass(frozen=True)
class Plan:
    key: Hashable  # jobs with equal keys may share a batch
    # All the job's work, in megapixel-equivalents of network work (decoding included): what the
    # wait estimate, the batch budget and the daily quota count, so a cheap-looking job cannot be
    # expensive and teach the estimator a wrong speed.
    cost: float


def decode_cost(info: ImageInfo) -> float:
    """The work of decoding an upload (and resizing it), whatever size the output is."""
    return info.width * info.height / 1e6 * DECODE_COST_PER_MEGAPIXEL


def no_progress(fraction: float) -> None:
    """Progress nobody follows (warm-up runs, a Ray replica's batches)."""


def every_item(i: int) -> bool:
    """Nothing in the batch was cancelled."""
    return True


@dataclass
class RunContext:
    """Where and how a batch runs; `shrink` > 0 asks for a smaller-memory attempt after an OOM.

    `wanted(i)` turns False once items[i]'s job is cancelled: a task that works in steps (tiles)
    may skip that item's remaining steps; its output is then discarded, so any placeholder will do."""

    device: torch.device
    reduced_dtype: torch.dtype | None = None  # autocast dtype where a task allows it
    channels_last: bool = False
    shrink: int = 0
    progress: Callable[[float], None] = no_progress
    wanted: Callable[[int], bool] = every_item

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
    weights: ClassVar[tuple[WeightsSpec, ...]] = ()  # what `load` gets, read from the cache by the pool's worker
    options: ClassVar[tuple[Option, ...]] = ()  # every option a job may carry, declared once

    @abstractmethod
    def plan(self, job: Job, limits: Limits) -> Plan: ...

    @abstractmethod
    def load(self, states: Mapping[str, StateDict], device: torch.device, channels_last: bool) -> Any:
        """Build the networks from `states` (one state dict per entry of `weights`, by key) on `device`, in eval mode."""

    @abstractmethod
    def prepare(self, job: Job, limits: Limits) -> Any: ...

    @abstractmethod
    def run(self, nets: Any, items: list[Any], ctx: RunContext) -> list[Any]:
        """Run one batch. Contract: exactly one output per item, in the items' order. The worker
        checks the count and fails every job of the batch at once (naming the task) if it differs."""

    @abstractmethod
    def finish(self, job: Job, item: Any, output: Any) -> Result: ...

    def warmup_jobs(self) -> list[Job]:
        """Tiny jobs run once at start so the first real request is not slowed by lazy initialisation."""
        return []


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
