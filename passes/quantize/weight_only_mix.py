"""Weight-only mode's INT4 mix: which nodes leave 4 bits when quantizing every one misses the parity target.

A node leaves 4 bits for the next precision ORT offers it: a MatMul goes to 8-bit MatMulNBits, an embedding
table (Gather, which ORT quantizes to 4 bits only) stays float. The search moves nodes up in the order this
module ranks them: the most output noise per byte their 4-bit weights save first.

Each node's noise is measured, not estimated: its own output error predicts the model's badly (on MiniLM-L6
the rank correlation between a MatMul's relative output error and what its 4-bit weights alone do to the
sentence embedding is 0.05; a value projection's error reaches the output through the residual stream, a
query's is damped by the softmax). So one "switchboard" model holds both versions of every node, the float
node and the quantized nodes ORT wrote for it, mixed as ``float + switch · (quantized - float)`` with one scalar
``switch`` input per node. One session, runs with one switch at 1 and the rest at 0, give each node's effect on
the model's outputs alone, through ORT's own kernels (``accuracy_level`` included), at the price of a few
model runs per node.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxkit.passes.quantize.runtime import make_session

SWITCH_SUFFIX = "/weight_only_switch"


@dataclasses.dataclass(frozen=True)
class NodeNoise:
    """One node's 4-bit weights alone: the output noise they add and the bytes they save over the next
    precision up (8 bits for a MatMul, float for a table)."""

    node: str
    op_type: str
    noise: float  # output noise power over signal power, mean over the samples (all outputs together)
    bytes_saved: int

    @property
    def noise_per_byte(self) -> float:
        return self.noise / max(self.bytes_saved, 1)


def rank(
    float_proto: onnx.ModelProto,
    quantized: onnx.ModelProto,
    samples: Sequence[Mapping[str, Any]],
    bits: int,
    budget_s: float | None = None,
) -> list[NodeNoise]:
    """The nodes ``quantized`` (every candidate at ``bits``) quantized, most output noise per byte saved first.
    Nodes the switchboard cannot hold (a node without a name, ORT's nodes for it not found) come first, as the
    most sensitive: the search then moves them up before any measured one. ``budget_s`` bounds the time the
    runs take by measuring on fewer of ``samples`` (never fewer than one)."""
    weights = {t.name: t for t in float_proto.graph.initializer}
    switchboard, switched, unmeasured = _switchboard(float_proto, quantized, weights, bits)
    noise = _measure(switchboard, switched, samples, budget_s) if switched else {}
    nodes = {n.name: n for n in float_proto.graph.node}
    ranked = [
        NodeNoise(name, nodes[name].op_type, noise.get(name, float("inf")), _bytes_saved(nodes[name], weights))
        for name in [*unmeasured, *switched]
    ]
    return sorted(ranked, key=lambda n: n.noise_per_byte, reverse=True)


def _bytes_saved(node: onnx.NodeProto, weights: Mapping[str, onnx.TensorProto]) -> int:
    """Bytes 4-bit weights save over the node's next precision: half a byte per weight against 8 bits for a
    MatMul, the float element's size less half a byte for a table (block scales are the same order both ways)."""
    weight = weights[node.input[1] if node.op_type == "MatMul" else node.input[0]]
    count = int(np.prod(weight.dims))
    if node.op_type == "MatMul":
        return count // 2
    item_size = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type).itemsize
    return int(count * (item_size - 0.5))


def _switchboard(
    float_proto: onnx.ModelProto, quantized: onnx.ModelProto, weights: Mapping[str, onnx.TensorProto], bits: int
) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The float model with each quantized node's ORT rewrite beside it behind a switch input; the names of
    the switched nodes, and of the quantized nodes left out."""
    by_prefix: dict[str, list[onnx.NodeProto]] = {}
    for node in quantized.graph.node:
        if node.domain == "com.microsoft" and node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            by_prefix[node.name] = []
    for node in quantized.graph.node:  # the rewrite and ORT's reshape helpers, named after it
        owner = next((p for p in by_prefix if node.name == p or node.name.startswith(p + "_")), None)
        if owner is not None:
            by_prefix[owner].append(node)
    quantized_weights = {t.name: t for t in quantized.graph.initializer}
    values = {v for n in float_proto.graph.node for v in n.output} | {i.name for i in float_proto.graph.input}

    board = onnx.ModelProto()
    board.CopyFrom(float_proto)
    del board.graph.node[:]
    added: dict[str, onnx.TensorProto] = {}
    switched, unmeasured = [], []
    for node in float_proto.graph.node:
        rewrite = by_prefix.get(f"{node.name}_Q{bits}" if node.op_type == "MatMul" else f"{node.name}_Q4")
        if not node.name or node.op_type not in ("MatMul", "Gather") or not rewrite:
            board.graph.node.append(node)
            continue
        needed = {i for n in rewrite for i in n.input if i} - {o for n in rewrite for o in n.output}
        if any(i not in values and i not in weights and i not in quantized_weights for i in needed):
            unmeasured.append(node.name)
            board.graph.node.append(node)
            continue
        output = node.output[0]
        as_float, as_quantized, switch = f"{output}/float", f"{output}/quantized", node.name + SWITCH_SUFFIX
        float_node = onnx.NodeProto()
        float_node.CopyFrom(node)
        float_node.output[0] = as_float
        board.graph.node.append(float_node)
        for part in rewrite:
            copy = onnx.NodeProto()
            copy.CopyFrom(part)
            copy.output[:] = [as_quantized if o == output else o for o in part.output]
            board.graph.node.append(copy)
        board.graph.node.extend(
            [
                helper.make_node("Sub", [as_quantized, as_float], [f"{output}/error"]),
                helper.make_node("Mul", [f"{output}/error", switch], [f"{output}/switched_error"]),
                helper.make_node("Add", [as_float, f"{output}/switched_error"], [output]),
            ]
        )
        weight_type = weights[node.input[1] if node.op_type == "MatMul" else node.input[0]].data_type
        board.graph.input.append(helper.make_tensor_value_info(switch, weight_type, []))
        added.update((i, quantized_weights[i]) for i in needed if i in quantized_weights and i not in weights)
        switched.append(node.name)
    board.graph.initializer.extend(added.values())
    domains = {o.domain for o in board.opset_import}
    board.opset_import.extend(o for o in quantized.opset_import if o.domain not in domains)
    return board, switched, unmeasured


def _measure(
    board: onnx.ModelProto,
    switched: Sequence[str],
    samples: Sequence[Mapping[str, Any]],
    budget_s: float | None,
) -> dict[str, float]:
    """Each switched node's output noise over signal, its switch alone on, mean over ``samples``: as many of
    them as one run per node fits in ``budget_s``, timed on the first sample's reference run."""
    session = make_session(board)
    inputs = {i.name: i for i in session.get_inputs()}
    off = {
        name + SWITCH_SUFFIX: np.zeros(
            (), dtype=np.float16 if "float16" in inputs[name + SWITCH_SUFFIX].type else np.float32
        )
        for name in switched
    }
    per_sample: list[dict[str, float]] = []
    count = len(samples)
    for sample in samples:
        if len(per_sample) == count:
            break
        feed = {name: value for name, value in sample.items() if name in inputs}
        started = time.perf_counter()
        reference = _float_outputs(session.run(None, {**feed, **off}))
        if budget_s is not None and not per_sample:
            count = max(1, min(count, int(budget_s / ((time.perf_counter() - started) * (len(switched) + 1)))))
        signal = sum(float(np.square(r).sum()) for r in reference)
        noise = {}
        for name in switched:
            switch = name + SWITCH_SUFFIX
            outputs = _float_outputs(session.run(None, {**feed, **off, switch: np.ones((), off[switch].dtype)}))
            error = sum(float(np.square(o - r).sum()) for o, r in zip(outputs, reference))
            noise[name] = error / signal if signal > 0 else 0.0
        per_sample.append(noise)
    return {name: float(np.mean([noise[name] for noise in per_sample])) for name in switched}


def _float_outputs(outputs: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(o, dtype=np.float64) for o in outputs if np.issubdtype(np.asarray(o).dtype, np.floating)]
