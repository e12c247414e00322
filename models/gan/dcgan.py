"""DCGAN generator (Radford et al. 2016) as in PyTorch's DCGAN tutorial: 100-d noise to 64x64 RGB.

Latents are drawn on the CPU from a seeded generator, whatever device runs the network, so
a seed names the same faces on every machine.
"""

from __future__ import annotations

import io

import torch
from torch import nn

LATENT_DIM = 100


def _up(cin: int, cout: int, first: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d(cin, cout, 4, 1, 0, bias=False) if first else nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)
    return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Generator(nn.Module):
    """Four transposed-conv + batch-norm + ReLU stages (4, 8, 16, 32 px) and a tanh output stage."""

    def __init__(self, nz: int = LATENT_DIM, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.main = nn.Sequential(
            *_up(nz, ngf * 8, first=True),
            *_up(ngf * 8, ngf * 4),
            *_up(ngf * 4, ngf * 2),
            *_up(ngf * 2, ngf),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (N, 100) -> (N, 3, 64, 64) RGB in 0..1."""
        return (self.main(z[:, :, None, None]) + 1) / 2


def convert_checkpoint(weights_tar: bytes) -> dict[str, torch.Tensor]:
    """State dict from gan-face-generate's weights.tar (a torch checkpoint, loaded without pickle code)."""
    checkpoint = torch.load(io.BytesIO(weights_tar), map_location="cpu", weights_only=True)
    return dict(checkpoint["netG_state_dict"])


def latents(seed: int, count: int, truncation: float = 1.0) -> torch.Tensor:
    """`count` latents for a seed, scaled towards the mean by `truncation` (1 = none).

    Scaling, rather than resampling outliers, keeps each seed's faces recognisably the same
    at every truncation: lower values only make them more average and cleaner.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, LATENT_DIM, generator=gen) * truncation


def variations(seed: int, count: int, truncation: float, spread: float = 0.35) -> torch.Tensor:
    """The first face of `seed` and `count - 1` nearby faces (its latent plus small seeded noise)."""
    base = latents(seed, 1, 1.0)
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    nearby = base + spread * torch.randn(count - 1, LATENT_DIM, generator=gen)
    return torch.cat([base, nearby]) * truncation


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation from a to b (both (100,)): Gaussian latents live near a sphere,
    so the straight line between them would pass through unlikely, washed-out faces."""
    t = torch.linspace(0, 1, steps)[:, None]
    cos = torch.clamp((a / a.norm()) @ (b / b.norm()), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < 1e-4:
        return torch.lerp(a, b, t)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def morph_latents(seed_a: int, seed_b: int, frames: int, truncation: float) -> torch.Tensor:
    """A there-and-back loop between the first faces of two seeds (frames >= 2)."""
    there = slerp(latents(seed_a, 1)[0], latents(seed_b, 1)[0], frames // 2 + 1)
    back = there.flip(0)[1:-1]
    return torch.cat([there, back])[:frames] * truncation
