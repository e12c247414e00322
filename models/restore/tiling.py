"""Full-resolution inference by overlapping tiles, batched across images, blended without seams.

Each tile's prediction is weighted by a window that ramps up over the overlap from every tile
edge, and the weighted sum is divided by the summed weights: a pixel near a tile edge (where
the network saw little context) is taken mostly from the neighbouring tile, and no pixel ever
switches abruptly from one tile to the next. Images thinner than MIN_TILE_SIDE are first padded
by edge replication (a network's own reflect padding cannot exceed the side it reflects).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

MIN_TILE_SIDE = 64  # above any network's padding multiple, with some context for a 2048x1 strip


@dataclass(frozen=True)
class Tiling:
    """How a net wants photos cut: tile side, overlap between tiles, tiles per forward pass."""

    tile: int
    overlap: int
    batch: int


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def grid(height: int, width: int, tile: int, overlap: int) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The tile shape and every tile's (top, left) for an image of this size (at least MIN_TILE_SIDE a side)."""
    h, w = max(height, MIN_TILE_SIDE), max(width, MIN_TILE_SIDE)
    th, tw = min(tile, h), min(tile, w)
    return (th, tw), [(top, left) for top in _starts(h, th, overlap) for left in _starts(w, tw, overlap)]


def tiled_pixels(height: int, width: int, tiling: Tiling) -> int:
    """The pixels the net runs on for one image, overlaps counted every time: the work of a tiled job."""
    (th, tw), places = grid(height, width, tiling.tile, tiling.overlap)
    return th * tw * len(places)


def _window(h: int, w: int, overlap: int) -> torch.Tensor:
    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i)
        return (edge / (overlap + 1)).clamp(1e-3, 1.0)

    return ramp(h)[:, None] * ramp(w)[None, :]


def restore_tiled(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: list[torch.Tensor],
    tile: int = 256,
    overlap: int = 32,
    batch: int = 8,
    progress: Callable[[float], None] = lambda fraction: None,
    wanted: Callable[[int], bool] = lambda n: True,
) -> list[torch.Tensor]:
    """Apply `net` (a (N, 3, h, w) -> (N, 3, h, w) callable) to (3, H, W) images of any sizes.

    `wanted(n)` is asked before every batch of tiles: the tiles of an image no longer wanted (its
    job was cancelled) are skipped from then on, while the other images' tiles carry on; that
    image's output is then unfinished, for the caller to discard."""
    sizes = [image.shape[1:] for image in images]
    images = [_at_least(image, MIN_TILE_SIDE) for image in images]
    jobs: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)  # tile shape -> (image, top, left)
    for n, image in enumerate(images):
        shape, places = grid(*image.shape[1:], tile, overlap)
        jobs[shape] += [(n, top, left) for top, left in places]
    sums = [torch.zeros_like(im) for im in images]
    norms = [torch.zeros(im.shape[1:]) for im in images]
    total, done = sum(len(v) for v in jobs.values()), 0
    for (th, tw), places in jobs.items():
        window = _window(th, tw, overlap)
        while places := [p for p in places if wanted(p[0])]:
            chunk, places = places[:batch], places[batch:]
            crops = torch.stack([images[n][:, t:t + th, l:l + tw] for n, t, l in chunk])
            out = net(crops).float().cpu()
            for (n, t, l), pred in zip(chunk, out):
                sums[n][:, t:t + th, l:l + tw] += pred * window
                norms[n][t:t + th, l:l + tw] += window
            done += len(chunk)
            progress(done / total)
    # in place: at 40 MP each full-size temporary is another 475 MB
    return [s.div_(nrm).clamp_(0, 1)[:, :h, :w] for s, nrm, (h, w) in zip(sums, norms, sizes)]


def _at_least(image: torch.Tensor, side: int) -> torch.Tensor:
    _, h, w = image.shape
    if min(h, w) >= side:
        return image
    return F.pad(image[None], (0, max(0, side - w), 0, max(0, side - h)), mode="replicate")[0]
