"""InferencePool mechanics with a small fake task, then the real models through the pool."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from models import samples
from models.errors import BusyError, DeviceError, JobTimeout, ResourceError, UserError
from models.jobs import File, Job, Progress, Result
from models.pool import InferencePool, PoolConfig, resolve_devices
from models.tasks import Plan, RunContext, Task


class Echo(Task):
    """Doubles a number. Records every batch it runs; can fake slowness and CUDA out-of-memory."""

    name = "echo"
    weights = ()

    def __init__(self, delay: float = 0.0, oom_above: int | None = None, oom_until_shrink: int = 0) -> None:
        self.delay, self.oom_above, self.oom_until_shrink = delay, oom_above, oom_until_shrink
        self.batches: list[list[int]] = []
        self.shrinks: list[int] = []

    def plan(self, job: Job, limits) -> Plan:
        if job.options.get("bad"):
            raise UserError("That option is bad.")
        return Plan(key=("echo", job.options.get("shape", 0)), cost=1.0)

    def load(self, device, channels_last):
        return object()

    def prepare(self, job: Job, limits) -> int:
        return job.options["value"]

    def run(self, nets, items: list[int], ctx: RunContext) -> list[int]:
        if self.oom_above is not None and len(items) > self.oom_above or ctx.shrink < self.oom_until_shrink:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append(list(items))
        self.shrinks.append(ctx.shrink)
        time.sleep(self.delay / 2)
        ctx.progress(0.5)
        time.sleep(self.delay / 2)
        ctx.progress(1.0)
        return [2 * v for v in items]

    def finish(self, job: Job, item: int, output: int) -> Result:
        return Result((File("out.txt", str(output).encode()),), {"value": output})


async def started(task: Task, **config) -> InferencePool:
    pool = InferencePool(PoolConfig(device="cpu", **config), tasks=[task])
    await pool.start()
    return pool


def echo(value: int, **options) -> Job:
    return Job("echo", {"value": value, **options})


async def test_jobs_arriving_together_run_as_one_batch_in_arrival_order():
    task = Echo(delay=0.02)
    pool = await started(task, max_batch=4, batch_wait_s=0.1)
    results = await asyncio.gather(*(pool.submit(echo(v)) for v in range(8)))
    assert [r.info["value"] for r in results] == [2 * v for v in range(8)]  # each caller gets its own answer
    assert task.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [r.info["batch"] for r in results] == [4] * 8
    await pool.close()


async def test_batches_never_mix_keys():
    task = Echo()
    pool = await started(task, max_batch=8, batch_wait_s=0.05)
    await asyncio.gather(*(pool.submit(echo(v, shape=v % 2)) for v in range(6)))
    assert sorted(map(tuple, task.batches)) == [(0, 2, 4), (1, 3, 5)]
    await pool.close()


async def test_jobs_trickling_in_during_a_burst_wait_for_each_other():
    task = Echo(delay=0.05)
    pool = await started(task, max_batch=8, batch_wait_s=0.2)

    async def later(value: int, delay: float) -> Result:
        await asyncio.sleep(delay)
        return await pool.submit(echo(value))
    await asyncio.gather(*(later(v, 0.02 * v) for v in range(5)))  # one every 20 ms
    assert task.batches == [[0], [1, 2, 3, 4]]  # the first came alone; the rest waited for company
    await pool.close()


async def test_a_lone_job_on_a_quiet_pool_does_not_wait_for_the_window():
    pool = await started(Echo(), max_batch=8, batch_wait_s=0.5)
    begun = time.monotonic()
    await pool.submit(echo(1))
    assert time.monotonic() - begun < 0.4
    await pool.close()


async def test_a_batch_stops_at_its_megapixel_budget():
    """On the CPU, big images batch less: their activations no longer fit the caches."""
    task = Echo()
    pool = await started(task, max_batch=8, max_batch_megapixels=2.5, batch_wait_s=0.05)
    await asyncio.gather(*(pool.submit(echo(v)) for v in range(6)))  # each echo job costs 1 megapixel
    assert task.batches == [[0, 1], [2, 3], [4, 5]]
    await pool.close()


async def test_max_batch_one_disables_batching():
    task = Echo()
    pool = await started(task, max_batch=1, batch_wait_s=0.05)
    await asyncio.gather(*(pool.submit(echo(v)) for v in range(3)))
    assert task.batches == [[0], [1], [2]]
    await pool.close()


async def test_a_full_queue_refuses_at_once():
    task = Echo(delay=0.5)
    pool = await started(task, max_batch=1, max_queue=2, batch_wait_s=0)
    running = asyncio.create_task(pool.submit(echo(1)))
    await asyncio.sleep(0.1)  # now running, queue empty
    queued = [asyncio.create_task(pool.submit(echo(v))) for v in (2, 3)]
    await asyncio.sleep(0.05)
    begun = time.monotonic()
    with pytest.raises(BusyError, match="busy"):
        await pool.submit(echo(4))
    assert time.monotonic() - begun < 0.05
    await asyncio.gather(running, *queued)
    await pool.close()


async def test_a_job_the_queue_could_not_finish_in_time_is_refused_up_front():
    """Once the pool has measured a job's cost, it refuses work whose wait would outlast the caller's
    deadline (the interaction token) instead of computing it for nobody."""
    task = Echo(delay=0.3)
    pool = await started(task, max_batch=1, batch_wait_s=0)
    await pool.submit(echo(1))  # measures about 0.3 s per job
    ahead = [asyncio.create_task(pool.submit(echo(v))) for v in range(2, 6)]
    await asyncio.sleep(0.05)
    with pytest.raises(BusyError, match="longer than I can keep your request open"):
        await pool.submit(echo(9), timeout=0.5)  # four jobs ahead: about 1.5 s
    assert all(9 not in batch for batch in task.batches)  # never computed
    assert len(await asyncio.gather(*ahead)) == 4
    await pool.close()


async def test_a_timed_out_job_is_dropped_before_it_is_computed():
    task = Echo(delay=0.4)
    pool = await started(task, max_batch=1, batch_wait_s=0)
    first = asyncio.create_task(pool.submit(echo(1)))
    await asyncio.sleep(0.05)
    with pytest.raises(JobTimeout):
        await pool.submit(echo(2), timeout=0.1)
    await first
    await asyncio.sleep(0.2)
    assert task.batches == [[1]]
    await pool.close()


async def test_a_cancelled_job_is_dropped_from_the_queue_and_its_batch():
    task = Echo(delay=0.3)
    pool = await started(task, max_batch=4, batch_wait_s=0.0)
    first = asyncio.create_task(pool.submit(echo(1)))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(pool.submit(echo(v))) for v in (2, 3, 4)]
    await asyncio.sleep(0.05)
    waiting[1].cancel()
    results = await asyncio.gather(first, waiting[0], waiting[2])
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    assert [r.info["value"] for r in results] == [2, 4, 8]
    assert task.batches == [[1], [2, 4]]
    assert pool.status()["queued"] == 0
    await pool.close()


async def test_out_of_memory_splits_the_batch():
    task = Echo(oom_above=1)
    pool = await started(task, max_batch=4, batch_wait_s=0.05)
    results = await asyncio.gather(*(pool.submit(echo(v)) for v in range(4)))
    assert [r.info["value"] for r in results] == [0, 2, 4, 6]
    assert task.batches == [[0], [1], [2], [3]]
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
    task = Echo(delay=0.2)
    pool = await started(task, max_batch=1, batch_wait_s=0)
    seen: list[Progress] = []
    first = asyncio.create_task(pool.submit(echo(1)))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(pool.submit(echo(2)))
    await asyncio.sleep(0.02)
    await pool.submit(echo(3), on_progress=seen.append)
    await asyncio.gather(first, second)
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
    task = Echo(delay=0.2)
    pool = await started(task, max_batch=1, batch_wait_s=0)
    inflight = asyncio.create_task(pool.submit(echo(1)))
    await asyncio.sleep(0.05)
    await pool.close(deadline_s=5)
    assert (await inflight).info["value"] == 2
    with pytest.raises(BusyError, match="shutting down"):
        await pool.submit(echo(2))


async def test_close_cancels_what_cannot_finish_by_the_deadline():
    task = Echo(delay=0.3)
    pool = await started(task, max_batch=1, batch_wait_s=0)
    jobs = [asyncio.create_task(pool.submit(echo(v))) for v in range(4)]
    await asyncio.sleep(0.05)
    await pool.close(deadline_s=0.1)
    outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    assert any(isinstance(o, BusyError) for o in outcomes)


async def test_real_models_through_the_pool(real_weights):
    """Every real task once, batched where they can be, with the CPU worker's defaults."""
    pool = InferencePool(PoolConfig(device="cpu", max_batch=4, batch_wait_s=0.05))
    await pool.start()
    status = pool.status()
    assert status["devices"][0]["models"] == ["dream", "fix", "stylize"]
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
