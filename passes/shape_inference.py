"""``shape-inference``: annotate every value with its inferred type and shape."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

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
    sent: list[onnx.ModelProto] = []

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        sent.append(proto)
        return onnx.shape_inference.infer_shapes(proto, check_type=check_type, strict_mode=strict, data_prop=data_prop)

    # onnx_ir's helper (private, tested with onnx-ir 1.1.0) hands ONNX a copy without initializer data, so
    # models over 2 GB work too.
    with _long_ml_lists_shortened(model):
        inferred = _c_api_utils.call_onnx_api(infer, model)
    return _merge_types(model, _value_types(sent[0].graph), _value_types(inferred.graph))


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
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
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
    changed = []
    values = ir.convenience.create_value_mapping(model.graph)
    # Many values share a type (a CNN's [1, 64, 56, 56] float): each distinct one is read once. The shapes
    # read are frozen, made to be shared; types are not (``Value.dtype = ...`` edits the type in place).
    shapes: dict[bytes, ir.Shape | None] = {}
    for name, type_proto in inferred.items():
        if sent.get(name) == type_proto:
            continue
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
