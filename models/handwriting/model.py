"""The handwriting VAE: reference glyph -> content features; a hand -> style z; both -> ink.

* Content encoder: the character's rendering in the plain reference face (committed with the
  weights) down to 8x8 features, plus one narrow 16x16 skip. The decoder must redraw every
  stroke at 64x64 from these, so it cannot pass the reference through.
* Style encoder: K glyphs of one hand, each read next to its reference rendering (so what it
  sees is the *difference* a hand makes), averaged into one posterior over z. A set, not one
  glyph: one glyph mixes style with that character's shape, K different characters share
  only the hand, which is exactly what z should hold (Srivatsan et al. 2019: one latent per font).
* Decoder: content features modulated at every stage by FiLM from z after a parameter-free
  group norm (the conditional instance norm of Magenta's SVG-VAE image model, driven by z
  instead of a class), ending in Bernoulli logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.handwriting import charset as cs

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "handwriting.safetensors"
CONTENT_CACHE = 1024  # characters whose content features are kept (64 KB each)


@dataclass(frozen=True)
class Config:
    z_dim: int = 32
    content: tuple[int, int, int, int] = (24, 48, 96, 128)  # channels at 64, 32, 16, 8
    decoder: tuple[int, int, int] = (96, 48, 32)  # channels at 8, 16, 32: the per-request cost
    skip: int = 32  # channels of the 16x16 content skip
    style: tuple[int, int, int, int] = (32, 64, 96, 128)


class FiLMConv(nn.Module):
    """conv -> group norm without affine -> scale/shift from z -> SiLU."""

    def __init__(self, cin: int, cout: int, z_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(min(8, cout // 4), cout, affine=False)
        self.film = nn.Linear(z_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(z).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return F.silu(self.norm(self.conv(x)) * (1 + gamma) + beta)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.SiLU())


class ContentEncoder(nn.Module):
    """Reference glyph -> 8x8 features and a narrow 16x16 skip. It runs once per character
    (the product caches its output), so it may be richer than the decoder."""

    def __init__(self, c: tuple[int, int, int, int], skip: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, c[0], 3, padding=1), nn.SiLU(), _down(c[0], c[1]), _down(c[1], c[2]),
                                  nn.Conv2d(c[2], c[2], 3, padding=1), nn.SiLU())
        self.skip = nn.Conv2d(c[2], skip, 1)
        self.deep = nn.Sequential(_down(c[2], c[3]), nn.Conv2d(c[3], c[3], 3, padding=1), nn.SiLU())

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h16 = self.stem(reference)
        return self.deep(h16), self.skip(h16)


class StyleEncoder(nn.Module):
    """[B, K, 2, 64, 64] (glyph, reference) pairs of B hands -> mean, log-variance [B, z]."""

    def __init__(self, c: tuple[int, int, int, int], z_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_down(2, c[0]), _down(c[0], c[1]), _down(c[1], c[2]), _down(c[2], c[3]))
        self.head = nn.Sequential(nn.Linear(c[3], c[3]), nn.SiLU(), nn.Linear(c[3], 2 * z_dim))

    def forward(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = pairs.shape[:2]
        feats = self.net(pairs.flatten(0, 1)).mean(dim=(2, 3)).view(b, k, -1).mean(1)
        mean, logvar = self.head(feats).chunk(2, dim=1)
        return mean, logvar.clamp(-10, 6)


def _up(cin: int, cout: int) -> nn.Sequential:
    """Double the resolution: a 1x1 conv to 4x the channels, then pixel shuffle (cheap on CPU;
    the 3x3 conv that follows does the spatial drawing)."""
    return nn.Sequential(nn.Conv2d(cin, 4 * cout, 1), nn.PixelShuffle(2))


class Decoder(nn.Module):
    """8x8 content -> 64x64 logits. The last step draws 64x64 from 32x32 features through a
    pixel shuffle, so no full-resolution feature map is computed: CPU inference stays cheap."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        d, zd = cfg.decoder, cfg.z_dim
        self.b8 = FiLMConv(cfg.content[3], d[0], zd)
        self.up16 = _up(d[0], d[1])
        self.b16 = FiLMConv(d[1] + cfg.skip, d[1], zd)
        self.up32 = _up(d[1], d[2])
        self.b32 = nn.ModuleList([FiLMConv(d[2], d[2], zd), FiLMConv(d[2], d[2], zd)])
        self.out = nn.Sequential(nn.Conv2d(d[2], 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, content: torch.Tensor, skip: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.b8(content, z)
        h = self.b16(torch.cat([self.up16(h), skip], 1), z)
        h = self.b32[0](self.up32(h), z)
        h = h + self.b32[1](h, z)
        return self.out(h)


class GlyphVAE(nn.Module):
    """The trainable network; `HandwritingModel` wraps it with the charset and references."""

    def __init__(self, cfg: Config = Config()) -> None:
        super().__init__()
        self.cfg = cfg
        self.content = ContentEncoder(cfg.content, cfg.skip)
        self.style = StyleEncoder(cfg.style, cfg.z_dim)
        self.decoder = Decoder(cfg)

    def decode(self, reference: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1, 64, 64] for references [N, 1, 64, 64] and one z per glyph [N, z]."""
        content, skip = self.content(reference)
        return self.decoder(content, skip, z)

    def forward(self, glyphs: torch.Tensor, references: torch.Tensor, eps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """glyphs, references [B, K, 64, 64]; eps [B, z] -> logits [B, K, 64, 64], mean, logvar."""
        b, k, h, w = glyphs.shape
        mean, logvar = self.style(torch.stack([glyphs, references], 2))
        z = mean + eps * torch.exp(0.5 * logvar)
        logits = self.decode(references.reshape(b * k, 1, h, w), z.repeat_interleave(k, 0))
        return logits.view(b, k, h, w), mean, logvar


def kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|hand) || N(0, I)) per latent dimension, averaged over the batch: [z]."""
    return (0.5 * (mean.square() + logvar.exp() - 1 - logvar)).mean(0)


def free_bits_kl(kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Sum of per-dimension KL, each floored at `free_bits` nats (no gradient below the floor)."""
    return torch.clamp(kl_dims, min=free_bits).sum()


class HandwritingModel:
    """What the product uses: write characters of `CHARSET` in the hand of a latent z."""

    def __init__(self, net: GlyphVAE, reference: np.ndarray, device: torch.device) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.z_dim = net.cfg.z_dim
        self.references = torch.from_numpy(reference).to(device=device, dtype=torch.float32).unsqueeze(1)
        self._content: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if device.type == "cpu":  # oneDNN's convolutions are several times faster channels-last
            self.net.to(memory_format=torch.channels_last)

    charset = cs.CHARSET

    @staticmethod
    def covers(ch: str) -> bool:
        return cs.covers(ch)

    def prior(self, seed: int, temperature: float = 1.0) -> torch.Tensor:
        """A hand: z ~ N(0, temperature^2 I), the same for the same seed on every machine."""
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(self.z_dim, generator=g) * temperature).to(self.device)

    def _content_of(self, chars: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Content features per character, computed once and kept (they do not depend on z)."""
        todo = sorted({ch for ch in chars if ch not in self._content})
        if len(self._content) + len(todo) > CONTENT_CACHE:  # start afresh with this call's characters
            self._content.clear()
            todo = sorted(set(chars))
        if todo:
            refs = self.references[[cs.INDEX[ch] for ch in todo]]
            deep, skip = self.net.content(refs)
            self._content.update({ch: (deep[i], skip[i]) for i, ch in enumerate(todo)})
        deep = torch.stack([self._content[ch][0] for ch in chars])
        skip = torch.stack([self._content[ch][1] for ch in chars])
        return deep.contiguous(memory_format=torch.channels_last), skip.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def write(self, chars: list[str], z: torch.Tensor) -> torch.Tensor:
        """Ink [N, 1, 64, 64] in 0..1 for N characters (all must be covered) in the hand z [D] or [N, D]."""
        unknown = [ch for ch in chars if not cs.covers(ch)]
        if unknown:
            raise ValueError(f"not in the handwriting charset: {''.join(unknown)!r}")
        if not chars:
            return torch.zeros(0, 1, 64, 64, device=self.device)
        z = z.to(self.device, torch.float32)
        z = z.expand(len(chars), -1) if z.dim() == 1 else z
        deep, skip = self._content_of(chars)
        return torch.sigmoid(self.net.decoder(deep, skip, z))


def from_state(state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu") -> HandwritingModel:
    """The model from a float32 state dict (the pool's worker reads it through the weights registry)
    and the committed reference glyphs."""
    from models.handwriting.glyphs import read_reference

    net = GlyphVAE()
    net.load_state_dict(state)
    charset, reference = read_reference()
    if charset != cs.CHARSET:
        raise ValueError("the committed reference glyphs were built for another charset")
    return HandwritingModel(net, reference, torch.device(device))


def load(device: torch.device | str = "cpu", file: Path = WEIGHTS_FILE) -> HandwritingModel:
    """The committed model (fp16 safetensors, computed in fp32) with its reference glyphs."""
    from safetensors.torch import load_file

    if not file.exists():
        raise FileNotFoundError(f"handwriting weights are missing: {file}")
    return from_state({k: v.float() for k, v in load_file(str(file)).items()}, device)
