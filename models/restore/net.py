"""/fix's deblurring net, KernelDeblurNet: it estimates the blur, undoes it exactly and lets a
compact NAFNet-style U-Net (Chen et al. 2022) refine the result.

The blocks keep NAFNet's choices that make small restoration nets train well (LayerNorm,
SimpleGate instead of activations, learnable residual scales) but drop its channel attention:
that pools over the whole input, so a tile would see different statistics than the full photo
and tiled inference would no longer match whole-image inference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.restore import fourier, kernel
from models.restore.tiling import Tiling


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
    """U-Net of NAF blocks from `inputs` to `outputs` channels."""

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
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(c) for _ in range(n)]))
        self.multiple = 2 ** len(enc_blocks)
        nn.init.zeros_(self.ending.weight)  # starts as "no change": the input passes through untouched
        nn.init.zeros_(self.ending.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            feat = decoder(up(feat) + skip)
        return self.ending(feat)[..., :h, :w]


WIENER_BALANCES = (0.01, 0.05)  # a crisp but noisy and a smooth deconvolution: the refinement takes from both
DETAIL_GAIN = 10.0  # what the deconvolutions add to the blurred image is small: scaled, the U-Net learns to use it
# ten times faster (its first layer's weights for it start at zero, and Adam moves weights at one rate)


def deconvolve(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each NCHW image Wiener-deconvolved by its own kernel at each of WIENER_BALANCES: (N, 3 * 2, H, W)."""
    balances = torch.tensor(WIENER_BALANCES, device=image.device).expand(len(image), -1)
    return fourier.wiener(image, kernels, balances).clamp(-0.25, 1.25).to(image.dtype)


class KernelDeblurNet(nn.Module):
    """Blind deblurring in three steps, only the last one learned:

    1. estimate each input's blur kernel (`kernel.estimate`: coarse to fine, no weights);
    2. deconvolve it exactly, in the Fourier domain, twice (`deconvolve`);
    3. a U-Net sees the blurred image and what each deconvolution adds to it, and predicts a
       residual on the blurred image: it removes ringing and noise, and falls back to plain sharpening where
       the kernel is wrong.

    One kernel per input image: /fix feeds it 512 px tiles (estimation needs area), so blur that
    varies across a photo gets one estimate per tile, blended by the tiling. The U-Net's first
    layer sees 9 channels (the image and both deconvolutions' detail); its MIDDLE_BLOCKS run at
    1/16 of the resolution, so depth there is cheap on a CPU.
    """

    tiling = {"cpu": Tiling(512, 64, 2), "cuda": Tiling(512, 64, 16)}
    MIDDLE_BLOCKS = 8

    def __init__(self) -> None:
        super().__init__()
        self.refine = UNet(3 + 3 * len(WIENER_BALANCES), 3, 16, (1, 1, 2, 4), self.MIDDLE_BLOCKS, (1, 1, 1, 1))

    def correct(self, image: torch.Tensor, deconvolved: torch.Tensor) -> torch.Tensor:
        """Step 3 alone, for training on crops whose deconvolutions were made on a larger area."""
        detail = DETAIL_GAIN * (deconvolved - image.repeat(1, len(WIENER_BALANCES), 1, 1))
        return image + self.refine(torch.cat([image, detail], 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        kernels = kernel.estimate(image.mean(1, keepdim=True))
        return self.correct(image, deconvolve(image, kernels))


def from_state(state: dict[str, torch.Tensor]) -> KernelDeblurNet:
    """A KernelDeblurNet with these weights, for inference.

    Weights saved with fewer middle blocks get the others as identities (a NAFBlock's residual
    scales start at zero), so they compute exactly what they were trained to.
    """
    state = {k: v.float() for k, v in state.items()}
    net = KernelDeblurNet()
    fresh = net.state_dict()
    missing, unknown = fresh.keys() - state.keys(), state.keys() - fresh.keys()
    if unknown or any(not key.startswith("refine.middle.") for key in missing):
        raise ValueError(f"not KernelDeblurNet weights: unknown {sorted(unknown)[:3]}, missing {sorted(missing)[:3]}")
    net.load_state_dict({**fresh, **state})
    return net.eval()
