"""Where onnx_ir falls short of what real models contain, and onnxkit must reach inside it.

onnx_ir (1.1) cannot read or write ONNX *map* types: any model with a map-typed value, such as the
``seq(map(int64, tensor(float)))`` that ``ai.onnx.ml.ZipMap`` gives every scikit-learn classifier exported
by skl2onnx, fails to load with "Map types are not supported yet". ONNX Runtime runs those models, so
onnxkit must carry them through. ``MapType`` fills the gap: ``install()`` teaches onnx_ir's serde functions
to read a ``map_type`` into a ``MapType`` and write it back. onnx_ir and onnxscript look those functions up
on ``onnx_ir.serde`` at call time (recursion into sequences included), so every load, save, clone and
shape-inference round trip in every pass sees the same behaviour.

This is the one module that patches onnx_ir. It checks first whether the installed onnx_ir already reads
map types, and leaves it alone if so.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_ir as ir
from onnx_ir import serde


class MapType:
    """``map(key_type, value_type)``: a key data type (an integer type or string) and any value type.

    It follows onnx_ir's type protocol: ``elem_type`` is the value type and ``dtype`` the value's data type,
    as for a sequence. A map has no shape; its values may (ZipMap's are scalars), and onnx_ir keeps shapes on
    values, not types, so the value shape travels here.
    """

    __slots__ = ("denotation", "key_type", "value_shape", "value_type")

    def __init__(
        self,
        key_type: ir.DataType,
        value_type: Any,
        value_shape: ir.Shape | None = None,
        *,
        denotation: str | None = None,
    ) -> None:
        self.key_type = key_type
        self.value_type = value_type
        self.value_shape = value_shape
        self.denotation = denotation

    @property
    def elem_type(self) -> Any:
        return self.value_type

    @property
    def dtype(self) -> ir.DataType:
        return self.value_type.dtype

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MapType)
            and self.key_type == other.key_type
            and self.value_type == other.value_type
            and self.value_shape == other.value_shape
        )

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        return f"Map({self.key_type!r}, {self.value_type!r}, {self.value_shape!r})"


def _map_aware(read_type: Any, read_shape: Any, write_type: Any) -> tuple[Any, Any, Any]:
    """Wrap onnx_ir's three type functions so that a map is handled here and everything else by onnx_ir."""

    def deserialize_type_proto_for_type(proto: onnx.TypeProto) -> Any:
        if proto.HasField("map_type"):
            value_proto = proto.map_type.value_type
            value_type = serde.deserialize_type_proto_for_type(value_proto)
            if value_type is None:
                raise ValueError(f"a map type must have a value type: {proto}")
            return MapType(
                ir.DataType(proto.map_type.key_type),
                value_type,
                serde.deserialize_type_proto_for_shape(value_proto),
                denotation=proto.denotation or None,
            )
        return read_type(proto)

    def deserialize_type_proto_for_shape(proto: onnx.TypeProto) -> Any:
        # A map has no shape of its own; neither has a sequence or optional of maps.
        return None if proto.HasField("map_type") else read_shape(proto)

    def serialize_type_into(type_proto: onnx.TypeProto, from_: Any) -> None:
        if not isinstance(from_, MapType):
            write_type(type_proto, from_)
            return
        if from_.denotation:
            type_proto.denotation = from_.denotation
        type_proto.map_type.key_type = from_.key_type.value
        serde.serialize_type_into(type_proto.map_type.value_type, from_.value_type)
        if from_.value_shape is not None:
            serde.serialize_shape_into(type_proto.map_type.value_type, from_.value_shape)

    return deserialize_type_proto_for_type, deserialize_type_proto_for_shape, serialize_type_into


def _reads_map_types() -> bool:
    probe = onnx.helper.make_map_type_proto(onnx.TensorProto.INT64, onnx.helper.make_tensor_type_proto(1, []))
    try:
        serde.deserialize_type_proto_for_type(probe)
    except (serde.SerdeError, NotImplementedError):
        return False
    return True


_PATCHED = (
    "deserialize_type_proto_for_type",
    "deserialize_type_proto_for_shape",
    "serialize_type_into",
    "serialize_shape_into",
    "SerdeError",
)


def install() -> None:
    """Teach onnx_ir map types, once, unless it already knows them. An onnx_ir whose serde has moved on is
    left alone too: map-typed models then fail to load with onnx_ir's own message, and the rest works."""
    if not all(hasattr(serde, name) for name in _PATCHED) or _reads_map_types():
        return
    (serde.deserialize_type_proto_for_type, serde.deserialize_type_proto_for_shape, serde.serialize_type_into) = (
        _map_aware(
            serde.deserialize_type_proto_for_type, serde.deserialize_type_proto_for_shape, serde.serialize_type_into
        )
    )


# onnx_ir's serializer writes two things for an initializer besides its tensor (``serialize_graph_into``, tested
# with onnx_ir 1.1): its value_info when the value says more than its name, and its quantization annotation.
# ``onnxkit.model_bytes`` writes the tensors itself, once per run, and the rest through these; ``pyproject.toml``
# pins onnx-ir below 1.2.


def write_initializer_info(graph_proto: onnx.GraphProto, value: ir.Value) -> None:
    """Into ``graph_proto``, what onnx_ir's graph serializer writes for the initializer ``value`` (not listed among
    the graph's inputs) other than its tensor."""
    if serde._should_create_value_info_for_value(value):  # onnx_ir's own rule, kept in step
        serde.serialize_value_into(graph_proto.value_info.add(), value)
    serde._maybe_add_quantization_annotation(graph_proto, value)
