"""The 26-preset style network (Dumoulin et al. 2017, "A Learned Representation for Artistic Style").

One transformer holds 26 styles as 26 rows of scale and shift in every conditional instance
norm; a blend of presets is a convex combination of those rows.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.errors import UserError
from models.style.layers import ReflectConv, conditional_instance_norm, pad_to_multiple, upsample2x

NUM_PRESETS = 26
# The network came without names; these describe what each preset does to a portrait photo.
PRESET_NAMES = (
    "Pastel wash", "Bold outlines", "Ink and sepia", "Electric abstract", "Warm fresco", "Sunset impasto",
    "Cobalt cells", "Fauvist blue and gold", "Pastel sketch", "Folk pattern", "Terracotta", "Golden etching",
    "Soft lavender", "Cubist green", "Frosted blue", "Stained glass", "Blue brushwork", "Red and blue bricks",
    "Sepia woodcut", "Starry swirls", "Crimson expression", "Pop pastel", "Muted gouache", "Faded photograph",
    "Blue and cream mosaic", "Dark mosaic",
)


class PresetNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(NUM_PRESETS, channels))
        self.beta = nn.Parameter(torch.zeros(NUM_PRESETS, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, weights: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """weights: (N, 26), each row summing to 1."""
        return conditional_instance_norm(x, weights @ self.gamma, weights @ self.beta, self.eps, relu)


class PresetConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = ReflectConv(cin, cout, kernel, stride=stride, bias=False)
        self.norm = PresetNorm(cout)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return self.norm(self.conv(x), weights, relu)


class PresetStyleNet(nn.Module):
    """Contract (9x9 then two stride-2 3x3, 32 channels), six residual blocks, expand to RGB."""

    def __init__(self) -> None:
        super().__init__()
        self.contract = nn.ModuleList([PresetConv(3, 32, 9), PresetConv(32, 32, 3, 2), PresetConv(32, 32, 3, 2)])
        self.residual = nn.ModuleList([nn.ModuleList([PresetConv(32, 32, 3), PresetConv(32, 32, 3)]) for _ in range(6)])
        self.expand = nn.ModuleList([PresetConv(32, 8, 3), PresetConv(8, 4, 3), PresetConv(4, 3, 9)])

    def forward(self, content: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """content: (N, 3, H, W) in 0..1, any size; weights: (N, 26) -> (N, 3, H, W) in 0..1."""
        x, (h, w) = pad_to_multiple(content, 4)
        for layer in self.contract:
            x = layer(x, weights, relu=True)
        for first, second in self.residual:
            x = x + second(first(x, weights, relu=True), weights)
        x = self.expand[0](upsample2x(x), weights, relu=True)
        x = self.expand[1](upsample2x(x), weights, relu=True)
        return torch.sigmoid(self.expand[2](x, weights))[..., :h, :w]


def parse_presets(spec: object) -> torch.Tensor:
    """Blend weights (26,) summing to 1 from "7", "3:0.5,12:0.5", an int, or a {index: weight} mapping."""
    pairs: list[tuple[object, object]]
    if isinstance(spec, dict):
        pairs = list(spec.items())
    elif isinstance(spec, int) and not isinstance(spec, bool):
        pairs = [(spec, 1.0)]
    else:
        pairs = [part.partition(":")[::2] for part in str(spec).replace(" ", "").split(",") if part]
    weights = [0.0] * NUM_PRESETS  # float64 until normalised: 1e39 or 3e38 + 3e38 overflow float32 to inf
    try:
        for index, weight in pairs:
            i, w = int(index), float(weight) if weight not in ("", None) else 1.0
            if not 0 <= i < NUM_PRESETS or not 0 <= w < math.inf:  # also refuses nan
                raise ValueError
            weights[i] += w
    except (TypeError, ValueError):
        raise UserError(f"Presets are numbers 0 to {NUM_PRESETS - 1}, optionally weighted, like 7 or 3:0.5,12:0.5.") from None
    total = sum(weights)
    if not total < math.inf:
        raise UserError("Those preset weights are too large to add up; use weights like 0.5 or 2.")
    if total <= 0:
        raise UserError("Give at least one preset with a weight above zero.")
    return torch.tensor([w / total for w in weights], dtype=torch.float32)
