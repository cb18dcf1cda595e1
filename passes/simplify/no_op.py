"""No-op rules: nodes that copy one of their inputs, and inputs that state what ONNX already defaults to.

Each rule looks at one node and names the value its output equals (or None). Matches are exact: x*1 and
x+0 need identity elements exactly (onnxscript's rules match within 1e-5 and would drop an epsilon such as
the 1e-12 added under a square root), and no broadcast may enlarge x.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxkit.passes.simplify.rewrites import Rewrites, site_name

# The value a node's first output equals, or None when the node does real work.
NoOpRule = Callable[[ir.Node], "ir.Value | None"]

# An end at least this large reaches the end of any dimension that fits in memory.
_END_OF_ANY_DIM = 2**62


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]


def _same_dim(a: int | ir.SymbolicDim, b: int | ir.SymbolicDim) -> bool:
    """Two dims known to be equal: the same number, or the same named symbol."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a == b


def _cast(node: ir.Node) -> ir.Value | None:
    x = node.inputs[0]
    to = node.attributes.get_int("to")
    dtype = None if x is None else x.dtype if x.dtype is not None else _schema_fixed_dtype(x)
    return x if dtype is not None and to is not None and dtype == to else None


@functools.cache
def _fixed_output_types(domain: str, op_type: str) -> tuple[str | None, ...]:
    """Per output of an op, the one tensor type every version of its schema allows (None where it varies).

    Shape inference leaves some ops' outputs untyped (ai.onnx.ml's Scaler, whose output is always float),
    though the schema leaves them no choice; a Cast to that type is then still a no-op.
    """
    versions = [
        schema
        for schema in onnx.defs.get_all_schemas_with_history()
        if schema.name == op_type and schema.domain == domain
    ]
    if not versions:
        return ()
    fixed: list[set[str]] = [set() for _ in range(min(len(schema.outputs) for schema in versions))]
    for schema in versions:
        constraints = {c.type_param_str: list(c.allowed_type_strs) for c in schema.type_constraints}
        for index in range(len(fixed)):
            type_str = schema.outputs[index].type_str
            fixed[index].update(constraints.get(type_str, [type_str]))
    return tuple(next(iter(types)) if len(types) == 1 else None for types in fixed)


_TENSOR_TYPES = {
    f"tensor({name})": dtype
    for name, dtype in (
        ("float", ir.DataType.FLOAT),
        ("double", ir.DataType.DOUBLE),
        ("int64", ir.DataType.INT64),
        ("int32", ir.DataType.INT32),
        ("bool", ir.DataType.BOOL),
        ("string", ir.DataType.STRING),
    )
}


def _schema_fixed_dtype(value: ir.Value) -> ir.DataType | None:
    producer = value.producer()
    if producer is None or value.index() is None:
        return None
    domain = "" if producer.domain == "ai.onnx" else producer.domain
    types = _fixed_output_types(domain, producer.op_type)
    index = value.index()
    return _TENSOR_TYPES.get(types[index] or "") if index is not None and index < len(types) else None


def _transpose(node: ir.Node) -> ir.Value | None:
    perm = node.attributes.get("perm")
    if perm is None or perm.is_ref():
        return None
    ints = list(perm.as_ints())
    return node.inputs[0] if ints == list(range(len(ints))) else None


def _expand(node: ir.Node) -> ir.Value | None:
    """Expand to a shape that broadcasting cannot enlarge x by: each target entry 1 or x's own dim."""
    x, target = node.inputs[0], _constant_ints(_input(node, 1))
    if x is None or x.shape is None or target is None or len(target) > len(x.shape):
        return None
    trailing = x.shape.dims[len(x.shape) - len(target) :]
    return x if all(size == 1 or size == dim for size, dim in zip(target, trailing)) else None


def _slice(node: ir.Node) -> ir.Value | None:
    """A Slice (opset 10+, inputs form) that keeps every element: step 1, from the start to the end of each axis."""
    x = node.inputs[0]
    starts, ends = _constant_ints(_input(node, 1)), _constant_ints(_input(node, 2))
    if x is None or x.shape is None or starts is None or ends is None or len(node.inputs) < 3:
        return None
    axes = _constant_ints(_input(node, 3)) if _input(node, 3) is not None else list(range(len(starts)))
    steps = _constant_ints(_input(node, 4)) if _input(node, 4) is not None else [1] * len(starts)
    if axes is None or steps is None:
        return None
    rank = len(x.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1 or not -rank <= axis < rank:
            return None
        dim = x.shape[axis]
        if not (start == 0 or (isinstance(dim, int) and start <= -dim)):
            return None
        if not (end >= _END_OF_ANY_DIM or (isinstance(dim, int) and end >= dim)):
            return None
    return x


def _pad(node: ir.Node) -> ir.Value | None:
    """Pad by nothing: all-zero pads, as an input (opset 11+) or an attribute (before)."""
    pads_attribute = node.attributes.get("pads")
    if pads_attribute is not None:
        pads = None if pads_attribute.is_ref() else list(pads_attribute.as_ints())
    else:
        pads = _constant_ints(_input(node, 1))
    return node.inputs[0] if pads is not None and not any(pads) else None


def _covers_first_axis(indices: ir.Value | None, data: ir.Value) -> bool:
    """Whether ScatterND indices are [[0], [1], ..., [n-1]] with n the first dim of data."""
    if indices is None or data.shape is None or len(data.shape) == 0:
        return False
    first = data.shape[0]
    if indices.const_value is not None:
        return isinstance(first, int) and indices.const_value.numpy().tolist() == [[i] for i in range(first)]
    # Exporters build the same indices at run time: Unsqueeze(Range(0, Gather(Shape(d), axis), 1), -1).
    unsqueeze = indices.producer()
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or unsqueeze.domain != "":
        return False
    axes = _constant_ints(_input(unsqueeze, 1)) or list(unsqueeze.attributes.get_ints("axes", []))
    if axes not in ([-1], [1]):
        return False
    range_node = unsqueeze.inputs[0].producer() if unsqueeze.inputs[0] is not None else None
    if range_node is None or range_node.op_type != "Range" or len(range_node.inputs) != 3:
        return False
    if _constant_ints(range_node.inputs[0]) != [0] or _constant_ints(range_node.inputs[2]) != [1]:
        return False
    gather = range_node.inputs[1].producer() if range_node.inputs[1] is not None else None
    if gather is None or gather.op_type != "Gather" or gather.attributes.get_int("axis", 0) != 0:
        return False
    axis = _constant_ints(gather.inputs[1])
    shape_node = gather.inputs[0].producer() if gather.inputs[0] is not None else None
    if axis is None or len(axis) != 1 or shape_node is None or shape_node.op_type != "Shape":
        return False
    if shape_node.attributes.get_int("start", 0) != 0 or "end" in shape_node.attributes:
        return False
    source = shape_node.inputs[0]
    if source is None or source.shape is None or not -len(source.shape) <= axis[0] < len(source.shape):
        return False
    return _same_dim(source.shape[axis[0]], first)


def _scatter_nd(node: ir.Node) -> ir.Value | None:
    """ScatterND that overwrites every row of data: its output is the updates."""
    data, updates = node.inputs[0], _input(node, 2)
    if data is None or updates is None or node.attributes.get_string("reduction", "none") != "none":
        return None
    return updates if _covers_first_axis(_input(node, 1), data) else None


def _is_identity_element(constant: ir.Value | None, identity: float | bool, x: ir.Value | None) -> bool:
    """Whether ``x op constant`` is ``x``: every element equals ``identity`` exactly, and broadcasting
    cannot enlarge ``x``."""
    if constant is None or x is None or constant.const_value is None or constant.const_value.size == 0:
        return False
    array = constant.const_value.numpy()
    if not np.all(array == identity):
        return False
    if array.ndim == 0:
        return True
    if x.shape is None or len(x.shape) < array.ndim:
        return False
    trailing = x.shape.dims[len(x.shape) - array.ndim :]
    return all(size == 1 or size == dim for size, dim in zip(array.shape, trailing))


def _identity_element(identity: float | bool, commutes: bool) -> NoOpRule:
    def rule(node: ir.Node) -> ir.Value | None:
        if len(node.inputs) != 2:
            return None
        x, c = node.inputs
        if _is_identity_element(c, identity, x):
            return x
        if commutes and _is_identity_element(x, identity, c):
            return c
        return None

    return rule


_ARITHMETIC = "arithmetic no-ops (x*1, x+0, x-0, x/1, x and true, x or false)"

# op type → (rule name, statistic, rule). Rule names match the folder's no-op replacements of the same op.
NO_OP_RULES: dict[str, tuple[str, str, NoOpRule]] = {
    "Cast": ("no-op-cast", "no-op Cast", _cast),
    "Transpose": ("no-op-transpose", "no-op Transpose", _transpose),
    "Expand": ("no-op-expand", "no-op Expand", _expand),
    "Slice": ("no-op-slice", "no-op Slice", _slice),
    "Pad": ("no-op-pad", "no-op Pad", _pad),
    "ScatterND": ("no-op-scatternd", "no-op ScatterND", _scatter_nd),
    "Mul": ("no-op-arithmetic", _ARITHMETIC, _identity_element(1, commutes=True)),
    "Add": ("no-op-arithmetic", _ARITHMETIC, _identity_element(0, commutes=True)),
    "Sub": ("no-op-arithmetic", _ARITHMETIC, _identity_element(0, commutes=False)),
    "Div": ("no-op-arithmetic", _ARITHMETIC, _identity_element(1, commutes=False)),
    "And": ("no-op-arithmetic", _ARITHMETIC, _identity_element(True, commutes=True)),
    "Or": ("no-op-arithmetic", _ARITHMETIC, _identity_element(False, commutes=True)),
}


def bypass(node: ir.Node, source: ir.Value) -> None:
    """Replace ``node`` by Identity(source); Identity elimination then takes it out, keeping output names."""
    assert node.graph is not None, "bypass() takes a node of a graph: the rules only visit nodes of the graphs"
    identity = ir.node("Identity", inputs=[source])
    ir.convenience.replace_nodes_and_values(node.graph, node, [node], [identity], node.outputs[:1], identity.outputs)


def remove_no_ops(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites, opset: int) -> None:
    """Apply the no-op rules, and Dropout's before opset 12 (it has no training mode: at inference it copies)."""
    for node in [node for graph in graphs for node in graph]:
        if node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        if node.op_type == "Dropout" and opset < 12:
            rule, what, source = "remove-dropout", "Dropout", node.inputs[0]
        elif node.op_type in NO_OP_RULES:
            rule, what, check = NO_OP_RULES[node.op_type]
            source = check(node)
        else:
            continue
        if source is None or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            continue
        site = site_name(node)
        if rewrites.allows(rule, site):
            bypass(node, source)
            rewrites.record(rule, site, "removed", what)


# Zero initial states of recurrent layers. Exporters feed LSTM/GRU/RNN an explicit zero initial state,
# built at run time from the batch size; ONNX defines a missing initial state as zeros, so the input and
# the shape computation behind it go.
_INITIAL_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
# Ops whose output is all zeros whenever their first input is.
_ZERO_PRESERVING = frozenset(
    {
        "Expand",
        "Tile",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Transpose",
        "Slice",
        "Identity",
        "Cast",
        "Flatten",
        "Gather",
        "Concat",
    }
)


def _is_all_zeros(value: ir.Value | None, depth: int = 0) -> bool:
    if value is None or depth > 16:
        return False
    if value.const_value is not None:
        return value.const_value.size > 0 and not np.any(value.const_value.numpy())
    producer = value.producer()
    if producer is None or producer.domain != "":
        return False
    if producer.op_type == "ConstantOfShape":
        fill = producer.attributes.get("value")
        return fill is None or not np.any(fill.as_tensor().numpy())
    if producer.op_type == "Concat":
        return all(_is_all_zeros(v, depth + 1) for v in producer.inputs)
    return producer.op_type in _ZERO_PRESERVING and _is_all_zeros(producer.inputs[0], depth + 1)


def drop_zero_initial_states(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
    for node in (node for graph in graphs for node in graph):
        if node.domain != "" or node.op_type not in _INITIAL_STATE_INPUTS:
            continue
        for index in _INITIAL_STATE_INPUTS[node.op_type]:
            if index < len(node.inputs) and node.inputs[index] is not None and _is_all_zeros(node.inputs[index]):
                site = site_name(node)
                if rewrites.allows("drop-zero-initial-state", site):
                    node.replace_input_with(index, None)
                    rewrites.record("drop-zero-initial-state", site, "removed", "zero initial states of LSTM/GRU/RNN")
