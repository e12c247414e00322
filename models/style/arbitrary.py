"""Arbitrary style transfer (Ghiasi et al. 2017, the distilled MobileNetV2 variant from Magenta).

A style predictor maps a style image to a 100-d style vector; a transformer network paints a
content image, its conditional instance norms taking scale and shift from that vector. Both are
fully convolutional: the ONNX originals are frozen at 256 px (style) and 384 px (content), these
run at any size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.style.layers import ReflectConv, conditional_instance_norm, pad_to_multiple, upsample2x

STYLE_DIM = 100
STYLE_SIZE = 256  # the predictor was trained on 256x256 style images
NORM_EPS = 1e-5  # read from the original graph at conversion and checked there

# MobileNetV2 (expansion t, output channels c, repeats n, first stride s), width 1.0
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class SameConv(nn.Conv2d):
    """Conv with TensorFlow's 'SAME' padding: for stride 2 the extra pixel goes bottom/right."""

    def same_pads(self, x: torch.Tensor) -> list[int]:
        """F.pad's (left, right, top, bottom) for `x`."""
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.same_pads(x)), self.weight, self.bias, self.stride, 0, 1, self.groups)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (batch norms folded in)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.expand = nn.Conv2d(cin, hidden, 1) if expansion != 1 else None
        self.depthwise = SameConv(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class StylePredictor(nn.Module):
    """MobileNetV2 features, global average pool, 1x1 bottleneck to the style vector."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SameConv(3, 32, 3, stride=2)
        blocks, cin = [], 32
        for t, c, n, s in MOBILENET_V2:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, 1280, 1)
        self.bottleneck = nn.Linear(1280, STYLE_DIM)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        """style: (N, 3, H, W) RGB in 0..1 (trained at 256x256) -> (N, 100)."""
        x = self.blocks(F.relu6(self.stem(style)))
        x = F.relu6(self.head(x)).mean(dim=(2, 3))
        return self.bottleneck(x)


class StyleNorm(nn.Module):
    """Conditional instance norm whose scale and shift are linear maps of the style vector."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Linear(STYLE_DIM, channels)
        self.shift = nn.Linear(STYLE_DIM, channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return conditional_instance_norm(x, self.scale(style), self.shift(style), NORM_EPS, relu)


class NormConv(nn.Module):
    """Reflect-padded conv then style norm."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = ReflectConv(cin, cout, kernel)
        self.norm = StyleNorm(cout)

    def forward(self, x: torch.Tensor, style: torch.Tensor, relu: bool = False) -> torch.Tensor:
        return self.norm(self.conv(x), style, relu)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = NormConv(channels, channels, 3)
        self.conv2 = NormConv(channels, channels, 3)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x, style, relu=True), style)


class StyleTransformer(nn.Module):
    """Contract (9x9, two stride-2 3x3), five residual blocks, expand (two nearest-upsample
    3x3, a 9x9), sigmoid. Every conv after the contraction is followed by a style norm."""

    def __init__(self) -> None:
        super().__init__()
        self.contract = nn.ModuleList([ReflectConv(3, 8, 9), ReflectConv(8, 16, 3, stride=2), ReflectConv(16, 32, 3, stride=2)])
        self.residual = nn.ModuleList([ResidualBlock(32) for _ in range(5)])
        self.expand = nn.ModuleList([NormConv(32, 16, 3), NormConv(16, 8, 3), NormConv(8, 3, 9)])

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """content: (N, 3, H, W) in 0..1, any size; style: (N, 100) -> (N, 3, H, W) in 0..1."""
        x, (h, w) = pad_to_multiple(content, 4)
        for conv in self.contract:
            x = F.relu_(conv(x))
        for block in self.residual:
            x = block(x, style)
        x = self.expand[0](upsample2x(x), style, relu=True)
        x = self.expand[1](upsample2x(x), style, relu=True)
        return torch.sigmoid(self.expand[2](x, style))[..., :h, :w]
