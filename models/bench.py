"""Pool throughput and latency, and our stylization against onnxruntime, as JSON.

    python -m models.bench            (or: easel bench)

For each scenario (dream, stylize at 512 and 1024 px, fix, a 100-character doodle) and each
concurrency, N clients submit jobs back to back through a real InferencePool, once with dynamic
batching and once with max batch 1. A timer on the event loop records how late it wakes (loop lag). The
onnxruntime comparison runs both engines on equal work, one image at a time, same threads.
`--scenarios fix40mp` (not in the default set: minutes on a CPU) times one `easel fix` of a
6000x6600 photo, just under the 40 MP limit, in a fresh process, and reports its peak memory.
`--backend ray` instead measures the Ray Serve backend on a local Ray: each job's overhead
against the local pool (/dream count:1, one at a time, no batch wait), and throughput with one
and two replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models import samples
from models.jobs import Job
from models.pool import InferencePool, PoolConfig, keep_freed_memory
from models.settings import ModelSettings, configured_cache_dir

FIX_SIDE = 768  # the square photo /fix restores in the "fix" scenario
SCENARIOS: dict[str, Callable[[int], Job]] = {
    "dream": lambda i: Job("dream", {"seed": i, "count": 4}),
    "stylize512": lambda i: Job("stylize", {"max_side": 512}, {"content": _photo(i), "style": _PAINTING}),
    "stylize1024": lambda i: Job("stylize", {"max_side": 1024}, {"content": _photo(i), "style": _PAINTING}),
    "fix": lambda i: Job("fix", {"max_side": FIX_SIDE}, {"photo": _photo(i)}),
    "doodle": lambda i: Job("doodle", {"text": DOODLE_TEXT, "seed": i}),
}
LARGE_FIX = "fix40mp"
LARGE_SIZE = (6000, 6600)  # 39.6 MP: the largest photo of this shape the default 40 MP limit allows
# 100 characters of mixed Chinese and English, as a /doodle request might be (49 distinct glyphs)
DOODLE_TEXT = "今天天气很好，我们去公园散步吧。| The weather is lovely today, so let us walk in the park. 下午三点在门口见！See you at 3 pm."
_PAINTING = samples.painting()
_PHOTOS: list[bytes] = []


def _photo(i: int) -> bytes:
    """The same 1024x1024 photo for every job of a run, so stylize jobs share a shape and can batch."""
    if not _PHOTOS:
        image = Image.open(io.BytesIO(samples.photo("astronaut"))).convert("RGB").resize((1024, 1024), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        _PHOTOS.append(buffer.getvalue())
    return _PHOTOS[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _loop_lag(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(period)
        lags.append(max(0.0, time.perf_counter() - before - period))


async def run_load(pool: InferencePool, make: Callable[[int], Job], concurrency: int, jobs: int) -> dict[str, Any]:
    """`concurrency` clients submit `jobs` jobs in total, each waiting for its previous result."""
    latencies: list[float] = []
    counter = iter(range(jobs))
    lags: list[float] = []
    stop = asyncio.Event()

    async def client() -> None:
        for i in counter:
            started = time.perf_counter()
            await pool.submit(make(i))
            latencies.append(time.perf_counter() - started)

    ticker = asyncio.create_task(_loop_lag(stop, lags))
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    stop.set()
    await ticker
    return {
        "jobs": jobs, "seconds": round(wall, 3), "jobs_per_s": round(jobs / wall, 3),
        "latency_p50_s": round(percentile(latencies, 0.5), 3), "latency_p95_s": round(percentile(latencies, 0.95), 3),
        "loop_lag_max_ms": round(max(lags, default=0) * 1000, 1), "loop_lag_p99_ms": round(percentile(lags or [0], 0.99) * 1000, 1),
    }


async def bench_pool(scenarios: list[str], concurrencies: list[int], jobs_per_client: int, device: str, max_batch: int) -> list[dict[str, Any]]:
    rows = []
    for batching in (True, False):
        pool = InferencePool(PoolConfig(device=device, max_batch=max_batch if batching else 1, batch_wait_s=0.02,
                                        max_queue=1024, job_timeout_s=3600, cache_dir=configured_cache_dir()))
        await pool.start()
        try:
            for name in scenarios:
                await pool.submit(SCENARIOS[name](0))  # warm this shape
                for c in concurrencies:
                    jobs = max(8, c * jobs_per_client)
                    row = await run_load(pool, SCENARIOS[name], c, jobs)
                    row.update(scenario=name, concurrency=c, batching=batching, max_batch=max_batch if batching else 1)
                    if name == "dream":
                        row["images_per_s"] = round(row["jobs_per_s"] * 4, 2)
                    if name == "fix":
                        row["megapixels_per_s"] = round(row["jobs_per_s"] * FIX_SIDE ** 2 / 1e6, 3)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
        finally:
            await pool.close()
    return rows


async def _one_at_a_time(pool: Any, jobs: int) -> list[float]:
    """Latencies of /dream count:1 jobs submitted one after another (after one to warm up)."""
    await pool.submit(Job("dream", {"seed": 0, "count": 1}))
    latencies = []
    for i in range(jobs):
        started = time.perf_counter()
        await pool.submit(Job("dream", {"seed": i, "count": 1}))
        latencies.append(time.perf_counter() - started)
    return latencies


async def bench_ray(device: str, max_batch: int, jobs: int, concurrency: int) -> dict[str, Any]:
    """The Ray backend's per-job overhead over the local pool, and its throughput with 1 and 2 replicas."""
    from models.pool import RayConfig
    from models.pool.ray_serve import RayPool

    config = PoolConfig(device=device, tasks=("dream",), max_batch=max_batch, batch_wait_s=0.0, max_queue=1024,
                        job_timeout_s=3600, cache_dir=configured_cache_dir())
    local = InferencePool(config)
    await local.start()
    try:
        local_s = statistics.median(await _one_at_a_time(local, jobs))
    finally:
        await local.close()
    report: dict[str, Any] = {"local_median_ms": round(local_s * 1000, 2)}
    for replicas in (1, 2):
        pool = RayPool(config, RayConfig(replicas=replicas, cpus_per_replica=1))
        await pool.start()
        try:
            if replicas == 1:
                ray_s = statistics.median(await _one_at_a_time(pool, jobs))
                report.update(ray_median_ms=round(ray_s * 1000, 2), overhead_median_ms=round((ray_s - local_s) * 1000, 2))
            row = await run_load(pool, SCENARIOS["dream"], concurrency, max(8, 4 * concurrency))
            row.update(scenario="dream", concurrency=concurrency, replicas=replicas, images_per_s=round(row["jobs_per_s"] * 4, 2))
            report[f"throughput_{replicas}_replica{'s' if replicas > 1 else ''}"] = row
            print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            await pool.close()
    return report


def _median_seconds(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_onnxruntime(repeat: int) -> list[dict[str, Any]]:
    """Equal work on both engines: predictor at 256 + transformer at 384, and the presets net at 1024."""
    import numpy as np
    import onnxruntime

    from models import weights
    from models.style.arbitrary import StylePredictor, StyleTransformer
    from models.style.presets import PresetStyleNet

    keep_freed_memory()  # the CPU worker's allocator setting, also when the pool part was skipped
    settings = ModelSettings.load()
    spec, cache, houses = weights.REGISTRY["style-arbitrary"], settings.cache_dir, (settings.wheelhouse,)
    predict_onnx, transform_onnx = weights.wheel_members(spec, cache, houses)
    (presets_onnx,) = weights.wheel_members(weights.REGISTRY["style-presets"], cache, houses)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    predict = onnxruntime.InferenceSession(predict_onnx, options, providers=["CPUExecutionProvider"])
    transform = onnxruntime.InferenceSession(transform_onnx, options, providers=["CPUExecutionProvider"])
    presets = onnxruntime.InferenceSession(presets_onnx, options, providers=["CPUExecutionProvider"])

    state = weights.load("style-arbitrary", cache)
    predictor, transformer, preset_net = StylePredictor().eval(), StyleTransformer().eval(), PresetStyleNet().eval()
    predictor.load_state_dict({k.removeprefix("predictor."): v for k, v in state.items() if k.startswith("predictor.")})
    transformer.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items() if k.startswith("transformer.")})
    preset_net.load_state_dict(weights.load("style-presets", cache))
    for net in (predictor, transformer, preset_net):
        net.to(memory_format=torch.channels_last)

    rng = np.random.default_rng(0)
    style, content = rng.random((1, 256, 256, 3), np.float32), rng.random((1, 384, 384, 3), np.float32)
    big = rng.random((1, 3, 1024, 1024), np.float32)
    mix = np.zeros(26, np.float32)
    mix[[3, 12]] = 0.5

    def ort_arbitrary() -> None:
        vector = predict.run(None, {"style_image": style})[0]
        transform.run(None, {"content_image": content, "mobilenet_conv/Conv/BiasAdd": vector})

    def ort_presets() -> None:
        presets.run(None, {"image": big, "style_weights": mix})

    cl = torch.channels_last
    t_style = torch.from_numpy(style).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    t_content = torch.from_numpy(content).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    t_big, t_mix = torch.from_numpy(big).contiguous(memory_format=cl), torch.from_numpy(mix)[None]

    def torch_arbitrary() -> None:
        with torch.inference_mode():
            transformer(t_content, predictor(t_style))

    def torch_presets() -> None:
        with torch.inference_mode():
            preset_net(t_big, t_mix)

    rows = []
    for name, ours, theirs in (("arbitrary style, 256 px style + 384 px content", torch_arbitrary, ort_arbitrary),
                               ("26 presets, 1024x1024", torch_presets, ort_presets)):
        t_ours, t_theirs = _median_seconds(ours, repeat), _median_seconds(theirs, repeat)
        rows.append({"network": name, "torch_images_per_s": round(1 / t_ours, 3),
                     "onnxruntime_images_per_s": round(1 / t_theirs, 3), "ratio": round(t_theirs / t_ours, 3)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def bench_large_fix(device: str) -> dict[str, Any]:
    """/fix at full size on the largest photo the limits allow, run as a person runs it: `easel fix`
    in a fresh process, so the peak resident memory is that one job's (decode, tiles, encode)."""
    with tempfile.TemporaryDirectory() as folder:
        photo, out = Path(folder) / "photo.jpg", Path(folder) / "fixed.png"
        image = Image.open(io.BytesIO(samples.photo("astronaut"))).convert("RGB")
        image.resize(LARGE_SIZE, Image.Resampling.BICUBIC).save(photo, "JPEG", quality=92)
        command = [sys.executable, "-m", "models", "fix", str(photo), "-o", str(out), "--device", device]
        started = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(f"{LARGE_FIX} failed: {run.stderr.strip()}")
    info = json.loads(run.stdout[run.stdout.index("{"):])  # "wrote PATH {json}"
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the only child this process waited for
    row = {"scenario": LARGE_FIX, "width": LARGE_SIZE[0], "height": LARGE_SIZE[1], "device": info["device"],
           "seconds": round(seconds, 1), "model_s": info["model_s"], "peak_rss_mb": round(peak_kb / 1024),
           "megapixels_per_s": round(LARGE_SIZE[0] * LARGE_SIZE[1] / 1e6 / seconds, 3)}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def summarize(pool_rows: list[dict[str, Any]], ort_rows: list[dict[str, Any]]) -> dict[str, Any]:
    def find(scenario: str, c: int, batching: bool) -> dict[str, Any] | None:
        return next((r for r in pool_rows if r["scenario"] == scenario and r["concurrency"] == c and r["batching"] == batching), None)

    out: dict[str, Any] = {}
    on, off = find("dream", 32, True), find("dream", 32, False)
    if on and off:
        out["dream_c32_batching_speedup"] = round(on["jobs_per_s"] / off["jobs_per_s"], 2)
    for c in (8, 32):
        on, off = find("doodle", c, True), find("doodle", c, False)
        if on and off:
            out[f"doodle_c{c}_batching_speedup"] = round(on["jobs_per_s"] / off["jobs_per_s"], 2)
    fix = find("fix", 1, True)
    if fix:
        out["fix_c1_megapixels_per_s"] = fix["megapixels_per_s"]
    alone = find("doodle", 1, True)
    if alone:
        out["doodle_c1_latency_p50_s"] = alone["latency_p50_s"]
    if pool_rows:
        out["max_loop_lag_ms"] = max(r["loop_lag_max_ms"] for r in pool_rows)
    for row in ort_rows:
        out[f"torch_vs_onnxruntime: {row['network']}"] = row["ratio"]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, from {', '.join(SCENARIOS)} (the default), and {LARGE_FIX}")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--jobs-per-client", type=int, default=2, help="jobs = max(8, clients x this) (default 2)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per engine in the onnxruntime comparison")
    parser.add_argument("--skip-onnxruntime", action="store_true")
    parser.add_argument("--skip-pool", action="store_true")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="ray: the Ray Serve backend's overhead and its throughput with 1 and 2 replicas (needs .[ray])")
    parser.add_argument("--jobs", type=int, default=50, help="--backend ray: /dream count:1 jobs timed one at a time")


def main(args: argparse.Namespace) -> None:
    scenarios = [s for s in args.scenarios.split(",") if s]
    large = LARGE_FIX in scenarios
    scenarios = [s for s in scenarios if s != LARGE_FIX]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    if args.backend == "ray":
        report["ray"] = asyncio.run(bench_ray(args.device, args.max_batch, args.jobs, max(concurrencies)))
        print(json.dumps(report, indent=2))
        return
    pool_rows = [] if args.skip_pool or not scenarios else asyncio.run(
        bench_pool(scenarios, concurrencies, args.jobs_per_client, args.device, args.max_batch))
    if large:
        report[LARGE_FIX] = bench_large_fix(args.device)
    ort_rows = []
    if not args.skip_onnxruntime and importlib.util.find_spec("onnxruntime") is None:
        report["onnxruntime_skipped"] = "onnxruntime is not installed (pip install onnxruntime, or '.[test]')"
    elif not args.skip_onnxruntime:
        ort_rows = bench_onnxruntime(args.repeat)
    report.update(pool=pool_rows, onnxruntime=ort_rows, summary=summarize(pool_rows, ort_rows))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
