"""What a pool is to its caller, whichever backend runs it, and the admission steps they share.

Both backends (`local.InferencePool` on this machine's devices, `ray_serve.RayPool` on a Ray
Serve application) satisfy `Pool`: plain data in (a Job), image bytes out (a Result). The bot's
Runner depends on this protocol only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from models.errors import BusyError, UserError
from models.images import Limits
from models.jobs import CancelOutcome, Job, Progress, Result
from models.pool.config import PoolConfig
from models.tasks import Plan, Task

ProgressCallback = Callable[[Progress], None]
Admit = Callable[[float], None]  # called with a job's cost before it queues; raises an EaselError to refuse it


class Pool(Protocol):
    config: PoolConfig
    tasks: Mapping[str, Task]

    async def start(self) -> None:
        """Load (or reach) the models; jobs are taken from then on."""

    async def submit(self, job: Job, on_progress: ProgressCallback | None = None, timeout: float | None = None,
                     admit: Admit | None = None) -> Result:
        """Run one job; raises an EaselError whose sentence is for the person who sent it."""

    def cancel(self, job_id: str) -> CancelOutcome:
        """Stop the job with this id, or say why there is nothing to stop."""

    def status(self) -> dict[str, Any]:
        """Plain data for /status, health checks and metrics."""

    async def close(self, deadline_s: float = 30.0) -> None:
        """Stop taking jobs, let those in flight finish until the deadline, then stop."""


def task_for(tasks: Mapping[str, Task], job: Job, taking_work: bool) -> Task:
    """The job's task, if the pool is taking work and serves it."""
    if not taking_work:
        raise BusyError(BusyError.SHUTTING_DOWN)
    task = tasks.get(job.task)
    if task is None:
        raise UserError(f"There is no {job.task!r} command here.")
    return task


def deadline_s(timeout: float | None, config: PoolConfig) -> float:
    """The caller's timeout, never past the pool's own (EASEL_JOB_TIMEOUT_S)."""
    return min(timeout or config.job_timeout_s, config.job_timeout_s)


async def plan(task: Task, job: Job, limits: Limits, executor: Executor | None) -> Plan:
    """The task's plan. One that reads uploads (headers) runs on `executor`'s threads, so no file,
    however crafted, holds up the event loop and with it every other person's acknowledgement;
    one of options alone (well under a millisecond) runs at once, so jobs sent together stay together."""
    if not job.images:
        return task.plan(job, limits)
    return await asyncio.get_running_loop().run_in_executor(executor, task.plan, job, limits)


class EndedJobs:
    """How the latest jobs ended, by id, so that a late Cancel press is answered truthfully."""

    def __init__(self, remembered: int = 4096) -> None:
        self.remembered = remembered
        self._outcomes: dict[str, CancelOutcome] = {}  # oldest first

    def remember(self, job_id: str, outcome: CancelOutcome) -> None:
        self._outcomes.pop(job_id, None)
        self._outcomes[job_id] = outcome
        if len(self._outcomes) > self.remembered:
            del self._outcomes[next(iter(self._outcomes))]

    def outcome(self, job_id: str) -> CancelOutcome:
        return self._outcomes.get(job_id, CancelOutcome.UNKNOWN)
