"""The pool on Ray Serve (a local Ray, started once for this module): the same results as the
local pool, batching, the queue bound, and a replica lost mid-job."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")

import ray  # noqa: E402

from conftest import png_bytes  # noqa: E402
from models import samples  # noqa: E402
from models.errors import BusyError, Cancelled  # noqa: E402
from models.jobs import CancelOutcome, Job, Progress  # noqa: E402
from models.pool import InferencePool, PoolConfig  # noqa: E402
from models.pool.ray_serve import RayConfig, RayPool  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Small bounds so a test reaches them: 2 x 4 jobs on the replica, 6 more waiting at this caller
# (Ray counts a request as queued at its caller until a replica takes it, so a burst of 6 always fits).
CONFIG = PoolConfig(device="cpu", tasks=("dream", "stylize", "fix"), max_batch=4, max_queue=6, warmup=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ray_pool(real_weights):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = RayPool(CONFIG, RayConfig())
    await pool.start()
    yield pool
    await pool.close()
    ray.shutdown()


async def local_result(job: Job):
    pool = InferencePool(CONFIG)
    await pool.start()
    try:
        return await pool.submit(job)
    finally:
        await pool.close()


def photo(name: str, side: int) -> bytes:
    image = Image.open(io.BytesIO(samples.photo(name))).convert("RGB")
    image.thumbnail((side, side))
    return png_bytes(image)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64) / 255


async def test_a_dream_seed_gives_the_same_bytes_on_both_backends(ray_pool):
    job = Job("dream", {"seed": 1234, "count": 1})
    seen: list[Progress] = []
    on_ray = await ray_pool.submit(job, on_progress=seen.append)
    assert [p.state for p in seen] == ["queued", "running"]
    assert on_ray.files[0].data == (await local_result(job)).files[0].data


async def test_stylize_gives_the_same_picture_on_both_backends(ray_pool):
    """Within 1e-3 on average: the replica computes with one thread and the local pool with all
    cores, so sums run in other orders and a pixel may round to the neighbouring 8-bit level."""
    job = Job("stylize", {"max_side": 256}, {"content": photo("astronaut", 256), "style": samples.painting()})
    a, b = pixels((await ray_pool.submit(job)).files[0].data), pixels((await local_result(job)).files[0].data)
    assert a.shape == b.shape
    assert float(np.abs(a - b).mean()) <= 1e-3 and float(np.abs(a - b).max()) <= 2 / 255


async def test_concurrent_jobs_share_batches_on_the_replica(ray_pool):
    results = await asyncio.gather(*(ray_pool.submit(Job("dream", {"seed": i, "count": 1})) for i in range(6)))
    assert max(r.info["batch"] for r in results) > 1
    assert len({r.files[0].data for r in results}) == 6


async def test_the_queue_bound_turns_into_the_busy_sentence(ray_pool):
    job = Job("fix", {"max_side": 384}, {"photo": photo("astronaut", 384)})
    outcomes = await asyncio.gather(*(ray_pool.submit(job) for _ in range(16)), return_exceptions=True)  # > 8 + 6
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert refused and all(isinstance(o, BusyError) and str(o) == BusyError.QUEUE_FULL for o in refused), refused
    assert len(refused) < len(outcomes) and ray_pool.status()["queued"] == ray_pool.status()["running"] == 0


async def test_cancel_answers_at_once_and_the_pool_carries_on(ray_pool):
    """The same `cancel(job.id)` as the local pool: the caller hears Cancelled, nothing stays counted,
    and the next job runs (with its cost, as the local pool reports it, for quotas)."""
    job = Job("fix", {"max_side": 512}, {"photo": photo("astronaut", 512)})
    queued = asyncio.Event()
    running = asyncio.create_task(ray_pool.submit(job, on_progress=lambda p: queued.set()))
    await queued.wait()
    assert ray_pool.cancel(job.id) is CancelOutcome.CANCELLED and ray_pool.cancel("no-such-job") is CancelOutcome.UNKNOWN
    with pytest.raises(Cancelled):
        await running
    assert ray_pool.status()["queued"] == ray_pool.status()["running"] == 0
    assert ray_pool.cancel(job.id) is CancelOutcome.ALREADY_CANCELLED
    after = await ray_pool.submit(Job("dream", {"seed": 5, "count": 1}))
    assert after.info["cost"] > 0


async def test_a_replica_killed_mid_job_does_not_lose_the_job(ray_pool):
    """Runs last here: the controller replaces the killed replica, which loads its models again."""
    on_replica = asyncio.Event()

    def progress(p: Progress) -> None:
        if p.state == "running":
            on_replica.set()
    picture = photo("astronaut", 1024)
    job = Job("fix", {"max_side": 1024}, {"photo": picture})
    submitted = asyncio.create_task(ray_pool.submit(job, on_progress=progress))
    await on_replica.wait()
    (replica,) = await ray_pool.replicas()
    ray.kill(ray.get_actor(replica["replica"], namespace="serve"))
    result = await submitted
    assert ray_pool.retries == 1
    assert Image.open(io.BytesIO(result.files[0].data)).size == Image.open(io.BytesIO(picture)).size
