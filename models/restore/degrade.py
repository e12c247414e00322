"""Synthetic blur kernels and degradations, shared by training and the evaluation benchmark.

Every kernel is a float32 numpy array that sums to 1 with its centre of mass on the centre
pixel: an off-centre kernel would also shift the image, and a restoration net would then have
to learn that shift instead of the deblurring.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
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


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip one CHW image in 0..1 through JPEG at the given quality."""
    array = (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255


@dataclass(frozen=True)
class Degradation:
    """One sampled degradation: kernel, then noise, then optional JPEG."""

    kind: str
    kernel: np.ndarray
    noise_sigma: float
    jpeg_quality: int | None

    @property
    def margin(self) -> int:
        return self.kernel.shape[0] // 2


def sample_training_degradation(rng: np.random.Generator) -> Degradation:
    """Draw the training mix: mostly motion, defocus and Gaussian blur, a little 'already sharp'."""
    u = rng.uniform()
    if u < 0.45:
        kind, kernel = "motion", motion_kernel(rng, rng.uniform(3.0, 22.0))
    elif u < 0.70:
        kind, kernel = "defocus", disk_kernel(rng.uniform(1.0, 5.5))
    elif u < 0.92:
        kind, kernel = "gaussian", gaussian_kernel(rng.uniform(0.6, 3.6))
    else:
        kind, kernel = "sharp", gaussian_kernel(rng.uniform(0.2, 0.5))
    noise = float(rng.uniform(0.0, 0.025)) if rng.uniform() < 0.8 else 0.0
    quality = int(rng.integers(55, 96)) if rng.uniform() < 0.35 else None
    return Degradation(kind, kernel, noise, quality)


def apply_degradation(sharp: torch.Tensor, d: Degradation, rng: np.random.Generator) -> torch.Tensor:
    """Degrade one CHW image whose border is `d.margin` pixels wider than the wanted output."""
    blurred = blur(sharp[None], d.kernel, padding="valid")[0]
    if d.noise_sigma:
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        blurred = blurred + d.noise_sigma * torch.randn(blurred.shape, generator=gen)
    blurred = blurred.clamp(0, 1)
    if d.jpeg_quality is not None:
        blurred = jpeg(blurred, d.jpeg_quality)
    return blurred
