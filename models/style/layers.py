"""Building blocks shared by both style networks (Dumoulin et al. 2017; Ghiasi et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def conditional_instance_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float,
                              relu: bool = False) -> torch.Tensor:
    """Instance norm whose scale and shift come per sample from the style: gamma, beta are (N, C).

    Inference only: it normalises `x` in place (a fresh conv output), since at 1024 px the
    allocations of an out-of-place version cost more than the arithmetic. Statistics are taken
    in float32 even under autocast: a half-precision variance loses the style.
    """
    dtype = x.dtype
    x = x.float()
    x = x.sub_(x.mean((2, 3), keepdim=True))
    var = _sum_of_squares(x).div_(x.shape[2] * x.shape[3])
    scale = gamma.float()[:, :, None, None] * torch.rsqrt(var + eps)
    x = x.mul_(scale).add_(beta.float()[:, :, None, None])
    return (x.relu_() if relu else x).to(dtype)


def _sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel sum of squares as (N, C, 1, 1), by the fastest path for the layout."""
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last) or c == 1:
        return torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).square_()
    rows = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: pixels x channels
    total = torch.zeros(n, c, dtype=x.dtype, device=x.device)
    for chunk in rows.split(max(1, (1 << 19) // c), dim=1):  # squares of ~2 MB at a time stay in cache
        total += chunk.square().sum(1)
    return total[:, :, None, None]


def reflect_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, pad: int) -> torch.Tensor:
    """conv2d of the reflect-padded input, without materialising that input.

    The conv runs once with zero padding; only output rows and columns whose window reaches
    the padding are then recomputed from thin reflect-padded slabs. At 1024 px this saves a
    full copy of the activations per layer, which costs more than the border arithmetic.
    """
    k = weight.shape[-1]
    h, w = x.shape[-2:]
    if min(h, w) < 4 * k:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, bias, stride)
    out = F.conv2d(x, weight, bias, stride, padding=pad)
    out_h, out_w = out.shape[-2:]
    near = -(-pad // stride)  # first output row/col whose window lies inside the image
    far_h, far_w = (h - k + pad) // stride + 1, (w - k + pad) // stride + 1  # first ones that reach past the end

    def border(slab: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
        # Thin slabs run in the weights' own precision: under bf16 autocast, oneDNN's AMX kernels
        # return NaN for some of these shapes (seen: a 130x3 channels-last slab at stride 2).
        with torch.autocast(slab.device.type, enabled=False):
            return F.conv2d(F.pad(slab.to(weight.dtype), pads, mode="reflect"), weight, bias, stride)

    span = max((near - 1) * stride + k - pad, pad + 1)  # input rows/cols the leading border outputs read
    out[..., :near, :] = border(x[..., :span, :], (pad, pad, pad, 0))[..., :near, :]
    out[..., :, :near] = border(x[..., :, :span], (pad, 0, pad, pad))[..., :, :near]
    back = -(-(pad + 1) // stride)  # extra outputs recomputed so each trailing slab is thick enough to reflect
    start_h, start_w = (far_h - back) * stride - pad, (far_w - back) * stride - pad
    out[..., far_h:, :] = border(x[..., start_h:, :], (pad, pad, 0, pad))[..., back:back + out_h - far_h, :]
    out[..., :, far_w:] = border(x[..., :, start_w:], (0, pad, pad, pad))[..., :, back:back + out_w - far_w]
    return out


class ReflectConv(nn.Conv2d):
    """Convolution after reflection padding of (kernel - 1) / 2, as both originals use."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__(cin, cout, kernel, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reflect_conv2d(x, self.weight, self.bias, self.stride[0], self.kernel_size[0] // 2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


MIN_SIDE = 16  # after two stride-2 convs 4 px remain, enough for every reflect padding inside


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W up to a multiple (the nets halve twice and double twice) and to at least
    MIN_SIDE, so a thin image (2048x4 after downscaling) runs too. Reflection, as the networks
    were trained with, where the side is long enough to reflect; edge replication where not."""
    h, w = x.shape[-2:]
    ph, pw = max(-h % multiple, MIN_SIDE - h), max(-w % multiple, MIN_SIDE - w)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return x, (h, w)
