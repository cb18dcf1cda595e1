"""What a model's graph says about its inputs, read once without running the model (``read_graph``).

- stated dims: a metadata entry named like a dim (``seq_len: 128``), or ``image_size`` for heights and widths;
- pinned dims: an input axis that reaches a weighted op (MatMul, Gemm, Conv, LSTM, BatchNormalization...)
  through shape-keeping ops must match the weight, so it takes the weight's size;
- values: integer indices stay inside the table they index (``index_limits``), and an integer or string
  input that the graph compares with constants (or looks up in a LabelEncoder) takes one of those constants
  (``compared_values``).

``SyntheticDataset`` fills inputs from these hints; ``onnxkit.data.probe`` shares one reading between probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxkit.data.dims import dim_key, dim_role, is_dynamic
from onnxkit.data.specs import InputSpec, ModelLike, _ir_model, input_specs


def _constant(value: ir.Value | None) -> ir.TensorProtocol | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value
    return None


def _constant_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a constant (always static), or None when ``value`` is not a constant."""
    const = _constant(value)
    return None if const is None else tuple(int(d) for d in const.shape.numpy())


def _static_size(value: ir.Value, axis: int) -> int | None:
    const = _constant(value)
    shape = const.shape if const is not None else value.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return size if isinstance(size, int) else None


def _small_values(value: ir.Value | None, limit: int = 64) -> list[Any] | None:
    """The elements of a small constant, as Python values, or None when it is not one."""
    const = _constant(value)
    if const is None or const.size > limit:
        return None
    return [
        v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
        for v in np.asarray(const.numpy()).ravel()
    ]


def _is_standard(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


# Ops that pass an index tensor on unchanged in value, so a Gather behind them still bounds it.
_INDEX_PASS_THROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}
# Ops whose index input must stay inside the data input's axis, and the attribute naming that axis.
_INDEXING_OPS = {"Gather": 1, "GatherElements": 1, "ScatterElements": 1}


def _uses_through(value: ir.Value, pass_through: set[str]) -> Iterator[tuple[ir.Node, int]]:
    """Every use of ``value``, and of what ``pass_through`` ops make of it unchanged in value."""
    frontier, seen = [value], {id(value)}
    while frontier:
        for node, index in frontier.pop().uses():
            yield node, index
            if _is_standard(node) and node.op_type in pass_through and index == 0:
                for output in node.outputs:
                    if id(output) not in seen:
                        seen.add(id(output))
                        frontier.append(output)


def index_limits(model: ModelLike) -> dict[str, int]:
    """Integer inputs used as Gather/GatherElements/ScatterElements indices (directly or through
    Cast/Reshape/...), mapped to the size of the indexed axis: token ids stay below the embedding table's
    row count."""
    graph = _ir_model(model).graph
    limits: dict[str, int] = {}
    for graph_input in graph.inputs:
        sizes = []
        for node, index in _uses_through(graph_input, _INDEX_PASS_THROUGH):
            if _is_standard(node) and node.op_type in _INDEXING_OPS and index == _INDEXING_OPS[node.op_type]:
                indexed = node.inputs[0]
                size = _static_size(indexed, node.attributes.get_int("axis", 0)) if indexed is not None else None
                if size is not None:
                    sizes.append(size)
        if sizes and graph_input.name is not None:
            limits[graph_input.name] = min(sizes)
    return limits


_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
# Attributes of ai.onnx.ml lookups that list the strings they know.
_STRING_TABLES = {"LabelEncoder": ("keys_strings", "classes_strings"), "CategoryMapper": ("cats_strings",)}
_LOOP_TRIP_COUNTS = (1, 2, 3)


def compared_values(model: ModelLike) -> dict[str, tuple[Any, ...]]:
    """Inputs the graph compares with constants (``Equal(mode, 2)`` feeding an ``If``), looks up in a table
    (a LabelEncoder's strings) or uses as a Loop's trip count, mapped to the values that take those paths."""
    graph = _ir_model(model).graph
    found: dict[str, tuple[Any, ...]] = {}
    for graph_input in graph.inputs:
        values: list[Any] = []
        for node, index in _uses_through(graph_input, _INDEX_PASS_THROUGH):
            if not _is_standard(node) and node.domain != "ai.onnx.ml":
                continue
            if node.op_type in _COMPARISONS and len(node.inputs) == 2:
                values += _small_values(node.inputs[1 - index]) or []
            elif node.op_type in _STRING_TABLES:
                for name in _STRING_TABLES[node.op_type]:
                    values += [
                        s.decode() if isinstance(s, bytes) else s
                        for s in node.attributes.get_strings(name, ()) or ()
                        if s
                    ]
            elif node.op_type == "Loop" and index == 0:
                values += _LOOP_TRIP_COUNTS
        if values and graph_input.name is not None:
            found[graph_input.name] = tuple(dict.fromkeys(values))  # unique, in the graph's order
    return found


# Shape-keeping ops an input axis is followed through to the weighted op that pins its size.
_ELEMENTWISE = {
    "Identity",
    "Cast",
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Sigmoid",
    "Tanh",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Clip",
    "Dropout",
    "Softplus",
    "HardSigmoid",
    "Erf",
    "Softmax",
    "LogSoftmax",
}
_BROADCASTING = {"Add", "Sub", "Mul", "Div"}


def _axes(node: ir.Node) -> list[int] | None:
    """Unsqueeze/Squeeze axes, from the attribute (opset < 13) or the constant second input."""
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    return _small_values(node.inputs[1]) if len(node.inputs) > 1 else None


def _follow_axis(node: ir.Node, index: int, axis: int, rank: int) -> tuple[int, int] | None:
    """Where ``axis`` of input ``index`` (of rank ``rank``) lands in ``node``'s first output: (axis, rank)."""
    op = node.op_type
    if op in _ELEMENTWISE and index == 0:
        return axis, rank
    if op in _BROADCASTING:
        other = node.inputs[1 - index]
        other_rank = None if other is None or other.shape is None else len(other.shape)
        if other_rank is None:
            return None
        out_rank = max(rank, other_rank)
        return axis + out_rank - rank, out_rank
    if op == "Transpose" and index == 0:
        perm = list(node.attributes.get_ints("perm", list(range(rank))[::-1]))
        return (perm.index(axis), rank) if axis in perm else None
    if op == "Unsqueeze" and index == 0:
        axes = _axes(node)
        if axes is None:
            return None
        out_rank = rank + len(axes)
        inserted = {a % out_rank for a in axes}
        kept = [a for a in range(out_rank) if a not in inserted]
        return kept[axis], out_rank
    if op == "Squeeze" and index == 0:
        axes = _axes(node)
        if axes is None or axis in {a % rank for a in axes}:
            return None
        return axis - sum(1 for a in axes if a % rank < axis), rank - len(axes)
    if op == "Slice" and index == 0:
        sliced = _small_values(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if sliced is None or axis in {a % rank for a in sliced}:
            return None
        return axis, rank
    return None


def _pinned_size(node: ir.Node, index: int, axis: int, rank: int) -> int | None:
    """The size a weighted op requires of ``axis`` of its input ``index``, where a constant weight fixes it."""
    op = node.op_type
    if op == "MatMul":
        other = _constant_shape(node.inputs[1 - index])
        if other is None or len(other) < 1:
            return None
        if index == 0 and axis == rank - 1:
            return other[-2] if len(other) >= 2 else other[0]
        if index == 1 and axis == rank - 2:
            return other[-1]
        return None
    weight = _constant_shape(node.inputs[1]) if index == 0 and len(node.inputs) > 1 else None
    if weight is None:
        return _broadcast_size(node, index, axis, rank)
    if op == "Gemm" and axis == 1 - node.attributes.get_int("transA", 0):
        return weight[1 if node.attributes.get_int("transB", 0) else 0]
    if op == "Conv" and axis == 1 and len(weight) >= 2:
        return weight[1] * node.attributes.get_int("group", 1)
    if op == "ConvTranspose" and axis == 1:
        return weight[0]
    if op in ("LSTM", "GRU", "RNN") and axis == 2 and len(weight) == 3:
        return weight[2]
    if op in ("BatchNormalization", "InstanceNormalization") and axis == 1:
        return weight[0]
    if op == "LayerNormalization" and axis >= rank - len(weight):
        return weight[axis - rank]
    return _broadcast_size(node, index, axis, rank)


def _broadcast_size(node: ir.Node, index: int, axis: int, rank: int) -> int | None:
    """An elementwise op with a constant operand that is not 1 along ``axis`` pins that axis to it."""
    if node.op_type not in _BROADCASTING:
        return None
    other = _constant_shape(node.inputs[1 - index])
    if other is None:
        return None
    from_right = rank - axis
    if from_right > len(other):
        return None
    size = other[len(other) - from_right]
    return size if size != 1 else None


def pinned_dims(model: ModelLike) -> dict[str, int]:
    """Dynamic dims that a constant weight fixes, ``{dim key: size}``: the feature axis of an input that feeds
    an LSTM, a MatMul or a Conv (through Unsqueeze, Transpose, Relu...) must match the weight's."""
    ir_model = _ir_model(model)
    pinned: dict[str, int] = {}
    for spec, graph_input in zip(input_specs(ir_model), _fed_inputs(ir_model)):
        for axis, dim in enumerate(spec.shape or ()):
            if not is_dynamic(dim) or dim_key(spec, axis) in pinned:
                continue
            size = _first_pin(graph_input, axis, len(spec.shape or ()))
            if size is not None and size > 0:
                pinned[dim_key(spec, axis)] = size
    return pinned


def _fed_inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _first_pin(value: ir.Value, axis: int, rank: int) -> int | None:
    frontier, seen = [(value, axis, rank)], set()
    while frontier:
        current, axis, rank = frontier.pop(0)
        for node, index in current.uses():
            if not _is_standard(node) or (id(node), index, axis) in seen:
                continue
            seen.add((id(node), index, axis))
            size = _pinned_size(node, index, axis, rank)
            if isinstance(size, int):
                return size
            followed = _follow_axis(node, index, axis, rank)
            if followed is not None and node.outputs:
                frontier.append((node.outputs[0], *followed))
    return None


@dataclasses.dataclass(frozen=True)
class GraphHints:
    """What the graph says about its inputs (``read_graph``), read once and shared by every probe."""

    specs: tuple[InputSpec, ...]
    pinned: Mapping[str, int]
    limits: Mapping[str, int]
    values: Mapping[str, tuple[Any, ...]]


def read_graph(model: ModelLike) -> GraphHints:
    ir_model = _ir_model(model)
    specs = tuple(input_specs(ir_model))
    pinned = {**metadata_dims(ir_model, specs), **pinned_dims(ir_model)}  # a weight is surer than a note
    return GraphHints(specs, pinned, index_limits(ir_model), compared_values(ir_model))


_IMAGE_SIZE_KEYS = ("image_size", "img_size", "input_size")


# Metadata comes with the model file, from anyone: a size past this is not believed (seq_len: 100000000000
# would have the synthetic inputs allocate hundreds of GB). The probe's ladder sizes such a dim instead.
MAX_STATED_SIZE = 1 << 14


def metadata_dims(model: ir.Model, specs: Sequence[InputSpec]) -> dict[str, int]:
    """Sizes the model's metadata states: an entry named like a dynamic dim (``seq_len: 128``), or an image
    size (``image_size: 224``) for every height and width; sizes from 1 to ``MAX_STATED_SIZE`` only."""
    stated = {
        key.lower(): int(value)
        for key, value in model.metadata_props.items()
        if value.strip().isdigit() and 0 < int(value) <= MAX_STATED_SIZE
    }
    image_size = next((stated[key] for key in _IMAGE_SIZE_KEYS if key in stated), None)
    sizes = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape or ()):
            key = dim_key(spec, axis)
            if is_dynamic(dim) and key.lower() in stated:
                sizes[key] = stated[key.lower()]
            elif is_dynamic(dim) and image_size and dim_role(spec, axis) == "spatial":
                sizes[key] = image_size
    return sizes
