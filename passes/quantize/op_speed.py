"""A per-CPU table of how fast each op the quantize pass touches runs in float and in QDQ INT8, and the
latency ratio it predicts for a candidate, so the latency gate times end to end only the close calls.

The table is measured once per CPU (model name and ISA flags, ``cpu.speed_key``) and onnxruntime version, in
about a second, and cached as JSON under the user's cache folder. Each entry times a chain of ``CHAIN`` identical
ops at a few sizes (batches of runs past ``latency.BATCH_FLOOR_S``, float and INT8 interleaved, the fastest of
``TABLE_SAMPLES`` batches): a chain, so the QuantizeLinear on its input and the DequantizeLinear on its output,
which a real model shares between neighbouring ops, weigh little. A candidate's INT8 nodes are priced from their
multiply-accumulates (MACs, from the float model's inferred shapes at the timing samples' input shapes),
interpolated in log-log space between the measured sizes and extrapolated per MAC beyond them.

The ratio predicted is that of the INT8 convolutions and matrix products alone (their INT8 time over their
float time). The rest of the model runs in float either way and only draws the whole model's ratio towards 1,
so a prediction clearly below (or above) 1 holds for the whole model too (``latency.assess``). The light ops
quantized beside them (Relu, Clip, pooling, Gather) are left out: their cost is small next to the
convolutions and matrix products they sit between. A candidate with one of those whose shapes are not known
(or none at all) gets no prediction.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import cpu

TABLE_VERSION = 1
# Ops per timed chain (see the module docstring).
CHAIN = 4
TABLE_SAMPLES = 5
# Measuring stops adding sizes once this much time has gone; a kind with no size measured is left out.
TABLE_BUDGET_S = 3.0
# The ops priced: where a model's time goes. Other INT8 ops (Relu, Clip, pooling, Gather) are left out.
WEIGHTED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_ACTIVATION_SCALE = 0.05

# Per kind, the sizes measured: (channels, height) for convolutions, (rows, inner) for matrix products.
SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "Conv": ((16, 8), (32, 16), (64, 28)),
    "DepthwiseConv": ((32, 8), (64, 16), (96, 28)),
    "ConvTranspose": ((16, 8), (32, 16), (48, 24)),
    "MatMul": ((8, 64), (32, 128), (128, 256)),
    "Gemm": ((8, 64), (32, 128), (128, 256)),
}


@dataclasses.dataclass(frozen=True)
class Point:
    """One op of a kind at one size: its MACs and seconds per run in float and in INT8."""

    macs: float
    float_s: float
    int8_s: float


@dataclasses.dataclass
class SpeedTable:
    key: str
    points: dict[str, list[Point]]  # kind → points by increasing MACs
    seconds: float = 0.0  # measuring time (0 when loaded from the cache)
    cached: bool = False

    def cost(self, kind: str, macs: float) -> tuple[float, float] | None:
        """Predicted (float, INT8) seconds of one ``kind`` op doing ``macs`` multiply-accumulates."""
        points = self.points.get(kind)
        if not points or macs <= 0:
            return None
        if macs <= points[0].macs:  # below the smallest size: the per-op overhead dominates
            return points[0].float_s, points[0].int8_s
        if macs >= points[-1].macs:  # above the largest: time per MAC of the largest
            scale = macs / points[-1].macs
            return points[-1].float_s * scale, points[-1].int8_s * scale
        upper = bisect.bisect_left([p.macs for p in points], macs)
        low, high = points[upper - 1], points[upper]
        share = math.log(macs / low.macs) / math.log(high.macs / low.macs)
        return (
            math.exp(math.log(low.float_s) + share * math.log(high.float_s / low.float_s)),
            math.exp(math.log(low.int8_s) + share * math.log(high.int8_s / low.int8_s)),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": TABLE_VERSION,
                "key": self.key,
                "points": {kind: [dataclasses.asdict(p) for p in pts] for kind, pts in self.points.items()},
            },
            indent=1,
        )


def table_key() -> str:
    """The CPU (model name, ISA flags) and the onnxruntime version: what the kernels' speed depends on."""
    return f"{cpu.speed_key()}|onnxruntime {onnxruntime.__version__}"


def cache_folder() -> Path:
    """``$ONNXKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxkit``, else ``~/.cache/onnxkit``."""
    explicit = os.environ.get("ONNXKIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxkit"


def load_or_measure(folder: Path | None = None, key: str | None = None) -> SpeedTable:
    """This CPU's table from the cache, or measured now and stored (a cache that cannot be written is skipped)."""
    key = key or table_key()
    path = (folder or cache_folder()) / "op_speed" / f"{_digest(key)}.json"
    try:
        data = json.loads(path.read_text())
        if data.get("version") == TABLE_VERSION and data.get("key") == key:
            points = {kind: [Point(**p) for p in pts] for kind, pts in data["points"].items()}
            return SpeedTable(key, points, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    table = measure(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(table.to_json())
        partial.replace(path)  # whole or nothing: a reader never sees half a table
    except OSError:
        pass
    return table


def measure(key: str, budget_s: float = TABLE_BUDGET_S) -> SpeedTable:
    """Time every kind at every size, float and INT8 interleaved, within ``budget_s`` (sizes in increasing
    order across kinds, so a tight budget still leaves every kind its small sizes)."""
    from onnxkit.passes.quantize.latency import time_batches

    started = time.perf_counter()
    points: dict[str, list[Point]] = {}
    for size_index in range(max(len(s) for s in SIZES.values())):
        for kind, sizes in SIZES.items():
            if size_index >= len(sizes) or time.perf_counter() - started > budget_s:
                continue
            float_model, int8_model, feed, macs = _chain(kind, *sizes[size_index])
            try:
                float_s, int8_s = time_batches([float_model, int8_model], feed, TABLE_SAMPLES)
            except Exception:  # an op this onnxruntime cannot run in INT8 is left out of the table
                continue
            points.setdefault(kind, []).append(Point(macs, float_s / CHAIN, int8_s / CHAIN))
    return SpeedTable(key, points, seconds=time.perf_counter() - started)


def _digest(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:24]


# -- the timed chains ---------------------------------------------------------------------------------------


def _chain(kind: str, size: int, extent: int) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any], float]:
    """Float and QDQ INT8 models chaining ``CHAIN`` ``kind`` ops, one input for both, and one op's MACs."""
    rng = np.random.default_rng(0)
    if kind in ("MatMul", "Gemm"):
        shape, weight_shape = [size, extent], [extent, extent]
        macs = float(size * extent * extent)
        attrs: dict[str, Any] = {"transB": 1} if kind == "Gemm" else {}
    else:
        depthwise = kind == "DepthwiseConv"
        shape = [1, size, extent, extent]
        weight_shape = [size, 1 if depthwise else size, 3, 3]
        macs = float(size * (1 if depthwise else size) * 9 * extent * extent)
        attrs = {"pads": [1, 1, 1, 1], "group": size if depthwise else 1}
    op_type = "Conv" if kind == "DepthwiseConv" else kind
    bias_size = weight_shape[0] if kind != "MatMul" else 0
    weights = [(rng.standard_normal(weight_shape) * 0.1).astype(np.float32) for _ in range(CHAIN)]
    biases = [(rng.standard_normal(bias_size) * 0.1).astype(np.float32) for _ in range(CHAIN)] if bias_size else []
    feed = {"x": rng.standard_normal(shape).astype(np.float32)}
    return (
        _model(op_type, shape, weights, biases, attrs, quantized=False),
        _model(op_type, shape, weights, biases, attrs, quantized=True),
        feed,
        macs,
    )


def _model(
    op_type: str,
    shape: list[int],
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    attrs: Mapping[str, Any],
    quantized: bool,
) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    scale = helper.make_tensor("a_scale", TensorProto.FLOAT, [], [_ACTIVATION_SCALE])
    zero = helper.make_tensor("a_zero", TensorProto.UINT8, [], [128])
    if quantized:
        initializers += [scale, zero]
    current = "x"
    for index, weight in enumerate(weights):
        inputs = [current, f"w{index}"]
        if quantized:
            nodes += _qdq(current, f"{current}_dq")
            inputs[0] = f"{current}_dq"
            weight_scale = float(np.abs(weight).max() / 127) or 1.0
            initializers += [
                numpy_helper.from_array(np.round(weight / weight_scale).astype(np.int8), f"w{index}_q"),
                helper.make_tensor(f"w{index}_scale", TensorProto.FLOAT, [], [weight_scale]),
            ]
            nodes.append(helper.make_node("DequantizeLinear", [f"w{index}_q", f"w{index}_scale"], [f"w{index}"]))
        else:
            initializers.append(numpy_helper.from_array(weight, f"w{index}"))
        if biases:
            inputs.append(f"b{index}")
            if quantized:
                bias_scale = _ACTIVATION_SCALE * weight_scale
                initializers += [
                    numpy_helper.from_array(np.round(biases[index] / bias_scale).astype(np.int32), f"b{index}_q"),
                    helper.make_tensor(f"b{index}_scale", TensorProto.FLOAT, [], [bias_scale]),
                ]
                nodes.append(helper.make_node("DequantizeLinear", [f"b{index}_q", f"b{index}_scale"], [f"b{index}"]))
            else:
                initializers.append(numpy_helper.from_array(biases[index], f"b{index}"))
        current = f"y{index}"
        nodes.append(helper.make_node(op_type, inputs, [current], **attrs))
    if quantized:
        nodes += _qdq(current, "y")
    else:
        nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes,
        f"{op_type}_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],  # every op of a chain keeps the shape
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _qdq(name: str, output: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("QuantizeLinear", [name, "a_scale", "a_zero"], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", "a_scale", "a_zero"], [output]),
    ]


# -- predicting a candidate --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    ratio: float  # INT8 time over float time of the INT8 nodes
    float_ms: float
    int8_ms: float
    nodes: int


class Predictor:
    """Predictions for the candidates of one float model: its shapes inferred once, the table loaded (or
    measured) on first use."""

    def __init__(self, float_model: onnx.ModelProto, sample: Mapping[str, Any], folder: Path | None = None) -> None:
        self.float_model, self.sample, self.folder = float_model, sample, folder
        self.table: SpeedTable | None = None
        self.shapes: dict[str, list[int]] | None = None

    def __call__(self, candidate: onnx.ModelProto) -> Prediction | None:
        if self.table is None:
            self.table = load_or_measure(self.folder)
        if self.shapes is None:
            self.shapes = inferred_shapes(self.float_model, self.sample)
        return predict(self.table, self.float_model, candidate, self.shapes)

    def describe(self) -> dict[str, Any] | None:
        if self.table is None:
            return None
        return {"key": self.table.key, "cached": self.table.cached, "measure_s": round(self.table.seconds, 3)}


def predict(
    table: SpeedTable, float_model: onnx.ModelProto, candidate: onnx.ModelProto, shapes: Mapping[str, list[int]]
) -> Prediction | None:
    """The INT8/FP32 latency ratio of ``candidate``'s INT8 convolutions and matrix products, or None where the
    table cannot price one of them (or there are none)."""
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in candidate.graph.node
        for a in n.attribute
    ):
        return None  # INT8 nodes inside Loop, If or Scan bodies are not priced: time end to end
    int8_nodes = _int8_nodes(candidate)
    names = {name for n in int8_nodes for name in (n.name, n.output[0]) if name}
    float_s = int8_s = 0.0
    priced = 0
    for node in float_model.graph.node:
        if node.op_type not in WEIGHTED_OP_TYPES or not {node.name, node.output[0]} & names:
            continue
        kind_macs = _kind_and_macs(node, shapes)
        cost = table.cost(*kind_macs) if kind_macs is not None else None
        if cost is None:
            return None
        float_s, int8_s, priced = float_s + cost[0], int8_s + cost[1], priced + 1
    if priced == 0 or priced != len(int8_nodes) or float_s <= 0:
        return None  # nothing to price, or INT8 nodes the float model does not name alike
    return Prediction(int8_s / float_s, float_s * 1000, int8_s * 1000, priced)


def _int8_nodes(candidate: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The main-graph convolutions and matrix products whose data and weight both come through DequantizeLinear:
    ORT runs those in INT8. (Other nodes reading a DequantizeLinear output run in float, as in the float model.)
    They are found in the float model by name or by output: node names may be empty, and a Relu folded into
    its Conv's output range gives the Conv the Relu's output."""
    dequantized = {n.output[0] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    return [
        n
        for n in candidate.graph.node
        if n.op_type in WEIGHTED_OP_TYPES
        and len(n.input) > 1
        and n.input[0] in dequantized
        and n.input[1] in dequantized
    ]


def inferred_shapes(model: onnx.ModelProto, sample: Mapping[str, Any]) -> dict[str, list[int]]:
    """Static shapes of the main graph's values with the inputs fixed to the sample's shapes (the weights are
    declared by shape only, so a large model's data is not copied)."""
    initializer_names = {i.name for i in model.graph.initializer}
    inputs = [
        helper.make_tensor_value_info(i.name, i.type.tensor_type.elem_type, list(np.shape(sample[i.name])))
        for i in model.graph.input
        if i.name not in initializer_names and i.name in sample
    ]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in model.graph.initializer]
    graph = helper.make_graph(model.graph.node, "shapes", inputs, [])
    skeleton = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton).graph
    except Exception:  # no shapes, no prediction: the gate times end to end
        return {}
    shapes: dict[str, list[int]] = {}
    for value in (*inferred.input, *inferred.value_info):
        tensor = value.type.tensor_type
        # No shape field: rank unknown (not a scalar), so no shape at all.
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            if all(d.HasField("dim_value") for d in tensor.shape.dim):
                shapes[value.name] = [d.dim_value for d in tensor.shape.dim]
    return shapes


def _kind_and_macs(node: onnx.NodeProto, shapes: Mapping[str, list[int]]) -> tuple[str, float] | None:
    """The table kind of ``node`` and its multiply-accumulates, or None when its shapes are unknown."""
    data, weight, output = (shapes.get(n) for n in (node.input[0], node.input[1], node.output[0]))
    if data is None or weight is None or output is None or not data or not weight:
        return None
    if node.op_type in ("MatMul", "Gemm"):
        transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        inner = data[-2] if transposed else data[-1]
        return node.op_type, float(np.prod(output) * inner)
    if len(data) < 2 or len(weight) < 2:
        return None
    if node.op_type == "ConvTranspose":
        return "ConvTranspose", float(np.prod(data) * np.prod(weight[1:]))
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    kind = "DepthwiseConv" if group > 1 and group == data[1] and weight[1] == 1 else "Conv"
    return kind, float(np.prod(output) * np.prod(weight[1:]))
