"""CPU seconds per megapixel of deblurring nets, run as /fix runs them on a CPU, as JSON.

    python -m research.restore.cost [--weights PATH ...] [--threads 1] [--runs 5]

Each net (the registry's deblur weights, then every --weights file) restores the first held-out
photo at 768 px through its own CPU tiling, as /fix runs it (`tiling` in models/restore/net.py),
KernelDeblurNet's kernel estimation and deconvolution included. The figure is process CPU time,
not wall time, and the nets take turns, best of N:
on a machine shared with other work, wall time measures the neighbours, and turns expose every
net to the same neighbours.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.restore.tiling import restore_tiled
from research.restore import evaluate as ev
from research.restore import photos


def cpu_seconds(net: torch.nn.Module, image: torch.Tensor) -> float:
    cut = net.tiling["cpu"]
    started = time.process_time()
    with torch.inference_mode():
        restore_tiled(net, [image], cut.tile, cut.overlap, cut.batch)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, action="append", default=[], help=".safetensors or checkpoint.pt")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-side", type=int, default=768)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets = {"registry: deblur": ev.load_net(None), **{str(path): ev.load_net(path) for path in args.weights}}
    name, array = next(iter(photos.load_split(photos.default_data_dir(), "held_out").items()))
    image = torch.from_numpy(ev.load_image(array, args.max_side)).permute(2, 0, 1)
    megapixels = image.shape[1] * image.shape[2] / 1e6
    for net in nets.values():
        cpu_seconds(net, image)  # warm-up: first-call allocations and kernel selection
    runs: dict[str, list[float]] = {key: [] for key in nets}
    for _ in range(args.runs):
        for key, net in nets.items():
            runs[key].append(cpu_seconds(net, image) / megapixels)
    best = {key: round(min(seconds), 2) for key, seconds in runs.items()}
    shipped = best["registry: deblur"]
    print(json.dumps({
        "photo": name, "height_width": list(image.shape[1:]), "threads": args.threads, "runs": args.runs,
        "machine": ev.machine(),
        "nets": {key: {"architecture": type(net).__name__,
                       "parameters_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
                       "cpu_s_per_mp_best": best[key],
                       "cpu_s_per_mp_median": round(sorted(runs[key])[args.runs // 2], 2),
                       "times_registry_net": round(best[key] / shipped, 2)} for key, net in nets.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
