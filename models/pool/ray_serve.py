"""The same pool on Ray Serve: a deployment whose replicas run `Worker`, and `RayPool`, its client.

    pool = RayPool(PoolConfig(), RayConfig(address=""))   # "" starts a local Ray and deploys there
    await pool.start()
    result = await pool.submit(Job("dream", {"seed": 7}))  # same Job in, same Result out

A replica drives one device with our own `Worker` (decode, one batched model run with its
out-of-memory halving, encode), on the worker's thread, never on the replica's event loop; it
loads the weights itself from the cache. `@serve.batch` has no key, so the replica keeps one
batch queue per batch key (`Plan.key`), each a `serve.batch` function made on first use.
Ray's router spreads jobs over replicas and bounds the queue at each caller
(`max_queued_requests`); its order is first come, first served: the local pool's turns
between servers and people do not apply here (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.errors import BusyError, Cancelled, EaselError, JobTimeout
from models.jobs import CancelOutcome, Job, Progress, Result
from models.pool.base import Admit, EndedJobs, ProgressCallback, deadline_s, plan, task_for
from models.pool.config import PoolConfig, RayConfig
from models.pool.devices import resolve_devices, tune_process, usable_cores
from models.pool.queue import next_batch
from models.pool.worker import Outcome, Worker
from models.tasks import TASKS, Task, no_progress

log = logging.getLogger("easel.pool")

APP_NAME = "easel"
REPLICA_LOST = "The machine running your request went away; please try again."
_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)


class Replica:
    """One Serve replica: one device's Worker behind a `serve.batch` queue per batch key."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        device = resolve_devices(config.device)[0]  # Ray has narrowed CUDA_VISIBLE_DEVICES to this replica's share
        tune_process([device], config.cpu_threads)
        self.cpu = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="easel-cpu")
        self.worker = Worker(device, config, self.cpu)
        self.tasks = {name: TASKS[name] for name in (config.tasks or tuple(TASKS))}
        self.batchers: dict[Hashable, Callable[[tuple[Job, float]], Any]] = {}
        self.cancelled = EndedJobs()  # requests Serve cancelled while their batch was forming or running
        if config.preload:  # the constructor runs before the replica takes requests
            for task in self.tasks.values():
                self.worker.nets_for(task)
                if config.warmup:
                    self.worker.warm(task)

    async def run(self, job: Job) -> AsyncIterator[Progress | Outcome]:
        """Stream "running" once the job is on this replica, then its Result or EaselError (as a value)."""
        try:
            task = task_for(self.tasks, job, taking_work=True)
        except EaselError as error:
            yield error
            return
        yield Progress("running")
        try:
            planned = await plan(task, job, self.config.limits, self.cpu)
        except EaselError as error:
            yield error
            return
        try:
            yield await self._batcher(task, planned.key)((job, planned.cost))
        except asyncio.CancelledError:  # the caller cancelled: its batch skips it from the next piece or tile on
            self.cancelled.remember(job.id, CancelOutcome.ALREADY_CANCELLED)
            raise

    def _batcher(self, task: Task, batch_key: Hashable) -> Callable[[tuple[Job, float]], Any]:
        """The batch queue for one task and key: jobs with equal keys share a model run."""
        key = (task.name, batch_key)
        if key not in self.batchers:
            @serve.batch(max_batch_size=self.config.max_batch, batch_wait_timeout_s=self.config.batch_wait_s)
            async def run_batch(planned: list[tuple[Job, float]]) -> list[Outcome]:
                return await self._process(task, planned)
            self.batchers[key] = run_batch
        return self.batchers[key]

    async def _process(self, task: Task, planned: list[tuple[Job, float]]) -> list[Outcome]:
        """Run a batch of (job, its plan's cost) on the worker's thread, in pieces within the device's
        megapixel budget; a job whose request was cancelled is skipped from then on (tiles included)."""
        jobs = [job for job, _ in planned]
        outcomes: list[Outcome] = [RuntimeError("not run")] * len(jobs)
        loop = asyncio.get_running_loop()
        for piece in _within_budget([cost for _, cost in planned], self.worker.batch_megapixels):
            def deliver(i: int, outcome: Outcome, piece: list[int] = piece) -> None:
                outcomes[piece[i]] = outcome

            def wanted(i: int, piece: list[int] = piece) -> bool:
                return self.cancelled.outcome(jobs[piece[i]].id) is CancelOutcome.UNKNOWN
            # Progress within a batch stays on the replica: the person sees "running".
            await loop.run_in_executor(self.worker.executor, self.worker.process, task, [jobs[i] for i in piece], deliver,
                                       no_progress, wanted)
        return [o if isinstance(o, Result | EaselError) else RuntimeError(f"{type(o).__name__}: {o}") for o in outcomes]

    def status(self) -> dict[str, Any]:
        context = serve.get_replica_context()
        return {**self.worker.status(), "replica": context.replica_id.to_full_id_str(),
                "node": ray.get_runtime_context().get_node_id()}


@dataclass(frozen=True)
class _Piece:
    """A job of a Serve batch as the queue's batch choice sees it: all of one party and one key."""

    index: int
    cost: float
    guild: str = ""
    user: str = ""
    key: Hashable = ()


def _within_budget(costs: list[float], budget: float) -> list[list[int]]:
    """Consecutive pieces of a batch whose costs fit the budget (a single job may exceed it alone),
    cut by the local pool's own batch choice (`next_batch`)."""
    left, pieces = [_Piece(i, cost) for i, cost in enumerate(costs)], []
    while left:
        piece, _ = next_batch(left, len(left), budget, lambda guild: len(left))
        pieces.append([p.index for p in piece])
        left = left[len(piece):]
    return pieces


def application(config: PoolConfig, ray_config: RayConfig) -> serve.Application:
    """The Serve application: only plain configuration is bound; replicas load their own weights."""
    scaling: dict[str, Any] = {"num_replicas": ray_config.replicas}
    if ray_config.max_replicas > ray_config.replicas:
        scaling = {"autoscaling_config": {"min_replicas": ray_config.replicas, "max_replicas": ray_config.max_replicas,
                                          "target_ongoing_requests": config.max_batch}}
    threads = config.cpu_threads or (0 if ray_config.gpus_per_replica else max(1, math.ceil(ray_config.cpus_per_replica)))
    deployment = serve.deployment(
        Replica, name="Easel", **scaling,
        max_ongoing_requests=2 * config.max_batch,  # one batch running, the next one forming
        max_queued_requests=config.max_queue,
        ray_actor_options={"num_cpus": ray_config.cpus_per_replica, "num_gpus": ray_config.gpus_per_replica},
        logging_config={"enable_access_log": False},  # our runner logs each command once
    )
    return deployment.bind(replace(config, cpu_threads=threads))


def connect(address: str) -> None:
    """Join the cluster at `address`, or start a local Ray when it is empty (blocking: call off the loop)."""
    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)


def deploy(config: PoolConfig, ray_config: RayConfig) -> DeploymentHandle:
    """Deploy (or update) the application and wait until its replicas are ready (blocking)."""
    connect(ray_config.address)
    return serve.run(application(config, ray_config), name=APP_NAME, route_prefix=None)


class RayPool:
    """The pool's API (`start`, `submit`, `cancel`, `status`, `close`) over a Serve application.

    With an empty address it starts a local Ray and deploys the application itself (trying it
    out); with an address it uses the application `easel serve` deployed there.
    """

    def __init__(self, config: PoolConfig = PoolConfig(), ray_config: RayConfig = RayConfig()) -> None:
        self.config, self.ray_config = config, ray_config
        self.tasks = {name: TASKS[name] for name in (config.tasks or tuple(TASKS))}
        self.handle: DeploymentHandle | None = None
        self.waiting = 0  # this process's jobs not yet on a replica
        self.running = 0
        self.retries = 0
        self._jobs: dict[str, list[asyncio.Future[Result]]] = {}  # this process's jobs in flight by id (one Job may be submitted twice)
        self._cancelled: set[str] = set()
        self._ended = EndedJobs()
        self._planner: ThreadPoolExecutor | None = None  # reads uploads' headers off the event loop
        self.devices: list[dict[str, Any]] = []  # a replica's device and models, as of start
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.started = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ray_config.address:
            await loop.run_in_executor(None, connect, self.ray_config.address)
            self.handle = serve.get_app_handle(APP_NAME)
        else:
            self.handle = await loop.run_in_executor(None, deploy, self.config, self.ray_config)
        _reclaim_signals()
        self._planner = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="easel-plan")
        self.devices = await self.replicas()
        self.started = True

    async def submit(self, job: Job, on_progress: ProgressCallback | None = None, timeout: float | None = None,
                     admit: Admit | None = None) -> Result:
        """Run one job on a replica; a replica lost mid-job gets the job once more elsewhere.
        `admit(cost)`: as the local pool's, before the job leaves this process."""
        task = task_for(self.tasks, job, self.started and not self._closing)
        planned = await plan(task, job, self.config.limits, self._planner)  # bad input is refused here, before any round trip
        if admit is not None:
            admit(planned.cost)
        timeout = deadline_s(timeout, self.config)
        tell = on_progress or _nobody
        self._idle.clear()
        attempts = asyncio.ensure_future(self._attempts(job, tell))
        self._jobs.setdefault(job.id, []).append(attempts)
        try:
            result = await asyncio.wait_for(attempts, timeout)
        except TimeoutError:
            raise JobTimeout.after(timeout) from None
        except asyncio.CancelledError:
            if job.id not in self._cancelled:
                raise
            raise Cancelled(Cancelled.AS_ASKED) from None
        finally:
            self._jobs[job.id].remove(attempts)
            if not self._jobs[job.id]:
                del self._jobs[job.id]
                self._ended.remember(job.id, CancelOutcome.ALREADY_CANCELLED if job.id in self._cancelled else CancelOutcome.FINISHED)
                self._cancelled.discard(job.id)
            if not self.waiting and not self.running:
                self._idle.set()
        return Result(result.files, {**result.info, "cost": planned.cost})  # as the local pool reports it, for quotas

    def cancel(self, job_id: str) -> CancelOutcome:
        """Answer the job's caller with Cancelled now and cancel its request at Ray (a request still
        waiting is dropped there; how far that reaches into a batch on a replica is Ray Serve's).
        Otherwise, as the local pool: cancelled before, ended, or unknown to this process."""
        live = [attempts for attempts in self._jobs.get(job_id, []) if not attempts.done()]
        for attempts in live:
            attempts.cancel()
        if live:
            self._cancelled.add(job_id)
            return CancelOutcome.CANCELLED
        if job_id in self._cancelled:  # cancelled, its caller not yet woken
            return CancelOutcome.ALREADY_CANCELLED
        return self._ended.outcome(job_id)

    async def _attempts(self, job: Job, tell: ProgressCallback) -> Result:
        for attempt in range(2):
            try:
                return await self._once(job, tell)
            except _REPLICA_GONE:
                if attempt:
                    raise BusyError(REPLICA_LOST) from None
                self.retries += 1
                log.warning("a replica died with a %s job in flight: retrying it once", job.task)
        raise AssertionError("unreachable")

    async def _once(self, job: Job, tell: ProgressCallback) -> Result:
        assert self.handle is not None
        self.waiting += 1
        tell(Progress("queued", self.waiting - 1))
        on_replica = False
        stream = self.handle.options(stream=True).run.remote(job)
        try:
            async for message in stream:
                if isinstance(message, Progress):
                    on_replica = True
                    self.waiting -= 1
                    self.running += 1
                    tell(message)
                elif isinstance(message, BaseException):
                    raise message
                else:
                    return message
            raise RuntimeError("the replica ended the stream without a result")
        except BackPressureError:
            raise BusyError(BusyError.QUEUE_FULL) from None
        except asyncio.CancelledError:  # timed out, or the caller gave up: the replica may drop it
            with contextlib.suppress(Exception):
                stream.cancel()  # returns at once: the assignment is cancelled, or already known
            raise
        finally:
            if on_replica:
                self.running -= 1
            else:
                self.waiting -= 1

    async def close(self, deadline_s: float = 30.0) -> None:
        """Stop taking jobs, let this process's jobs finish until the deadline, then leave the
        cluster, which stays up (a local Ray this pool started goes down with it)."""
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            pass
        if self.started:
            await asyncio.get_running_loop().run_in_executor(None, ray.shutdown if self.ray_config.address else shutdown)
        if self._planner is not None:
            self._planner.shutdown(wait=False, cancel_futures=True)
        self.started = False

    def status(self) -> dict[str, Any]:
        """The local pool's status keys, seen from this process; devices: one replica's, as of start."""
        return {"started": self.started, "closing": self._closing, "queued": self.waiting, "running": self.running,
                "max_queue": self.config.max_queue, "devices": self.devices, "backend": "ray", "retries": self.retries,
                "seconds_per_megapixel": {}}

    async def replicas(self) -> list[dict[str, Any]]:
        """One replica's device and models (the router picks which): for /status and tests."""
        assert self.handle is not None
        return [await self.handle.status.remote()]


def _reclaim_signals() -> None:
    """Joining Ray installs its crash handler for SIGTERM, which prints a stack dump and re-raises
    the signal; for the bot SIGTERM is a clean shutdown, so SIGTERM and SIGINT go back to Python's
    handlers (the event loop's). Only the main thread may set them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(sig)
        if handler is not None:
            signal.signal(sig, handler)


def _nobody(progress: Progress) -> None:
    """No one to tell."""


def shutdown() -> None:
    """Take down the Serve application and the local Ray this process started."""
    serve.shutdown()
    ray.shutdown()
