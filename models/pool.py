"""InferencePool: an asyncio front to the models, with dynamic batching and backpressure.

    pool = InferencePool(PoolConfig(device="auto"))
    await pool.start()
    result = await pool.submit(Job("dream", {"count": 4, "seed": 7}), on_progress=print)
    await pool.close()

`submit` is the whole API a caller needs (plus `status` and `close`): plain data in, encoded
images out. Inside, one worker per device (each CUDA device, or the CPU) pulls jobs from a
bounded queue. The oldest job's batch key decides the next batch: jobs with the same key
that arrive within `batch_wait_s` of it join, up to `max_batch`, in arrival order. Model code
runs on the worker's own thread, so the event loop never waits on a tensor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from models.errors import BusyError, DeviceError, JobTimeout, ResourceError, UserError
from models.images import Limits
from models.jobs import Job, Progress, Result
from models.tasks import TASKS, Plan, RunContext, Task

log = logging.getLogger("easel.pool")

ProgressCallback = Callable[[Progress], None]
MAX_SHRINK = 3


@dataclass(frozen=True)
class PoolConfig:
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    max_batch: int = 8
    max_batch_megapixels: float = 0.0  # 0: 4 on the CPU (bigger batches overflow its caches), unbounded on GPUs
    batch_wait_s: float = 0.02
    max_queue: int = 64
    job_timeout_s: float = 600.0
    preload: bool = True  # load every model at start (else on first use)
    warmup: bool = True
    precision: str = "auto"  # auto (bf16/fp16 on CUDA where a task allows it, fp32 on CPU), fp32, bf16, fp16
    cpu_threads: int = 0  # 0: all cores
    limits: Limits = Limits()
    tasks: tuple[str, ...] = tuple(TASKS)


def resolve_devices(spec: str) -> list[torch.device]:
    """Device semantics (EASEL_DEVICE, --device): auto = every visible GPU, else the CPU."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return [torch.device("cuda", i) for i in range(count)] if count else [torch.device("cpu")]
    if spec == "cpu":
        return [torch.device("cpu")]
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise DeviceError(f"The device must be auto, cpu, cuda or cuda:N, not {spec!r}.")
    if not count:
        raise DeviceError(f"Device {spec} was asked for, but PyTorch sees no CUDA device (a CPU-only build, or no driver).")
    if match[1] is None:
        return [torch.device("cuda", i) for i in range(count)]
    if int(match[1]) >= count:
        raise DeviceError(f"Device {spec} was asked for, but only {count} CUDA device(s) are visible.")
    return [torch.device("cuda", int(match[1]))]


def keep_freed_memory() -> None:
    """Ask glibc to keep large freed blocks for reuse instead of returning them to the kernel.

    CPU inference allocates and frees activations of hundreds of MB per image; by default each
    is a fresh mmap whose pages fault in again on every request, which costs as much as the
    arithmetic at 1024 px. The price is that the process keeps its peak memory. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)


def _reduced_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} seconds" if seconds < 90 else f"{seconds / 60:.0f} minutes"


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Hand a callback to the event loop from the worker thread; after shutdown there is no one to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


@dataclass(eq=False)
class _Ticket:
    job: Job
    task: Task
    plan: Plan
    future: asyncio.Future[Result]
    on_progress: ProgressCallback | None
    queued_at: float = field(default_factory=time.monotonic)
    gap: float = float("inf")  # seconds since the job submitted before this one
    started_at: float = 0.0
    cancelled: bool = False
    last_report: tuple[str, int, float] = ("", -1, -1.0)

    def report(self, progress: Progress) -> None:
        """Call the progress callback when something a person would notice changed."""
        key = (progress.state, progress.position, round(progress.fraction, 1))
        if self.on_progress is None or self.cancelled or key == self.last_report:
            return
        self.last_report = key
        try:
            self.on_progress(progress)
        except Exception:
            log.exception("progress callback failed for a %s job", self.job.task)


class _Worker:
    """One device: its thread, its loaded networks, and the batch it is running."""

    def __init__(self, device: torch.device, config: PoolConfig) -> None:
        self.device = device
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"easel-{device}")
        self.nets: dict[str, Any] = {}
        self.channels_last = True  # faster convolutions on CUDA and on this project's CPUs (see README, Performance)
        self.batch_megapixels = config.max_batch_megapixels or (4.0 if device.type == "cpu" else float("inf"))
        self.busy = False

    def name(self) -> str:
        return str(self.device)

    def nets_for(self, task: Task) -> Any:
        """Load a task's networks once per device (on the worker thread)."""
        if task.name not in self.nets:
            started = time.perf_counter()
            self.nets[task.name] = task.load(self.device, self.channels_last)
            log.info("loaded %s on %s in %.1fs", task.name, self.device, time.perf_counter() - started)
        return self.nets[task.name]

    def context(self, progress: Callable[[float], None]) -> RunContext:
        return RunContext(self.device, _reduced_dtype(self.config.precision, self.device), self.channels_last, 0, progress)

    def run_batch(self, task: Task, items: list[Any], ctx: RunContext) -> list[Any]:
        """task.run with out-of-memory recovery: split the batch, then ask the task to shrink its work."""
        try:
            return task.run(self.nets_for(task), items, ctx)
        except torch.OutOfMemoryError:
            self.release_memory()
            if len(items) > 1:
                half = len(items) // 2
                log.warning("out of memory on %s with a batch of %d %s jobs: splitting", self.device, len(items), task.name)
                return self.run_batch(task, items[:half], ctx) + self.run_batch(task, items[half:], ctx)
            if ctx.shrink < MAX_SHRINK:
                log.warning("out of memory on %s for one %s job: retrying smaller (level %d)", self.device, task.name, ctx.shrink + 1)
                return self.run_batch(task, items, dataclasses.replace(ctx, shrink=ctx.shrink + 1))
            raise ResourceError("That is too large for this server's GPU memory right now; try a smaller image or size.") from None

    def release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class InferencePool:
    def __init__(self, config: PoolConfig = PoolConfig(), tasks: list[Task] | None = None) -> None:
        """`tasks` replaces the registry's (tests use small fakes); by default config.tasks names them."""
        self.config = config
        self.tasks = {t.name: t for t in tasks} if tasks is not None else {name: TASKS[name] for name in config.tasks}
        self._queue: list[_Ticket] = []
        self._changed = asyncio.Condition()
        self._workers: list[_Worker] = []
        self._loops: list[asyncio.Task[None]] = []
        self._running: set[_Ticket] = set()
        self._cpu: ThreadPoolExecutor | None = None  # decoding and encoding, shared by the device workers
        self._closing = False
        self._last_submit = float("-inf")
        self._seconds_per_cost: dict[str, float] = {}
        self.started = False

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Pick devices, and (by default) load and warm up every model before taking work."""
        if self.config.cpu_threads or not torch.cuda.is_available():
            torch.set_num_threads(self.config.cpu_threads or len(os.sched_getaffinity(0)))  # the cores we may use
        self._workers = [_Worker(d, self.config) for d in resolve_devices(self.config.device)]
        self._cpu = ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="easel-cpu")
        if any(w.device.type == "cpu" for w in self._workers):
            keep_freed_memory()
        if self.config.preload:
            await asyncio.gather(*(self._prepare_worker(w) for w in self._workers))
        self._loops = [asyncio.create_task(self._work(w), name=f"easel-pool-{w.name()}") for w in self._workers]
        self.started = True

    async def _prepare_worker(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        for task in self.tasks.values():
            await loop.run_in_executor(worker.executor, worker.nets_for, task)
            if self.config.warmup:
                for job in task.warmup_jobs():
                    await loop.run_in_executor(worker.executor, self._warm, worker, task, job)

    def _warm(self, worker: _Worker, task: Task, job: Job) -> None:
        with torch.inference_mode():
            item = task.prepare(job, self.config.limits)
            task.finish(job, item, worker.run_batch(task, [item], worker.context(lambda f: None))[0])

    async def close(self, deadline_s: float = 30.0) -> None:
        """Stop taking jobs, let queued and running ones finish until the deadline, then cancel the rest."""
        self._closing = True
        end = time.monotonic() + deadline_s
        while (self._queue or self._running) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for ticket in self._queue + list(self._running):
            ticket.cancelled = True
            if not ticket.future.done():
                ticket.future.set_exception(BusyError("The bot is shutting down; please try again in a minute."))
        self._queue.clear()
        for loop_task in self._loops:
            loop_task.cancel()
        for worker in self._workers:
            worker.executor.shutdown(wait=False, cancel_futures=True)
        if self._cpu is not None:  # None when start() never ran or failed before it
            self._cpu.shutdown(wait=False, cancel_futures=True)
        self.started = False

    # -- submitting ------------------------------------------------------------------

    async def submit(self, job: Job, on_progress: ProgressCallback | None = None, timeout: float | None = None) -> Result:
        """Run one job; raises UserError (bad input), BusyError (queue full, or it could not finish
        within `timeout`), JobTimeout, ResourceError. Cancelling the await drops the job."""
        if self._closing or not self.started:
            raise BusyError("The bot is shutting down; please try again in a minute.")
        task = self.tasks.get(job.task)
        if task is None:
            raise UserError(f"There is no {job.task!r} command here.")
        plan = task.plan(job, self.config.limits)
        if len(self._queue) >= self.config.max_queue:
            raise BusyError("I'm busy with a queue of requests right now; please try again in a moment.")
        timeout = min(timeout or self.config.job_timeout_s, self.config.job_timeout_s)
        estimate = self.estimate_wait_s(task.name, plan.cost)
        if estimate is not None and estimate > timeout:
            raise BusyError(f"The queue would take about {_duration(estimate)}, longer than I can keep "
                            "your request open; please try again later.")
        ticket = _Ticket(job, task, plan, asyncio.get_running_loop().create_future(), on_progress)
        ticket.gap, self._last_submit = ticket.queued_at - self._last_submit, ticket.queued_at
        self._queue.append(ticket)
        ticket.report(Progress("queued", len(self._queue) - 1, 0.0, estimate))
        async with self._changed:
            self._changed.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
        except TimeoutError:
            self._drop(ticket)
            raise JobTimeout(f"That took longer than {timeout:.0f} seconds and was stopped.") from None
        except asyncio.CancelledError:
            self._drop(ticket)
            raise

    def _drop(self, ticket: _Ticket) -> None:
        ticket.cancelled = True
        if ticket in self._queue:
            self._queue.remove(ticket)
            self._report_positions()
        if not ticket.future.done():
            ticket.future.cancel()

    # -- scheduling ------------------------------------------------------------------

    def _mates(self, head: _Ticket, worker: _Worker) -> tuple[list[_Ticket], bool]:
        """Queued jobs that can share head's batch, in arrival order; and whether the batch is full."""
        mates, total = [], 0.0
        for ticket in self._queue:
            if ticket.plan.key != head.plan.key:
                continue
            if mates and total + ticket.plan.cost > worker.batch_megapixels:
                return mates, True
            mates.append(ticket)
            total += ticket.plan.cost
            if len(mates) == self.config.max_batch:
                return mates, True
        return mates, False

    async def _next_batch(self, worker: _Worker) -> list[_Ticket]:
        """Wait for work; return the oldest job plus same-key jobs that came within the window.

        The oldest job waits for company only while jobs are arriving closer together than the
        window: a lone request from a quiet server starts at once instead of paying the window.
        """
        async with self._changed:
            while True:
                if not self._queue:
                    await self._changed.wait()
                    continue
                head = self._queue[0]
                mates, full = self._mates(head, worker)
                wait = head.queued_at + self.config.batch_wait_s - time.monotonic()
                busy = head.gap < self.config.batch_wait_s
                if wait > 0 and busy and not full:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
                for t in mates:
                    self._queue.remove(t)
                self._report_positions()
                return mates

    def _report_positions(self) -> None:
        for position, ticket in enumerate(self._queue):
            ticket.report(Progress("queued", position, 0.0, self.estimate_wait_s(ticket.task.name, ticket.plan.cost, position)))

    async def _work(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(worker)
            batch = [t for t in batch if not t.cancelled]
            if not batch:
                continue
            worker.busy = True
            self._running.update(batch)
            started = time.monotonic()
            for t in batch:
                t.started_at = started
                t.report(Progress("running", 0, 0.0))
            try:
                await loop.run_in_executor(worker.executor, self._execute, worker, batch, loop)
            except Exception:  # _execute delivers per-job errors itself; this is a bug in the pool
                log.exception("batch of %d %s jobs failed on %s", len(batch), batch[0].task.name, worker.name())
            finally:
                self._learn(batch, time.monotonic() - started)
                self._running.difference_update(batch)
                worker.busy = False
            if not self._queue and worker.device.type == "cuda":  # a burst is over: give cached GPU memory back
                await loop.run_in_executor(worker.executor, worker.release_memory)

    def _execute(self, worker: _Worker, batch: list[_Ticket], loop: asyncio.AbstractEventLoop) -> None:
        """On the worker thread: prepare the jobs, run the batch once, finish and deliver each job.

        Preparing (decoding) and finishing (encoding) are CPU work per job: they fan out over the
        pool's CPU threads, so a batch's post-processing uses every core while the device thread
        only runs the model.
        """
        task = batch[0].task

        def deliver(ticket: _Ticket, outcome: Result | BaseException) -> None:
            def settle() -> None:
                if ticket.future.done():
                    return
                if isinstance(outcome, BaseException):
                    ticket.future.set_exception(outcome)
                else:
                    ticket.future.set_result(outcome)
            _call_soon(loop, settle)

        def progress(fraction: float) -> None:
            for t in batch:
                _call_soon(loop, t.report, Progress("running", 0, fraction))

        def finish(ticket: _Ticket, item: Any, output: Any) -> Result:
            result = task.finish(ticket.job, item, output)
            timings = {"queue_s": round(ticket.started_at - ticket.queued_at, 3), "model_s": round(model_s, 3),
                       "run_s": round(time.monotonic() - ticket.started_at, 3), "batch": len(live), "device": worker.name()}
            return Result(result.files, {**result.info, **timings})

        live, items = [], []
        for ticket, item in self._on_cpu([t for t in batch if not t.cancelled],
                                         lambda t: task.prepare(t.job, self.config.limits)):
            if isinstance(item, BaseException):
                self._fail(task, ticket, item, deliver)
            elif not ticket.cancelled:  # dropped while decoding: never computed
                live.append(ticket)
                items.append(item)
        if not live:
            return
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                outputs = worker.run_batch(task, items, worker.context(progress))
        except Exception as error:
            for ticket in live:
                self._fail(task, ticket, error, deliver)
            return
        model_s = time.perf_counter() - started  # the network alone, for the whole batch
        done = [(t, item, out) for t, item, out in zip(live, items, outputs) if not t.cancelled]
        for (ticket, _, _), result in self._on_cpu(done, lambda args: finish(*args)):
            if isinstance(result, BaseException):
                self._fail(task, ticket, result, deliver)
            else:
                deliver(ticket, result)

    def _on_cpu(self, things: list[Any], fn: Callable[[Any], Any]) -> list[tuple[Any, Any]]:
        """(thing, fn(thing) or the exception it raised), computed on the CPU threads in parallel."""
        def attempt(thing: Any) -> Any:
            try:
                with torch.inference_mode():
                    return fn(thing)
            except Exception as error:
                return error
        return list(zip(things, self._cpu.map(attempt, things)))

    @staticmethod
    def _fail(task: Task, ticket: _Ticket, error: BaseException, deliver: Callable[[_Ticket, BaseException], None]) -> None:
        if not isinstance(error, UserError):
            log.error("a %s job failed", task.name, exc_info=error)
        deliver(ticket, error)

    # -- estimates and status ------------------------------------------------------------

    def _learn(self, batch: list[_Ticket], seconds: float) -> None:
        cost = sum(t.plan.cost for t in batch) or 1e-6
        name = batch[0].task.name
        rate = seconds / cost
        old = self._seconds_per_cost.get(name)
        self._seconds_per_cost[name] = rate if old is None else 0.7 * old + 0.3 * rate

    def estimate_wait_s(self, task: str, cost: float, position: int | None = None) -> float | None:
        """Seconds until a job of this cost would be done, from measured rates; None before any measurement."""
        ahead = self._queue if position is None else self._queue[:position]
        rates = self._seconds_per_cost
        if task not in rates or any(t.task.name not in rates for t in ahead):
            return None
        queued = sum(t.plan.cost * rates[t.task.name] for t in ahead)
        return (queued / max(1, len(self._workers))) + cost * rates[task]

    def status(self) -> dict[str, Any]:
        """Plain-data snapshot for /status, health checks and metrics."""
        return {
            "started": self.started,
            "closing": self._closing,
            "queued": len(self._queue),
            "running": len(self._running),
            "max_queue": self.config.max_queue,
            "devices": [
                {"device": w.name(), "busy": w.busy, "models": sorted(w.nets),
                 "name": torch.cuda.get_device_name(w.device) if w.device.type == "cuda" else "CPU"}
                for w in self._workers
            ],
            "seconds_per_megapixel": {k: round(v, 4) for k, v in self._seconds_per_cost.items()},
        }
