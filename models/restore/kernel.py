"""Blind blur-kernel estimation, coarse to fine, with no learned parts: which blur made this image?

The method is Cho and Lee's (2009, "Fast motion deblurring"), batched in torch: at each scale,
from a few pixels wide up to the full kernel size, alternate

1. *predict* the sharp image's strong edges: deconvolve with the current kernel (Wiener), smooth,
   sharpen the edges with a shock filter, keep only the strongest gradients;
2. *solve* for the kernel that maps those edges onto the blurred image's gradients: least squares
   with a small ridge term, over the kernel's support only, by conjugate gradients (Pan et al.
   2014 solve it the same way); then drop values under a fraction of its peak and normalise.

Then the kernel is moved so its centre of mass sits exactly on its middle pixel (a Fourier
shift), the convention of `research.restore.degrade`: a deconvolved image is not shifted. Last, it
must earn its place: where deconvolving with it does not make the image's gradients sparser, the
image is taken as sharp and the kernel is a single point (see `_keep_if_it_sharpens`).

Why not learn it: a kernel solved once, in closed form, from a learned edge map stays far from
the truth (L1 error 1.21 on the benchmark's shake); iterating over scales is what makes estimation
work (0.94), and it needs no training data, so it is not limited to the shake shapes training drew.
It needs area: on shake, Wiener with the estimate gains +0.9 dB from 256 px crops and +2.4 dB
from 512 px crops (`python -m research.restore.kernel_bench --crop N`), hence KernelDeblurNet's
512 px tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from models.restore import fourier


@dataclass(frozen=True)
class Search:
    """The estimator's settings; the defaults are the ones measured in docs/models/deblur.md."""

    size: int = fourier.KERNEL_SIZE  # odd: the largest blur it can find (shake up to ~26 px)
    scale_ratio: float = math.sqrt(0.5)  # kernel (and image) size from one scale to the next
    rounds: int = 3  # predict-then-solve rounds per scale
    balance: float = 0.1  # Wiener noise-to-signal weight of the prediction's deconvolution
    keep: float = 0.03  # share of pixels whose gradients the first round uses ...
    keep_growth: float = 1.3  # ... growing by this factor every round
    ridge: float = 0.3  # the kernel's ridge term, relative to the mean gradient energy
    floor: float = 0.15  # values under this fraction of the kernel's peak are noise
    cg_steps: int = 20
    sharpens_by: float = 0.05  # the estimate stands only if deconvolving with it makes gradients this much sparser
    check_balance: float = 0.05  # the Wiener noise weight of that check


def _difference_spectra(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodic forward differences x[n+1] - x[n] along x and y, as rfft2 multipliers: e^(2 pi i f) - 1.

    Periodic, because the FFT solves below assume a periodic image."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.exp(2j * math.pi * fx) - 1, torch.exp(2j * math.pi * fy) - 1


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.roll(x, -1, -1) - x, torch.roll(x, -1, -2) - x


@dataclass
class _Scale:
    """One scale's blurred image, transformed once: every round deconvolves it and fits its gradients."""

    spectrum: torch.Tensor  # rfft2 of the taper-padded blurred image, (N, 1, h, w // 2 + 1)
    gradients: tuple[torch.Tensor, torch.Tensor]  # rfft2 of its x and y differences
    prior: torch.Tensor  # the Wiener filter's gradient prior on this grid
    height: int
    width: int

    @classmethod
    def of(cls, blurred: torch.Tensor) -> _Scale:
        h, w = blurred.shape[-2:]
        spectrum = torch.fft.rfft2(blurred)
        dx, dy = _difference_spectra(h, w, blurred.device)
        return cls(spectrum, (spectrum * dx, spectrum * dy), fourier.gradient_prior(h, w, blurred.device), h, w)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """A 3-tap binomial blur: tames the deconvolution's noise before the shock filter.

    Written as shifted sums: a one-channel convolution costs five times as much on a CPU."""
    p = F.pad(x, (1, 1, 0, 0), mode="replicate")
    x = (p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]) / 4
    p = F.pad(x, (0, 0, 1, 1), mode="replicate")
    return (p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]) / 4


def _shock(x: torch.Tensor, steps: int = 2, dt: float = 0.5) -> torch.Tensor:
    """Osher-Rudin shock filter: pushes each side of an edge towards its plateau, making it a step."""
    for _ in range(steps):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
        gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
        laplacian = p[..., 1:-1, 2:] + p[..., 1:-1, :-2] + p[..., 2:, 1:-1] + p[..., :-2, 1:-1] - 4 * x
        x = x - dt * torch.sign(laplacian) * torch.sqrt(gx ** 2 + gy ** 2)
    return x


def _strong_edges(scale: _Scale, kernel: torch.Tensor, s: Search, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the predicted sharp image, zero except at the `keep` share of strongest ones."""
    h, w = scale.height, scale.width
    otf = fourier.kernel_spectrum(kernel, h, w)[:, None]
    latent = torch.fft.irfft2(fourier.wiener_spectrum(scale.spectrum, otf, s.balance, scale.prior), s=(h, w))
    gx, gy = _gradients(_shock(_smooth(latent)))
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    threshold = torch.quantile(magnitude.flatten(1)[:, ::7], 1 - keep, dim=1).view(-1, 1, 1, 1)  # a sample suffices
    strong = magnitude >= threshold
    return gx * strong, gy * strong


def _lags(full: torch.Tensor, radius: int) -> torch.Tensor:
    """The (2r+1)^2 central lags of a periodic correlation whose lag 0 is at index 0."""
    return torch.roll(full, (radius, radius), (-2, -1))[..., :2 * radius + 1, :2 * radius + 1]


def _solve(edges: tuple[torch.Tensor, torch.Tensor], scale: _Scale, start: torch.Tensor, s: Search) -> torch.Tensor:
    """argmin_k sum_d ||k * e_d - d(blurred)||^2 + ridge ||k||^2 over a size x size support, by CG.

    The normal operator is a correlation with the edges' autocorrelation, needed only at lags
    below the kernel's size: CG runs on small FFTs, not image-sized ones.
    """
    size, r = start.shape[-1], start.shape[-1] // 2
    h, w = scale.height, scale.width
    ex, ey = (torch.fft.rfft2(e[:, 0]) for e in edges)
    bx, by = (b[:, 0] for b in scale.gradients)
    energy = sum(torch.view_as_real(e).pow(2).sum(-1) for e in (ex, ey))
    rhs = _lags(torch.fft.irfft2(ex.conj() * bx + ey.conj() * by, s=(h, w)), r)
    autocorrelation = _lags(torch.fft.irfft2(energy, s=(h, w)), 2 * r)
    ridge = s.ridge * energy.mean((-2, -1), keepdim=True)
    n = fourier.fast_size(3 * size)
    operator = torch.fft.rfft2(torch.roll(F.pad(autocorrelation, (0, n - 4 * r - 1, 0, n - 4 * r - 1)), (-2 * r, -2 * r), (-2, -1)))

    def normal(k: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(operator * torch.fft.rfft2(k, s=(n, n)), s=(n, n))[..., :size, :size] + ridge * k

    k = start.clone()
    residual = rhs - normal(k)
    direction, norm = residual.clone(), (residual ** 2).sum((-2, -1), keepdim=True)
    for _ in range(s.cg_steps):
        step = normal(direction)
        alpha = norm / (direction * step).sum((-2, -1), keepdim=True).clamp_min(1e-20)
        k, residual = k + alpha * direction, residual - alpha * step
        new_norm = (residual ** 2).sum((-2, -1), keepdim=True)
        direction, norm = residual + new_norm / norm.clamp_min(1e-30) * direction, new_norm
    return k


def _clean(k: torch.Tensor, floor: float) -> torch.Tensor:
    """Non-negative, values under `floor` times the peak dropped, sum 1 (all-zero: no blur)."""
    k = k.clamp_min(0)
    k = torch.where(k < floor * k.amax((-2, -1), keepdim=True), 0, k)
    k[..., k.shape[-2] // 2, k.shape[-1] // 2] += 1e-12
    return k / k.sum((-2, -1), keepdim=True)


def _centre_of_mass(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(k.shape[-1], dtype=k.dtype, device=k.device) - k.shape[-1] // 2
    return (k.sum(-1) * offsets).sum(-1), (k.sum(-2) * offsets).sum(-1)


def _roll_to_centre(k: torch.Tensor) -> torch.Tensor:
    """Whole-pixel recentring between scales, so the kernel never drifts out of its support."""
    dy, dx = _centre_of_mass(k)
    return torch.stack([torch.roll(one, (-round(float(y)), -round(float(x))), (-2, -1)) for one, y, x in zip(k, dy, dx)])


def centre_exactly(k: torch.Tensor) -> torch.Tensor:
    """Shift each kernel by a Fourier phase so its centre of mass is exactly the middle pixel.

    A kernel off by half a pixel shifts the deconvolved image by half a pixel: measured over the
    benchmark's shake and defocus, whole-pixel recentring alone costs 0.8 dB.
    """
    size, p = k.shape[-1], k.shape[-1] // 2
    dy, dx = _centre_of_mass(k)
    grid = F.pad(k, (p, p, p, p))
    n = grid.shape[-1]
    fy, fx = torch.fft.fftfreq(n, device=k.device)[:, None], torch.fft.rfftfreq(n, device=k.device)[None, :]
    phase = torch.exp(2j * math.pi * (fy * dy[:, None, None] + fx * dx[:, None, None]))
    shifted = torch.fft.irfft2(torch.fft.rfft2(grid) * phase, s=(n, n))[..., p:p + size, p:p + size]
    return shifted / shifted.sum((-2, -1), keepdim=True)  # the crop drops a faint ripple: brightness stays


def _points(n: int, size: int, device: torch.device) -> torch.Tensor:
    """n kernels of "no blur": all weight on the middle pixel, (n, size, size)."""
    point = torch.zeros(n, size, size, device=device)
    point[:, size // 2, size // 2] = 1
    return point


def _normalised_sparsity(x: torch.Tensor) -> torch.Tensor:
    """L1 / L2 of each image's gradients, inside a 16 px border: lower for sharp images, higher for
    blurred ones and for ringing and noise (Krishnan, Tay and Fergus 2011)."""
    x = x[..., 16:-16, 16:-16]
    g = torch.cat([(x[..., 1:, 1:] - x[..., 1:, :-1]).flatten(1), (x[..., 1:, 1:] - x[..., :-1, 1:]).flatten(1)], 1)
    return g.abs().sum(1) / g.norm(dim=1).clamp_min(1e-12)


def _keep_if_it_sharpens(grey: torch.Tensor, k: torch.Tensor, s: Search) -> torch.Tensor:
    """Each estimate, or no blur where deconvolving with it does not make the image's gradients sparser.

    On a sharp photo of fine texture the search still finds a spread kernel (6-10 px on the
    benchmark's bridge), and deconvolving by it only adds ringing. Measured on 512 px crops (the
    benchmark's conditions): on the six held-out photos the ratio is at most 0.92 blurred (72
    cases) and at least 0.97 sharp, a clean split; on the 27 training photos it is not: 40 of 324
    blurred cases score above 0.95 (their estimate is dropped) and 2 sharp photos below it. Of
    those 40, 16 had estimates whose deconvolution lost 2-16 dB; the other 24 lose a mean +1.4 dB.
    """
    deconvolved = fourier.wiener(grey, k, torch.full((len(k),), s.check_balance, device=k.device))
    sharpens = _normalised_sparsity(deconvolved) < (1 - s.sharpens_by) * _normalised_sparsity(grey)
    return torch.where(sharpens[:, None, None], k, _points(len(k), k.shape[-1], k.device))


def _scales(s: Search) -> list[int]:
    sizes = [s.size]
    while sizes[-1] > 5:
        smaller = round(sizes[-1] * s.scale_ratio)
        sizes.append(max(3, smaller + 1 - smaller % 2))
    return sizes[::-1]


def estimate(grey: torch.Tensor, search: Search = Search()) -> torch.Tensor:
    """The blur kernel of each blurred (N, 1, H, W) image in 0..1: (N, size, size), sum 1, centred."""
    with torch.autocast(grey.device.type, enabled=False):
        grey = grey.float()
        sizes = _scales(search)
        kernel = _points(grey.shape[0], sizes[0], grey.device)  # coarsest scale: start from "no blur"
        for size in sizes:
            scaled = grey if size == search.size else F.interpolate(
                grey, scale_factor=size / search.size, mode="bilinear", antialias=True, align_corners=False)
            if size != kernel.shape[-1]:
                kernel = _clean(F.interpolate(_roll_to_centre(kernel)[:, None], size=(size, size), mode="bilinear",
                                              align_corners=True)[:, 0], 0.0)
            scale = _Scale.of(fourier.pad_for_fft(scaled, size)[0])
            keep = search.keep
            for _ in range(search.rounds):
                kernel = _clean(_solve(_strong_edges(scale, kernel, search, keep), scale, kernel, search), search.floor)
                keep = min(0.5, keep * search.keep_growth)
        return _keep_if_it_sharpens(grey, centre_exactly(kernel), search)
