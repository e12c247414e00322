"""Test support: the arbitrary-style networks with the int8 graphs' activation fake-quantisation.

The shipped ONNX files quantise every activation to int8 with a per-tensor scale and zero
point, down to each step of TensorFlow's batchnorm decomposition inside the style norms. The
product computes in float; these subclasses run the same converted weights through the same
quantisation points in the graphs' own op order, so a parity test can hold our weights to
onnxruntime's reference QDQ semantics instead of to the float port's 0.02-0.04 distance.

Matching the op order is not enough. A conv output within float rounding of a quantisation
boundary rounds to either neighbour, and one such flip spreads: each int8 layer turns a one-step
change in its input into many in its output, and the norm statistics spread it over whole
channels. With torch's convolutions about 1e-5 of the first conv's outputs flip, and by the
last layer most pixels do: mean 0.02-0.04 from onnxruntime, no closer than the float port. So
the convolutions, global average pools and style-vector products below add in exactly the
order of onnxruntime's single-threaded MLAS kernels on x86-64 (see each function), and the
emulation is bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import functional as F

from models.style.arbitrary import InvertedResidual, NormConv, StylePredictor, StyleTransformer
from models.style.convert import Graph
from models.style.layers import upsample2x


class Quantizer:
    """QuantizeLinear then DequantizeLinear as the ONNX spec defines them, per activation.

    Each graph's QuantizeLinear names its output after the TensorFlow tensor it quantises
    (some with an `_int8` suffix); that name is the key. Division by the scale and round half
    to even match onnxruntime's kernel bit for bit, where multiplying by a reciprocal
    (torch.fake_quantize_per_tensor_affine) moves a few values across a rounding boundary.
    """

    def __init__(self, graph: Graph) -> None:
        self.params: dict[str, tuple[float, int]] = {}
        for node in graph.model.graph.node:
            if node.op_type == "QuantizeLinear":
                scale, zero = graph.values[node.input[1]], graph.values[node.input[2]]
                self.params[node.output[0].removesuffix("_int8")] = (float(scale), int(zero))

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        scale, zero = self.params[name]
        return torch.round(x / scale).add_(zero).clamp_(-128, 127).sub_(zero).mul_(scale)


def gemm_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Unpadded conv as MLAS's SGEMM computes it: over the im2col rows (channel, kernel row,
    kernel column), sequential fused multiply-adds within each block of K, the blocks' sums
    added to the output in turn, then the bias."""
    filters, _, kh, kw = weight.shape
    size = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    taps = weight.flatten(1)[:, :, None, None]
    k, block = taps.shape[1], _k_block(size[0] * size[1], taps.shape[1])
    out = None
    for start in range(0, k, block):
        acc = x.new_zeros(x.shape[0], filters, *size)
        for i in range(start, min(start + block, k)):
            c, row, col = i // (kh * kw), i // kw % kh, i % kw
            acc.addcmul_(_window(x[:, c:c + 1], row, col, stride, size), taps[:, i])
        out = acc if out is None else out.add_(acc)
    return out.add_(bias[:, None, None])


def _window(x: torch.Tensor, row: int, col: int, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """The inputs that kernel tap (row, col) meets at each output pixel: an im2col row, as a view."""
    return x[:, :, row:row + stride * (size[0] - 1) + 1:stride, col:col + stride * (size[1] - 1) + 1:stride]


def _k_block(n: int, k: int) -> int:
    """MLAS's K stride for an SGEMM with n output columns: 128, doubled for each halving of the
    128-column N stride that a narrow output allows (MlasSgemmOperation, MlasConvOperation)."""
    stride_n, stride_k = 128, 128
    while n < k and stride_n > 16 and stride_n // 2 >= n:
        stride_n, stride_k = stride_n // 2, stride_k * 2
    return stride_k


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
    """Unpadded depthwise conv as MLAS's M=1 SGEMM kernel computes it (AVX, no FMA): rounded
    products summed four taps at a time, then two, then one, each partial sum added to the output."""
    kh, kw = weight.shape[2:]
    size = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    products = [_window(x, row, col, stride, size) * weight[:, 0, row, col, None, None]
                for row in range(kh) for col in range(kw)]
    out, start = None, 0
    for group in _m1_groups(len(products)):
        part = products[start]
        for product in products[start + 1:start + group]:
            part = part + product
        out, start = part if out is None else out + part, start + group
    return out + bias[:, None, None]


def _m1_groups(k: int) -> list[int]:
    """How MlasSgemmKernelM1Avx splits K: fours, then a two and a one as the remainder needs."""
    return [4] * (k // 4) + [2] * (k % 4 // 2) + [1] * (k % 2)


def gemv(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """v @ weight.T + bias as MLAS's M=1 transposed-B kernel computes a 1x1 conv of a 1x1 image
    (AVX, no FMA): eight lane sums of rounded products, reduced in an order that depends on
    whether the output row falls in a block of four, two or one rows."""
    pad = -v.shape[1] % 8
    products = F.pad(v, (0, pad))[:, None, :] * F.pad(weight, (0, pad))[None]
    l0, l1, l2, l3, l4, l5, l6, l7 = _lane_sums(products, 8).unbind(2)
    by_four = (((l0 + l1) + l2) + l3) + (((l4 + l5) + l6) + l7)
    by_two = ((l0 + l2) + (l4 + l6)) + ((l1 + l3) + (l5 + l7))
    by_one = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
    rows = weight.shape[0]
    fours, twos = rows // 4 * 4, rows // 4 * 4 + rows % 4 // 2 * 2
    return torch.cat([by_four[:, :fours], by_two[:, fours:twos], by_one[:, twos:]], 1) + bias


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """GlobalAveragePool as MLAS computes it (sizes a multiple of 4): four lane sums in order,
    combined as (l0 + l2) + (l1 + l3), divided by the pixel count. Keeps dims."""
    lanes = _lane_sums(x.flatten(2), 4)
    total = (lanes[..., 0] + lanes[..., 2]) + (lanes[..., 1] + lanes[..., 3])
    return (total / float(x.shape[2] * x.shape[3]))[..., None, None]


def _lane_sums(x: torch.Tensor, width: int) -> torch.Tensor:
    """A SIMD accumulator of `width` lanes run along the last dim: lane j adds elements j, j + width,
    ... in order, rounding after each addition. Returns (..., width)."""
    steps = x.unflatten(-1, (-1, width))
    acc = steps[..., 0, :]
    for i in range(1, steps.shape[-2]):
        acc = acc + steps[..., i, :]
    return acc


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the emulation, thousands of small ops in sequence, on one thread: hand-offs between
    threads cost more than they save (25x slower on a busy two-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mirror_pad(i: int) -> str:
    """TensorFlow's name for the i-th MirrorPad in a scope."""
    return "MirrorPad" + (f"_{i}" if i else "")


class Int8StylePredictor(StylePredictor):
    """StylePredictor with arbitrary_predict.onnx's activation quantisation."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.q = Quantizer(graph)

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        q, m = self.q, "MobilenetV2/"
        x = q("style_image", style)
        x = q(f"{m}Conv/Relu6", F.relu6(gemm_conv(F.pad(x, self.stem.same_pads(x)), self.stem.weight, self.stem.bias, 2)))
        for i, block in enumerate(self.blocks):
            x = self._block(block, x, f"{m}expanded_conv" + (f"_{i}" if i else ""))
        x = q(f"{m}Conv_1/Relu6", F.relu6(gemm_conv(x, self.head.weight, self.head.bias)))
        x = q("bottleneck/Mean", global_mean(x).flatten(1))
        return q("mobilenet_conv/Conv/BiasAdd", gemv(x, self.bottleneck.weight, self.bottleneck.bias))

    def _block(self, block: InvertedResidual, x: torch.Tensor, scope: str) -> torch.Tensor:
        y = x
        if block.expand is not None:
            y = self.q(f"{scope}/expand/Relu6", F.relu6(gemm_conv(y, block.expand.weight, block.expand.bias)))
        dw = block.depthwise
        y = depthwise_conv(F.pad(y, dw.same_pads(y)), dw.weight, dw.bias, dw.stride[0])
        y = self.q(f"{scope}/depthwise/Relu6", F.relu6(y))
        y = self.q(f"{scope}/project/BatchNorm/FusedBatchNormV3", gemm_conv(y, block.project.weight, block.project.bias))
        return self.q(f"{scope}/add", x + y) if block.residual else y


class Int8StyleTransformer(StyleTransformer):
    """StyleTransformer with arbitrary_transform.onnx's activation quantisation, at sizes that
    are a multiple of 4 (the graph's own is 384 px)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.q = Quantizer(graph)
        self.eps = float(graph.value("StyleNorm/batchnorm/add/y").reshape(-1)[0])  # int8 too: 127 * scale

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        q, t = self.q, "transformer/"
        style = q("mobilenet_conv/Conv/BiasAdd", style)
        x = content
        for i, conv in enumerate(self.contract):
            x = q(f"{t}contract/conv{i + 1}/Relu", F.relu(self._conv(conv, x, f"{t}contract/{_mirror_pad(i)}")))
        for r, block in enumerate(self.residual):
            scope = f"{t}residual/residual{r + 1}"
            y = self._norm_conv(block.conv1, x, style, f"{scope}/MirrorPad", f"{scope}/conv1", relu=True)
            y = self._norm_conv(block.conv2, y, style, f"{scope}/MirrorPad_1", f"{scope}/conv2")
            x = q(f"{scope}/add", x + y)
        for i, layer in enumerate(self.expand):
            scope = f"{t}expand/conv{i + 1}"
            x = upsample2x(x) if i < 2 else x
            x = self._norm_conv(layer, x, style, f"{scope}/MirrorPad", f"{scope}/conv", relu=i < 2)
        return q(f"{t}expand/conv3/conv/Sigmoid", torch.sigmoid(x))

    def _conv(self, conv: torch.nn.Conv2d, x: torch.Tensor, pad_name: str) -> torch.Tensor:
        """The graph pads explicitly (MirrorPad), quantises the padded tensor, then convolves unpadded."""
        x = self.q(pad_name, F.pad(x, (conv.kernel_size[0] // 2,) * 4, mode="reflect"))
        return gemm_conv(x, conv.weight, conv.bias, conv.stride[0])

    def _norm_conv(self, layer: NormConv, x: torch.Tensor, style: torch.Tensor, pad_name: str, scope: str,
                   relu: bool = False) -> torch.Tensor:
        """Conv, then the style norm in TensorFlow's batchnorm decomposition, every step quantised:
        mul = gamma * rsqrt(var + eps); out = x * mul + (beta - mean * mul)."""
        q, n, params = self.q, f"{scope}/StyleNorm/", f"style_params/{scope}/StyleNorm/"
        gamma = q(f"{params}Conv_1/BiasAdd", gemv(style, layer.norm.scale.weight, layer.norm.scale.bias))[:, :, None, None]
        beta = q(f"{params}Conv/BiasAdd", gemv(style, layer.norm.shift.weight, layer.norm.shift.bias))[:, :, None, None]
        x = q(f"{scope}/Conv2D", self._conv(layer.conv, x, pad_name))
        mean = q(f"{n}moments/mean", global_mean(x))
        squares = q(f"{n}moments/SquaredDifference", (x - mean) * (x - mean))
        var = q(f"{n}batchnorm/add", q(f"{n}moments/variance", global_mean(squares)) + self.eps)
        mul = q(f"{n}batchnorm/mul", q(f"{n}batchnorm/Rsqrt", 1 / torch.sqrt(var)) * gamma)
        sub = q(f"{n}batchnorm/sub", beta - q(f"{n}batchnorm/mul_2", mean * mul))
        y = q(f"{n}batchnorm/mul_1", x * mul) + sub
        return q(f"{scope}/Relu", F.relu(y)) if relu else q(f"{n}batchnorm/add_1", y)
