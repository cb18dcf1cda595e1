"""``shape-inference``: annotate every value with its inferred type and shape."""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from onnxkit.errors import PassFailedError
from onnxkit.pass_base import Pass, PassResult


@dataclasses.dataclass(frozen=True)
class ShapeInferenceOptions:
    strict: bool = False  # fail on any inference error instead of leaving that value's shape unknown
    data_prop: bool = True  # propagate constant shape values, so Reshape targets resolve


class ShapeInferencePass(Pass):
    """Infer types and shapes of all values, subgraph bodies included (ONNX shape inference)."""

    name = "shape-inference"
    kind = "exact"
    Options = ShapeInferenceOptions

    def call(self, model: ir.Model) -> PassResult:
        try:
            annotated = len(infer_shapes(model, strict=self.options.strict, data_prop=self.options.data_prop))
        except Exception as e:
            if self.options.strict:
                raise PassFailedError(f"shape inference failed: {e}", hint="retry without strict=true") from e
            return PassResult(model, False, [f"shape inference failed, model left as it was: {e}"])
        return PassResult(model, annotated > 0, [f"annotated {annotated} values"] if annotated else [])


def infer_shapes(
    model: ir.Model, *, strict: bool = False, data_prop: bool = True, check_type: bool = True
) -> list[ir.Value]:
    """Run ONNX shape inference and copy what it found onto ``model``'s values; returns the values that changed.

    Raises what ONNX raises (in strict mode, any inference error).
    """
    with _long_ml_lists_shortened(model):
        sent = _weightless_proto(model)
    inferred = onnx.shape_inference.infer_shapes(sent, check_type=check_type, strict_mode=strict, data_prop=data_prop)
    return _merge_types(model, _value_types(sent.graph), _value_types(inferred.graph))


# Initializers over this many bytes go to ONNX as graph inputs of their type and shape, without their data:
# onnx_ir's limit for the same purpose (models over 2 GB work too). Shape inference reads the values of small
# integer tensors only (Reshape targets, Slice bounds, ...), which stay.
WEIGHT_MIN_BYTES = _c_api_utils._BIG_TENSOR_SIZE_LIMIT


def _weightless_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as ONNX shape inference is sent it: every initializer of the main graph listed as a graph
    input, and only those of at most ``WEIGHT_MIN_BYTES`` kept with their data.

    Byte for byte the proto onnx_ir's ``call_onnx_api`` sends (tested with onnx-ir 1.1.0 on the 119 corpus
    models), made from a view of the graph instead: that helper moves each initializer into the inputs and its
    data out of the model and back, work per initializer on every inference, and leaves the weights moved
    after the small initializers.
    """
    graph = model.graph
    initializers = list(graph.initializers.values())
    for value in initializers:
        # As onnx_ir's helper does (and leaves done): inputs are declared with the tensor's type and shape.
        tensor = value.const_value
        if tensor is not None:
            if value.shape is None:
                value.shape = tensor.shape  # type: ignore[assignment]
            if value.dtype is None:
                value.dtype = tensor.dtype
    listed = set(graph.inputs)
    view = ir.GraphView(
        [*graph.inputs, *(value for value in initializers if value not in listed)],
        graph.outputs,
        nodes=graph,
        initializers=[
            value
            for value in initializers
            if value.const_value is not None and value.const_value.nbytes <= WEIGHT_MIN_BYTES
        ],
        doc_string=graph.doc_string,
        opset_imports=graph.opset_imports,
        name=graph.name,
        metadata_props=graph.metadata_props,
    )
    return ir.serde.serialize_model(typing.cast(ir.Model, _ModelWithGraph(model, view)))


class _ModelWithGraph:
    """``model`` with another graph, for onnx_ir's model serializer (which reads attributes only)."""

    def __init__(self, model: ir.Model, graph: ir.GraphView) -> None:
        self._model = model
        self.graph = graph

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


# ai.onnx.ml list attributes longer than this are sent to ONNX cut to their first element.
LONG_ML_LIST = 1 << 16
_LIST_TYPES = (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS)


@contextlib.contextmanager
def _long_ml_lists_shortened(model: ir.Model) -> Iterator[None]:
    """Tree ensembles (ai.onnx.ml) keep every tree node in list attributes: 36M values on a 190 MB LightGBM
    model, which onnx_ir writes out one Python object at a time (a minute per inference). ONNX infers these
    ops' outputs from which attributes are present and from short ones (class labels, n_targets), never from
    the tree arrays, so those go cut to one element (present, same type) and come back unchanged after."""
    shortened: list[tuple[ir.Node, ir.Attr]] = []
    # A model without the ai.onnx.ml opset import has no such node (ONNX would refuse it): no walk.
    nodes = ir.traversal.RecursiveGraphIterator(model.graph) if "ai.onnx.ml" in model.opset_imports else ()
    for node in nodes:
        if node.domain != "ai.onnx.ml":
            continue
        for attribute in list(node.attributes.values()):
            if not attribute.is_ref() and attribute.type in _LIST_TYPES and len(attribute.value) > LONG_ML_LIST:
                shortened.append((node, attribute))
                node.attributes[attribute.name] = ir.Attr(attribute.name, attribute.type, attribute.value[:1])
    try:
        yield
    finally:
        for node, attribute in shortened:
            node.attributes[attribute.name] = attribute


def _value_types(graph: onnx.GraphProto, types: dict[str, onnx.TypeProto] | None = None) -> dict[str, onnx.TypeProto]:
    """The declared type of every named value of ``graph`` and the graphs inside it (first one per name)."""
    types = {} if types is None else types
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.name and value.HasField("type"):
            types.setdefault(value.name, value.type)
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                _value_types(subgraph, types)
    return types


def _merge_types(
    model: ir.Model, sent: dict[str, onnx.TypeProto], inferred: dict[str, onnx.TypeProto]
) -> list[ir.Value]:
    """Copy inferred types and shapes onto the model's values; returns the values that changed.

    Only types that inference changed from what it was sent are read back (reading every value's type was
    most of the cost on large models). Not onnx_ir's ShapeInferencePass merge: it sets ``dtype``, which turns
    sequence and optional values inside subgraphs into tensors. Here a value takes the whole inferred type,
    and only when it had none or one of the same kind. Graph outputs that declare a shape keep it: a
    declaration may be wrong, and "fixing" it from inference would change what the model promises.
    """
    changed: list[ir.Value] = []
    new_types = [(name, type_proto) for name, type_proto in inferred.items() if sent.get(name) != type_proto]
    if not new_types:  # a model inference has nothing new for (a confirming round's): no walk over its values
        return changed
    values = ir.convenience.create_value_mapping(model.graph)
    # Many values share a type (a CNN's [1, 64, 56, 56] float): each distinct one is read once. The shapes
    # read are frozen, made to be shared; types are not (``Value.dtype = ...`` edits the type in place).
    shapes: dict[bytes, ir.Shape | None] = {}
    for name, type_proto in new_types:
        value = values.get(name)
        if value is None or value.is_graph_input():
            continue
        if value.is_graph_output() and value.shape is not None:
            continue
        new_type = ir.serde.deserialize_type_proto_for_type(type_proto)
        if new_type is None or (value.type is not None and type(value.type) is not type(new_type)):
            continue
        new_shape = _read_shape(type_proto, shapes)
        if value.type != new_type or value.shape != new_shape:
            value.type = new_type
            if new_shape is not None:
                value.shape = new_shape
            changed.append(value)
    return changed


def _read_shape(type_proto: onnx.TypeProto, known: dict[bytes, ir.Shape | None]) -> ir.Shape | None:
    """The shape ``type_proto`` states, read once per distinct type (``known`` holds those read)."""
    key = type_proto.SerializeToString()
    if key in known:
        return known[key]
    shape = ir.serde.deserialize_type_proto_for_shape(type_proto)
    if shape is None or shape.frozen:  # only a frozen shape may be handed to several values
        known[key] = shape
    return shape
