"""The pool's CUDA path with the real models: what no CPU run can show.

Skipped where PyTorch sees no GPU (CI has none). Run on a GPU machine with
`python -m pytest tests/test_cuda.py`; the project's notes record where and when it last ran.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
import torch
from PIL import Image

from models import samples
from models.errors import ResourceError
from models.jobs import Job
from models.pool import InferencePool, PoolConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

JOBS = [Job("dream", {"seed": 8, "count": 9}),
        Job("stylize", {"max_side": 512}, {"content": samples.photo("cat"), "style": samples.painting()}),
        Job("stylize", {"max_side": 512, "presets": "19"}, {"content": samples.photo("coffee")}),
        Job("fix", {"max_side": 512}, {"photo": samples.photo("astronaut")})]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / max(float(((a - b) ** 2).mean()), 1e-9)))


async def results_on(device: str, **config) -> list[np.ndarray]:
    pool = InferencePool(PoolConfig(device=device, max_batch=1, warmup=False, **config))
    await pool.start()
    try:
        return [pixels((await pool.submit(job)).files[0].data) for job in JOBS]
    finally:
        await pool.close()


async def test_gpu_pictures_match_the_cpu(real_weights):
    """bf16 autocast on the GPU (norms in float32) paints what float32 on the CPU paints."""
    gpu, cpu = await results_on("cuda"), await results_on("cpu")
    for job, a, b in zip(JOBS, gpu, cpu):
        assert a.shape == b.shape and np.isfinite(a).all()
        assert psnr(a, b) >= 28, job.task


async def test_jobs_batch_together_on_the_gpu(real_weights):
    pool = InferencePool(PoolConfig(device="cuda", max_batch=8, batch_wait_s=0.2, warmup=False))
    await pool.start()
    try:
        results = await asyncio.gather(*(pool.submit(Job("dream", {"seed": s, "count": 4})) for s in range(6)))
        assert max(r.info["batch"] for r in results) > 1
    finally:
        await pool.close()


def big_photo(side: int = 2048) -> bytes:
    image = Image.open(io.BytesIO(samples.photo("coffee"))).convert("RGB")
    image = image.resize((side, side * image.height // image.width), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def test_real_out_of_memory_is_recovered_or_told(real_weights):
    """A real CUDA out-of-memory, not a simulated one: with memory capped at what about three jobs
    need, a batch of eight must fail; the pool halves it until it fits (or tells the person),
    every caller gets a picture or the out-of-memory sentence, and the device still works after."""
    photo = big_photo()
    job = lambda k: Job("stylize", {"max_side": 2048, "presets": str(k)}, {"content": photo})  # noqa: E731
    pool = InferencePool(PoolConfig(device="cuda", max_batch=8, batch_wait_s=0.5, max_batch_megapixels=64, warmup=False))
    await pool.start()
    try:
        await pool.submit(job(0))  # loads the network; then measure what one job needs
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        await pool.submit(job(1))
        one = torch.cuda.max_memory_allocated() - base
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction((base + 3 * one) / torch.cuda.get_device_properties(0).total_memory)
        outcomes = await asyncio.gather(*(pool.submit(job(k)) for k in range(8)), return_exceptions=True)
        assert all(isinstance(o, ResourceError) or o.files for o in outcomes), outcomes
        served = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(served) < 8 or max(o.info["batch"] for o in served) < 8  # the batch of eight did not fit
        torch.cuda.set_per_process_memory_fraction(1.0)
        assert (await pool.submit(Job("dream", {"seed": 1, "count": 4}))).files  # the device still works
    finally:
        await pool.close()
        torch.cuda.set_per_process_memory_fraction(1.0)
