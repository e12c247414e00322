"""The exact mathematics of deblurring, batched: Wiener deconvolution and the padding it needs.

It works per image (per tile, in /fix) in the Fourier domain, always in float32 (bf16 has too few
bits for a spectrum). Kernels are (N, k, k) with their centre of mass on the middle pixel, the
convention of `research.restore.degrade`: blurred = kernel * sharp (a true convolution).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

KERNEL_SIZE = 31  # the largest blur /fix can estimate: shake up to about 26 px, defocus radius 15


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


def pad_for_fft(x: torch.Tensor, margin: int) -> tuple[torch.Tensor, int, int]:
    """x taper-padded by at least `margin` on every side, up to a fast FFT size: (padded, top, left)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = fast_size(h + 2 * margin) - h, fast_size(w + 2 * margin) - w
    return taper_pad(x, pad_h // 2, pad_w // 2, pad_h - pad_h // 2, pad_w - pad_w // 2), pad_h // 2, pad_w // 2


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


def wiener_spectrum(spectrum: torch.Tensor, otf: torch.Tensor, balance: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """The Wiener filter applied to a blurred image's rfft2 (broadcasting), for callers that reuse one transform."""
    return spectrum * otf.conj() / (otf.real ** 2 + otf.imag ** 2 + balance * prior + 1e-8)


def wiener(blurred: torch.Tensor, kernel: torch.Tensor, balance: torch.Tensor, pad: int = 32) -> torch.Tensor:
    """Deconvolve NCHW images, each by its own kernel (N, k, k), with a gradient prior weighted by balance (N,).

    X = conj(K) Y / (|K|^2 + balance |D|^2): the Wiener filter for a 1/|w|^2 image spectrum, where
    `balance` is the noise-to-signal ratio. The image is taper-padded (see `taper_pad`) and cropped back.
    With B balances per image, (N, B), the result is (N, B * C, H, W), one deconvolution per balance
    in turn, from one transform of the image.
    """
    with torch.autocast(blurred.device.type, enabled=False):
        y, top, left = pad_for_fft(blurred.float(), pad)
        h, w = y.shape[-2:]
        otf = kernel_spectrum(kernel.float(), h, w)[:, None, None]  # (N, 1, 1, h, w')
        weights = balance.float().reshape(len(blurred), -1)[:, :, None, None, None]  # (N, B, 1, 1, 1)
        spectrum = wiener_spectrum(torch.fft.rfft2(y)[:, None], otf, weights, gradient_prior(h, w, y.device))
        return torch.fft.irfft2(spectrum.flatten(1, 2), s=(h, w))[..., top:top + blurred.shape[-2],
                                                                  left:left + blurred.shape[-1]]
