"""Turn one font into many hands: random distortions shared by all glyphs of a hand.

Everything is batched torch on whatever device the glyphs live on (no per-sample Python).
A *hand* is one draw of slant, rotation, scale, aspect, stroke width and a smooth elastic
field; each glyph of the hand adds a little jitter of its own, as a writer never draws the
same stroke twice. Glyphs come in as [B, K, 64, 64] ink (B hands of K glyphs), values 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Ranges:
    slant: float = 0.35  # shear, x += slant * y
    rotation: float = 0.08  # radians
    scale: tuple[float, float] = (0.82, 1.08)
    aspect: float = 0.12  # log-uniform +-
    width: tuple[float, float] = (-0.6, 1.6)  # <0 thins strokes, 1 = one pixel more, 2 = two
    hand_elastic: float = 0.05  # amplitude of the hand's smooth field (in [-1, 1] coordinates)
    glyph_elastic: float = 0.015
    glyph_shift: float = 0.025
    glyph_rotation: float = 0.03


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def smooth_field(n: int, knots: int, amplitude: torch.Tensor, g: torch.Generator, size: int = 64) -> torch.Tensor:
    """n random displacement fields [n, size, size, 2], bicubic from a knots x knots grid."""
    coarse = torch.randn(n, 2, knots, knots, generator=g, device=amplitude.device)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1) * amplitude.view(n, 1, 1, 1)


def stroke_width(ink: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Thicken (width > 0, grey-scale dilation steps) or thin (width < 0) soft ink, per image."""
    dilated = F.max_pool2d(ink, 3, 1, 1)
    twice = F.max_pool2d(dilated, 3, 1, 1)
    eroded = -F.max_pool2d(-ink, 3, 1, 1)
    w = width.view(-1, 1, 1, 1)
    thin = torch.lerp(ink, eroded, (-w).clamp(0, 1))
    thick = torch.where(w <= 1, torch.lerp(ink, dilated, w.clamp(0, 1)), torch.lerp(dilated, twice, (w - 1).clamp(0, 1)))
    return torch.where(w < 0, thin, thick)


def hands(glyphs: torch.Tensor, g: torch.Generator, r: Ranges = Ranges()) -> torch.Tensor:
    """Distort [B, K, 64, 64] glyphs as B hands; returns the same shape, ink in 0..1."""
    b, k, h, w = glyphs.shape
    dev = glyphs.device
    n = b * k
    per_hand = lambda t: t.repeat_interleave(k)  # noqa: E731 - one value per hand, spread to its glyphs
    slant = per_hand(_uniform(b, -r.slant, r.slant, g, dev))
    angle = per_hand(_uniform(b, -r.rotation, r.rotation, g, dev)) + _uniform(n, -r.glyph_rotation, r.glyph_rotation, g, dev)
    scale = per_hand(_uniform(b, *r.scale, g, dev))
    aspect = per_hand(torch.exp(_uniform(b, -r.aspect, r.aspect, g, dev)))
    shift = (torch.rand(n, 2, generator=g, device=dev) * 2 - 1) * r.glyph_shift
    # output -> input sampling map: inverse of scale, then rotation and shear
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = 1 / (scale * aspect), aspect / scale
    theta = torch.stack([torch.stack([sx * cos, sx * (-sin + slant * cos), shift[:, 0]], 1),
                         torch.stack([sy * sin, sy * (cos + slant * sin), shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    hand_amp = _uniform(b, 0, r.hand_elastic, g, dev)
    grid = grid + smooth_field(b, 4, hand_amp, g, h).repeat_interleave(k, 0)
    grid = grid + smooth_field(n, 6, torch.full((n,), r.glyph_elastic, device=dev), g, h)
    out = F.grid_sample(glyphs.reshape(n, 1, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = stroke_width(out, per_hand(_uniform(b, *r.width, g, dev)))
    return out.clamp(0, 1).view(b, k, h, w)
