"""The deblurring nets, built from compact NAFNet-style U-Nets (Chen et al. 2022).

DeblurNet (shipped) is one U-Net that predicts a residual; WienerDeblurNet (second generation)
estimates the blur, deconvolves it exactly and refines the result (see its docstring).

The blocks keep NAFNet's choices that make small restoration nets train well (LayerNorm,
SimpleGate instead of activations, learnable residual scales) but drop its channel attention:
that pools over the whole input, so a tile would see different statistics than the full photo
and tiled inference would no longer match whole-image inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from models.restore import fourier


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """Depthwise-conv mixing then a gated feed-forward, each a scaled residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.dwconv = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.project = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.ffn_in = nn.Conv2d(c, 2 * c, 1)
        self.ffn_out = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(simple_gate(self.dwconv(self.expand(self.norm1(x)))))
        x = x + self.beta * y
        y = self.ffn_out(simple_gate(self.ffn_in(self.norm2(x))))
        return x + self.gamma * y


class UNet(nn.Module):
    """U-Net of NAF blocks from `inputs` to `outputs` channels; also returns its bottleneck, pooled."""

    def __init__(self, inputs: int, outputs: int, width: int, enc_blocks: tuple[int, ...], mid_blocks: int,
                 dec_blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.intro = nn.Conv2d(inputs, width, 3, padding=1)
        self.ending = nn.Conv2d(width, outputs, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = nn.ModuleList(), nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[NAFBlock(c) for _ in range(mid_blocks)])
        self.bottleneck = c
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.multiple = 2 ** len(enc_blocks)
        nn.init.zeros_(self.ending.weight)  # starts as "no change": the input passes through untouched
        nn.init.zeros_(self.ending.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
        feat = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            feat = encoder(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(feat)
        pooled = feat.mean((-2, -1))
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            feat = decoder(up(feat) + skip)
        return self.ending(feat)[..., :h, :w], pooled


class DeblurNet(UNet):
    """The first-generation net: one U-Net that predicts a residual on the RGB input (0..1)."""

    def __init__(self) -> None:
        super().__init__(3, 3, 16, (1, 1, 2, 4), 4, (1, 1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + super().forward(image)[0]


@dataclass
class Parts:
    """What WienerDeblurNet computed on the way: for training losses and for looking at."""

    latent: torch.Tensor  # (N, 1, H, W) the sharp grey image the kernel is fitted to
    raw_kernel: torch.Tensor  # (N, k, k) the least-squares kernel, before `fourier.clean_kernel`
    kernel: torch.Tensor  # (N, k, k) the estimated blur kernel
    balance: torch.Tensor  # (N,) the noise-to-signal weight of the Wiener filter
    deconvolved: torch.Tensor  # (N, 3, H, W) the Wiener result, before refinement
    restored: torch.Tensor  # (N, 3, H, W) the output


class WienerDeblurNet(nn.Module):
    """Blind deblurring with the deconvolution done exactly: estimate, invert, refine.

    1. A small U-Net sharpens the grey image into a latent edge map; the kernel that best maps it
       onto the blurred grey image is solved in closed form (`fourier.least_squares_kernel`).
    2. Wiener deconvolution with that kernel (`fourier.wiener`), its noise-to-signal balance
       predicted from the U-Net's pooled bottleneck.
    3. A second U-Net sees the blurred and the deconvolved image and predicts a residual on the
       latter: it removes ringing and noise, and falls back to the input where the kernel is wrong.

    One kernel per input image: /fix feeds 256 px tiles, so blur that varies across a photo gets
    one estimate per tile, blended by the tiling.
    """

    def __init__(self, width: int = 16, latent_width: int = 12) -> None:
        super().__init__()
        self.latent = UNet(1, 1, latent_width, (1, 1, 1, 2), 2, (1, 1, 1, 1))
        self.balance = nn.Linear(self.latent.bottleneck, 1)
        nn.init.zeros_(self.balance.weight)
        nn.init.constant_(self.balance.bias, math.log(3e-3))
        self.log_damping = nn.Parameter(torch.tensor(math.log(1e-3)))
        self.floor_logit = nn.Parameter(torch.tensor(math.log(0.05 / 0.95)))
        self.refine = UNet(6, 3, width, (1, 1, 1, 2), 2, (1, 1, 1, 1))

    def parts(self, image: torch.Tensor) -> Parts:
        grey = image.mean(1, keepdim=True)
        residual, pooled = self.latent(grey)
        latent = grey + residual
        raw_kernel = fourier.least_squares_kernel(latent, grey, self.log_damping.exp())
        kernel = fourier.clean_kernel(raw_kernel, torch.sigmoid(self.floor_logit))
        balance = self.balance(pooled.float()).squeeze(1).clamp(-12, 0).exp()
        deconvolved = fourier.wiener(image, kernel, balance).clamp(-0.25, 1.25)
        correction, _ = self.refine(torch.cat([image, deconvolved.to(image.dtype)], 1))
        return Parts(latent, raw_kernel, kernel, balance, deconvolved, deconvolved + correction.float())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.parts(image).restored


def from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    """The deblurring network whose weights these are (the shipped DeblurNet or a WienerDeblurNet), loaded."""
    net = WienerDeblurNet() if any(key.startswith("refine.") for key in state) else DeblurNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()
