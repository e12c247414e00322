"""The exact mathematics of deblurring, differentiable and batched: kernel estimation and Wiener deconvolution.

Both work per image (per tile, in /fix) in the Fourier domain, always in float32 (bf16 has too few
bits for a spectrum). Kernels are (N, k, k) with their centre of mass on the middle pixel, the
convention of `models.restore.degrade`: blurred = kernel * sharp (a true convolution).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

KERNEL_SIZE = 31  # the largest blur the network can estimate: shake up to about 26 px, defocus radius 15


def fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of such lengths are several times faster than of primes."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _ramp(inner: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """1 on `inner` samples, a raised cosine down towards 0 over the `before` and `after` samples around them."""
    i = torch.arange(before + inner + after, device=device, dtype=torch.float32)
    t = torch.minimum((i + 1) / (before + 1), (before + inner + after - i) / (after + 1)).clamp(0, 1)
    return 0.5 - 0.5 * torch.cos(math.pi * t)


def taper_pad(x: torch.Tensor, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """Pad NCHW (mirrored) and fade the padding to each image's mean.

    The FFT treats an image as periodic: unpadded, its right edge meets its left and the jump rings
    through the whole deconvolution. Mirrored, then faded to a constant, the wrap-around is smooth.
    """
    h, w = x.shape[-2:]
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
    padded = F.pad(x, (left, right, top, bottom), mode=mode)
    mean = x.mean((-2, -1), keepdim=True)
    window = _ramp(h, top, bottom, x.device)[:, None] * _ramp(w, left, right, x.device)[None]
    return mean + (padded - mean) * window


def kernel_spectrum(kernel: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """rfft2 of (N, k, k) centred kernels on an h x w grid (the centre moved to pixel 0): (N, h, w//2+1)."""
    k = kernel.shape[-1]
    grid = F.pad(kernel, (0, w - k, 0, h - k))
    return torch.fft.rfft2(torch.roll(grid, (-(k // 2), -(k // 2)), (-2, -1)))


def gradient_prior(h: int, w: int, device: torch.device) -> torch.Tensor:
    """|D_x|^2 + |D_y|^2 of forward differences on the rfft2 grid: the smoothness prior's weight per frequency."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return 4 * torch.sin(math.pi * fy) ** 2 + 4 * torch.sin(math.pi * fx) ** 2


def wiener(blurred: torch.Tensor, kernel: torch.Tensor, balance: torch.Tensor, pad: int = 32) -> torch.Tensor:
    """Deconvolve NCHW images, each by its own kernel (N, k, k), with a gradient prior weighted by balance (N,).

    X = conj(K) Y / (|K|^2 + balance |D|^2): the Wiener filter for a 1/|w|^2 image spectrum, where
    `balance` is the noise-to-signal ratio. The image is taper-padded (see `taper_pad`) and cropped back.
    """
    with torch.autocast(blurred.device.type, enabled=False):
        h, w = blurred.shape[-2:]
        pad_h, pad_w = fast_size(h + 2 * pad) - h, fast_size(w + 2 * pad) - w
        y = taper_pad(blurred.float(), pad_h // 2, pad_w // 2, pad_h - pad_h // 2, pad_w - pad_w // 2)
        h, w = y.shape[-2:]
        otf = kernel_spectrum(kernel.float(), h, w)[:, None]
        prior = gradient_prior(h, w, y.device)
        spectrum = torch.fft.rfft2(y) * otf.conj() / (otf.abs() ** 2 + balance.float()[:, None, None, None] * prior + 1e-8)
        return torch.fft.irfft2(spectrum, s=(h, w))[..., pad_h // 2:pad_h // 2 + blurred.shape[-2],
                                                     pad_w // 2:pad_w // 2 + blurred.shape[-1]]


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """Forward differences (N, 1, H, W) -> (N, 2, H, W), zero on the last row / column."""
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return torch.cat([dx, dy], 1)


def least_squares_kernel(latent: torch.Tensor, blurred: torch.Tensor, damping: torch.Tensor | float,
                         size: int = KERNEL_SIZE) -> torch.Tensor:
    """The kernel k that best explains blurred = k * latent, in closed form: (N, 1, H, W) x2 -> (N, size, size).

    Least squares on image gradients, solved per frequency (Cho & Lee 2009, Schuler et al. 2016):
    K = (sum_d conj(L_d) B_d + e) / (sum_d |L_d|^2 + e), where e (damping times the mean gradient
    energy) pulls frequencies without evidence towards the identity kernel; cut to `size` around
    the centre. Raw: it may hold small negative values and a faint haze (see `clean_kernel`), and
    it is differentiable everywhere, so training can supervise it against the true kernel.
    Gradients are windowed (edges faded) and zero-padded, so the correlation sees no wrap-around.
    """
    with torch.autocast(latent.device.type, enabled=False):
        h, w = latent.shape[-2:]
        fade = max(1, min(16, h // 4, w // 4))
        window = _ramp(h - 2 * fade, fade, fade, latent.device)[:, None] * _ramp(w - 2 * fade, fade, fade, latent.device)[None]
        grid = (fast_size(h + size), fast_size(w + size))
        lat = torch.fft.rfft2(_gradients(latent.float()) * window, s=grid)
        blu = torch.fft.rfft2(_gradients(blurred.float()) * window, s=grid)
        energy = (lat.abs() ** 2).sum(1)
        e = torch.as_tensor(damping, dtype=torch.float32, device=latent.device).reshape(-1, 1, 1) * \
            energy.mean((-2, -1), keepdim=True) + 1e-10
        k = torch.fft.irfft2(((lat.conj() * blu).sum(1) + e) / (energy + e), s=grid)
        return torch.roll(k, (size // 2, size // 2), (-2, -1))[..., :size, :size]


def clean_kernel(raw: torch.Tensor, floor: torch.Tensor | float = 0.05) -> torch.Tensor:
    """A least-squares kernel made usable: values below `floor` times its peak dropped, sum 1.

    Noise spreads a faint haze over the whole support, which would otherwise hold much of the
    mass: measured on a 15 px shake at noise 0.01, a floor of 0.05 halves the kernel's L1 error
    and lifts the Wiener result by 2.5 dB.
    """
    with torch.autocast(raw.device.type, enabled=False):
        floor = torch.as_tensor(floor, dtype=torch.float32, device=raw.device).reshape(-1, 1, 1)
        k = (raw - floor * raw.amax((-2, -1), keepdim=True)).clamp_min(0)
        size = k.shape[-1]
        delta = torch.zeros(size, size, device=k.device)
        delta[size // 2, size // 2] = 1e-6  # an all-negative estimate falls back to "no blur"
        k = k + delta
        return k / k.sum((-2, -1), keepdim=True)
