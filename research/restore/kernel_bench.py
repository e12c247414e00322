"""How good the blind kernel estimate is on the benchmark's cases, on its own, as JSON.

    python -m research.restore.kernel_bench [--crop 512] [--images N]

Every held-out photo under every benchmark and unseen condition (`research.restore.evaluate`'s
seeded cases), cut to its central crop x crop (a /fix tile; 0: the whole photo): the kernel is
estimated from the blurred crop alone (`kernel.estimate`), then reported per kind as its L1
distance to the true kernel (0: exact; 2: nothing in common) and as the PSNR gain of Wiener
deconvolution with it over the blurred input, beside the same Wiener given the true kernel. Both
Wiener columns take the best of three noise-to-signal weights per case, so the difference between
them is what the estimate costs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import torch

from models.restore import fourier, kernel
from research.restore import evaluate as ev
from research.restore import photos
from research.restore.degrade import on_grid

BALANCES = (0.003, 0.01, 0.03)


def _central(image: np.ndarray, crop: int) -> np.ndarray:
    if not crop:
        return image
    h, w = min(crop, image.shape[0]), min(crop, image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[top:top + h, left:left + w]


def _best_wiener_gain(degraded: np.ndarray, sharp: np.ndarray, k: torch.Tensor, margin: int) -> float:
    x = torch.from_numpy(degraded).permute(2, 0, 1)[None]
    reference = ev.interior(sharp, margin)
    best = max(ev.psnr(ev.interior(fourier.wiener(x, k, torch.tensor([b])).clamp(0, 1)[0].permute(1, 2, 0).numpy(),
                                   margin), reference) for b in BALANCES)
    return best - ev.psnr(ev.interior(degraded, margin), reference)


def report(images: dict[str, np.ndarray], crop: int) -> dict:
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    started = time.process_time()
    for index, sharp in enumerate(images.values()):
        for condition in (*ev.CONDITIONS, *ev.UNSEEN_CONDITIONS):
            true_kernel, degraded = ev.degrade(sharp, condition, index)
            degraded, cut = _central(degraded, crop), _central(sharp, crop)
            truth = torch.from_numpy(on_grid(true_kernel, fourier.KERNEL_SIZE))[None]
            found = kernel.estimate(torch.from_numpy(degraded).permute(2, 0, 1)[None].mean(1, keepdim=True))
            margin = ev.border(true_kernel)
            rows[condition.kind].append((float((found - truth).abs().sum()),
                                         _best_wiener_gain(degraded, cut, found, margin),
                                         _best_wiener_gain(degraded, cut, truth, margin)))
    kinds = {kind: {"kernel_l1": round(float(np.mean([r[0] for r in v])), 3),
                    "wiener_gain_estimated_db": round(float(np.mean([r[1] for r in v])), 2),
                    "wiener_gain_true_kernel_db": round(float(np.mean([r[2] for r in v])), 2)} for kind, v in rows.items()}
    return {"crop": crop or "whole photo", "images": list(images), "kinds": kinds,
            "cpu_seconds_estimating_and_scoring": round(time.process_time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=512, help="central crop side (0: the whole photo)")
    parser.add_argument("--images", type=int, default=None, help="only the first N held-out photos")
    parser.add_argument("--max-side", type=int, default=768)
    args = parser.parse_args()
    held_out = list(photos.load_split(photos.default_data_dir(), "held_out").items())[:args.images]
    images = {name: ev.load_image(array, args.max_side) for name, array in held_out}
    print(json.dumps(report(images, args.crop), indent=2))


if __name__ == "__main__":
    main()
