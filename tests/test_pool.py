"""The pool's pieces and InferencePool mechanics with a small gated task, then the real models through the pool."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import queue
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from models import samples
from models.errors import BusyError, Cancelled, DeviceError, JobTimeout, ResourceError, TaskContractError, UserError
from models.jobs import CancelOutcome, File, Job, Progress, Result
from models.pool import InferencePool, PoolConfig, resolve_devices
from models.pool.estimate import WaitEstimator
from models.pool.queue import FairQueue, next_batch
from models.tasks import Plan, RunContext, Task


class Echo(Task):
    """Doubles a number. Records every batch; each batch waits at a gate the test opens; can fake
    CUDA out-of-memory, a broken output count, and time passing on an injected clock."""

    name = "echo"

    def __init__(self, oom_above: int | None = None, oom_until_shrink: int = 0, miscount: int = 0,
                 clock: FakeClock | None = None) -> None:
        """`miscount`: outputs too many (or, negative, too few) for batches of more than one job."""
        self.oom_above, self.oom_until_shrink, self.miscount, self.clock = oom_above, oom_until_shrink, miscount, clock
        self.batches: list[list[int]] = []
        self.shrinks: list[int] = []
        self.gate = threading.Event()  # closed: a batch that has started waits until the test opens it
        self.gate.set()
        self.started: queue.Queue[list[int]] = queue.Queue()

    def plan(self, job: Job, limits) -> Plan:
        if job.options.get("bad"):
            raise UserError("That option is bad.")
        return Plan(key=("echo", job.options.get("shape", 0)), cost=1.0)

    def load(self, states, device, channels_last):
        return object()

    def prepare(self, job: Job, limits) -> int:
        return job.options["value"]

    def run(self, nets, items: list[int], ctx: RunContext) -> list[int]:
        if self.oom_above is not None and len(items) > self.oom_above or ctx.shrink < self.oom_until_shrink:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.started.put(list(items))
        self.gate.wait()
        self.batches.append(list(items))
        self.shrinks.append(ctx.shrink)
        if self.clock is not None:
            self.clock.now += 100.0 * len(items)  # each job "takes" 100 s
        ctx.progress(0.5)
        ctx.progress(1.0)
        outputs = [2 * v for v in items]
        if len(items) > 1 and self.miscount:
            return outputs[:self.miscount] if self.miscount < 0 else outputs + [0] * self.miscount
        return outputs

    def finish(self, job: Job, item: int, output: int) -> Result:
        return Result((File("out.txt", str(output).encode()),), {"value": output})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def started(task: Task, clock=time.monotonic, **config) -> InferencePool:
    pool = InferencePool(PoolConfig(device="cpu", **config), tasks=[task], clock=clock)
    await pool.start()
    return pool


def echo(value: int, guild: str = "", **options) -> Job:
    return Job("echo", {"value": value, **options}, guild=guild, user=f"{guild}-someone")


async def until(condition) -> None:
    """Let the event loop run until `condition` holds (a bounded number of turns, no wall clock)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the pool never reached the expected state")


async def holding(task: Echo, pool: InferencePool, job: Job) -> asyncio.Task[Result]:
    """Submit `job` with the gate closed and wait until its batch is on the device: the worker is busy."""
    task.gate.clear()
    while not task.started.empty():  # batches that ran before
        task.started.get_nowait()
    running = asyncio.create_task(pool.submit(job))
    assert await asyncio.to_thread(task.started.get, True, 60) == [job.options["value"]]
    return running


async def queue_behind(pool: InferencePool, jobs: list[Job], **submit) -> list[asyncio.Task[Result]]:
    """Submit jobs while the worker is held, and wait until all of them are queued."""
    waiting = pool.status()["queued"]
    tasks = [asyncio.create_task(pool.submit(job, **submit)) for job in jobs]
    await until(lambda: pool.status()["queued"] == waiting + len(jobs))
    return tasks


async def test_jobs_waiting_together_run_as_batches_in_arrival_order():
    task = Echo()
    pool = await started(task, max_batch=4, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(v) for v in range(1, 9)])
    task.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert [r.info["value"] for r in results] == [2 * v for v in range(9)]  # each caller gets its own answer
    assert task.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert [r.info["batch"] for r in results] == [1] + [4] * 8
    await pool.close()


async def test_batches_never_mix_keys():
    task = Echo()
    pool = await started(task, max_batch=8, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(v, shape=v % 2) for v in range(1, 7)])
    task.gate.set()
    await asyncio.gather(first, *waiting)
    assert task.batches == [[0], [1, 3, 5], [2, 4, 6]]
    await pool.close()


async def test_a_job_arriving_during_a_burst_waits_for_company_until_its_batch_is_full():
    task = Echo()
    pool = await started(task, max_batch=3, batch_wait_s=3600)
    await pool.submit(echo(0))  # alone on a quiet pool: runs at once, window or not
    waiting = await queue_behind(pool, [echo(1), echo(2)])  # close behind it: they wait for company
    assert task.batches == [[0]] and pool.status()["queued"] == 2
    waiting.append(asyncio.create_task(pool.submit(echo(3))))  # the third fills the batch: no more waiting
    await asyncio.gather(*waiting)
    assert task.batches == [[0], [1, 2, 3]]
    await pool.close()


async def test_a_batch_stops_at_its_megapixel_budget():
    """On the CPU, big images batch less: their activations no longer fit the caches."""
    task = Echo()
    pool = await started(task, max_batch=8, max_batch_megapixels=2.5, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(v) for v in range(1, 7)])  # each echo job costs 1 megapixel
    task.gate.set()
    await asyncio.gather(first, *waiting)
    assert task.batches == [[0], [1, 2], [3, 4], [5, 6]]
    await pool.close()


async def test_max_batch_one_disables_batching():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(1), echo(2)])
    task.gate.set()
    await asyncio.gather(first, *waiting)
    assert task.batches == [[0], [1], [2]]
    await pool.close()


async def test_servers_take_turns_so_a_burst_cannot_starve_another_server():
    """Server A submits 12 jobs, then server B 2: both of B's finish before A's fifth, and B is told so."""
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    first = await holding(task, pool, echo(100, guild="A"))
    a_jobs = await queue_behind(pool, [echo(100 + i, guild="A") for i in range(1, 12)])
    told: list[Progress] = []
    b_jobs = await queue_behind(pool, [echo(200, guild="B")], on_progress=told.append)
    b_jobs += await queue_behind(pool, [echo(201, guild="B")])
    assert told[0].position == 1  # behind one of A's jobs, not behind all eleven
    task.gate.set()
    await asyncio.gather(first, *a_jobs, *b_jobs)
    served = [batch[0] for batch in task.batches]
    fifth_of_a = served.index(104)
    assert served.index(200) < fifth_of_a and served.index(201) < fifth_of_a
    assert [v for v in served if v < 200] == list(range(100, 112))  # each server's own jobs keep their order
    await pool.close()


async def test_a_full_queue_refuses_at_once():
    task = Echo()
    pool = await started(task, max_batch=1, max_queue=2, batch_wait_s=0)
    running = await holding(task, pool, echo(1))
    queued = await queue_behind(pool, [echo(2), echo(3)])
    with pytest.raises(BusyError, match="busy"):
        await pool.submit(echo(4))
    task.gate.set()
    await asyncio.gather(running, *queued)
    assert 4 not in sum(task.batches, [])
    await pool.close()


async def test_a_full_queue_says_how_long_its_work_will_take():
    """Once the pool has measured a job's cost, the full-queue refusal tells the person the wait."""
    clock = FakeClock()
    task = Echo(clock=clock)
    pool = await started(task, clock=clock, max_batch=1, max_queue=2, batch_wait_s=0)
    await pool.submit(echo(1))  # measures 100 s per job on the injected clock
    running = await holding(task, pool, echo(2))
    queued = await queue_behind(pool, [echo(3), echo(4)])
    with pytest.raises(BusyError, match=r"busy with a queue of requests right now \(about 5 minutes of work\)"):
        await pool.submit(echo(5))
    task.gate.set()
    await asyncio.gather(running, *queued)
    await pool.close()


async def test_a_job_the_queue_could_not_finish_in_time_is_refused_up_front():
    """Once the pool has measured a job's cost, it refuses work whose wait would outlast the caller's
    deadline (the interaction token) instead of computing it for nobody."""
    clock = FakeClock()
    task = Echo(clock=clock)
    pool = await started(task, clock=clock, max_batch=1, batch_wait_s=0)
    await pool.submit(echo(1))  # measures 100 s per job on the injected clock
    running = await holding(task, pool, echo(2))
    ahead = await queue_behind(pool, [echo(v) for v in range(3, 6)])  # three jobs ahead: about 400 s with its own
    with pytest.raises(BusyError, match="about 7 minutes, longer than I can keep your request open"):
        await pool.submit(echo(9), timeout=350)
    assert pool.status()["queued"] == 3
    task.gate.set()
    await asyncio.gather(running, *ahead)
    assert all(9 not in batch for batch in task.batches)  # never computed
    await pool.close()


async def test_a_timed_out_job_is_dropped_before_it_is_computed():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    first = await holding(task, pool, echo(1))
    with pytest.raises(JobTimeout):
        await pool.submit(echo(2), timeout=0.01)  # the worker is held until after this
    task.gate.set()
    await first
    await pool.submit(echo(3))
    assert task.batches == [[1], [3]]
    await pool.close()


async def test_a_cancelled_job_is_dropped_from_the_queue_and_its_batch():
    task = Echo()
    pool = await started(task, max_batch=4, batch_wait_s=0)
    first = await holding(task, pool, echo(1))
    waiting = await queue_behind(pool, [echo(v) for v in (2, 3, 4)])
    waiting[1].cancel()
    await until(lambda: pool.status()["queued"] == 2)
    task.gate.set()
    results = await asyncio.gather(first, waiting[0], waiting[2])
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert [r.info["value"] for r in results] == [2, 4, 8]
    assert task.batches == [[1], [2, 4]]
    assert pool.status()["queued"] == 0
    await pool.close()


async def test_cancel_by_job_id_drops_a_queued_job_and_answers_a_running_one_at_once():
    """`cancel(job.id)`: plain data, as any backend can take it. The queued job never runs; the
    running one's caller hears now, not when the batch ends; a finished or unknown job is not held."""
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    jobs = [echo(v) for v in (1, 2, 3)]
    first = await holding(task, pool, jobs[0])
    second, third = await queue_behind(pool, jobs[1:])
    assert pool.cancel(jobs[1].id) is CancelOutcome.CANCELLED and pool.status()["queued"] == 1
    assert pool.cancel(jobs[0].id) is CancelOutcome.CANCELLED
    assert pool.cancel(jobs[0].id) is CancelOutcome.ALREADY_CANCELLED
    for cancelled in (first, second):
        with pytest.raises(Cancelled):
            await cancelled  # while the gate is still closed
    task.gate.set()
    assert (await third).info["value"] == 6
    assert task.batches == [[1], [3]]
    assert pool.cancel(jobs[2].id) is CancelOutcome.FINISHED and pool.cancel("no-such-job") is CancelOutcome.UNKNOWN
    await pool.close()


@pytest.mark.parametrize("extra", [-1, 1])
async def test_a_task_breaking_its_output_count_fails_its_whole_batch_at_once(extra, caplog):
    """Task.run must return one output per item: otherwise every caller of that batch gets an error
    at once (none is left waiting for its timeout), and the log names the task."""
    task = Echo(miscount=extra)
    pool = await started(task, max_batch=3, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(v) for v in (1, 2, 3)])
    task.gate.set()
    assert (await first).info["value"] == 0
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, TaskContractError) for o in outcomes)
    assert "'echo' returned" in str(outcomes[0]) and "for a batch of 3" in str(outcomes[0])
    assert any("echo" in r.getMessage() and r.exc_info for r in caplog.records if r.name == "easel.pool")
    await pool.close()


async def test_out_of_memory_splits_the_batch():
    task = Echo(oom_above=1)
    pool = await started(task, max_batch=4, batch_wait_s=0)
    first = await holding(task, pool, echo(0))
    waiting = await queue_behind(pool, [echo(v) for v in range(1, 5)])
    task.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert [r.info["value"] for r in results] == [0, 2, 4, 6, 8]
    assert task.batches == [[0], [1], [2], [3], [4]]
    await pool.close()


async def test_out_of_memory_on_one_job_retries_it_smaller():
    task = Echo(oom_until_shrink=2)
    pool = await started(task, max_batch=1)
    assert (await pool.submit(echo(5))).info["value"] == 10
    assert task.shrinks == [2]
    await pool.close()


async def test_out_of_memory_at_every_size_is_one_sentence():
    task = Echo(oom_until_shrink=99)
    pool = await started(task, max_batch=1)
    with pytest.raises(ResourceError, match="smaller"):
        await pool.submit(echo(5))
    await pool.close()


async def test_progress_reports_queue_position_then_fractions():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    seen: list[Progress] = []
    first = await holding(task, pool, echo(1))
    waiting = await queue_behind(pool, [echo(2)])
    waiting += await queue_behind(pool, [echo(3)], on_progress=seen.append)
    task.gate.set()
    await asyncio.gather(first, *waiting)
    states = [(p.state, p.position) for p in seen if p.state == "queued"]
    assert states[0] == ("queued", 1) and states[-1] == ("queued", 0)
    running = [p.fraction for p in seen if p.state == "running"]
    assert running == sorted(running) and running[-1] == 1.0 and 0.5 in running
    await pool.close()


async def test_bad_options_are_refused_before_queueing():
    pool = await started(Echo(), max_batch=1)
    with pytest.raises(UserError, match="bad"):
        await pool.submit(echo(1, bad=True))
    with pytest.raises(UserError, match="no 'nope' command"):
        await pool.submit(Job("nope"))
    assert pool.status()["queued"] == 0
    await pool.close()


async def test_close_finishes_running_work_then_refuses_new_jobs():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    inflight = await holding(task, pool, echo(1))
    closing = asyncio.create_task(pool.close(deadline_s=3600))
    await until(lambda: pool.status()["closing"])
    with pytest.raises(BusyError, match="shutting down"):
        await pool.submit(echo(2))
    task.gate.set()
    await closing
    assert (await inflight).info["value"] == 2


async def test_close_cancels_what_cannot_finish_by_the_deadline():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0)
    jobs = [await holding(task, pool, echo(0))] + await queue_behind(pool, [echo(v) for v in range(1, 4)])
    await pool.close(deadline_s=0)
    task.gate.set()
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(o, BusyError) for o in outcomes)


def test_the_fair_queue_serves_servers_then_people_in_turn():
    @dataclasses.dataclass(eq=False)
    class Waiting:
        guild: str
        user: str
        name: str
        key: str = "k"
        cost: float = 1.0

    q: FairQueue[Waiting] = FairQueue()
    jobs = [Waiting("A", "ann", "a1"), Waiting("A", "ann", "a2"), Waiting("A", "bob", "b1"),
            Waiting("B", "cat", "c1"), Waiting("A", "ann", "a3"), Waiting("B", "cat", "c2")]
    for job in jobs:
        q.push(job)
    assert [j.name for j in q.order()] == ["a1", "c1", "b1", "c2", "a2", "a3"]
    q.take([jobs[0]])  # server A and ann were just served: B, then A's other person, come first
    assert [j.name for j in q.order()] == ["c1", "b1", "c2", "a2", "a3"]
    assert q.remove(jobs[3]) and not q.remove(jobs[3])
    assert [j.name for j in q.order()] == ["c2", "b1", "a2", "a3"] and len(q) == 4  # leaving is not a turn
    batch, full = next_batch(q.order(), 8, 100.0, room=lambda guild: 2 if guild == "A" else 0)
    assert [j.name for j in batch] == ["b1", "a2"] and not full  # B has no room to run more now; A two


def test_wait_estimates_need_a_measurement_then_add_up_the_queue():
    estimator = WaitEstimator()
    assert estimator.wait_s("dream", 1.0, []) is None
    estimator.learn("dream", "cpu", cost=2.0, seconds=4.0)
    estimator.learn("fix", "cpu", cost=1.0, seconds=10.0)
    assert estimator.wait_s("dream", 1.0, []) == 2.0
    assert estimator.wait_s("dream", 1.0, [("fix", 1.0), ("dream", 3.0)], devices=2) == (10.0 + 6.0) / 2 + 2.0
    assert estimator.wait_s("stylize", 1.0, []) is None


def test_one_odd_job_cannot_poison_the_estimate_and_a_real_change_is_followed():
    """A job 10,000 times slower per unit than the rest (a cost that missed its work, a stalled
    machine) does not move a settled estimate; an odd first measurement is outvoted by the next;
    a device that really became 3x slower is followed within half the remembered batches."""
    estimator = WaitEstimator()
    for _ in range(3):
        estimator.learn("stylize", "cpu", cost=1.0, seconds=4.0)
    assert estimator.settled("stylize")
    estimator.learn("stylize", "cpu", cost=0.0001, seconds=1.0)  # 10,000 s per unit
    assert estimator.rate("stylize") == 4.0
    first = WaitEstimator()
    first.learn("doodle", "cpu", cost=0.04, seconds=16.0)  # the very first measurement is an outlier
    assert first.rate("doodle") == 400.0 and not first.settled("doodle")
    first.learn("doodle", "cpu", cost=1.0, seconds=1.0)
    assert first.rate("doodle") == 1.0  # recovered at the next batch
    for _ in range(8):
        estimator.learn("stylize", "cpu", cost=1.0, seconds=12.0)
    assert estimator.rate("stylize") == 12.0


def test_estimates_are_per_device_and_devices_add_up():
    """Two devices at 1 and 3 s per unit run a task together at 1.5 s per unit each (harmonic mean)."""
    estimator = WaitEstimator()
    estimator.learn("fix", "cuda:0", cost=1.0, seconds=1.0)
    estimator.learn("fix", "cuda:1", cost=1.0, seconds=3.0)
    assert estimator.rate("fix") == 1.5 and estimator.wait_s("fix", 2.0, [("fix", 4.0)], devices=2) == 4.0 / 2 * 1.5 + 3.0


async def test_real_models_through_the_pool(real_weights):
    """Every real task once, batched where they can be, with the CPU worker's defaults."""
    pool = InferencePool(PoolConfig(device="cpu", max_batch=4, batch_wait_s=0.05))
    await pool.start()
    status = pool.status()
    assert status["devices"][0]["models"] == ["doodle", "dream", "fix", "stylize"]
    cat, painting = samples.photo("cat"), samples.painting()
    results = await asyncio.gather(
        pool.submit(Job("dream", {"seed": 1, "count": 4})),
        pool.submit(Job("dream", {"seed": 2, "count": 9})),
        pool.submit(Job("stylize", {"max_side": 256}, {"content": cat, "style": painting})),
        pool.submit(Job("stylize", {"max_side": 256, "presets": "3"}, {"content": cat})),
    )
    grids = [Image.open(io.BytesIO(r.files[0].data)) for r in results[:2]]
    assert grids[0].size == (2 * 128 + 3 * 4, 2 * 128 + 3 * 4) and grids[1].size == (3 * 128 + 4 * 4, 3 * 128 + 4 * 4)
    assert results[0].info["batch"] == 2  # the two dream jobs shared a batch
    for r in results[2:]:
        assert Image.open(io.BytesIO(r.files[0].data)).size == (256, 170)
    await pool.close()


async def test_reduced_precision_path_keeps_the_pictures(real_weights):
    """The GPU configuration's bf16 autocast (norms kept in float32), exercised on the CPU."""
    cat, painting = samples.photo("cat"), samples.painting()
    jobs = [Job("stylize", {"max_side": 192}, {"content": cat, "style": painting}),
            Job("stylize", {"max_side": 192, "presets": "19"}, {"content": cat}),
            Job("dream", {"seed": 8, "count": 4})]
    pictures = {}
    for precision in ("fp32", "bf16"):
        pool = InferencePool(PoolConfig(device="cpu", precision=precision, max_batch=1, warmup=False))
        await pool.start()
        results = [await pool.submit(job) for job in jobs]
        pictures[precision] = [np.asarray(Image.open(io.BytesIO(r.files[0].data)).convert("RGB"), np.float32) for r in results]
        await pool.close()
    for full, reduced in zip(pictures["fp32"], pictures["bf16"]):
        mse = float(((full - reduced) ** 2).mean())
        assert full.shape == reduced.shape and 10 * np.log10(255**2 / max(mse, 1e-9)) >= 28


@pytest.mark.parametrize("spec, words", [("cuda", "no CUDA device"), ("cuda:3", "no CUDA device"), ("tpu", "auto, cpu, cuda")])
def test_asking_for_a_device_that_is_not_there_is_one_sentence(spec, words, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=words):
        resolve_devices(spec)
    assert resolve_devices("auto") == [torch.device("cpu")]


def test_device_selection_when_gpus_are_visible(monkeypatch):
    """The GPU branch of device selection, with two GPUs pretended."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_devices("auto") == resolve_devices("cuda") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert resolve_devices("cuda:1") == [torch.device("cuda", 1)]
    with pytest.raises(DeviceError, match="only 2"):
        resolve_devices("cuda:2")
