"""One device's worker: its thread, its networks, and one batch of a task run end to end.

`process` is everything that happens to a batch once it has been chosen: decode each job's
inputs (fanned out over the CPU threads), run the task once for the whole batch on the device
(halving the batch, then shrinking the work, on out-of-memory), check the task's output count,
and encode each result. It knows nothing of queues or callers: it reports each job's outcome
through `deliver`, so any front end (the local pool, a Ray Serve replica) can drive it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import torch

from models import weights
from models.errors import ResourceError, TaskContractError, UserError
from models.jobs import Job, Result
from models.pool.config import PoolConfig
from models.pool.devices import reduced_dtype
from models.tasks import RunContext, Task, every_item, no_progress

log = logging.getLogger("easel.pool")

MAX_SHRINK = 3
Outcome = Result | BaseException


class Worker:
    def __init__(self, device: torch.device, config: PoolConfig, cpu: Executor) -> None:
        self.device, self.config, self.cpu = device, config, cpu
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"easel-{device}")
        self.nets: dict[str, Any] = {}
        self.channels_last = True  # faster convolutions on CUDA and on this project's CPUs (docs/performance.md)
        self.batch_megapixels = config.max_batch_megapixels or (4.0 if device.type == "cpu" else float("inf"))
        self.busy = False

    @property
    def name(self) -> str:
        return str(self.device)

    def nets_for(self, task: Task) -> Any:
        """The task's networks on this device, built once from the weights it declares (on the worker thread)."""
        if task.name not in self.nets:
            started = time.perf_counter()
            states = {spec.key: weights.load(spec, self.config.cache_dir) for spec in task.weights}
            self.nets[task.name] = task.load(states, self.device, self.channels_last)
            log.info("loaded %s on %s in %.1fs", task.name, self.device, time.perf_counter() - started)
        return self.nets[task.name]

    def context(self, progress: Callable[[float], None] = no_progress, wanted: Callable[[int], bool] = every_item) -> RunContext:
        return RunContext(self.device, reduced_dtype(self.config.precision, self.device), self.channels_last, 0, progress, wanted)

    def run_batch(self, task: Task, items: list[Any], ctx: RunContext) -> list[Any]:
        """task.run, held to its contract (one output per item), with out-of-memory recovery:
        split the batch, then ask the task to shrink its work."""
        try:
            outputs = list(task.run(self.nets_for(task), items, ctx))
        except torch.OutOfMemoryError:
            self.release_memory()
            if len(items) > 1:
                half = len(items) // 2
                log.warning("out of memory on %s with a batch of %d %s jobs: splitting", self.device, len(items), task.name)
                second = dataclasses.replace(ctx, wanted=lambda i: ctx.wanted(half + i))
                return self.run_batch(task, items[:half], ctx) + self.run_batch(task, items[half:], second)
            if ctx.shrink < MAX_SHRINK:
                log.warning("out of memory on %s for one %s job: retrying smaller (level %d)", self.device, task.name, ctx.shrink + 1)
                return self.run_batch(task, items, dataclasses.replace(ctx, shrink=ctx.shrink + 1))
            raise ResourceError("That is too large for this server's GPU memory right now; try a smaller image or size.") from None
        if len(outputs) != len(items):
            raise TaskContractError(f"task {task.name!r} returned {len(outputs)} outputs for a batch of {len(items)}; "
                                    "Task.run must return exactly one per item")
        return outputs

    def process(self, task: Task, jobs: list[Job], deliver: Callable[[int, Outcome], None],
                progress: Callable[[float], None] = no_progress, wanted: Callable[[int], bool] = every_item) -> None:
        """On this worker's thread: run jobs[i] for every i still `wanted`, as one batch, and
        `deliver(i, result or error)` for each as soon as it is known. Jobs no longer wanted
        (cancelled) are skipped before and after the model runs, and between the steps of a task
        that works in steps (RunContext.wanted)."""
        live, items = [], []
        for i, item in self._on_cpu([i for i in range(len(jobs)) if wanted(i)], lambda i: task.prepare(jobs[i], self.config.limits)):
            if isinstance(item, BaseException):
                _log_failure(task, item, 1)
                deliver(i, item)
            elif wanted(i):  # dropped while decoding: never computed
                live.append(i)
                items.append(item)
        if not live:
            return
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = self.run_batch(task, items, self.context(progress, lambda k: wanted(live[k])))
        except Exception as error:
            _log_failure(task, error, len(live))
            for i in live:
                deliver(i, error)
            return
        timings = {"model_s": round(time.perf_counter() - started, 3), "batch": len(live), "device": self.name}
        done = [(i, item, output) for i, item, output in zip(live, items, outputs, strict=True) if wanted(i)]
        for (i, _, _), result in self._on_cpu(done, lambda d: task.finish(jobs[d[0]], d[1], d[2])):
            if isinstance(result, BaseException):
                _log_failure(task, result, 1)
                deliver(i, result)
            else:
                deliver(i, Result(result.files, {**result.info, **timings}))

    def warm(self, task: Task) -> None:
        """Run the task's warm-up jobs once, so the first real request meets no lazy initialisation."""
        for job in task.warmup_jobs():
            with torch.inference_mode():
                item = task.prepare(job, self.config.limits)
                task.finish(job, item, self.run_batch(task, [item], self.context())[0])

    def _on_cpu(self, things: list[Any], fn: Callable[[Any], Any]) -> list[tuple[Any, Any]]:
        """(thing, fn(thing) or the exception it raised), computed on the CPU threads in parallel."""
        def attempt(thing: Any) -> Any:
            try:
                with torch.inference_mode():
                    return fn(thing)
            except Exception as error:
                return error
        return list(zip(things, self.cpu.map(attempt, things)))

    def release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def status(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return {"device": self.name, "busy": self.busy, "models": sorted(self.nets), "name": name}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _log_failure(task: Task, error: BaseException, jobs: int) -> None:
    """Log what is not the person's doing, once per failure, naming the task."""
    if not isinstance(error, UserError):
        log.error("%d %s job(s) failed", jobs, task.name, exc_info=error)
