"""A model serialized as its graph without initializers plus each initializer's bytes, encoded once per run and
reused by every later serialization that holds the same tensor object (``TensorEncodings``).

Passes replace an initializer's tensor when they change its values; they never edit a tensor in place (the
pipeline's fingerprint relies on it too: ``graph._TensorRef`` takes the same object for the same values). So a
tensor's bytes, once encoded, stay true for the run, and the snapshot after a pass that touched a few
initializers encodes only those: the rest is one join of bytes already made, instead of onnx_ir copying every
weight into a proto and protobuf copying it again into bytes (two copies of every weight per pass boundary).

The bytes are one ModelProto: its fields but the graph, then the graph as one length-delimited field, made of
what onnx_ir writes for the graph without its initializers, each initializer as an ``initializer`` entry, and
the value_info and quantization annotations onnx_ir writes for initializers. Protobuf reads fields in any
order, so ONNX Runtime, onnx and onnx_ir parse the model onnx_ir would have written (but for the order of
quantization annotations, where initializers have some). The weightless form shape inference and the checker read is made of the same parts,
with each weight (``WEIGHT_MIN_BYTES``) replaced by a graph input of its type and shape.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import ir_compat
from onnxkit.passes import shape_inference

# Initializers larger than this are weights: the weightless form declares them as graph inputs (as onnx_ir does
# for its own inference). Shape inference reads the values of shape-like inputs only (Reshape's shape, ...).
WEIGHT_MIN_BYTES = 1024


def _tag(message: Any, field: str) -> bytes:
    """The wire tag of a length-delimited field of ``message``."""
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_GRAPH = _tag(onnx.ModelProto, "graph")
_INITIALIZER = _tag(onnx.GraphProto, "initializer")
_INPUT = _tag(onnx.GraphProto, "input")


@dataclasses.dataclass(frozen=True)
class _Encoded:
    """One initializer's encoding: valid while the initializer holds this very tensor under this name."""

    tensor: Any  # held so that its id stays its own while the entry lives
    name: str
    tensor_properties: tuple  # the tensor's doc_string and metadata, encoded with it
    header: bytes  # the ``initializer`` tag and length
    data: bytes  # the TensorProto
    weight: bool  # left out of the weightless form
    as_input: bytes  # a graph ``input`` entry declaring it (weights only): how the weightless form holds it


def _properties(tensor: Any) -> tuple:
    return (tensor.doc_string, tuple(sorted(tensor.metadata_props.items())))


def _encode(name: str, tensor: Any) -> _Encoded:
    tensor.name = name  # as onnx_ir's serializer does: the TensorProto carries the initializer's name
    if isinstance(tensor, ir.serde.TensorProtoTensor) and not tensor.metadata_props:
        data = tensor.raw.SerializeToString()  # the loaded proto as it is: one copy, not onnx_ir's two
    else:
        data = ir.serde.serialize_tensor(tensor).SerializeToString()
    if isinstance(tensor, ir.ExternalTensor):
        weight = True  # a reference to a file the weightless form's readers would look for
    elif tensor.dtype == ir.DataType.STRING:
        weight = len(data) > WEIGHT_MIN_BYTES  # variable-length values: by their encoded size
    else:
        weight = tensor.nbytes > WEIGHT_MIN_BYTES
    as_input = b""
    if weight:
        declared = onnx.helper.make_tensor_value_info(name, tensor.dtype.value, tensor.shape.numpy())
        declared_bytes = declared.SerializeToString()
        as_input = _INPUT + _varint(len(declared_bytes)) + declared_bytes
    return _Encoded(tensor, name, _properties(tensor), _INITIALIZER + _varint(len(data)), data, weight, as_input)


@dataclasses.dataclass
class Serialized:
    """A model's bytes in parts (their concatenation is the model), and its weightless form."""

    parts: tuple[bytes, ...]
    size: int
    weightless: bytes
    # Whether the weightless form's ai.onnx.ml nodes had long list attributes cut short (``_for_inference``):
    # it is then read by shape inference only, and the checker reads the whole model.
    lists_cut: bool
    graph: onnx.GraphProto  # the graph without initializers: its inputs and outputs
    initializer_names: frozenset[str]
    new_weights: tuple[Any, ...]  # weight tensors encoded for the first time: the checker's to check on their own


class TensorEncodings:
    """The initializers' encodings of one run, by tensor object; ``serialize`` keeps those of the model it
    serializes and drops the rest (a snapshot keeps the bytes it was made of)."""

    def __init__(self) -> None:
        self._by_tensor: dict[tuple[int, str], _Encoded] = {}
        # Weights already checked whole (the pipeline's input as read from its file), by id, held so that the id
        # stays theirs: encoded for the first time, they are still not new to the checker.
        self._checked: dict[int, Any] = {}

    def checked_already(self, tensors: Any) -> None:
        """``tensors`` passed onnx.checker with the model that holds them: not ``new_weights`` when first encoded."""
        self._checked.update((id(tensor), tensor) for tensor in tensors)

    def serialize(self, model: ir.Model) -> Serialized:
        """``model`` serialized, with the encodings of the tensors it shares with the last model serialized."""
        graph = model.graph
        # By name: the initializers' names, which onnx_ir keys them by (a value's own ``name`` is optional).
        initializers = list(graph.initializers.items())
        view = ir.GraphView(
            graph.inputs,
            graph.outputs,
            nodes=graph,
            doc_string=graph.doc_string,
            opset_imports=graph.opset_imports,
            name=graph.name,
            metadata_props=graph.metadata_props,
        )
        # The serializer reads a model's attributes only: the model, with the view for its graph.
        proto = ir.serde.serialize_model(typing.cast(ir.Model, _WithGraph(model, view)))
        inputs = {value.name for value in graph.inputs}
        # onnx_ir writes the initializers' value_info before the nodes': so does this, from the same parts.
        value_info = onnx.GraphProto()
        for name, value in initializers:
            # Written for an initializer without a value too (which onnx_ir leaves out, with a warning); one
            # listed as input (before IR 4) has had its info written.
            if name not in inputs:
                ir_compat.write_initializer_info(value_info, value)
        value_info.value_info.extend(proto.graph.value_info)
        proto.graph.ClearField("value_info")
        info = value_info.SerializeToString()

        # By tensor and name: one tensor object may be the value of two initializers.
        encodings: dict[tuple[int, str], _Encoded] = {}
        new_weights = []
        for name, value in initializers:
            tensor = value.const_value
            if tensor is None:
                continue
            known = self._by_tensor.get((id(tensor), name))
            if known is None or known.tensor is not tensor or known.tensor_properties != _properties(tensor):
                known = _encode(name, tensor)
                if known.weight and self._checked.get(id(tensor)) is not tensor:
                    new_weights.append(tensor)
            encodings[id(tensor), name] = known
        self._by_tensor = encodings

        graph_proto = proto.graph
        graph_bytes = graph_proto.SerializeToString()
        inference_graph, lists_cut = _graph_for_inference(graph_proto, graph_bytes)
        proto.ClearField("graph")
        rest = proto.SerializeToString()

        full = [graph_bytes]
        weightless = [inference_graph]
        for encoded in encodings.values():
            full += (encoded.header, encoded.data)
            if not encoded.weight:
                weightless += (encoded.header, encoded.data)
            elif encoded.name not in inputs:  # before IR 4 it is listed among the inputs already
                weightless.append(encoded.as_input)
        full.append(info)
        weightless.append(info)
        full_length = sum(len(part) for part in full)
        parts = (rest, _GRAPH, _varint(full_length), *full)
        return Serialized(
            parts,
            len(rest) + len(_GRAPH) + len(parts[2]) + full_length,
            _model_of(rest, weightless),
            lists_cut,
            graph_proto,
            frozenset(name for name, value in initializers if value.const_value is not None),
            tuple(new_weights),
        )


def weightless_of(proto: onnx.ModelProto) -> tuple[bytes, bool]:
    """The weightless form of a parsed model that keeps its weights in itself, as ``TensorEncodings.serialize``
    makes it of an ``ir.Model``: each weight declared as a graph input of its type and shape, the smaller
    initializers kept; with whether any node's list attributes were cut short (``_for_inference``). Made from
    the proto's own fields: nothing goes through onnx_ir."""
    graph = onnx.GraphProto()
    for field, value in proto.graph.ListFields():
        if field.name != "initializer":
            _copy_field(graph, field, value)
    inference_graph, lists_cut = _graph_for_inference(graph, None)
    inputs = {value.name for value in proto.graph.input}
    parts = [inference_graph]
    for tensor in proto.graph.initializer:
        if not _is_weight(tensor):
            data = tensor.SerializeToString()
            parts += (_INITIALIZER + _varint(len(data)), data)
        elif tensor.name not in inputs:  # before IR 4 it is listed among the inputs already
            declared = onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
            declared_bytes = declared.SerializeToString()
            parts.append(_INPUT + _varint(len(declared_bytes)) + declared_bytes)
    rest = onnx.ModelProto()
    for field, value in proto.ListFields():
        if field.name != "graph":
            _copy_field(rest, field, value)
    return _model_of(rest.SerializeToString(), parts), lists_cut


def _model_of(rest: bytes, graph_parts: list[bytes]) -> bytes:
    """A ModelProto's bytes from its fields but the graph (``rest``) and its graph's in parts, in one join (the
    graph holds the Constant nodes' tensors: joined first on its own, they would be copied twice)."""
    length = sum(len(part) for part in graph_parts)
    return b"".join((rest, _GRAPH, _varint(length), *graph_parts))


def _is_weight(tensor: onnx.TensorProto) -> bool:
    """Whether an initializer is a weight (``WEIGHT_MIN_BYTES``), as ``_encode`` decides it of its ir tensor."""
    if tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize() > WEIGHT_MIN_BYTES
    try:
        itemsize = ir.DataType(tensor.data_type).itemsize
    except (ValueError, TypeError):  # a type onnx_ir does not know: kept in, for the checker to judge
        return False
    return itemsize * math.prod(tensor.dims) > WEIGHT_MIN_BYTES


class _WithGraph:
    """``model`` with another graph, for onnx_ir's model serializer (which reads attributes only)."""

    def __init__(self, model: ir.Model, graph: ir.GraphView) -> None:
        self._model = model
        self.graph = graph

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _graph_for_inference(graph: onnx.GraphProto, serialized: bytes | None) -> tuple[bytes, bool]:
    """``graph``'s bytes with each node as shape inference is sent it (``_for_inference``), and whether any
    node was cut short; ``serialized`` is ``graph``'s own bytes, if made already (a graph's Constant tensors make
    a second serialization cost a copy of them)."""
    sent, cut = [], False
    for node in graph.node:
        sent.append(_for_inference(node))
        cut = cut or sent[-1] is not node
    if not cut:
        return serialized if serialized is not None else graph.SerializeToString(), False
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    del copy.node[:]
    copy.node.extend(sent)
    return copy.SerializeToString(), True


_LIST_FIELDS = {
    onnx.AttributeProto.INTS: "ints",
    onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.STRINGS: "strings",
}


def _for_inference(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node``, or for an ai.onnx.ml node with list attributes over ``shape_inference.LONG_ML_LIST`` values a
    copy with those cut to their first element, as the shape inference pass sends them: ONNX infers a tree
    ensemble's outputs from which attributes are present and the short ones, never the tree arrays (36M values
    on a 190 MB LightGBM model, which each check otherwise copied and parsed again)."""

    def long(attribute: onnx.AttributeProto) -> bool:
        field = _LIST_FIELDS.get(attribute.type)
        return field is not None and len(getattr(attribute, field)) > shape_inference.LONG_ML_LIST

    if node.domain != "ai.onnx.ml" or not any(long(attribute) for attribute in node.attribute):
        return node
    shortened = onnx.NodeProto()
    for field, value in node.ListFields():
        if field.name != "attribute":
            _copy_field(shortened, field, value)
    for attribute in node.attribute:
        if long(attribute):
            cut = shortened.attribute.add(name=attribute.name, type=attribute.type)
            getattr(cut, _LIST_FIELDS[attribute.type]).append(getattr(attribute, _LIST_FIELDS[attribute.type])[0])
        else:
            shortened.attribute.append(attribute)
    return shortened


def _copy_field(message: Any, field: Any, value: Any) -> None:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)
