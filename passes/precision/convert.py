"""The conversions themselves, and which nodes must stay in float32 before any search starts.

fp16 is onnxconverter-common's ``convert_float_to_float16``: it retypes tensors, converts weights, inserts a
Cast wherever a float32 node meets a float16 one, and reaches into subgraphs. The model's inputs and outputs
stay float32 (its ``keep_io_types``): a pass keeps the model's signature.

bf16 stores the weights in bfloat16, each followed by a Cast to float32, and computes in float32: ONNX
Runtime's CPU has no bfloat16 kernel for any compute op (only data movement and Cast), so a model with
bfloat16 compute could not even be checked here. It halves the weights with bfloat16's rounding, the error
budget of the format; runtimes with bfloat16 compute (OpenVINO's ``INFERENCE_PRECISION_HINT``, TensorRT's
``--bf16``, ``deploy-check --precision bf16``) choose it at run time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_SMALLEST_NORMAL = float(np.finfo(np.float16).tiny)  # 6.1e-05: below it fp16 loses precision
FP16_SMALLEST_SUBNORMAL = float(
    np.finfo(np.float16).smallest_subnormal
)  # 6e-08: the converter lifts smaller weights to it
# Activations past this fraction of the fp16 maximum stay float32: a later Add or MatMul would overflow to inf.
RANGE_HEADROOM = 0.5

# Scalars and short vectors (epsilons, shapes, scales) are not worth a Cast node each; they are also where
# a constant too small for fp16 matters (an epsilon flushed to zero), while a tiny element of a weight tensor
# contributes nothing either way.
MIN_WEIGHT_ELEMENTS = 16

# Numerically unsafe in fp16, kept in float32 from the start:
# - reductions: a sum over thousands of elements overflows, and a mean of squares loses what it measures;
# - normalizations that compute statistics (variance, norms); BatchNormalization at inference is a per-channel
#   affine map with stored statistics, safe in fp16;
# - Pow and Exp, which leave fp16's range for moderate inputs (exp(11.1) > 65504).
UNSAFE_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "MeanVarianceNormalization",
        "LpNormalization",
        "RMSNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "Pow",
        "Exp",
    }
)


def fp16_block_list() -> list[str]:
    """Op types the converter must leave alone: ours and its own defaults (ops without fp16 kernels)."""
    from onnxconverter_common.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | UNSAFE_OPS)


def to_fp16(proto: onnx.ModelProto, keep_float: Iterable[str]) -> onnx.ModelProto:
    """``proto`` in float16, with the nodes named in ``keep_float`` and the block list's ops in float32."""
    from onnxconverter_common.float16 import convert_float_to_float16

    blocked = [*keep_float, *_casts_to_float(proto)]
    # The converter keeps a blocked node's weights in float32 only when they have no value_info entry (one
    # would make it cast them, and convert and clip them first), and onnx_ir writes such entries.
    weights = {t.name for t in proto.graph.initializer}
    unconverted = onnx.ModelProto()
    unconverted.CopyFrom(proto)
    described = [v for v in unconverted.graph.value_info if v.name not in weights]
    del unconverted.graph.value_info[:]
    unconverted.graph.value_info.extend(described)
    hidden = _hide_outputs(unconverted)
    # The converter prints and warns about each weight it clips; the pass reports what it kept instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(
            unconverted,
            min_positive_val=FP16_SMALLEST_SUBNORMAL,
            max_finite_val=FP16_MAX,
            keep_io_types=True,
            op_block_list=fp16_block_list(),
            node_block_list=blocked,
        )
    _restore_hidden_outputs(converted, hidden)
    for before, after in zip(proto.graph.output, converted.graph.output):
        if (before.name, before.type.tensor_type.elem_type) != (after.name, after.type.tensor_type.elem_type):
            raise ValueError(f"the float16 converter changed output {before.name}")  # not seen so far
    return converted


@dataclasses.dataclass(frozen=True)
class _HiddenOutput:
    position: int
    value: onnx.ValueInfoProto
    producer: str  # the node making it
    index: int  # which of the producer's outputs


def _hide_outputs(model: onnx.ModelProto) -> list[_HiddenOutput]:
    """Take ``model``'s float32 graph outputs out of its outputs. onnxconverter-common 1.16 wires them wrong
    whenever a node inside reads them: one a float32 node makes comes out float16, or made by no node at all;
    one a float16 node makes becomes a float32 Cast the float16 readers then read. Hidden, an output is an
    ordinary value to the converter, and ``_restore_hidden_outputs`` makes it float32 again."""
    graph = model.graph
    producers = {name: (node, index) for node in graph.node for index, name in enumerate(node.output)}
    hidden = []
    for position, output in enumerate(graph.output):
        node, index = producers.get(output.name, (None, 0))
        if node is not None and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            value = onnx.ValueInfoProto()
            value.CopyFrom(output)
            hidden.append(_HiddenOutput(position, value, node.name, index))
    for entry in reversed(hidden):
        del graph.output[entry.position]
        graph.value_info.append(entry.value)
    return hidden


def _restore_hidden_outputs(converted: onnx.ModelProto, hidden: list[_HiddenOutput]) -> None:
    """Put the hidden outputs back in float32 under their names, the float16 nodes inside reading a float16
    copy: made by the converter's Cast after a float32 node, or by the float16 node itself."""
    graph = converted.graph
    nodes = {node.name: node for node in graph.node}
    for entry in hidden:
        name, producer = entry.value.name, nodes[entry.producer]
        copy = f"{name}__fp16"
        made = producer.output[entry.index]  # renamed where the converter put a Cast to float16 after it
        for node in graph.node:
            if node is not producer or made == name:
                node.input[:] = [copy if value == name else value for value in node.input]
                node.output[:] = [copy if value == name else value for value in node.output]
        if made != name:  # a float32 node: it makes the output, its Cast to float16 the copy
            for node in graph.node:
                node.input[:] = [name if value == made else value for value in node.input]
            producer.output[entry.index] = name
        else:  # a float16 node makes the copy, and the output is that cast back
            graph.node.append(
                onnx.helper.make_node("Cast", [copy], [name], name=f"{name}__to_float", to=onnx.TensorProto.FLOAT)
            )
        # Shape inference types the values anew; a stale entry would contradict it.
        _replace(graph.value_info, [v for v in graph.value_info if v.name not in {name, made}])
        outputs = list(graph.output)
        outputs.insert(entry.position, entry.value)
        _replace(graph.output, outputs)


def _replace(field: Any, items: list[Any]) -> None:
    """Refill a repeated protobuf field (which takes no slice assignment) with ``items``."""
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)


def _casts_to_float(proto: onnx.ModelProto) -> list[str]:
    """Casts to float32, in subgraphs too (chars2vec_en300's LSTM Loop). onnxconverter-common 1.16 mis-wires
    them where what they read stays float32: from an integer or bool tensor (an attention mask, a loop's
    counter) it leaves their ``to`` at float32 yet feeds their output to float16 nodes unconverted; after a blocked node (ReduceMean, then Cast, then MatMul) it drops both its own
    Cast to float16 and theirs, so the float16 MatMul reads float32. ONNX Runtime refuses either model.
    Blocked, they stay float32 and get a Cast to float16 after them like any float32 node."""
    return [
        node.name
        for node in _with_subgraph_nodes(proto.graph)
        if node.op_type == "Cast"
        and node.name
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
    ]


def _with_subgraph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """The graph's nodes and those of the If/Loop/Scan bodies inside, which the converter converts too."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for body in bodies:
                yield from _with_subgraph_nodes(body)


def to_bf16_weights(proto: onnx.ModelProto, keep_float: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose float32 weights are stored in bfloat16 and cast back to float32 where they are
    used, except the weights of the nodes named in ``keep_float`` and of the block list's ops."""
    kept = set(keep_float)
    converted = onnx.ModelProto()
    converted.CopyFrom(proto)
    graph = converted.graph
    # A weight shared with a node that stays float stays float: the bf16 copy would not shrink the model.
    float_users: set[str] = set()
    for node in graph.node:
        if node.name in kept or node.op_type in UNSAFE_OPS:
            float_users.update(node.input)
    casts = []
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type != onnx.TensorProto.FLOAT or tensor.name in float_users:
            continue
        values = numpy_helper.to_array(tensor)
        if values.size < MIN_WEIGHT_ELEMENTS:
            continue
        name, stored = tensor.name, f"{tensor.name}_bf16"
        bf16 = onnx.helper.make_tensor(
            stored,
            onnx.TensorProto.BFLOAT16,
            values.shape,
            values.astype(ml_dtypes.bfloat16).view(np.uint16).tobytes(),
            raw=True,
        )
        graph.initializer[index].CopyFrom(bf16)  # `tensor` is this very element: it now holds the copy
        casts.append(
            onnx.helper.make_node("Cast", [stored], [name], name=f"{name}_to_float", to=onnx.TensorProto.FLOAT)
        )
    # Casts first: the graph stays topologically sorted.
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph_inputs = {i.name for i in graph.input}
    if any(c.output[0] in graph_inputs for c in casts):  # an initializer also listed as input (IR < 4)
        kept_inputs = [i for i in graph.input if i.name not in {c.output[0] for c in casts}]
        del graph.input[:]
        graph.input.extend(kept_inputs)
    return converted


def out_of_range_nodes(proto: onnx.ModelProto, activation_peaks: Mapping[str, float]) -> dict[str, str]:
    """Nodes that must stay float32 because a value they touch lies near fp16's limits: an activation they
    take or make past ``RANGE_HEADROOM`` of its maximum (measured), or a constant fp16 cannot hold."""
    constants = _constants_out_of_range(proto)
    reasons: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            # Converted, a Constant holds what the converter makes of its value: a tiny epsilon rounded away
            # (so it stays float32), a value past the maximum clipped to 65504, which its float16 readers can
            # use where the Cast after a float32 Constant would give them inf (0 * inf in a mask is NaN).
            flushed = constants.get(node.output[0])
            if flushed and flushed[1]:
                reasons[node.name] = flushed[0]
            continue
        # Inputs too: a consumer in fp16 would overflow at the Cast in front of it.
        for name in (*node.output, *node.input):
            peak = activation_peaks.get(name, 0.0)
            if peak > RANGE_HEADROOM * FP16_MAX:
                reasons[node.name] = f"{name} reaches {peak:.3g}, near fp16's maximum {FP16_MAX:g}"
                break
        for name in node.input:
            if name in constants:
                reasons.setdefault(node.name, constants[name][0])
    return reasons


def _constants_out_of_range(proto: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """Float constants fp16 cannot hold, each with why and whether it is small: any with a finite magnitude past
    its maximum (the converter would clip it), and small ones (epsilons, scales: under ``MIN_WEIGHT_ELEMENTS``
    elements) with a nonzero magnitude below its smallest normal (flushed towards zero)."""
    tensors: list[tuple[str, Any]] = [(t.name, t) for t in proto.graph.initializer]
    tensors += [
        (n.output[0], a.t)
        for n in proto.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    found: dict[str, tuple[str, bool]] = {}
    for name, tensor in tensors:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        magnitude = np.abs(numpy_helper.to_array(tensor))
        # Infinities (an attention mask's fill value) and NaN are float16 values as they are.
        past = magnitude[np.isfinite(magnitude) & (magnitude > FP16_MAX)]
        if past.size:
            found[name] = (f"constant {name} holds {past.max():.3g}, past fp16's maximum {FP16_MAX:g}", False)
            continue
        tiny = magnitude[(magnitude > 0) & (magnitude < FP16_SMALLEST_NORMAL)]
        if tiny.size and magnitude.size < MIN_WEIGHT_ELEMENTS:
            why = f"constant {name} holds {tiny.min():.3g}, below fp16's smallest normal {FP16_SMALLEST_NORMAL:.3g}"
            found[name] = (why, True)
    return found


def name_unnamed_nodes(proto: onnx.ModelProto) -> None:
    """Give every unnamed main-graph node a unique name, in place: the search keeps nodes in float32 by name, so
    an unnamed node could never be converted (many exporters and hand-built models leave names empty)."""
    taken = {node.name for node in proto.graph.node if node.name}
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            name, suffix = f"{node.op_type}_{index}", 0
            while name in taken:
                suffix += 1
                name = f"{node.op_type}_{index}_{suffix}"
            node.name = name
            taken.add(name)


def float_nodes(proto: onnx.ModelProto, types: Mapping[str, int]) -> list[onnx.NodeProto]:
    """Main-graph nodes with a float32 output: what a precision pass can convert."""
    return [
        node
        for node in proto.graph.node
        if node.name and any(types.get(name) == onnx.TensorProto.FLOAT for name in node.output)
    ]


def peaks(values: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]) -> dict[str, float]:
    """The largest finite magnitude of each named tensor over the samples."""
    found = dict.fromkeys(names, 0.0)
    for sample in values:
        for name in names:
            array = np.abs(np.asarray(sample[name], dtype=np.float64))
            finite = array[np.isfinite(array)]
            if finite.size:
                found[name] = max(found[name], float(finite.max()))
    return found


def with_fp16_intermediates(float_proto: onnx.ModelProto, converted: onnx.ModelProto) -> onnx.ModelProto:
    """``float_proto`` computing as ``converted`` would where float16 arithmetic is real (a GPU, OpenVINO's
    ``f16``): the weights ``converted`` stores in float16, rounded alike, and every value a float16 node of
    ``converted`` reads or makes rounded to float16 through a Cast pair. Each node still computes in float32,
    as ONNX Runtime's CUDA kernels accumulate float16 products in float32. What this adds to an ONNX Runtime
    CPU run of ``converted`` is the rounding (and overflow) of every intermediate, which that run skips: it
    computes the ops it has no float16 kernel for in float32 and drops the Cast pairs between them."""
    converted_types = _value_types(retyped(converted))
    in_float16 = {
        node.name
        for node in converted.graph.node
        if node.name
        and node.op_type != "Cast"
        and any(converted_types.get(name) == onnx.TensorProto.FLOAT16 for name in node.output)
    }
    emulated = onnx.ModelProto()
    emulated.CopyFrom(float_proto)
    graph = emulated.graph
    stored = {t.name: t for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    for index, tensor in enumerate(graph.initializer):
        if tensor.name in stored and tensor.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(stored[tensor.name]).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(values, tensor.name))
    # Constant nodes hold the converter's values too: it clips a value past fp16's range to its maximum, where
    # a Cast would round it to inf (and 0 * inf, a mask's product, is NaN).
    constants = {n.name: n for n in converted.graph.node if n.op_type == "Constant" and n.name in in_float16}
    for node in graph.node:
        if node.name in constants:
            for attribute, stored_value in zip(node.attribute, constants[node.name].attribute):
                if attribute.name == "value" and stored_value.t.data_type == onnx.TensorProto.FLOAT16:
                    values = numpy_helper.to_array(stored_value.t).astype(np.float32)
                    attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))
    types = _value_types(retyped(emulated))
    graph_outputs = {o.name for o in graph.output}
    made: dict[str, str] = {}  # a value a float16 node makes -> its rounded copy, which every consumer reads
    fed: dict[str, str] = {}  # a float32 value a float16 node reads -> the rounded copy only those read
    nodes: list[onnx.NodeProto] = []

    def round_trip(name: str, rounded: str) -> None:
        through = f"{name}__as_fp16"
        nodes.append(onnx.helper.make_node("Cast", [name], [through], to=onnx.TensorProto.FLOAT16))
        nodes.append(onnx.helper.make_node("Cast", [through], [rounded], to=onnx.TensorProto.FLOAT))

    for node in graph.node:
        in_fp16 = node.name in in_float16
        for index, name in enumerate(node.input):
            if name in made:
                node.input[index] = made[name]
            elif in_fp16 and types.get(name) == onnx.TensorProto.FLOAT and name not in stored:
                if name not in fed:  # the Cast to float16 the converter puts in front (a weight it kept too)
                    fed[name] = f"{name}__fp16_in"
                    round_trip(name, fed[name])
                node.input[index] = fed[name]
        nodes.append(node)
        for index, name in enumerate(node.output):
            if not in_fp16 or types.get(name) != onnx.TensorProto.FLOAT:
                continue
            if name in graph_outputs:  # the output keeps its name: the node writes the unrounded value aside
                node.output[index] = f"{name}__fp32"
                round_trip(node.output[index], name)
                made[name] = name
            else:
                made[name] = rounded_name(name)
                round_trip(name, made[name])
    del graph.node[:]
    graph.node.extend(nodes)
    return emulated


def rounded_name(name: str) -> str:
    """Where ``with_fp16_intermediates`` puts the float16-rounded copy of a value a float16 node makes."""
    return f"{name}__fp16"


def retyped(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference from scratch: the converter leaves some stale float32 entries in value_info (a Cast
    whose target it changed), which would declare a float16 tensor as float32."""
    fresh = onnx.ModelProto()
    fresh.CopyFrom(proto)
    del fresh.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(fresh)


def _value_types(proto: onnx.ModelProto) -> dict[str, int]:
    graph = proto.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types
