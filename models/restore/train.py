"""Train WienerDeblurNet, reproducibly, on a CPU or a GPU (same script, same recipe).

    python -m models.restore.photos pack --out .data/photos.npz          # once, where there is network
    python -m models.restore.train --device cuda --minutes 6 --data .data/photos.npz --out DIR

stops at whichever of --steps / --minutes comes first (the learning rate follows whichever is
further along) and writes exactly three files to DIR: deblur.safetensors (fp16, the EMA
weights), training.json (recipe, seed, steps reached, time, device, data) and loss_curve.csv.
--checkpoint PATH saves a resumable checkpoint there every few minutes and at the end;
--resume PATH continues from one. It never fetches anything: the photos come packed.

Everything per step runs on the device in batches: crops are cut from device-resident photos,
blurred by FFT with per-crop kernels and noised there; only the kernels are drawn on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from models.restore import photos
from models.restore.degrade import motion_kernel, disk_kernel, gaussian_kernel, on_grid, sample_training_kernels
from models.restore.degrade import shake_tremor, splat_trajectories
from models.restore.fourier import KERNEL_SIZE, fast_size, kernel_spectrum
from models.restore.net import WienerDeblurNet
from models.weights import save_half


@dataclass(frozen=True)
class Recipe:
    seed: int = 1234
    steps: int = 100_000  # an upper bound; --minutes usually ends the run first
    minutes: float = 6.0
    batch: int = 48
    crop: int = 256
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 0.5
    kernel_weight: float = 0.1  # times the raw kernel's squared error: supervise the estimate with the true kernel
    latent_weight: float = 0.5  # times the L1 error of the latent grey image against the sharp one
    max_noise: float = 0.025
    noise_prob: float = 0.8
    scales: tuple[float, ...] = (1.0, 0.7, 0.5)  # photos are also cropped downscaled: scale augmentation
    amp: bool = True  # bf16 autocast for the convolutions on CUDA (the FFTs always run in float32)


CPU_BATCH = 6
FLAT = 0.008  # mean absolute neighbour difference below which a crop counts as flat
KEEP_FLAT = 0.15  # the share of flat crops kept anyway: the net must leave flat areas alone too
PRINT_SECONDS, VALIDATE_SECONDS, CHECKPOINT_SECONDS = 15.0, 60.0, 120.0


class Crops:
    """Training photos resident on the device, at a few scales, cut into random augmented crops."""

    def __init__(self, images: dict[str, np.ndarray], scales: tuple[float, ...], device: torch.device) -> None:
        self.images = []
        for array in images.values():
            for s in scales:
                image = Image.fromarray(array)
                if s != 1.0:
                    image = image.resize((round(image.width * s), round(image.height * s)), Image.Resampling.LANCZOS)
                self.images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(device))
        areas = np.array([im.shape[1] * im.shape[2] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.device = device

    def _cut(self, rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
        fits = self.weights * np.array([min(im.shape[1:]) >= size for im in self.images])  # small photos, scaled down
        picks = rng.choice(len(self.images), size=n, p=fits / fits.sum())
        crops = []
        for i in picks:
            _, h, w = self.images[i].shape
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            crops.append(self.images[i][:, top:top + size, left:left + size])
        return torch.stack(crops).float() / 255

    def sample(self, rng: np.random.Generator, n: int, size: int) -> torch.Tensor:
        """n crops, mostly textured (flat ones teach nothing about edges), in any of 8 orientations
        and with colour channels permuted."""
        candidates = self._cut(rng, 2 * n, size)
        grey = candidates.mean(1)
        texture = ((grey[:, 1:] - grey[:, :-1]).abs().mean((1, 2)) + (grey[:, :, 1:] - grey[:, :, :-1]).abs().mean((1, 2))) / 2
        keep = (texture >= FLAT) | torch.from_numpy(rng.uniform(size=2 * n) < KEEP_FLAT).to(self.device)
        order = torch.argsort(keep.float() + torch.from_numpy(rng.uniform(0, 0.5, 2 * n)).to(self.device), descending=True)
        crops = candidates[order[:n]]
        flips = torch.from_numpy(rng.uniform(size=(3, n)) < 0.5).to(self.device)[..., None, None, None]
        crops = torch.where(flips[0], crops.flip(-1), crops)
        crops = torch.where(flips[1], crops.flip(-2), crops)
        crops = torch.where(flips[2], crops.transpose(-1, -2), crops)
        permutation = torch.from_numpy(np.argsort(rng.uniform(size=(n, 3)), axis=1)).to(self.device)
        return torch.gather(crops, 1, permutation[:, :, None, None].expand_as(crops)).contiguous()


def blur_valid(sharp: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each (3, S + k - 1)^2 crop convolved with its own (k, k) kernel by FFT, keeping the valid S x S."""
    k = kernels.shape[-1]
    h, w = sharp.shape[-2:]
    grid = fast_size(h), fast_size(w)  # zero-padded: the valid part sees no wrap-around either way
    blurred = torch.fft.irfft2(torch.fft.rfft2(sharp, s=grid) * kernel_spectrum(kernels, *grid)[:, None], s=grid)
    return blurred[..., k // 2:h - k // 2, k // 2:w - k // 2]


@dataclass
class Batch:
    blurred: torch.Tensor
    sharp: torch.Tensor
    kernels: torch.Tensor


def training_batch(crops: Crops, rng: np.random.Generator, gen: torch.Generator, r: Recipe) -> Batch:
    kernels_np, _ = sample_training_kernels(rng, r.batch, KERNEL_SIZE)
    kernels = torch.from_numpy(kernels_np).to(crops.device)
    sharp = crops.sample(rng, r.batch, r.crop + KERNEL_SIZE - 1)
    sigma = rng.uniform(0, r.max_noise, r.batch) * (rng.uniform(size=r.batch) < r.noise_prob)
    blurred = blur_valid(sharp, kernels)
    noise = torch.randn(blurred.shape, generator=gen, device=crops.device)
    blurred = (blurred + torch.from_numpy(sigma).float().to(crops.device)[:, None, None, None] * noise).clamp(0, 1)
    m = KERNEL_SIZE // 2
    return Batch(blurred, sharp[..., m:m + r.crop, m:m + r.crop], kernels)


def validation_batch(images: dict[str, np.ndarray], device: torch.device, size: int = 256,
                     seed: int = 999) -> tuple[list[str], Batch]:
    """Fixed held-out crops (of the training crop size) under a fixed blur each, noise 0.01:
    benchmark-style shake (12 px), defocus 3, Gaussian 2 and tremor shake (15 px), a family
    training never draws."""
    rng = np.random.default_rng(seed)
    names, sharps, kernels = [], [], []
    for array in images.values():
        for kind in ("motion", "defocus", "gaussian", "tremor"):
            if kind == "motion":
                kernel = on_grid(motion_kernel(rng, 12.0), KERNEL_SIZE)
            elif kind == "defocus":
                kernel = on_grid(disk_kernel(3.0), KERNEL_SIZE)
            elif kind == "gaussian":
                kernel = on_grid(gaussian_kernel(2.0), KERNEL_SIZE)
            else:
                kernel = splat_trajectories(*shake_tremor(rng, 1), np.array([15.0]), KERNEL_SIZE)[0]
            full = size + KERNEL_SIZE - 1
            top, left = int(rng.integers(0, array.shape[0] - full)), int(rng.integers(0, array.shape[1] - full))
            sharps.append(torch.from_numpy(array[top:top + full, left:left + full].copy()).permute(2, 0, 1).float() / 255)
            kernels.append(torch.from_numpy(kernel))
            names.append(kind)
    sharp, kernel = torch.stack(sharps).to(device), torch.stack(kernels).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    blurred = blur_valid(sharp, kernel)
    blurred = (blurred + 0.01 * torch.randn(blurred.shape, generator=gen, device=device)).clamp(0, 1)
    m = KERNEL_SIZE // 2
    return names, Batch(blurred, sharp[..., m:m + size, m:m + size], kernel)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR on the interior (16 px border cropped)."""
    mse = ((a.clamp(0, 1) - b) ** 2)[..., 16:-16, 16:-16].mean((1, 2, 3))
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def validate(net: WienerDeblurNet, names: list[str], val: Batch) -> dict[str, float]:
    """Mean PSNR gain over the blurred input, per kind, of the output and of the Wiener stage alone."""
    net.eval()
    parts = [net.parts(val.blurred[i:i + 8]) for i in range(0, len(names), 8)]
    net.train()
    restored = torch.cat([p.restored for p in parts])
    deconvolved = torch.cat([p.deconvolved for p in parts])
    kernel_l1 = torch.cat([(p.kernel - val.kernels[i * 8:i * 8 + len(p.kernel)]).abs().sum((1, 2)) for i, p in enumerate(parts)])
    before = _psnr(val.blurred, val.sharp)
    gain, wiener_gain = _psnr(restored, val.sharp) - before, _psnr(deconvolved, val.sharp) - before
    row = {}
    for kind in dict.fromkeys(names):
        sel = torch.tensor([n == kind for n in names], device=val.blurred.device)
        row[f"gain_{kind}"] = round(float(gain[sel].mean()), 3)
        row[f"wiener_gain_{kind}"] = round(float(wiener_gain[sel].mean()), 3)
        row[f"kernel_l1_{kind}"] = round(float(kernel_l1[sel].mean()), 3)
    row["gain"] = round(float(gain.mean()), 3)
    return row


def learning_rate(progress: float, step: int, r: Recipe) -> float:
    """Linear warm-up over `warmup` steps or the first 3 % of the run, whichever ends first; then cosine."""
    warm = max((step + 1) / r.warmup, progress / 0.03)
    if warm < 1:
        return r.lr * warm
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def losses(net: WienerDeblurNet, batch: Batch, r: Recipe) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = net.parts(batch.blurred)
    image = F.l1_loss(parts.restored, batch.sharp)
    # On the raw least-squares kernel: the cleaned one has no gradient below its floor, and at the
    # start (latent = blurred input, kernel = identity) that is everywhere but the peak. Squared,
    # so the faint haze a half-sharpened latent spreads over the support costs little and the
    # loss does not pull the latent back towards the blurred input.
    kernel = ((parts.raw_kernel - batch.kernels) ** 2).sum((1, 2)).mean()
    latent = F.l1_loss(parts.latent.float(), batch.sharp.mean(1, keepdim=True))
    total = image + r.kernel_weight * kernel + r.latent_weight * latent
    return total, {"loss": total, "image_l1": image, "kernel_se": kernel, "latent_l1": latent}


def train(r: Recipe, data: Path, out: Path, device: torch.device, resume: Path | None, checkpoint: Path | None) -> None:
    torch.manual_seed(r.seed)
    rng = np.random.default_rng(r.seed)
    gen = torch.Generator(device=device).manual_seed(r.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    crops = Crops(photos.load_packed(data, "train"), r.scales, device)
    names, val = validation_batch(photos.load_packed(data, "held_out"), device, r.crop)
    net = WienerDeblurNet().to(device, memory_format=torch.channels_last)
    ema = WienerDeblurNet().to(device)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, betas=(0.9, 0.9), weight_decay=0.0)
    rows: list[dict] = []
    start, elapsed_before = 0, 0.0
    if resume is not None:
        ckpt = torch.load(resume, map_location="cpu", weights_only=False)
        net.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        rng.bit_generator.state = ckpt["rng"]
        gen.set_state(ckpt["gen"])
        start, rows, elapsed_before = ckpt["step"], ckpt["rows"], ckpt["elapsed"]
        print(f"resumed at step {start}", flush=True)
    amp = r.amp and device.type == "cuda"
    budget = r.minutes * 60
    t0 = time.time() - elapsed_before
    last_print = last_val = last_ckpt = time.time()
    sums: dict[str, torch.Tensor] = {}
    count, step, val_seconds = 0, start, 0.0

    def save_checkpoint() -> None:
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "rng": rng.bit_generator.state, "gen": gen.get_state(), "step": step, "rows": rows,
                        "elapsed": time.time() - t0, "recipe": asdict(r)}, checkpoint)

    while step < r.steps and time.time() - t0 < budget:
        progress = max(step / r.steps, (time.time() - t0) / budget)
        for group in opt.param_groups:
            group["lr"] = learning_rate(progress, step, r)
        batch = training_batch(crops, rng, gen, r)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, parts = losses(net, Batch(batch.blurred.contiguous(memory_format=torch.channels_last), batch.sharp,
                                            batch.kernels), r)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), r.grad_clip)
        opt.step()
        step += 1
        decay = min(r.ema_decay, (1 + step) / (10 + step))  # early on the EMA follows closely
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0) + value.detach().float()
        count += 1
        now = time.time()
        if now - last_print >= PRINT_SECONDS or step == r.steps or now - t0 >= budget:
            row = {"step": step, "seconds": round(now - t0, 1), "lr": learning_rate(progress, step, r),
                   **{k: round(float(v) / count, 5) for k, v in sums.items()}}
            if now - last_val >= max(VALIDATE_SECONDS, 10 * val_seconds) or step == r.steps or now - t0 >= budget:
                row.update(validate(ema, names, val))
                val_seconds, last_val = time.time() - now, time.time()
            rows.append(row)
            print(json.dumps(row), f"{count / (now - last_print):.2f} it/s", flush=True)
            sums, count, last_print = {}, 0, time.time()
        if time.time() - last_ckpt >= CHECKPOINT_SECONDS:
            save_checkpoint()
            last_ckpt = time.time()
    save_checkpoint()
    write_outputs(out, ema, rows, r, data, device, step, time.time() - t0)


def write_outputs(out: Path, ema: WienerDeblurNet, rows: list[dict], r: Recipe, data: Path, device: torch.device,
                  step: int, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_half(ema, out / "deblur.safetensors")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(out / "loss_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report = {
        "command": "python -m models.restore.train --device {} --minutes {:g} --steps {} --seed {} --data {} --out {}".format(
            device.type, r.minutes, r.steps, r.seed, data, out),
        "recipe": asdict(r), "seed": r.seed, "steps_reached": step, "train_seconds": round(seconds, 1),
        "device": {"type": device.type, "name": name, "threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "data": {"file": str(data), "bytes": data.stat().st_size, "packing": "python -m models.restore.photos pack",
                 "debian_packages": photos.DEBIAN_PACKAGES, "photos": [asdict(p) for p in photos.PHOTOS]},
        "final": rows[-1] if rows else None,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'deblur.safetensors'} after {step} steps, {seconds / 60:.1f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="photos packed by `python -m models.restore.photos pack`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--minutes", type=float, default=Recipe.minutes)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"crops per step (default: {Recipe.batch} on CUDA, {CPU_BATCH} on a CPU, whose memory "
                             "holds no more)")
    parser.add_argument("--crop", type=int, default=Recipe.crop)
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save a resumable checkpoint here")
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"{args.data} is missing: run `python -m models.restore.photos pack --out {args.data}` first")
    batch = args.batch or (Recipe.batch if args.device.startswith("cuda") else CPU_BATCH)
    recipe = Recipe(seed=args.seed, steps=args.steps, minutes=args.minutes, batch=batch, crop=args.crop)
    train(recipe, args.data, args.out, torch.device(args.device), args.resume, args.checkpoint)


if __name__ == "__main__":
    main()
