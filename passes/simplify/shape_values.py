"""Shape arithmetic the folder evaluates: values computed from tensor shapes, tracked dim by dim.

Exporters compute Reshape targets at run time from Shape → Gather/Slice → Unsqueeze → Concat chains.
onnxscript's folder tracks shape values through Shape, Gather (1-D indices) and Concat; these evaluators
extend that to scalar Gather, Slice, Unsqueeze, integer arithmetic, Equal and Where, so static parts fold
to constants and a Reshape whose target is known up to dims it copies from its input gets a constant target
(0 = copy that dim, -1 = the one dim left). They run in onnxkit's folder only, after onnxscript's own
evaluators: onnxscript's registry is process-wide (torch.onnx's exporter uses it too).

A shape value is kept as an ``ir.Shape`` of its elements; a 0-d value is kept as a one-element shape, as
onnxscript's own Add evaluator does. Every evaluator takes (node, op builder, shape values) and returns the
replacement's outputs, or None.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from onnxkit.passes.simplify._onnxscript import ShapeValues

Dims = list  # of int | ir.SymbolicDim

# Shape values live in int64 tensors, or int32 ones after a Cast (TensorFlow exporters compute in int32).
_INTEGER_SHAPE_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def _dims(value: ir.Value | None, state: ShapeValues) -> Dims | None:
    if value is None:
        return None
    if (const := value.const_value) is not None:
        if const.dtype not in _INTEGER_SHAPE_TYPES or const.size > 64 or len(const.shape) > 1:
            return None
        return [int(v) for v in const.numpy().reshape(-1)]
    sym = state.get_sym_value(value)
    return list(sym.dims) if isinstance(sym, ir.Shape) else None


def _rank(value: ir.Value | None) -> int | None:
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return None if value.shape is None else len(value.shape)


def _shape_result(node: ir.Node, op, state: ShapeValues, dims: Dims, rank: int | None) -> ir.Value | None:
    """Record the output's shape value; a fully known one becomes a constant of the output's rank."""
    state.set_sym_value(node.outputs[0], ir.Shape(dims))
    if rank not in (0, 1) or not all(isinstance(d, int) for d in dims):
        return None
    array = np.array(dims, dtype=_result_dtype(node).numpy())
    # ir.Tensor, not ir.tensor: the latter's runtime Protocol checks cost a hundred times the tensor.
    return op.Constant(value=ir.Tensor(array.reshape(()) if rank == 0 else array))


def _result_dtype(node: ir.Node) -> ir.DataType:
    """The integer type of a shape-value result: the output's, else the first input's, else int64."""
    for value in (node.outputs[0], node.inputs[0]):
        if value is not None and value.dtype in _INTEGER_SHAPE_TYPES:
            return value.dtype
    return ir.DataType.INT64


def _unknown() -> ir.SymbolicDim:
    return ir.SymbolicDim(None)


# op type → [(first opset, last opset, evaluator)]; evaluators take (node, op builder, folder state).
_SHAPE_EVALUATORS: dict[str, list[tuple[int, int, Callable]]] = collections.defaultdict(list)


def _evaluator(op_type: str, first: int = 1, last: int = 10**6) -> Callable[[Callable], Callable]:
    def register(function: Callable) -> Callable:
        _SHAPE_EVALUATORS[op_type].append((first, last, function))
        return function

    return register


@_evaluator("Gather")
def _gather_shape_value(node: ir.Node, op, state: ShapeValues):
    """``Gather(shape, scalar or 1-D indices)``: onnxscript's evaluator only takes 1-D indices, and only from a
    node that spells out ``axis=0`` (tf2onnx leaves the default unsaid, onnxscript then reads no axis)."""
    data, indices = node.inputs[0], node.inputs[1]
    dims = _dims(data, state)
    if dims is None or indices is None or indices.const_value is None or _rank(data) != 1:
        return None
    if node.attributes.get_int("axis", 0) != 0:
        return None
    index = indices.const_value.numpy()
    if index.ndim > 1 or not all(-len(dims) <= int(i) < len(dims) for i in index.reshape(-1)):
        return None
    return _shape_result(node, op, state, [dims[int(i)] for i in index.reshape(-1)], rank=index.ndim)


@_evaluator("Cast")
def _cast_shape_value(node: ir.Node, op, state: ShapeValues):
    """A shape value cast between int64 and int32 keeps its dims (they fit either type)."""
    data = node.inputs[0]
    dims = _dims(data, state)
    to = node.attributes.get_int("to")
    if (
        dims is None
        or data is None
        or data.const_value is not None
        or to not in _INTEGER_SHAPE_TYPES
        or _rank(data) not in (0, 1)
    ):
        return None
    return _shape_result(node, op, state, dims, rank=_rank(data))


@_evaluator("Concat")
def _concat_shape_values(node: ir.Node, op, state: ShapeValues):
    """Concat of 1-D shape values; onnxscript's own evaluator reads int64 constants only."""
    if node.attributes.get_int("axis") not in (0, -1) or not node.inputs:
        return None
    inputs = [value for value in node.inputs if value is not None]
    parts = [part for value in inputs if (part := _dims(value, state)) is not None]
    if len(parts) != len(node.inputs) or any(_rank(value) != 1 for value in inputs):
        return None
    if all(value.const_value is not None for value in inputs):
        return None  # fully constant: ordinary folding does it
    return _shape_result(node, op, state, [dim for part in parts for dim in part], rank=1)


@_evaluator("Slice", first=10)
def _slice_shape_value(node: ir.Node, op, state: ShapeValues):
    data = node.inputs[0]
    dims = _dims(data, state)
    if dims is None or data is None or _rank(data) != 1 or data.const_value is not None:
        return None
    arguments = [node.inputs[i] if i < len(node.inputs) else None for i in range(1, 5)]
    values: list[int | None] = []
    for argument in arguments:
        if argument is None:
            values.append(None)
            continue
        if argument.const_value is None or argument.const_value.size != 1:
            return None
        values.append(int(argument.const_value.numpy().reshape(-1)[0]))
    start, end, axis, step = values
    if axis not in (None, 0, -1) or step == 0:
        return None
    # Python's slice clamps out-of-range starts and ends the way ONNX Slice does, for either sign of step.
    return _shape_result(node, op, state, dims[slice(start, end, step)], rank=1)


def _unsqueeze_shape_value(node: ir.Node, op, state: ShapeValues, axes: list[int] | None):
    data = node.inputs[0]
    dims = _dims(data, state)
    if dims is None or data is None or data.const_value is not None or _rank(data) != 0 or axes not in ([0], [-1]):
        return None
    return _shape_result(node, op, state, dims, rank=1)


@_evaluator("Unsqueeze", first=13)
def _unsqueeze13_shape_value(node: ir.Node, op, state: ShapeValues):
    axes = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is None or axes.const_value is None:
        return None
    return _unsqueeze_shape_value(node, op, state, [int(a) for a in axes.const_value.numpy().reshape(-1)])


@_evaluator("Unsqueeze", last=12)
def _unsqueeze1_shape_value(node: ir.Node, op, state: ShapeValues):
    axes = node.attributes.get("axes")
    return None if axes is None else _unsqueeze_shape_value(node, op, state, list(axes.as_ints()))


def _broadcast_shape_values(node: ir.Node, state: ShapeValues) -> tuple[list, list, int] | None:
    """The two inputs' known dims broadcast to one length, and the result's rank (0 or 1); None if unknown.

    Fully constant inputs are left to ordinary folding.
    """
    left, right = node.inputs[0], node.inputs[1]
    if left is None or right is None or (left.const_value is not None and right.const_value is not None):
        return None
    a, b = _dims(left, state), _dims(right, state)
    left_rank, right_rank = _rank(left), _rank(right)
    if a is None or b is None or left_rank is None or right_rank is None:
        return None
    rank = max(left_rank, right_rank)
    if rank > 1:
        return None
    if len(a) != len(b):
        if 1 not in (len(a), len(b)):
            return None
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
    return a, b, rank


def _arithmetic_shape_value(node: ir.Node, op, state: ShapeValues, *, combine: Callable):
    broadcast = _broadcast_shape_values(node, state)
    if broadcast is None:
        return None
    a, b, rank = broadcast
    return _shape_result(node, op, state, [combine(x, y) for x, y in zip(a, b)], rank=rank)


def _known(x: int | ir.SymbolicDim) -> bool:
    return isinstance(x, int) or x.value is not None


def _mul_dims(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return x * y
    if x == 1 and _known(y):
        return y
    if y == 1 and _known(x):
        return x
    return _unknown()


def _div_dims(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return int(x / y) if y else _unknown()  # integer Div truncates toward zero
    return x if y == 1 and _known(x) else _unknown()


def _sub_dims(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return x - y
    return x if y == 0 and _known(x) else _unknown()


def _max_dims(x, y):
    """TensorFlow exporters broadcast two shapes by their elementwise Max: equal dims stay what they are."""
    if isinstance(x, int) and isinstance(y, int):
        return max(x, y)
    return x if x == y and _known(x) else _unknown()


def _min_dims(x, y):
    if isinstance(x, int) and isinstance(y, int):
        return min(x, y)
    return x if x == y and _known(x) else _unknown()


def _two_input_arithmetic(node: ir.Node, op, state: ShapeValues, *, combine: Callable):
    """Max and Min take any number of inputs: only two are read as shape values."""
    return _arithmetic_shape_value(node, op, state, combine=combine) if len(node.inputs) == 2 else None


for _op_type, _combine in (("Mul", _mul_dims), ("Div", _div_dims), ("Sub", _sub_dims)):
    _evaluator(_op_type)(functools.partial(_arithmetic_shape_value, combine=_combine))
for _op_type, _combine in (("Max", _max_dims), ("Min", _min_dims)):
    _evaluator(_op_type)(functools.partial(_two_input_arithmetic, combine=_combine))


_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_dimension(dim: int | ir.SymbolicDim) -> bool:
    """Whether a shape-value element is known to be a dimension, hence >= 0: a plain name such as
    ``batch`` or ``unk__3``. onnxscript's Add evaluator names sums like ``batch+-1``, which may be negative."""
    return (isinstance(dim, int) and dim >= 0) or (
        isinstance(dim, ir.SymbolicDim) and bool(dim.value and _DIM_NAME.match(dim.value))
    )


def _equal_dims(x, y) -> bool | None:
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if isinstance(x, ir.SymbolicDim) and x == y and _is_dimension(x):
        return True
    if (_is_dimension(x) and isinstance(y, int) and y < 0) or (_is_dimension(y) and isinstance(x, int) and x < 0):
        return False  # a dimension never equals a negative number (exporters test targets against -1)
    return None


@_evaluator("Equal")
def _equal_shape_values(node: ir.Node, op, state: ShapeValues):
    broadcast = _broadcast_shape_values(node, state)
    if broadcast is None:
        return None
    a, b, rank = broadcast
    equal = [_equal_dims(x, y) for x, y in zip(a, b)]
    if None in equal:
        return None
    array = np.array(equal, dtype=bool)
    return op.Constant(value=ir.Tensor(array.reshape(()) if rank == 0 else array))


@_evaluator("Where")
def _where_shape_values(node: ir.Node, op, state: ShapeValues):
    condition, left, right = node.inputs
    if condition is None or condition.const_value is None or left is None or right is None:
        return None
    if left.const_value is not None and right.const_value is not None:
        return None  # fully constant: ordinary folding does it
    a, b = _dims(left, state), _dims(right, state)
    chosen = condition.const_value.numpy().reshape(-1).tolist()
    if a is None or b is None or _rank(left) != 1 or _rank(right) != 1:
        return None
    size = max(len(a), len(b), len(chosen))
    if any(len(v) not in (1, size) for v in (a, b, chosen)):
        return None
    a, b, chosen = (v * size if len(v) == 1 else v for v in (a, b, chosen))
    return _shape_result(node, op, state, [x if pick else y for pick, x, y in zip(chosen, a, b)], rank=1)


@_evaluator("Reshape", first=5)
def _materialize_reshape_target(node: ir.Node, op, state: ShapeValues):
    """A Reshape whose computed target is known up to dims copied from its input gets a constant target.

    Entries equal to the input's dim at the same position become 0 (copy), which is exact under
    ``allowzero=0``; a single entry left unknown becomes -1 when every other entry is a known non-zero
    constant, so that -1 is unambiguous even for empty tensors.
    """
    data, target = node.inputs[0], node.inputs[1]
    if data is None or target is None or target.const_value is not None:
        return None
    dims = _dims(target, state)
    if dims is None:
        return None
    allow_zero = node.attributes.get_int("allowzero", 0)
    input_dims = list(data.shape.dims) if data.shape is not None else []
    new_target: list[int | None] = []
    for i, dim in enumerate(dims):
        if isinstance(dim, int):
            new_target.append(dim)
        elif not allow_zero and dim.value is not None and i < len(input_dims) and input_dims[i] == dim:
            new_target.append(0)
        else:
            new_target.append(None)
    unknown = [i for i, d in enumerate(new_target) if d is None]
    if len(unknown) > 1:
        return None
    if unknown:
        others = [d for d in new_target if d is not None]
        if any(d <= 0 for d in others) or (allow_zero and 0 in others):
            return None
        new_target[unknown[0]] = -1
    constant = op.Constant(value=ir.Tensor(np.array(new_target, dtype=np.int64)))
    # allowzero exists from opset 14 on: the new Reshape states it only where the original did.
    attributes = {"allowzero": allow_zero} if "allowzero" in node.attributes else {}
    return op.Reshape(data, constant, **attributes)


@_evaluator("Reshape", first=5)
def _copy_instead_of_inferring(node: ir.Node, op, state: ShapeValues):
    """A constant target whose ``-1`` can only be the input's dimension at that same index gets a 0 (copy)
    there instead: ``[-1, 1024]`` on ``[N, 1, 1024]`` becomes ``[0, 1024]``.

    The result is the same wherever the original runs (the ``-1`` is the element count over the other
    entries, which is ``N``; a 0 copies ``N``), and it also runs for an empty batch. What it gains: ONNX
    shape inference carries a copied dimension's name on, and cannot name an inferred one, so values
    computed later from this one (a Gemm on it, a Shape of it) keep the name and their targets fold.
    """
    data, target = node.inputs[0], node.inputs[1]
    if data is None or target is None or target.const_value is None or data.shape is None:
        return None
    producer = data.producer()
    if producer is not None and producer.op_type == "Reshape" and producer.domain in ("", "ai.onnx"):
        return None  # the Reshape pair merges first (a 0 copying an unknown dim would keep both)
    sizes = _dims(target, state)
    if node.attributes.get_int("allowzero", 0) or sizes is None or sizes.count(-1) != 1:
        return None
    input_dims = list(data.shape.dims)
    inferred = sizes.index(-1)
    if inferred >= len(input_dims) or isinstance(input_dims[inferred], int) or not _is_dimension(input_dims[inferred]):
        return None
    others = []
    for i, size in enumerate(sizes):
        if i == inferred:
            continue
        if size == 0 and i < len(input_dims):
            others.append(input_dims[i])  # a 0 copies the input's dimension at its index
        elif size > 0:
            others.append(size)
        else:
            return None
    if _cancel(input_dims, others) != [input_dims[inferred]]:
        return None
    new_target = [0 if i == inferred else size for i, size in enumerate(sizes)]
    constant = op.Constant(value=ir.Tensor(np.array(new_target, dtype=np.int64)))
    attributes = {"allowzero": 0} if "allowzero" in node.attributes else {}
    return op.Reshape(data, constant, **attributes)


def _cancel(dims: Dims, divisors: Dims) -> Dims | None:
    """The named dimensions of ``dims`` left once each of ``divisors`` is divided out (a named one cancels
    the same name; the known sizes' products must match); None where that division is not exact or a
    dimension is unknown or 0."""
    left: Dims = []
    for dim in dims:
        if not _is_dimension(dim) or dim == 0:
            return None
        if not isinstance(dim, int):
            left.append(dim)
    known_product = 1
    for dim in divisors:
        if isinstance(dim, int):
            known_product *= dim
            continue
        if not _is_dimension(dim) or dim not in left:
            return None
        left.remove(dim)
    if known_product != int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64)):
        return None
    return left


def evaluators(op_type: str, opset: int) -> list[Callable]:
    """The shape-value evaluators for ``op_type`` that apply at ``opset``."""
    return [evaluator for first, last, evaluator in _SHAPE_EVALUATORS.get(op_type, ()) if first <= opset <= last]
