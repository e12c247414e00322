"""Train DeblurNet from scratch on a CPU, reproducibly (seeded data, degradations and init).

    python -m models.restore.train --out models/restore/weights

writes deblur.safetensors (fp16, the EMA weights), training.json (recipe, data, timings)
and loss_curve.csv / loss_curve.png. A checkpoint every few hundred steps lets an
interrupted run continue with --resume and land on the same weights.
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
from torch.nn import functional as F

from models.restore import photos
from models.restore.degrade import Degradation, apply_degradation, disk_kernel, gaussian_kernel, motion_kernel
from models.restore.degrade import sample_training_degradation
from models.restore.net import DeblurNet
from models.weights import save_half


@dataclass(frozen=True)
class Recipe:
    seed: int = 1234
    steps: int = 12000
    batch: int = 6
    crop: int = 160
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup: int = 300
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 0.5
    max_zoom_out: float = 2.5  # crops cover 1x..2.5x the patch and are downscaled: scale augmentation


FLAT = 0.008  # mean absolute neighbour difference below which a patch counts as flat
KEEP_FLAT = 0.15


def texture(patch: torch.Tensor) -> float:
    grey = patch.mean(0)
    return float(((grey[1:] - grey[:-1]).abs().mean() + (grey[:, 1:] - grey[:, :-1]).abs().mean()) / 2)


class PatchSampler:
    """Random sharp/blurred training pairs from whole photos, one degradation per patch."""

    def __init__(self, images: dict[str, np.ndarray], rng: np.random.Generator, max_zoom: float) -> None:
        self.max_zoom = max_zoom
        self.images = [torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous() for a in images.values()]
        areas = np.array([im.shape[1] * im.shape[2] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.rng = rng

    def _crop(self, size: int) -> torch.Tensor:
        """A random patch, mostly textured: flat or out-of-focus patches teach nothing about edges."""
        for _ in range(10):
            patch = self._any_crop(size)
            if texture(patch) >= FLAT or self.rng.uniform() < KEEP_FLAT:
                break
        return patch

    def _any_crop(self, size: int) -> torch.Tensor:
        image = self.images[self.rng.choice(len(self.images), p=self.weights)]
        _, h, w = image.shape
        zoom = self.rng.uniform(1.0, self.max_zoom)
        region = min(int(size * zoom), h, w)
        top = int(self.rng.integers(0, h - region + 1))
        left = int(self.rng.integers(0, w - region + 1))
        patch = image[:, top:top + region, left:left + region].float()[None] / 255
        if region != size:
            patch = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        patch = patch[0]
        if self.rng.uniform() < 0.5:
            patch = patch.flip(2)
        patch = torch.rot90(patch, int(self.rng.integers(4)), (1, 2))
        return patch[torch.from_numpy(self.rng.permutation(3))].clamp(0, 1)

    def pair(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = sample_training_degradation(self.rng)
        sharp = self._crop(size + 2 * d.margin)
        blurred = apply_degradation(sharp, d, self.rng)
        return blurred, sharp[:, d.margin:d.margin + size, d.margin:d.margin + size]

    def batch(self, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.pair(size) for _ in range(n)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def validation_set(images: dict[str, np.ndarray], seed: int = 999, size: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out crops, each with a fixed blur (motion 12 px, disk r=3, Gaussian 2) and noise 0.01."""
    rng = np.random.default_rng(seed)
    kernels = [("motion", motion_kernel(rng, 12.0)), ("defocus", disk_kernel(3.0)), ("gaussian", gaussian_kernel(2.0))]
    pairs = []
    for array in images.values():
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255
        for kind, kernel in kernels:
            d = Degradation(kind, kernel, 0.01, None)
            m = d.margin
            top = int(rng.integers(0, image.shape[1] - size - 2 * m))
            left = int(rng.integers(0, image.shape[2] - size - 2 * m))
            sharp = image[:, top:top + size + 2 * m, left:left + size + 2 * m]
            pairs.append((apply_degradation(sharp, d, rng), sharp[:, m:m + size, m:m + size]))
    return pairs


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


@torch.inference_mode()
def evaluate(net: DeblurNet, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    net.eval()
    before = [psnr(b, s) for b, s in pairs]
    after = [psnr(net(b[None])[0], s) for b, s in pairs]
    net.train()
    return float(np.mean(before)), float(np.mean(after))


def learning_rate(step: int, r: Recipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * t))


def plot_curve(rows: list[dict], path: Path) -> None:
    """A small PNG of training loss and validation PSNR, drawn with Pillow (no plotting library)."""
    from PIL import Image, ImageDraw

    w, h, pad = 720, 360, 48
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    steps = [r["step"] for r in rows]
    last = max(steps) or 1

    def series(key: str, colour: str, label: str, y: int) -> None:
        points = [(r["step"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if len(points) < 2:
            return
        values = [float(v) for _, v in points]
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        xy = [(pad + (s / last) * (w - 2 * pad), h - pad - (float(v) - lo) / span * (h - 2 * pad)) for s, v in points]
        draw.line(xy, fill=colour, width=2)
        draw.text((pad, y), f"{label}: {values[0]:.4g} -> {values[-1]:.4g} (range {lo:.4g}..{hi:.4g})", fill=colour)

    draw.rectangle([pad, pad, w - pad, h - pad], outline="grey")
    series("loss", "blue", "train L1 loss (mean of last 50 steps)", 8)
    series("val_psnr", "red", "held-out PSNR after (dB)", 22)
    draw.text((pad, h - pad + 8), f"step 0 .. {last}", fill="black")
    img.save(path)


def train(recipe: Recipe, out: Path, data_dir: Path, resume: bool) -> None:
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    photos.prepare(data_dir)
    sampler = PatchSampler(photos.load_split(data_dir, "train"), rng, recipe.max_zoom_out)
    val = validation_set(photos.load_split(data_dir, "held_out"))
    net = DeblurNet().to(memory_format=torch.channels_last)
    ema = DeblurNet()
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, betas=(0.9, 0.9), weight_decay=recipe.weight_decay)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    rows: list[dict] = []
    start, elapsed = 0, 0.0
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        net.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        start, rows, elapsed = ckpt["step"], ckpt["rows"], ckpt["elapsed"]
        print(f"resumed at step {start}")
    losses: list[float] = []
    t0 = time.time() - elapsed
    for step in range(start, recipe.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, recipe)
        blurred, sharp = sampler.batch(recipe.batch, recipe.crop)
        blurred = blurred.contiguous(memory_format=torch.channels_last)
        loss = F.l1_loss(net(blurred), sharp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.state_dict().values(), net.state_dict().values()):
                e.lerp_(p, 1 - recipe.ema_decay) if e.is_floating_point() else e.copy_(p)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % 50 == 0:
            row = {"step": done, "loss": float(np.mean(losses[-50:])), "lr": learning_rate(step, recipe),
                   "seconds": round(time.time() - t0, 1)}
            if done % 500 == 0 or done == recipe.steps:
                row["val_psnr_in"], row["val_psnr"] = evaluate(ema, val)
            rows.append(row)
            rate = done - start
            eta = (time.time() - t0 - elapsed) / max(rate, 1) * (recipe.steps - done)
            print(json.dumps(row), f"eta {eta / 60:.0f} min", flush=True)
        if done % 250 == 0 or done == recipe.steps:
            torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "step": done,
                        "rows": rows, "elapsed": time.time() - t0}, ckpt_path)
    save_half(ema, out / "deblur.safetensors")
    with open(out / "loss_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "seconds", "val_psnr_in", "val_psnr"])
        writer.writeheader()
        writer.writerows(rows)
    plot_curve(rows, out / "loss_curve.png")
    report = {
        "command": "python -m models.restore.train --out " + str(out),
        "recipe": asdict(recipe),
        "data": {"debian_packages": photos.DEBIAN_PACKAGES,
                 "photos": [asdict(p) for p in photos.PHOTOS]},
        "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads(),
        "train_seconds": round(time.time() - t0), "final": rows[-1] if rows else None,
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    ckpt_path.unlink(missing_ok=True)
    print(f"wrote {out / 'deblur.safetensors'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument("--data-dir", type=Path, default=None, help="prepared photos (default: in the cache)")
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--prepare-only", action="store_true", help="fetch and prepare the photos, then stop")
    args = parser.parse_args()
    data_dir = args.data_dir or photos.default_data_dir()
    if args.prepare_only:
        print(photos.prepare(data_dir))
        return
    train(Recipe(seed=args.seed, steps=args.steps), args.out, data_dir, args.resume)


if __name__ == "__main__":
    main()
