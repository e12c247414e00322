"""Train KernelDeblurNet's refinement U-Net, reproducibly, on a CPU or a GPU (same script, same recipe).

    python -m research.restore.photos pack --out .data/photos.npz          # once, where there is network
    python -m research.restore.train --data .data/photos.npz --init models/restore/weights/deblur.safetensors --out DIR

Two stages:

1. **Regions.** `--regions` random 512 px regions of the training photos (at a random zoom,
   flipped, colours permuted), each blurred with one kernel of the training mix (five shake
   families, defocus, Gaussian, almost none; `research.restore.degrade`), noised, then handled
   exactly as /fix handles a 512 px tile: its kernel estimated (`kernel.estimate`) and the
   region deconvolved with it (`net.deconvolve`). This is the slow, CPU-bound part; it runs in
   `--workers` processes and is cached beside the data, keyed by seed and count.
2. **Fine-tuning.** The U-Net starts from the shipped weights or an earlier run's (`--init`;
   with another --seed, it trains on new regions), and learns, on random crops of the regions,
   to turn blurred + deconvolved into sharp (L1, EMA weights). (The first run started from the
   first-generation net's weights, its first layer widened with zeros: commit 8f7c32c.)

It stops at whichever of --steps / --minutes comes first and writes exactly three files to DIR:
deblur.safetensors (fp16 EMA weights), training.json (recipe, seed, steps reached, time, device,
data, validation) and loss_curve.csv. --checkpoint PATH saves a resumable checkpoint every few
minutes and at the end; --resume PATH continues from one. It never fetches anything.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import multiprocessing
import platform
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.nn import functional as F

from models.restore import kernel
from models.restore.fourier import KERNEL_SIZE, fast_size, kernel_spectrum
from models.restore.net import WIENER_BALANCES, KernelDeblurNet, deconvolve, from_state
from models.weights import save_half
from research.restore import photos
from research.restore.degrade import named_kernel, on_grid, sample_training_kernels


@dataclass(frozen=True)
class Recipe:
    seed: int = 1234
    regions: int = 480
    region: int = 512  # /fix's tile: kernels are estimated on areas of this size
    steps: int = 100_000  # an upper bound; --minutes usually ends the run first
    minutes: float = 45.0
    batch: int = 6
    crop: int = 192
    lr: float = 3e-4  # fine-tuning: under a third of the first-generation net's
    min_lr: float = 1e-6
    warmup: int = 50
    ema_decay: float = 0.998
    grad_clip: float = 0.5
    max_noise: float = 0.025
    noise_prob: float = 0.8
    scales: tuple[float, ...] = (1.0, 0.7, 0.5)  # photos are also cut downscaled: scale augmentation


PRINT_SECONDS, VALIDATE_SECONDS, CHECKPOINT_SECONDS = 30.0, 300.0, 300.0
VALIDATION = (("motion", 12.0), ("defocus", 3.0), ("gaussian", 2.0), ("tremor", 15.0))  # kinds of `named_kernel`
VALIDATION_KINDS = tuple(kind for kind, _ in VALIDATION)


def blur_valid(sharp: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each (3, S + k - 1)^2 crop convolved with its own (k, k) kernel by FFT, keeping the valid S x S."""
    k = kernels.shape[-1]
    h, w = sharp.shape[-2:]
    grid = fast_size(h), fast_size(w)  # zero-padded: the valid part sees no wrap-around either way
    blurred = torch.fft.irfft2(torch.fft.rfft2(sharp, s=grid) * kernel_spectrum(kernels, *grid)[:, None], s=grid)
    return blurred[..., k // 2:h - k // 2, k // 2:w - k // 2]


@dataclass
class Regions:
    """Blurred regions, their deconvolutions with estimated kernels, and the sharp truth (float16)."""

    blurred: torch.Tensor  # (N, 3, R, R)
    deconvolved: torch.Tensor  # (N, 6, R, R)
    sharp: torch.Tensor  # (N, 3, R, R)
    kinds: list[str]
    kernel_l1: list[float]  # the estimate's L1 distance to the true kernel (2 = nothing in common)


def _degrade(sharp: np.ndarray, true_kernel: np.ndarray, sigma: float, seed: int) -> dict:
    """One region (HxWx3 uint8, larger than the result by the kernel's size) handled as /fix would."""
    image = torch.from_numpy(sharp).permute(2, 0, 1)[None].float() / 255
    k = torch.from_numpy(true_kernel)[None]
    gen = torch.Generator().manual_seed(seed)
    blurred = blur_valid(image, k)
    blurred = (blurred + sigma * torch.randn(blurred.shape, generator=gen)).clamp(0, 1)
    with torch.inference_mode():
        found = kernel.estimate(blurred.mean(1, keepdim=True))
        deconvolved = deconvolve(blurred, found)
    m = KERNEL_SIZE // 2
    return {"blurred": blurred[0].half(), "deconvolved": deconvolved[0].half(),
            "sharp": image[0, :, m:-m, m:-m].half(), "kernel_l1": float((found - k).abs().sum())}


def _cut(rng: np.random.Generator, images: list[np.ndarray], r: Recipe) -> np.ndarray:
    """A random region (region + kernel size, square) at a random zoom, in any of 8 orientations, colours permuted."""
    full = r.region + KERNEL_SIZE - 1
    while True:
        array = images[int(rng.integers(len(images)))]
        scale = float(rng.choice(r.scales))
        h, w = round(array.shape[0] * scale), round(array.shape[1] * scale)
        if min(h, w) >= full:
            break
    if scale != 1.0:
        array = np.asarray(Image.fromarray(array).resize((w, h), Image.Resampling.LANCZOS))
    top, left = int(rng.integers(0, h - full + 1)), int(rng.integers(0, w - full + 1))
    crop = array[top:top + full, left:left + full]
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    if rng.uniform() < 0.5:
        crop = crop[::-1]
    if rng.uniform() < 0.5:
        crop = crop.transpose(1, 0, 2)
    return np.ascontiguousarray(crop[..., rng.permutation(3)])


def make_regions(images: dict[str, np.ndarray], r: Recipe, workers: int) -> Regions:
    """The training regions, each from its own seeded generator: the same set whatever the worker count."""
    photos_list = list(images.values())
    jobs, kinds = [], []
    for i in range(r.regions):
        rng = np.random.default_rng([r.seed, i])
        true_kernel, (kind,) = sample_training_kernels(rng, 1, KERNEL_SIZE)
        sigma = float(rng.uniform(0, r.max_noise)) * float(rng.uniform() < r.noise_prob)
        jobs.append((_cut(rng, photos_list, r), true_kernel[0], sigma, r.seed * 100_003 + i))
        kinds.append(kind)
    return _run(jobs, kinds, workers)


def _in_processes(jobs: list[tuple], workers: int) -> Iterator[dict]:
    """`_degrade` of each job, in order, in `workers` fresh processes (spawned: forking a process whose
    torch already runs threads can hang), or in this one when there is one worker."""
    if workers <= 1:
        yield from map(_degrade, *zip(*jobs))
        return
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), torch.set_num_threads, (1,)) as pool:
        yield from pool.map(_degrade, *zip(*jobs))


def _run(jobs: list[tuple], kinds: list[str], workers: int) -> Regions:
    started, done = time.time(), []
    for n, region in enumerate(_in_processes(jobs, workers), 1):
        done.append(region)
        if n % 50 == 0 or n == len(jobs):
            print(f"regions: {n}/{len(jobs)} in {time.time() - started:.0f} s", flush=True)
    return Regions(*(torch.stack([d[key] for d in done]) for key in ("blurred", "deconvolved", "sharp")), kinds,
                   [d["kernel_l1"] for d in done])


def validation_regions(images: dict[str, np.ndarray], r: Recipe, workers: int, seed: int = 999) -> Regions:
    """Held-out regions under fixed blurs, noise 0.01: shake (12 px), defocus 3, Gaussian 2 and
    tremor shake (15 px), a family training never draws; as large as the smallest photo allows."""
    rng = np.random.default_rng(seed)
    full = min(r.region + KERNEL_SIZE - 1, *(min(a.shape[:2]) for a in images.values()))
    jobs, kinds = [], []
    for array in images.values():
        for kind, size in VALIDATION:
            true_kernel = on_grid(named_kernel(kind, size, rng), KERNEL_SIZE)
            top, left = int(rng.integers(0, array.shape[0] - full + 1)), int(rng.integers(0, array.shape[1] - full + 1))
            jobs.append((np.ascontiguousarray(array[top:top + full, left:left + full]), true_kernel, 0.01, seed + len(jobs)))
            kinds.append(kind)
    return _run(jobs, kinds, workers)


def cached_regions(data: Path, r: Recipe, workers: int) -> tuple[Regions, Regions]:
    """Training and validation regions, made once per (data, seed, count, region size) and cached beside the data."""
    made_by = zlib.crc32(repr((kernel.Search(), WIENER_BALANCES)).encode())  # settings change: regions change
    cache = data.with_name(f"{data.stem}-regions-{r.seed}-{r.regions}-{r.region}-{made_by:08x}.pt")
    if cache.exists():
        saved = torch.load(cache, weights_only=False)
        return Regions(**saved["train"]), Regions(**saved["val"])
    train = make_regions(photos.load_packed(data, "train"), r, workers)
    val = validation_regions(photos.load_packed(data, "held_out"), r, workers)
    torch.save({"train": vars(train), "val": vars(val)}, cache)
    return train, val


def batch_of_crops(regions: Regions, rng: np.random.Generator, r: Recipe, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(blurred, deconvolved, sharp) random crops, one per randomly chosen region, on the device."""
    picks = rng.integers(len(regions.kinds), size=r.batch)
    tops, lefts = rng.integers(0, r.region - r.crop + 1, size=(2, r.batch))
    out = []
    for stack in (regions.blurred, regions.deconvolved, regions.sharp):
        out.append(torch.stack([stack[i, :, t:t + r.crop, l:l + r.crop] for i, t, l in zip(picks, tops, lefts)])
                   .to(device).float())
    return tuple(out)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR on the interior (32 px border cropped)."""
    mse = ((a.clamp(0, 1) - b) ** 2)[..., 32:-32, 32:-32].mean((1, 2, 3))
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def validate(net: KernelDeblurNet, val: Regions, device: torch.device) -> dict[str, float]:
    """Mean PSNR gain over the blurred input per kind: of the output, and of the crisper deconvolution alone."""
    net.eval()
    gains, wiener_gains = [], []
    for i in range(0, len(val.kinds), 4):
        blurred, deconvolved, sharp = (t[i:i + 4].to(device).float() for t in (val.blurred, val.deconvolved, val.sharp))
        before = _psnr(blurred, sharp)
        gains.append(_psnr(net.correct(blurred, deconvolved), sharp) - before)
        wiener_gains.append(_psnr(deconvolved[:, :3], sharp) - before)
    net.train()
    gain, wiener_gain = torch.cat(gains), torch.cat(wiener_gains)
    row = {}
    for kind in VALIDATION_KINDS:
        sel = torch.tensor([k == kind for k in val.kinds], device=gain.device)
        row[f"gain_{kind}"] = round(float(gain[sel].mean()), 3)
        row[f"wiener_gain_{kind}"] = round(float(wiener_gain[sel].mean()), 3)
    row["gain"] = round(float(gain.mean()), 3)
    return row


def learning_rate(progress: float, step: int, r: Recipe) -> float:
    """Linear warm-up over `warmup` steps; then cosine to min_lr."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def initial_state(init: Path | None) -> dict[str, torch.Tensor]:
    """Where fine-tuning starts: an earlier run's weights (`from_state` adds middle blocks they lack,
    as identities, so step 0 is exactly that net), or a fresh net."""
    return (KernelDeblurNet() if init is None else from_state(load_file(str(init)))).state_dict()


def train(r: Recipe, data: Path, init: Path | None, out: Path, device: torch.device, workers: int,
          resume: Path | None, checkpoint: Path | None) -> None:
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    regions, val = cached_regions(data, r, workers)
    print(f"kernel L1 error of the estimates: training regions {np.mean(regions.kernel_l1):.3f}, "
          f"validation {np.mean(val.kernel_l1):.3f}", flush=True)
    net, ema = KernelDeblurNet().to(device), KernelDeblurNet().to(device)
    net.load_state_dict(initial_state(init))
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, betas=(0.9, 0.9), weight_decay=0.0)
    rows: list[dict] = [{"step": 0, "seconds": 0.0, **validate(ema, val, device)}]
    print(json.dumps(rows[0]), flush=True)
    step, elapsed_before = 0, 0.0
    if resume is not None:
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        rng.bit_generator.state = ckpt["rng"]
        step, rows, elapsed_before = ckpt["step"], ckpt["rows"], ckpt["elapsed"]
        print(f"resumed at step {step}", flush=True)
    budget = r.minutes * 60
    t0 = time.time() - elapsed_before
    last_print = last_val = last_ckpt = time.time()
    loss_sum, count = 0.0, 0

    def save_checkpoint() -> None:
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "rng": rng.bit_generator.state, "step": step, "rows": rows,
                        "elapsed": time.time() - t0, "recipe": asdict(r)}, checkpoint)

    while step < r.steps and time.time() - t0 < budget:
        progress = max(step / r.steps, (time.time() - t0) / budget)
        for group in opt.param_groups:
            group["lr"] = learning_rate(progress, step, r)
        blurred, deconvolved, sharp = batch_of_crops(regions, rng, r, device)
        loss = F.l1_loss(net.correct(blurred, deconvolved), sharp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), r.grad_clip)
        opt.step()
        step += 1
        decay = min(r.ema_decay, (1 + step) / (10 + step))  # early on the EMA follows closely
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
        loss_sum, count = loss_sum + float(loss.detach()), count + 1
        now = time.time()
        final = step == r.steps or now - t0 >= budget
        if now - last_print >= PRINT_SECONDS or final:
            row = {"step": step, "seconds": round(now - t0, 1), "lr": learning_rate(progress, step, r),
                   "l1": round(loss_sum / count, 5)}
            if now - last_val >= VALIDATE_SECONDS or final:
                row.update(validate(ema, val, device))
                last_val = time.time()
            rows.append(row)
            print(json.dumps(row), f"{count / (now - last_print):.2f} it/s", flush=True)
            loss_sum, count, last_print = 0.0, 0, time.time()
        if time.time() - last_ckpt >= CHECKPOINT_SECONDS:
            save_checkpoint()
            last_ckpt = time.time()
    save_checkpoint()
    write_outputs(out, ema, rows, r, data, init, regions, val, device, step, time.time() - t0)


def _init_record(init: Path) -> dict[str, str]:
    """Which weights training started from."""
    return {"file": str(init), "sha256": hashlib.sha256(init.read_bytes()).hexdigest(),
            "what": "an earlier KernelDeblurNet run's weights"}


def write_outputs(out: Path, ema: KernelDeblurNet, rows: list[dict], r: Recipe, data: Path, init: Path | None,
                  regions: Regions, val: Regions, device: torch.device, step: int, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_half(ema, out / "deblur.safetensors")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "loss_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report = {
        "command": "python -m research.restore.train --device {} --minutes {:g} --steps {} --seed {} --regions {} "
                   "--data {} --init {} --out {}".format(device.type, r.minutes, r.steps, r.seed, r.regions, data, init, out),
        "recipe": asdict(r), "seed": r.seed, "steps_reached": step, "train_seconds": round(seconds, 1),
        "device": {"type": device.type, "name": name, "threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "init": None if init is None else _init_record(init),
        "regions": {"count": len(regions.kinds), "kinds": {k: regions.kinds.count(k) for k in sorted(set(regions.kinds))},
                    "kernel_l1_mean": round(float(np.mean(regions.kernel_l1)), 3),
                    "validation_kernel_l1": {k: round(float(np.mean([e for e, kk in zip(val.kernel_l1, val.kinds) if kk == k])), 3)
                                             for k in VALIDATION_KINDS}},
        "data": {"file": str(data), "bytes": data.stat().st_size, "packing": "python -m research.restore.photos pack",
                 "debian_packages": photos.DEBIAN_PACKAGES, "photos": [asdict(p) for p in photos.PHOTOS]},
        "final": rows[-1] if rows else None,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'deblur.safetensors'} after {step} steps, {seconds / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="photos packed by `python -m research.restore.photos pack`")
    parser.add_argument("--init", type=Path, default=None,
                        help="weights to start from: the shipped models/restore/weights/deblur.safetensors "
                             "or an earlier run's")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--minutes", type=float, default=Recipe.minutes)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--regions", type=int, default=Recipe.regions)
    parser.add_argument("--region", type=int, default=Recipe.region)
    parser.add_argument("--batch", type=int, default=Recipe.batch)
    parser.add_argument("--crop", type=int, default=Recipe.crop)
    parser.add_argument("--workers", type=int, default=2, help="processes estimating the regions' kernels")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save a resumable checkpoint here")
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"{args.data} is missing: run `python -m research.restore.photos pack --out {args.data}` first")
    recipe = Recipe(seed=args.seed, regions=args.regions, region=args.region, steps=args.steps, minutes=args.minutes,
                    batch=args.batch, crop=args.crop)
    train(recipe, args.data, args.init, args.out, torch.device(args.device), args.workers, args.resume, args.checkpoint)


if __name__ == "__main__":
    main()
