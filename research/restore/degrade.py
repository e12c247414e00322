"""Synthetic blur kernels, shared by training and the evaluation benchmark.

Every kernel is a float32 numpy array that sums to 1 with its centre of mass on the centre
pixel: an off-centre kernel would also shift the image, and a restoration net would then have
to learn that shift instead of the deblurring.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def _centre(kernel: np.ndarray) -> np.ndarray:
    """Shift a kernel by sub-pixel amounts so its centre of mass is the middle pixel."""
    size = kernel.shape[0]
    ys, xs = np.mgrid[0:size, 0:size]
    total = kernel.sum()
    dy = (kernel * ys).sum() / total - size // 2
    dx = (kernel * xs).sum() / total - size // 2
    shifted = torch.from_numpy(kernel)[None, None]
    theta = torch.tensor([[[1.0, 0.0, 2 * dx / size], [0.0, 1.0, 2 * dy / size]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    out = out.clamp_min(0).numpy()
    return (out / out.sum()).astype(np.float32)


def _odd_size(extent: float) -> int:
    return int(math.ceil(extent)) // 2 * 2 + 3


def motion_kernel(rng: np.random.Generator, length: float, samples: int = 256) -> np.ndarray:
    """Camera-shake kernel from a random trajectory (after Boracchi & Foi 2012).

    A point moves at constant speed; each step turns it by Gaussian jitter, a pull back
    towards the start and now and then an abrupt jerk. Exposure along the path varies
    smoothly (the camera dwells at some points), the path is scaled to span `length` pixels and
    splatted onto the grid with bilinear weights.
    """
    anxiety = rng.uniform(0.0, 0.08)
    jerk_prob = rng.uniform(0.0, 0.008)
    centripetal = rng.uniform(0.0, 0.002)
    angle = rng.uniform(0, 2 * math.pi)
    velocity = np.array([math.cos(angle), math.sin(angle)])
    pos = np.zeros(2)
    path = [pos.copy()]
    for _ in range(samples - 1):
        accel = anxiety * rng.normal(size=2) - centripetal * pos
        if rng.uniform() < jerk_prob:
            accel += 0.8 * rng.normal(size=2)
        velocity = velocity + accel
        velocity = velocity / max(np.linalg.norm(velocity), 1e-12)
        pos = pos + velocity
        path.append(pos.copy())
    points = np.array(path)
    dwell = np.exp(0.8 * np.convolve(rng.normal(size=samples + 40), np.hanning(41), "valid")[:samples] / 4)
    extent = np.ptp(points, axis=0).max()
    points = (points - points.mean(0)) * (length / max(extent, 1e-12))
    size = _odd_size(np.abs(points).max() * 2)
    points = points + size // 2
    kernel = np.zeros((size, size), np.float32)
    for (x, y), w0 in zip(points, dwell):
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for yy, xx, w in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                          (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
            if 0 <= yy < size and 0 <= xx < size:
                kernel[yy, xx] += w * w0
    return _centre(kernel)


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Defocus: a uniform disk, anti-aliased by supersampling its edge."""
    size = _odd_size(2 * radius)
    fine = np.arange(size * supersample) / supersample - size // 2 + 0.5 / supersample - 0.5
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    kernel = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    size = _odd_size(6 * sigma)
    ax = np.arange(size) - size // 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def blur(images: torch.Tensor, kernel: np.ndarray, padding: str = "reflect") -> torch.Tensor:
    """Convolve NCHW images with one kernel; padding 'valid' shrinks them by the kernel size."""
    k = torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1])).to(images)
    channels = images.shape[1]
    weight = k[None, None].expand(channels, 1, *k.shape)
    if padding != "valid":
        p = k.shape[0] // 2
        images = F.pad(images, (p, p, p, p), mode=padding)
    return F.conv2d(images, weight, groups=channels)


# Camera shake for training, batched: each family draws (n, T, 2) trajectories and exposure
# weights, and `splat_trajectories` turns them into centred kernels on one fixed grid.

def splat_trajectories(points: np.ndarray, exposure: np.ndarray, length: np.ndarray, size: int) -> np.ndarray:
    """(n, T, 2) paths with (n, T) exposure -> (n, size, size) kernels whose longer extent spans `length`.

    Bilinear splatting keeps the exposure-weighted mean of the points, so moving that mean onto the
    middle pixel centres the kernel exactly. Paths that would leave the grid are shrunk to fit.
    """
    n, t, _ = points.shape
    extent = np.ptp(points, axis=1).max(1)
    points = points * (length / np.maximum(extent, 1e-9))[:, None, None]
    w = exposure / exposure.sum(1, keepdims=True)
    points = points - (points * w[..., None]).sum(1, keepdims=True)
    reach = np.abs(points).max((1, 2))
    points = points * np.minimum(1.0, (size // 2 - 1) / np.maximum(reach, 1e-9))[:, None, None] + size // 2
    x0, y0 = np.floor(points[..., 0]).astype(np.int64), np.floor(points[..., 1]).astype(np.int64)
    fx, fy = points[..., 0] - x0, points[..., 1] - y0
    kernels = np.zeros((n, size * size), np.float64)
    rows = np.broadcast_to(np.arange(n)[:, None], (n, t))
    for dy, dx, share in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernels, (rows, (y0 + dy) * size + x0 + dx), w * share)
    kernels = kernels.reshape(n, size, size)
    return (kernels / kernels.sum((1, 2), keepdims=True)).astype(np.float32)


def _smooth_exposure(rng: np.random.Generator, n: int, t: int, strength: float) -> np.ndarray:
    """Exposure that varies smoothly along a path: the camera lingers at some points."""
    noise = rng.normal(size=(n, t + 40))
    window = np.hanning(41) / 4
    smooth = np.stack([np.convolve(row, window, "valid")[:t] for row in noise])
    return np.exp(strength * rng.uniform(0, 1, (n, 1)) * smooth)


def _headings(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(0, 2 * math.pi, (n, 1))


def shake_boracchi(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Boracchi & Foi: unit speed, Gaussian jitter, a pull back to the start, rare jerks (as `motion_kernel`)."""
    anxiety = rng.uniform(0.0, 0.16, (n, 1))
    jerk = rng.uniform(0.0, 0.016, (n, 1))
    centripetal = rng.uniform(0.0, 0.004, (n, 1))
    angle = _headings(rng, n)
    velocity = np.concatenate([np.cos(angle), np.sin(angle)], 1)
    pos = np.zeros((n, 2))
    path = [pos]
    for _ in range(t - 1):
        accel = anxiety * rng.normal(size=(n, 2)) - centripetal * pos
        accel = accel + (rng.uniform(size=(n, 1)) < jerk) * 0.8 * rng.normal(size=(n, 2))
        velocity = velocity + accel
        velocity = velocity / np.maximum(np.linalg.norm(velocity, axis=1, keepdims=True), 1e-12)
        pos = pos + velocity
        path.append(pos)
    return np.stack(path, 1), _smooth_exposure(rng, n, t, 0.8)


def shake_velocity_walk(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Velocity as a random walk: speed and heading both drift, so the path slows, stops, doubles back."""
    angle = _headings(rng, n)
    start = np.concatenate([np.cos(angle), np.sin(angle)], 1)[:, None] * rng.uniform(0, 1, (n, 1, 1))
    steps = rng.normal(size=(n, t, 2)) * rng.uniform(0.03, 0.3, (n, 1, 1))
    velocity = start + np.cumsum(steps, 1)
    return np.cumsum(velocity, 1), np.ones((n, t))


def shake_straight(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A straight stroke whose speed changes (position t^p): brighter at the slow end."""
    angle = _headings(rng, n)
    s = np.linspace(0, 1, t)[None] ** rng.uniform(0.6, 2.0, (n, 1))
    return np.stack([s * np.cos(angle), s * np.sin(angle)], 2), _smooth_exposure(rng, n, t, 0.5)


def shake_curved(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """An arc: heading turns at a constant or steadily changing rate, up to about 1.3 half-turns."""
    turn = rng.uniform(-1, 1, (n, 1)) * rng.uniform(0.3, 4.0, (n, 1))
    bend = rng.uniform(-1, 1, (n, 1)) * 2.0
    s = np.linspace(0, 1, t)[None]
    heading = _headings(rng, n) + turn * s + bend * s**2
    step = np.stack([np.cos(heading), np.sin(heading)], 2)
    return np.cumsum(step, 1), _smooth_exposure(rng, n, t, 0.5)


def shake_zigzag(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A mixture: two to four straight pieces joined at sharp turns, of unequal lengths."""
    pieces = rng.integers(2, 5, n)
    heading = np.empty((n, t))
    for i, k in enumerate(pieces):
        cuts = np.sort(rng.integers(1, t, k - 1))
        heading[i] = np.repeat(rng.uniform(0, 2 * math.pi, k), np.diff(np.concatenate([[0], cuts, [t]])))
    step = np.stack([np.cos(heading), np.sin(heading)], 2)
    return np.cumsum(step, 1), _smooth_exposure(rng, n, t, 0.5)


def shake_tremor(rng: np.random.Generator, n: int, t: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Hand tremor: a sum of two sinusoids per axis (loops, ellipses, figure eights) plus slow drift.

    Training never draws this family; the benchmark's second kernel set uses it to test
    whether the network learned shake in general rather than the trained generators' shapes.
    """
    s = np.linspace(0, 1, t)[None, :, None]
    freq = rng.uniform(0.5, 2.5, (n, 2, 2))  # (n, component, axis), cycles per exposure
    phase = rng.uniform(0, 2 * math.pi, (n, 2, 2))
    amp = rng.uniform(0.2, 1.0, (n, 2, 2)) * np.array([1.0, 0.5])[None, :, None]
    wave = (amp[:, None] * np.sin(2 * math.pi * freq[:, None] * s[..., None] + phase[:, None])).sum(2)
    drift = rng.normal(size=(n, 1, 2)) * 0.3 * s
    return wave + drift, np.ones((n, t))


def tremor_kernel(rng: np.random.Generator, length: float) -> np.ndarray:
    """One tremor kernel (see `shake_tremor`) whose longer extent spans `length` pixels."""
    return splat_trajectories(*shake_tremor(rng, 1), np.array([length]), _odd_size(2 * length))[0]


def named_kernel(kind: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """The benchmark's kernels by name: "motion" or "tremor" shake `size` px long (drawn from rng),
    a "defocus" disk of radius `size`, or a "gaussian" of sigma `size`."""
    if kind == "motion":
        return motion_kernel(rng, size)
    if kind == "tremor":
        return tremor_kernel(rng, size)
    if kind == "defocus":
        return disk_kernel(size)
    return gaussian_kernel(size)


TRAINING_SHAKE = (shake_boracchi, shake_velocity_walk, shake_straight, shake_curved, shake_zigzag)


def on_grid(kernel: np.ndarray, size: int) -> np.ndarray:
    """A centred odd-sized kernel placed in the middle of a size x size grid (cropped if larger)."""
    k = kernel.shape[0]
    if k > size:
        cut = (k - size) // 2
        kernel = kernel[cut:cut + size, cut:cut + size]
        return kernel / kernel.sum()
    grid = np.zeros((size, size), np.float32)
    o = (size - k) // 2
    grid[o:o + k, o:o + k] = kernel
    return grid


TRAINING_MIX = {"shake": 0.55, "defocus": 0.19, "gaussian": 0.18, "sharp": 0.08}


def sample_training_kernels(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, list[str]]:
    """n kernels of the training mix on a size x size grid, and each one's kind.

    Shake (3-24 px) is split evenly between the five TRAINING_SHAKE families, so no single
    generator's shapes dominate; "sharp" is a barely-there Gaussian, so sharp input stays sharp.
    """
    kinds = [str(k) for k in rng.choice(list(TRAINING_MIX), size=n, p=list(TRAINING_MIX.values()))]
    kernels = np.zeros((n, size, size), np.float32)
    shaken = [i for i, k in enumerate(kinds) if k == "shake"]
    family = rng.integers(len(TRAINING_SHAKE), size=len(shaken))
    for f, make in enumerate(TRAINING_SHAKE):
        rows = [i for i, g in zip(shaken, family) if g == f]
        if rows:
            points, exposure = make(rng, len(rows))
            kernels[rows] = splat_trajectories(points, exposure, rng.uniform(3.0, 24.0, len(rows)), size)
            for i in rows:
                kinds[i] = make.__name__.removeprefix("shake_")
    for i, kind in enumerate(kinds):
        if kind == "defocus":
            kernels[i] = on_grid(disk_kernel(rng.uniform(1.0, 5.5)), size)
        elif kind == "gaussian":
            kernels[i] = on_grid(gaussian_kernel(rng.uniform(0.6, 3.6)), size)
        elif kind == "sharp":
            kernels[i] = on_grid(gaussian_kernel(rng.uniform(0.2, 0.5)), size)
    return kernels, kinds
