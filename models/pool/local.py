"""InferencePool: the in-process front to the models, on this machine's devices.

    pool = InferencePool(PoolConfig(device="auto"))
    await pool.start()
    result = await pool.submit(Job("dream", {"count": 4, "seed": 7}), on_progress=print)
    await pool.close()

`submit` is the whole API a caller needs (plus `cancel`, `status` and `close`): plain data in,
encoded images out; `cancel(job.id)` names a job by its plain-data id, as any backend can. The
pool admits a job (cheap checks, queue bound, whether it could finish in time), keeps it in
the fair queue (`queue.py`) with its wait estimate (`estimate.py`), and hands batches to one
worker per device (`worker.py`). Model code runs on the worker's own
thread, so the event loop never waits on a tensor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from models.errors import BusyError, Cancelled, EaselError, JobTimeout
from models.jobs import CancelOutcome, Job, Progress, Result
from models.pool.base import Admit, EndedJobs, ProgressCallback, deadline_s, plan, task_for
from models.pool.config import PoolConfig
from models.pool.devices import resolve_devices, tune_process, usable_cores
from models.pool.estimate import WaitEstimator
from models.pool.queue import FairQueue, next_batch
from models.pool.worker import Outcome, Worker
from models.tasks import TASKS, Plan, Task

log = logging.getLogger("easel.pool")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} seconds" if seconds < 90 else f"{seconds / 60:.0f} minutes"


def _queue_full(wait_s: float | None) -> str:
    """The full-queue refusal, with the wait when the pool has measured enough to say it."""
    if wait_s is None:
        return BusyError.QUEUE_FULL
    return f"I'm busy with a queue of requests right now (about {_duration(wait_s)} of work); please try again after that."


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Hand a callback to the event loop from the worker thread; after shutdown there is no one to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def _progress(loop: asyncio.AbstractEventLoop, batch: list[_Ticket], fraction: float) -> None:
    """From the worker thread: the batch's progress, told to each of its callers."""
    for ticket in batch:
        _call_soon(loop, ticket.report, Progress("running", 0, fraction))


def _wanted(batch: list[_Ticket], i: int) -> bool:
    return not batch[i].cancelled


@dataclass(eq=False)
class _Ticket:
    """A submitted job while the pool holds it: what the queue orders and the caller awaits."""

    job: Job
    task: Task
    plan: Plan
    future: asyncio.Future[Result]
    on_progress: ProgressCallback | None
    queued_at: float
    gap: float  # seconds since the job submitted before this one
    started_at: float = 0.0
    cancelled: bool = False
    delivered: bool = False  # its result reached the caller
    last_report: tuple[str, int, float] = ("", -1, -1.0)

    @property
    def guild(self) -> str:
        return self.job.guild or f"user:{self.job.user}"  # outside a server, a person takes turns as a party of one

    @property
    def user(self) -> str:
        return self.job.user

    @property
    def key(self) -> Hashable:
        return self.plan.key

    @property
    def cost(self) -> float:
        return self.plan.cost

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


class InferencePool:
    def __init__(self, config: PoolConfig = PoolConfig(), tasks: list[Task] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`tasks` replaces the registry's (tests use small fakes); by default config.tasks names them.
        `clock` times queue waits and batches (tests inject one)."""
        self.config = config
        names = config.tasks if config.tasks is not None else tuple(TASKS)
        self.tasks = {t.name: t for t in tasks} if tasks is not None else {name: TASKS[name] for name in names}
        self.clock = clock
        self.estimator = WaitEstimator()
        self._queue: FairQueue[_Ticket] = FairQueue()
        self._running: set[_Ticket] = set()
        self._changed = asyncio.Condition()
        self._workers: list[Worker] = []
        self._loops: list[asyncio.Task[None]] = []
        self._cpu: ThreadPoolExecutor | None = None  # decoding and encoding, shared by the device workers
        self._closing = False
        self._last_submit = float("-inf")
        self._ended = EndedJobs()
        self.started = False

    # -- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Pick devices, and (by default) load and warm up every model before taking work."""
        devices = resolve_devices(self.config.device)
        tune_process(devices, self.config.cpu_threads)
        self._cpu = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="easel-cpu")
        self._workers = [Worker(d, self.config, self._cpu) for d in devices]
        if self.config.preload:
            await asyncio.gather(*(self._prepare(w) for w in self._workers))
        self._loops = [asyncio.create_task(self._work(w), name=f"easel-pool-{w.name}") for w in self._workers]
        self.started = True

    async def _prepare(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        for task in self.tasks.values():
            await loop.run_in_executor(worker.executor, worker.nets_for, task)
            if self.config.warmup:
                await loop.run_in_executor(worker.executor, worker.warm, task)

    async def close(self, deadline_s: float = 30.0) -> None:
        """Stop taking jobs, let queued and running ones finish until the deadline, then cancel the rest."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self._queue and not self._running), deadline_s)
        for ticket in self._queue.order() + list(self._running):
            ticket.cancelled = True
            if not ticket.future.done():
                ticket.future.set_exception(BusyError(BusyError.SHUTTING_DOWN))
        self._queue = FairQueue()
        for loop_task in self._loops:
            loop_task.cancel()
        for worker in self._workers:
            worker.close()
        if self._cpu is not None:  # None when start() never ran or failed before it
            self._cpu.shutdown(wait=False, cancel_futures=True)
        self.started = False

    # -- submitting ------------------------------------------------------------------

    async def submit(self, job: Job, on_progress: ProgressCallback | None = None, timeout: float | None = None,
                     admit: Admit | None = None) -> Result:
        """Run one job; raises an EaselError: UserError (bad input), BusyError (queue full, or it
        could not finish within `timeout`), JobTimeout, ResourceError. Cancelling the await drops the job.
        `admit(cost)` is called once the job's cost is known, before it queues, and may refuse it by
        raising an EaselError (the bot's daily quota reserves the cost there)."""
        task = task_for(self.tasks, job, self.started and not self._closing)
        planned = await plan(task, job, self.config.limits, self._cpu)
        if admit is not None:
            admit(planned.cost)
        ticket, timeout = self._admit(job, task, planned, on_progress, timeout)
        async with self._changed:
            self._changed.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
        except TimeoutError:
            self._drop(ticket)
            raise JobTimeout.after(timeout) from None
        except asyncio.CancelledError:
            self._drop(ticket)
            raise

    def _admit(self, job: Job, task: Task, plan: Plan, on_progress: ProgressCallback | None,
               timeout: float | None) -> tuple[_Ticket, float]:
        """Queue the planned job in its turn, or refuse it: a full queue, or a wait longer than `timeout`."""
        if self._closing:  # began while the job was being planned
            raise BusyError(BusyError.SHUTTING_DOWN)
        if len(self._queue) >= self.config.max_queue:
            queued = ((t.task.name, t.cost) for t in self._queue.order())
            raise BusyError(_queue_full(self.estimator.wait_s(task.name, plan.cost, queued, len(self._workers))))
        timeout = deadline_s(timeout, self.config)
        now = self.clock()
        ticket = _Ticket(job, task, plan, asyncio.get_running_loop().create_future(), on_progress, now, now - self._last_submit)
        self._queue.push(ticket)
        position, estimate = self._place(ticket, self._queue.order())
        alone = position == 0 and not self._running  # it would run at once, and its run measures the speed
        if estimate is not None and estimate > timeout and (self.estimator.settled(task.name) or not alone):
            self._queue.remove(ticket)
            raise BusyError(f"The queue would take about {_duration(estimate)}, longer than I can keep "
                            "your request open; please try again later.")
        self._last_submit = now
        ticket.report(Progress("queued", position, 0.0, estimate))
        self._report_positions()  # a newcomer may take a turn ahead of others
        return ticket, timeout

    def _place(self, ticket: _Ticket, order: list[_Ticket]) -> tuple[int, float | None]:
        """A queued job's position in the turn order and the seconds until it would be done."""
        ahead = order[:order.index(ticket)]
        wait = self.estimator.wait_s(ticket.task.name, ticket.cost, ((t.task.name, t.cost) for t in ahead), len(self._workers))
        return len(ahead), wait

    def cancel(self, job_id: str) -> CancelOutcome:
        """The person who asked no longer wants the job: a queued one leaves the queue at once, a running
        one stops at its next batch or tile boundary (its batch mates carry on), and `submit` raises
        Cancelled now. Otherwise says whether it was cancelled before, had ended, or is unknown here."""
        for ticket in [*self._queue.order(), *self._running]:
            if ticket.job.id == job_id and not ticket.future.done():
                self._drop(ticket, Cancelled(Cancelled.AS_ASKED))
                return CancelOutcome.CANCELLED
        return self._ended.outcome(job_id)

    def _drop(self, ticket: _Ticket, error: EaselError | None = None) -> None:
        """Forget a job: out of the queue, skipped by its worker; its caller gets `error` (else CancelledError)."""
        ticket.cancelled = True
        if self._queue.remove(ticket):
            self._report_positions()
        if ticket.future.done():
            return
        self._ended.remember(ticket.job.id, CancelOutcome.ALREADY_CANCELLED if isinstance(error, Cancelled) else CancelOutcome.FINISHED)
        if error is None:
            ticket.future.cancel()
        else:
            ticket.future.set_exception(error)

    def _report_positions(self) -> None:
        order = self._queue.order()
        for ticket in order:
            position, estimate = self._place(ticket, order)
            ticket.report(Progress("queued", position, 0.0, estimate))

    # -- scheduling ------------------------------------------------------------------

    def _room(self, guild: str) -> int:
        """How many more of a party's jobs may run now (EASEL_MAX_JOBS_PER_GUILD over all devices)."""
        return self.config.max_running_per_guild - sum(1 for t in self._running if t.guild == guild)

    async def _next_batch(self, worker: Worker) -> list[_Ticket]:
        """Wait for work; return the next job in turn plus the jobs that can share its batch.

        The head waits for company only while jobs are arriving closer together than the batch
        window: a lone request on a quiet server starts at once instead of paying the window.
        """
        async with self._changed:
            while True:
                batch, full = next_batch(self._queue.order(), self.config.max_batch, worker.batch_megapixels, self._room)
                if not batch:
                    await self._changed.wait()
                    continue
                head = batch[0]
                wait = head.queued_at + self.config.batch_wait_s - self.clock()
                if wait > 0 and head.gap < self.config.batch_wait_s and not full:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
                self._queue.take(batch)
                self._running.update(batch)
                self._report_positions()
                return batch

    async def _work(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch(worker)
            task = batch[0].task
            started = self.clock()
            for ticket in batch:
                ticket.started_at = started
                ticket.report(Progress("running", 0, 0.0))
            worker.busy = True
            try:
                await loop.run_in_executor(worker.executor, worker.process, task, [t.job for t in batch],
                                           partial(self._deliver, loop, batch), partial(_progress, loop, batch), partial(_wanted, batch))
            except Exception:  # process delivers per-job errors itself; this is a bug in the pool
                log.exception("batch of %d %s jobs failed on %s", len(batch), task.name, worker.name)
            finally:  # the speed of the work delivered: cancelled or refused jobs took less time than they cost
                self.estimator.learn(task.name, worker.name, sum(t.cost for t in batch if t.delivered), self.clock() - started)
                self._running.difference_update(batch)
                worker.busy = False
                async with self._changed:
                    self._changed.notify_all()  # a party may have room again; close() may be waiting
            if not self._queue and worker.device.type == "cuda":  # a burst is over: give cached GPU memory back
                await loop.run_in_executor(worker.executor, worker.release_memory)

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[_Ticket], i: int, outcome: Outcome) -> None:
        """From the worker thread: one job of the batch is done."""
        _call_soon(loop, self._settle, batch[i], outcome)

    def _settle(self, ticket: _Ticket, outcome: Outcome) -> None:
        """On the event loop: hand a job's result (with its queue and run times) or error to its caller.
        From here on the job no longer counts as running, even while the rest of its batch finishes."""
        self._running.discard(ticket)
        if ticket.future.done():
            return
        self._ended.remember(ticket.job.id, CancelOutcome.FINISHED)
        if isinstance(outcome, BaseException):
            ticket.future.set_exception(outcome)
            return
        timings = {"queue_s": round(ticket.started_at - ticket.queued_at, 3), "run_s": round(self.clock() - ticket.started_at, 3),
                   "cost": ticket.cost}  # the plan's units of work (megapixel-equivalents): what a daily quota counts
        ticket.delivered = True
        ticket.future.set_result(Result(outcome.files, {**outcome.info, **timings}))

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Plain-data snapshot for /status, health checks and metrics."""
        return {
            "started": self.started,
            "closing": self._closing,
            "queued": len(self._queue),
            "running": len(self._running),
            "max_queue": self.config.max_queue,
            "devices": [w.status() for w in self._workers],
            "seconds_per_megapixel": {k: round(v, 4) for k, v in self.estimator.rates().items()},
        }
