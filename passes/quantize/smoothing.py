"""SmoothQuant: move activation outliers into the weights before static quantization.

Transformer activations have a few channels hundreds of times larger than the rest (MiniLM's LayerNorm and
GELU outputs reach 30-50 where most values stay within ±2). One per-tensor INT8 scale has to cover those
channels, so every other channel gets only a few levels: MiniLM quantized whole reaches cosine 0.989, and 16-bit
activations with the same INT8 weights reach 0.999, so the loss is in the activations. SmoothQuant (Xiao et al.,
2023) divides each input channel ``j`` of a MatMul by ``s_j = max|X_j|^alpha / max|W_j,:|^(1-alpha)`` and multiplies
row ``j`` of the constant weight by the same ``s_j``: ``(X / s) · (s W) = X · W``, the float model is the same
up to rounding, and the activation's range shrinks while the weights, quantized per output channel, take part
of the outliers.

ONNX Runtime's ``extra_options={"SmoothQuant": True}`` needs neural-compressor 2.x (its ONNX adaptor, dropped in
3.x) and a calibration data reader, which this pass's streaming calibration and cache do not use; the transform
is short, so it is done here. Each smoothed activation gets one ``Mul`` by ``1/s`` in front of the MatMul/Gemm
nodes that read it (shared by Q, K and V); it is not folded into the producer, since a LayerNorm's output
also feeds the residual Add, which must see it unscaled. The Mul runs in float, elementwise, and the latency
gate times the result against the float model as it came.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxkit.passes.quantize.float_search import Verdict
from onnxkit.passes.quantize.report import brief
from onnxkit.passes.quantize.runtime import TensorTap

# Scales are kept within this factor of 1: a channel that is all but silent in the calibration data would
# otherwise get a scale that blows its weight row up past INT8's range for the other channels of that column.
MAX_SCALE = 1e4


@dataclasses.dataclass(frozen=True)
class Site:
    """An activation read by MatMul/Gemm nodes with constant 2-D weights that no other node reads."""

    activation: str
    nodes: tuple[onnx.NodeProto, ...]


@dataclasses.dataclass(frozen=True)
class Smoothing:
    """The smoothed model and what was done, for the report."""

    model: onnx.ModelProto
    alpha: float
    activations: int
    nodes: int
    types: dict[str, int]  # element types of the tensors the Mul nodes write
    multiplies: tuple[onnx.NodeProto, ...] = ()
    divisors: tuple[onnx.TensorProto, ...] = ()

    def scaling_model(self) -> onnx.ModelProto:
        """The Mul nodes alone: each smoothed activation in, its scaled twin out (to calibrate those on the
        activations already seen, without the model around them)."""
        graph = onnx.helper.make_graph(
            list(self.multiplies),
            "smoothing",
            [onnx.helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None) for n in self.multiplies],
            [onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in self.multiplies],
            list(self.divisors),
        )
        return onnx.helper.make_model(
            graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version
        )

    def describe(self) -> str:
        return (
            f"SmoothQuant alpha={self.alpha:g}: {self.activations} activations scaled per channel into the weights "
            f"of {self.nodes} MatMul/Gemm nodes ({self.activations} Mul nodes added)"
        )


def _weight_rows_axis(node: onnx.NodeProto) -> int | None:
    """The axis of the constant weight that runs over the activation's channels (None: not smoothable)."""
    if node.op_type == "MatMul":
        return 0
    if node.op_type == "Gemm":
        attributes = {a.name: a.i for a in node.attribute}
        if attributes.get("transA", 0):
            return None  # the activation's channels are its rows: scaling them is not a per-channel Mul
        return 1 if attributes.get("transB", 0) else 0
    return None


def find_sites(proto: onnx.ModelProto, candidates: Iterable[str], types: Mapping[str, int]) -> list[Site]:
    """Float activations whose readers among ``candidates`` (node names) multiply them by constant 2-D float
    weights, grouped by activation. A weight read by any other node is left alone (scaling it would change
    that node too), and so is a node whose first input is a constant."""
    wanted = set(candidates)
    initializers = {t.name: t for t in proto.graph.initializer}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    grouped: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        if node.name not in wanted or len(node.input) < 2 or _weight_rows_axis(node) is None:
            continue
        activation, weight = node.input[0], initializers.get(node.input[1])
        if (
            activation in initializers
            or types.get(activation) != onnx.TensorProto.FLOAT
            or weight is None
            or weight.data_type != onnx.TensorProto.FLOAT
            or len(weight.dims) != 2
            or readers[weight.name] != 1
        ):
            continue
        grouped.setdefault(activation, []).append(node)
    return [Site(activation, tuple(nodes)) for activation, nodes in grouped.items()]


@dataclasses.dataclass
class ActivationStats:
    """What one pass over the calibration samples saw of the activations to smooth."""

    maxima: dict[str, np.ndarray]  # largest finite magnitude per channel (the last axis)
    # Each sample's activations, kept while they fit ``keep_bytes``: the smoothed Mul outputs are these times
    # constants, so their ranges come from them without running the model again. None: too large to keep.
    values: list[dict[str, np.ndarray]] | None


class ActivationObserver:
    """Each activation's per-channel maxima, sample by sample, and the values while they fit ``keep_bytes``;
    fed by its own pass over the model (``observe``) or by calibration's, which taps these tensors anyway."""

    def __init__(self, activations: Sequence[str], keep_bytes: int = 0) -> None:
        self.activations = list(activations)
        self.keep_bytes = keep_bytes
        self.maxima: dict[str, np.ndarray] = {}
        self.values: list[dict[str, np.ndarray]] | None = []
        self.kept_bytes = 0
        self.samples = 0

    def add(self, outputs: Mapping[str, np.ndarray]) -> None:
        """One sample's tensors (a superset of the activations is fine)."""
        seen = {name: outputs[name] for name in self.activations if name in outputs}
        self.samples += 1
        if self.values is not None:
            self.kept_bytes += sum(value.nbytes for value in seen.values())
            if self.kept_bytes <= self.keep_bytes:
                self.values.append(seen)
            else:
                self.values = None
        for name, value in seen.items():
            if value.ndim == 0 or value.size == 0:
                continue
            magnitude = np.abs(value.reshape(-1, value.shape[-1]).astype(np.float32))
            channel = np.where(np.isfinite(magnitude), magnitude, 0.0).max(axis=0)
            self.maxima[name] = channel if name not in self.maxima else np.maximum(self.maxima[name], channel)

    def stats(self) -> ActivationStats:
        return ActivationStats(self.maxima, self.values)


def observe(
    proto: onnx.ModelProto,
    activations: Sequence[str],
    types: Mapping[str, int],
    samples: Iterable[Mapping[str, Any]],
    keep_bytes: int = 0,
) -> ActivationStats:
    """Each activation's per-channel maxima over ``samples``, streamed, and the values while they fit."""
    observer = ActivationObserver(activations, keep_bytes)
    for outputs in TensorTap(proto, activations, types).stream(samples):
        observer.add(outputs)
    return observer.stats()


def scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel scales; 1 where either side is all zero."""
    usable = (activation_max > 0) & (weight_max > 0)
    safe_activation = np.where(usable, activation_max, 1.0)
    safe_weight = np.where(usable, weight_max, 1.0)
    raw = np.where(usable, safe_activation**alpha / safe_weight ** (1.0 - alpha), 1.0)
    return np.clip(raw, 1.0 / MAX_SCALE, MAX_SCALE).astype(np.float32)


def smooth(
    proto: onnx.ModelProto, sites: Sequence[Site], maxima: Mapping[str, np.ndarray], alpha: float
) -> Smoothing | None:
    """A copy of ``proto`` with each site's activation divided by its scales and its weights' rows multiplied
    by them; None when no site has channel statistics that match its weights."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    initializers = {t.name: t for t in model.graph.initializer}
    nodes_by_name = {n.name: n for n in model.graph.node}
    value_types = {v.name: v for v in (*model.graph.input, *model.graph.value_info)}
    multiplies: list[tuple[int, onnx.NodeProto]] = []
    divisors: list[onnx.TensorProto] = []
    written: dict[str, int] = {}
    smoothed_nodes = 0
    for site in sites:
        channels = maxima.get(site.activation)
        nodes = [nodes_by_name[n.name] for n in site.nodes]
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
        axes = [axis for n in nodes if (axis := _weight_rows_axis(n)) is not None]  # all: find_sites checked
        if channels is None or any(w.shape[axis] != channels.size for w, axis in zip(weights, axes)):
            continue
        weight_max = np.max([np.abs(w).max(axis=1 - axis) for w, axis in zip(weights, axes)], axis=0)
        scale = scales(channels, weight_max, alpha)
        divisor = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{site.activation}_smooth_scale")
        smoothed = f"{site.activation}_smoothed"
        model.graph.initializer.append(divisor)
        divisors.append(divisor)
        for node, weight, axis in zip(nodes, weights, axes):
            shape = (-1, 1) if axis == 0 else (1, -1)
            initializers[node.input[1]].CopyFrom(
                numpy_helper.from_array((weight * scale.reshape(shape)).astype(np.float32), node.input[1])
            )
            node.input[0] = smoothed
        first = min(i for i, n in enumerate(model.graph.node) if any(n is node for node in nodes))
        multiplies.append(
            (
                first,
                onnx.helper.make_node(
                    "Mul", [site.activation, divisor.name], [smoothed], name=f"{site.activation}_smooth"
                ),
            )
        )
        written[smoothed] = onnx.TensorProto.FLOAT
        if site.activation in value_types:
            info = onnx.ValueInfoProto()
            info.CopyFrom(value_types[site.activation])
            info.name = smoothed
            model.graph.value_info.append(info)
        smoothed_nodes += len(nodes)
    if not multiplies:
        return None
    for index, node in sorted(multiplies, key=lambda item: item[0], reverse=True):  # later first: indices hold
        model.graph.node.insert(index, node)
    return Smoothing(
        model, alpha, len(multiplies), smoothed_nodes, written, tuple(n for _, n in multiplies), tuple(divisors)
    )


def noise(verdict: Verdict) -> float:
    """How far a candidate's outputs are from float's, to compare two candidates: the noise excess over the
    target (cosine, SQNR), else 0 for a pass and infinity for a failure (top-1, a user metric)."""
    if verdict.excess is not None:
        return verdict.excess
    return 0.0 if verdict.passed else math.inf


def summary(verdict: Verdict) -> str:
    """The first measurement of a verdict, in brief: "12 samples, cosine 0.9964, SQNR 23.0 dB"."""
    detail = verdict.detail
    if isinstance(detail, Mapping) and detail:
        return brief(next(iter(detail.values())))
    return "passed" if verdict.passed else "failed"
