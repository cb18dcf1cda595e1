"""``simplify``: constant folding that never bloats the model, then removal of everything that computes nothing.

Built from onnxscript's constant folder and rewrite rules and onnx_ir's common passes. onnxkit adds what
they lack:

- a size limit in bytes, so Tile/Expand/ConstantOfShape folds cannot inflate the model;
- shape arithmetic: Shape → Gather/Slice → Unsqueeze → Concat chains fold, and a Reshape whose target is
  computed at run time gets a constant one (0 copies a dynamic dim), so dynamic models shed their shape
  subgraphs while their dims stay dynamic;
- exact no-op rules (x*1, x+0, ... match only exact identity elements; onnxscript's match within 1e-5 and
  would drop an epsilon), no-op Pad and Slice without optional inputs, zero LSTM/GRU/RNN initial states;
- common-subexpression elimination inside If/Loop/Scan bodies and functions;
- Identity elimination that keeps every output name, also where an output aliases another output or an
  outer-scope value;
- a guard that keeps declared output shapes out of every decision: a model whose declared output shape
  is wrong keeps computing the real one, and keeps its declaration;
- statistics per category and an honest ``modified`` (the model is compared before and after).

``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead, imported only then.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import constant_folding
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    no_op_cast_rule,
    no_op_dynamic_scatter_nd_rule,
    no_op_expand_rule,
    no_op_static_scatter_nd_rule,
    no_op_transpose_rule,
)

from onnxkit import modelio
from onnxkit.errors import PassFailedError, SpecError
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import all_nodes, eliminate_identities, graph_likes, structural_fingerprint

Backend = Literal["onnxkit", "onnxsim", "onnxoptimizer", "onnxslim"]

# Each round folds, removes no-ops and merges duplicates; a later round sees what an earlier one exposed.
# Real models settle in two or three rounds.
MAX_ROUNDS = 10


@dataclasses.dataclass(frozen=True)
class SimplifyOptions:
    # A folded constant may exceed this many bytes only when folding frees at least as many (a Transpose
    # of a weight does; a Tile or Expand of a small tensor does not).
    max_constant_bytes: int = 1 << 20
    backend: Backend = "onnxkit"

    def __post_init__(self) -> None:
        if self.max_constant_bytes < 0:
            raise ValueError("max_constant_bytes must be >= 0")


class SimplifyPass(Pass):
    """Fold constants (size-limited), infer shapes, remove dead, Identity and no-op nodes, merge duplicates.

    Folding never creates a constant larger than ``max_constant_bytes`` unless it frees at least as much.
    No-op Cast/Reshape/Transpose/Pad/Slice/Expand, inference-mode Dropout, x*1, x+0 and the like become
    nothing; duplicate initializers and common subexpressions are merged; Constant nodes become
    initializers. All of it also runs inside If/Loop/Scan bodies and local functions. Graph input and
    output names, order and declared shapes are kept; dynamic dimensions stay dynamic.
    ``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead (it must be installed).
    """

    name = "simplify"
    kind = "exact"
    Options = SimplifyOptions

    @property
    def in_place(self) -> bool:
        # The peers work on protobufs and hand back a new model.
        return self.options.backend == "onnxkit"

    @property
    def changes_input(self) -> bool:
        return self.in_place

    def call(self, model: ir.Model) -> PassResult:
        if self.options.backend != "onnxkit":
            return run_peer(self.options.backend, model)
        return _Simplifier(model, self.options.max_constant_bytes).run()


# ---------------------------------------------------------------------------------------------------------
# No-op rewrites: nodes that copy their input, and inputs that state a default


def _no_op_pad_check(context, x: ir.Value, pads: ir.Value, **_) -> bool:
    del context, x
    value = pads.const_value
    return value is not None and not np.any(value.numpy())


def _no_op_pad_pattern(op, x, pads):
    return op.Pad(x, pads, _allow_other_inputs=True)


def _to_identity(op, x, **_):
    return op.Identity(x)


# Pad with all-zero pads copies its input; onnxscript has no rule for it. (opset < 11 Pad keeps pads in an
# attribute; torch and current converters emit the input form.)
_no_op_pad_rule = pattern.RewriteRule(_no_op_pad_pattern, _to_identity, _no_op_pad_check)


def _is_identity_element(constant: ir.Value, identity: float | bool, x: ir.Value) -> bool:
    """Whether ``x op constant`` is ``x``: every element equals ``identity`` exactly, and broadcasting
    cannot enlarge ``x``. (onnxscript's x*1 / x+0 rules match within a tolerance, which would drop an
    epsilon such as the 1e-12 added under a square root.)"""
    value = constant.const_value
    if value is None or value.size == 0:
        return False
    array = value.numpy()
    if not np.all(array == identity):
        return False
    if array.ndim == 0:
        return True
    if x.shape is None or len(x.shape) < array.ndim:
        return False
    trailing = x.shape.dims[len(x.shape) - array.ndim:]
    return all(size == 1 or size == dim for size, dim in zip(array.shape, trailing))


def _identity_element_rules(op_type: str, identity: float | bool, commutes: bool) -> list[pattern.RewriteRule]:
    def check(context, x: ir.Value, c: ir.Value, **_) -> bool:
        del context
        return _is_identity_element(c, identity, x)

    rules = [pattern.RewriteRule(lambda op, x, c: getattr(op, op_type)(x, c), _to_identity, check)]
    if commutes:
        rules.append(pattern.RewriteRule(lambda op, x, c: getattr(op, op_type)(c, x), _to_identity, check))
    return rules


def _remove_legacy_dropout(model: ir.Model) -> int:
    """Dropout before opset 12 has no training mode: at inference it copies its input. (From opset 12 on,
    the folder decides from the training_mode and ratio inputs.)"""
    if model.opset_imports.get("", 1) >= 12:
        return 0
    removed = 0
    for node in list(all_nodes(model)):
        if node.op_type != "Dropout" or node.domain != "" or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            continue
        identity = ir.node("Identity", inputs=[node.inputs[0]])
        ir.convenience.replace_nodes_and_values(node.graph, node, [node], [identity], node.outputs[:1],
                                                identity.outputs)
        removed += 1
    return removed


# An end at least this large reaches the end of any dimension that fits in memory.
_END_OF_ANY_DIM = 2**62


def _constant_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in value.const_value.numpy().reshape(-1)]


def _no_op_slice_check(context, x: ir.Value, **_) -> bool:
    """A Slice that keeps every element: step 1, from the start to the end of each sliced axis.
    (onnxscript's rules need all five inputs present.)"""
    node = context.root
    inputs = [*node.inputs, *[None] * (5 - len(node.inputs))]
    starts, ends = _constant_ints(inputs[1]), _constant_ints(inputs[2])
    axes = _constant_ints(inputs[3]) if inputs[3] is not None else list(range(len(starts or ())))
    steps = _constant_ints(inputs[4]) if inputs[4] is not None else [1] * len(starts or ())
    if None in (starts, ends, axes, steps) or x.shape is None:
        return False
    rank = len(x.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1 or not -rank <= axis < rank:
            return False
        dim = x.shape[axis]
        static = isinstance(dim, int)
        if not (start == 0 or (static and start <= -dim)):
            return False
        if not (end >= _END_OF_ANY_DIM or (static and end >= dim)):
            return False
    return True


_no_op_slice_rule = pattern.RewriteRule(
    lambda op, x: op.Slice(x, _allow_other_inputs=True), _to_identity, _no_op_slice_check
)


# Zero initial states of recurrent layers. Exporters feed LSTM/GRU/RNN an explicit zero initial state,
# built at run time from the batch size; ONNX defines a missing initial state as zeros, so the input and
# the shape computation behind it go.
_INITIAL_STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
# Ops whose output is all zeros whenever their first input is.
_ZERO_PRESERVING = frozenset({"Expand", "Tile", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Slice",
                              "Identity", "Cast", "Flatten", "Gather", "Concat"})


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


def _drop_zero_initial_states(model: ir.Model) -> int:
    dropped = 0
    for node in all_nodes(model):
        if node.domain != "" or node.op_type not in _INITIAL_STATE_INPUTS:
            continue
        for index in _INITIAL_STATE_INPUTS[node.op_type]:
            if index < len(node.inputs) and node.inputs[index] is not None and _is_all_zeros(node.inputs[index]):
                node.replace_input_with(index, None)
                dropped += 1
    return dropped


# What each rewrite rule removes, as the statistics name it. All of them leave an Identity behind, which
# Identity elimination then takes out.
_NO_OP_RULES: dict[str, list[pattern.RewriteRule]] = {
    "no-op Cast": [no_op_cast_rule],
    "no-op Transpose": [no_op_transpose_rule],
    "no-op Expand": [no_op_expand_rule],
    "no-op Slice": [_no_op_slice_rule],
    "no-op Pad": [_no_op_pad_rule],
    "no-op ScatterND": [no_op_static_scatter_nd_rule, no_op_dynamic_scatter_nd_rule],
    "arithmetic no-ops (x*1, x+0, x-0, x/1, x and true, x or false)": [
        *_identity_element_rules("Mul", 1, commutes=True),
        *_identity_element_rules("Add", 0, commutes=True),
        *_identity_element_rules("Sub", 0, commutes=False),
        *_identity_element_rules("Div", 1, commutes=False),
        *_identity_element_rules("And", True, commutes=True),
        *_identity_element_rules("Or", False, commutes=True),
    ],
}


# ---------------------------------------------------------------------------------------------------------
# Shape arithmetic. Exporters compute Reshape targets at run time from Shape → Gather/Slice → Unsqueeze →
# Concat chains. onnxscript's folder tracks shape values through Shape, Gather (1-D indices) and Concat;
# these evaluators extend that to scalar Gather, Slice, Unsqueeze and integer arithmetic, so static parts
# fold to constants and a Reshape whose target is known up to dims it copies from its input gets a
# constant target (0 = copy that dim, -1 = the one dim left). They run in onnxkit's folder only, after
# onnxscript's own evaluators: onnxscript's registry is process-wide (torch.onnx's exporter uses it too).
#
# A shape value is kept as an ``ir.Shape`` of its elements; a 0-d value is kept as a one-element shape,
# as onnxscript's own Add evaluator does.

Dims = list  # of int | ir.SymbolicDim


def _dims(value: ir.Value | None, state: constant_folding.OptimizerState) -> Dims | None:
    if value is None:
        return None
    if (const := value.const_value) is not None:
        if const.dtype != ir.DataType.INT64 or const.size > 64 or len(const.shape) > 1:
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


def _shape_result(node: ir.Node, op, state: constant_folding.OptimizerState, dims: Dims,
                  rank: int | None) -> ir.Value | None:
    """Record the output's shape value; a fully known one becomes a constant of the output's rank."""
    state.set_sym_value(node.outputs[0], ir.Shape(dims))
    if rank not in (0, 1) or not all(isinstance(d, int) for d in dims):
        return None
    array = np.array(dims, dtype=np.int64)
    return op.Constant(value=ir.tensor(array.reshape(()) if rank == 0 else array))


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
def _gather_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState):
    """``Gather(shape, scalar index)``: onnxscript's evaluator only takes 1-D indices."""
    data, indices = node.inputs[0], node.inputs[1]
    dims = _dims(data, state)
    if dims is None or indices is None or indices.const_value is None or _rank(data) != 1:
        return None
    if node.attributes.get_int("axis", 0) != 0:
        return None
    index = indices.const_value.numpy()
    if index.ndim != 0 or not -len(dims) <= int(index) < len(dims):
        return None
    return _shape_result(node, op, state, [dims[int(index)]], rank=0)


@_evaluator("Slice", first=10)
def _slice_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState):
    data = node.inputs[0]
    dims = _dims(data, state)
    if dims is None or _rank(data) != 1 or data.const_value is not None:
        return None
    arguments = [node.inputs[i] if i < len(node.inputs) else None for i in range(1, 5)]
    values = []
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


def _unsqueeze_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState, axes: list[int] | None):
    data = node.inputs[0]
    dims = _dims(data, state)
    if dims is None or data.const_value is not None or _rank(data) != 0 or axes not in ([0], [-1]):
        return None
    return _shape_result(node, op, state, dims, rank=1)


@_evaluator("Unsqueeze", first=13)
def _unsqueeze13_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState):
    axes = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is None or axes.const_value is None:
        return None
    return _unsqueeze_shape_value(node, op, state, [int(a) for a in axes.const_value.numpy().reshape(-1)])


@_evaluator("Unsqueeze", last=12)
def _unsqueeze1_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState):
    axes = node.attributes.get("axes")
    return None if axes is None else _unsqueeze_shape_value(node, op, state, list(axes.as_ints()))


def _broadcast_shape_values(node: ir.Node, state: constant_folding.OptimizerState
                            ) -> tuple[list, list, int] | None:
    """The two inputs' known dims broadcast to one length, and the result's rank (0 or 1); None if unknown.

    Fully constant inputs are left to ordinary folding.
    """
    left, right = node.inputs[0], node.inputs[1]
    if left is None or right is None or (left.const_value is not None and right.const_value is not None):
        return None
    a, b = _dims(left, state), _dims(right, state)
    ranks = (_rank(left), _rank(right))
    if a is None or b is None or None in ranks or max(ranks) > 1:
        return None
    if len(a) != len(b):
        if 1 not in (len(a), len(b)):
            return None
        a, b = (a * len(b), b) if len(a) == 1 else (a, b * len(a))
    return a, b, max(ranks)


def _arithmetic_shape_value(node: ir.Node, op, state: constant_folding.OptimizerState, *, combine: Callable):
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


for _op_type, _combine in (("Mul", _mul_dims), ("Div", _div_dims), ("Sub", _sub_dims)):
    _evaluator(_op_type)(functools.partial(_arithmetic_shape_value, combine=_combine))


_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _is_dimension(dim: int | ir.SymbolicDim) -> bool:
    """Whether a shape-value element is known to be a dimension, hence >= 0: a plain name such as
    ``batch`` or ``unk__3``. onnxscript's Add evaluator names sums like ``batch+-1``, which may be negative."""
    return isinstance(dim, int) and dim >= 0 or isinstance(dim, ir.SymbolicDim) and bool(
        dim.value and _DIM_NAME.match(dim.value))


def _equal_dims(x, y) -> bool | None:
    if isinstance(x, int) and isinstance(y, int):
        return x == y
    if isinstance(x, ir.SymbolicDim) and x == y and _is_dimension(x):
        return True
    if (_is_dimension(x) and isinstance(y, int) and y < 0) or (_is_dimension(y) and isinstance(x, int) and x < 0):
        return False  # a dimension never equals a negative number (exporters test targets against -1)
    return None


@_evaluator("Equal")
def _equal_shape_values(node: ir.Node, op, state: constant_folding.OptimizerState):
    broadcast = _broadcast_shape_values(node, state)
    if broadcast is None:
        return None
    a, b, rank = broadcast
    equal = [_equal_dims(x, y) for x, y in zip(a, b)]
    if None in equal:
        return None
    array = np.array(equal, dtype=bool)
    return op.Constant(value=ir.tensor(array.reshape(()) if rank == 0 else array))


@_evaluator("Where")
def _where_shape_values(node: ir.Node, op, state: constant_folding.OptimizerState):
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
def _materialize_reshape_target(node: ir.Node, op, state: constant_folding.OptimizerState):
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
    constant = op.Constant(value=ir.tensor(np.array(new_target, dtype=np.int64)))
    return op.Reshape(data, constant, allowzero=allow_zero)


# ---------------------------------------------------------------------------------------------------------
# Folding


# Statistics are counted per (verb, what): "removed 3 no-op Cast".
Tally = collections.Counter[tuple[str, str]]
_VERB_ORDER = ("folded", "inlined", "removed", "merged", "lifted", "simplified")

# onnxscript never folds these. Quantize/Dequantize nodes carry the quantization; ConstantOfShape is kept
# there for size, which the byte limit here already takes care of.
_KEEP_UNFOLDED = frozenset(constant_folding.DEFAULT_CONSTANT_FOLD_BLACKLIST) - {"ConstantOfShape"}


class _SizeAwareFolder(constant_folding.FoldConstantsPass):
    """onnxscript's folder with a limit in bytes, and a tally of what it folded or found to be a no-op."""

    def __init__(self, max_constant_bytes: int, tally: Tally) -> None:
        # onnxscript's own output limit counts elements; ours counts bytes and is enforced here, so its
        # limit is set where it can never be the stricter one.
        super().__init__(
            shape_inference=True,
            input_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=np.iinfo(np.int64).max,
            should_fold=self._should_fold,
        )
        self.max_constant_bytes = max_constant_bytes
        self.tally = tally

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.onnx_opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        return super().call(model)

    def process_node(self, node: ir.Node, is_function: bool) -> constant_folding.Replacement | None:
        try:
            replacement = super().process_node(node, is_function)
        except RuntimeError:
            # onnxscript wraps a crash of one of its evaluators (SplitToSequence with a computed split,
            # in 0.7) in a RuntimeError: that node is left as it is, the rest is still folded.
            return None
        if replacement is not None or node.domain not in ("", "ai.onnx"):
            return replacement
        # onnxscript found nothing to do; the shape evaluators see the node with its inputs' shape values.
        for first, last, evaluator in _SHAPE_EVALUATORS.get(node.op_type, ()):
            if not first <= self.onnx_opset <= last:
                continue
            builder = constant_folding.TapeBuilder()
            outputs = evaluator(node, builder, self._state)  # noqa: SLF001 - the folder's shape values
            if outputs is not None:
                return constant_folding.Replacement([outputs] if isinstance(outputs, ir.Value) else outputs,
                                                    builder.nodes)
        return None

    def _should_fold(self, node: ir.Node) -> bool | None:
        """Decide from the inferred output shapes before evaluating, so a huge Tile is never computed."""
        if node.domain == "" and node.op_type in _KEEP_UNFOLDED:
            return None  # onnxscript's default rules keep these
        output_bytes = _static_nbytes(node.outputs)
        if output_bytes is None:
            return None  # shapes unknown: onnxscript's default rules, then the check on the real result
        return self._fits(node, output_bytes)

    def _fits(self, node: ir.Node, output_bytes: int) -> bool:
        return output_bytes <= self.max_constant_bytes or output_bytes <= _bytes_freed_by_folding(node)

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array: object) -> ir.Tensor | None:
        if isinstance(output_array, np.ndarray) and not output_array.flags.c_contiguous:
            # The reference evaluator may return a view (a Transpose does); tensors need contiguous data.
            output_array = output_array.copy(order="C")
        tensor = super()._prepare_folded_tensor(node, output_name, output_array)
        if tensor is not None and not self._fits(node, tensor.nbytes):
            return None
        return tensor

    def replace_node(self, node: ir.Node, replacement: constant_folding.Replacement, root: ir.Graph | ir.Function) -> None:
        new_ops = [n.op_type for n in replacement.new_nodes]
        if node.op_type == "If":
            self.tally["inlined", "If with a constant condition"] += 1
        elif node.op_type == "Dropout":
            self.tally["removed", "Dropout"] += 1
        elif all(op == "Constant" for op in new_ops):
            self.tally["folded", "nodes into constants"] += 1
        elif new_ops == ["Identity"]:
            self.tally["removed", f"no-op {node.op_type}"] += 1
        elif node.op_type == "Reshape" and new_ops == ["Constant", "Reshape"]:
            self.tally["simplified", "Reshape targets into constants"] += 1
        else:
            self.tally["simplified", node.op_type] += 1
        super().replace_node(node, replacement, root)


def _static_nbytes(values: Sequence[ir.Value | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            continue
        if value.dtype is None or value.shape is None or not value.shape.is_static():
            return None
        if value.dtype == ir.DataType.STRING:
            return None  # unknown until evaluated
        total += math.ceil(value.dtype.bitwidth * math.prod(value.shape.numpy()) / 8)
    return total


def _bytes_freed_by_folding(node: ir.Node) -> int:
    """Bytes of the constant inputs that only this node reads: they disappear when it is folded."""
    freed = 0
    for value in {v for v in node.inputs if v is not None}:
        if value.const_value is not None and len(value.uses()) == 1 and not value.is_graph_output():
            freed += value.const_value.nbytes
    return freed


# ---------------------------------------------------------------------------------------------------------
# The simplifier: rounds of folding and cleanup until nothing changes


def _list_initializers_as_inputs_before_ir4(model: ir.Model) -> None:
    """IR versions 1-3 require every initializer of the main graph to be a graph input too; the lifted and
    folded constants join the inputs there. (Bodies of If/Loop/Scan keep theirs: their inputs are positional.)"""
    if model.ir_version >= 4:
        return
    listed = set(model.graph.inputs)
    for value in model.graph.initializers.values():
        if value not in listed:
            model.graph.inputs.append(value)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Hold back the warnings onnxscript's folder and onnx_ir's passes log for every node or initializer
    they cannot handle (custom ops, sequences, initializers that are inputs): simplify leaves those as
    they are, by design."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _count(model: ir.Model, op_type: str | None = None) -> int:
    return sum(1 for node in all_nodes(model) if op_type is None or (node.op_type == op_type and node.domain == ""))


def _initializer_state(model: ir.Model) -> list[tuple[ir.Value, Any, bool, bool]]:
    """What initializer deduplication reads: each initializer, its tensor, and whether it is a graph input
    or output (those it leaves alone)."""
    return [(value, value.const_value, value.is_graph_input(), value.is_graph_output())
            for graph in model.graphs() for value in graph.initializers.values()]


def _same_objects(state: list[tuple[Any, ...]], other: list[tuple[Any, ...]]) -> bool:
    """Entry by entry the very same objects (True and False are singletons, so the flags compare too)."""
    return len(state) == len(other) and all(a is b for mine, theirs in zip(state, other) for a, b in zip(mine, theirs))


def _count_initializers(model: ir.Model) -> int:
    return sum(len(graph.initializers) for graph in model.graphs())


def _infer_shapes(model: ir.Model) -> None:
    # Not strict: a model with ops ONNX cannot infer (custom domains) keeps what it has for those values.
    common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)


_UNHASHABLE_ATTRIBUTES = frozenset({ir.AttributeType.TYPE_PROTO, ir.AttributeType.TYPE_PROTOS})


@dataclasses.dataclass
class _DeclaredOutput:
    graph: ir.Graph
    index: int
    name: str
    shape: ir.Shape | None


class _Simplifier:
    """One run of simplify on one model: rounds of folding and cleanup until nothing changes."""

    def __init__(self, model: ir.Model, max_constant_bytes: int) -> None:
        self.model = model
        self.max_constant_bytes = max_constant_bytes
        self.tally: Tally = collections.Counter()
        self._deduplicated: list[tuple[ir.Value, Any, bool, bool]] | None = None

    def run(self) -> PassResult:
        with _quiet_loggers(constant_folding.logger.name, common.shape_inference.logger.name,
                            common.initializer_deduplication.logger.name):
            return self._run()

    def _run(self) -> PassResult:
        model = self.model
        before = structural_fingerprint(model)
        original_identities = [n for n in all_nodes(model) if n.op_type == "Identity" and n.domain == ""]
        declared = self._hide_declared_output_shapes()
        try:
            for _ in range(MAX_ROUNDS):
                round_start = structural_fingerprint(model)
                self._round()
                if structural_fingerprint(model) == round_start:
                    break
            common.RemoveUnusedFunctionsPass()(model)
            common.RemoveUnusedOpsetsPass()(model)
            _list_initializers_as_inputs_before_ir4(model)
            _infer_shapes(model)
        finally:
            self._restore_declared_outputs(declared)
        remaining = set(map(id, all_nodes(model)))
        if removed := sum(1 for n in original_identities if id(n) not in remaining):
            self.tally["removed", "Identity"] += removed
        modified = structural_fingerprint(model) != before
        return PassResult(model, modified, self._stats() if modified else [])

    def _round(self) -> None:
        model, tally = self.model, self.tally
        # ONNX shape inference names every unknown dim (unk__N) and carries the name along, so the
        # folder can tell that a Reshape target copies its input's dims; the folder's own node-by-node
        # inference leaves unknown dims anonymous.
        _infer_shapes(model)
        _SizeAwareFolder(self.max_constant_bytes, tally)(model)
        for label, rules in _NO_OP_RULES.items():
            tally["removed", label] += pattern.RewriteRuleSet(rules).apply_to_model(model)
        tally["removed", "zero initial states of LSTM/GRU/RNN"] += _drop_zero_initial_states(model)
        tally["removed", "Dropout"] += _remove_legacy_dropout(model)
        eliminate_identities(model)
        tally["removed", "unused nodes"] += self._removed_by(common.RemoveUnusedNodesPass(), _count)
        tally["lifted", "Constant nodes to initializers"] += self._removed_by(
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            lambda m: _count(m, "Constant"),
        )
        common.LiftSubgraphInitializersToMainGraphPass()(model)
        tally["merged", "duplicate initializers"] += self._merge_duplicate_initializers()
        tally["merged", "common subexpressions"] += self._eliminate_common_subexpressions()

    def _removed_by(self, step: ir.passes.PassBase, counter: Callable[[ir.Model], int]) -> int:
        before = counter(self.model)
        step(self.model)
        return before - counter(self.model)

    def _merge_duplicate_initializers(self) -> int:
        # Hashing every weight is the costliest step of a round on a large model (a third of simplify on
        # BERT-base), and initializers left exactly as the last deduplication left them hold no duplicate:
        # onnx_ir's pass runs again only when they differ. The state keeps the objects, so identity is exact.
        if self._deduplicated is not None and _same_objects(_initializer_state(self.model), self._deduplicated):
            return 0
        merged = self._removed_by(common.DeduplicateHashedInitializersPass(), _count_initializers)
        self._deduplicated = _initializer_state(self.model)
        return merged

    def _eliminate_common_subexpressions(self) -> int:
        # onnx_ir's pass only looks at the main graph; the same elimination is applied to every body.
        cse = common.CommonSubexpressionEliminationPass()
        before = _count(self.model)
        for graph in list(graph_likes(self.model)):
            if any(attribute.type in _UNHASHABLE_ATTRIBUTES for node in graph for attribute in node.attributes.values()):
                continue  # onnx_ir's CSE hashes attribute values and fails on type attributes (Optional ops)
            cse._eliminate_common_subexpression(graph)  # noqa: SLF001 - the per-graph step of the pass
        return before - _count(self.model)

    # -- declared output shapes ---------------------------------------------------------------------------

    def _hide_declared_output_shapes(self) -> list[_DeclaredOutput]:
        """Take the declared shapes off graph outputs while the graph is rewritten.

        onnxscript and onnx_ir merge a graph output's shape backwards into the value that produces it
        (Identity elimination, the folder's Identity handler), and a later Shape/Reshape/Slice fold would
        trust it. A model whose declared output shape is wrong would then compute something else.
        """
        declared = []
        for graph in self.model.graphs():
            for index, output in enumerate(graph.outputs):
                declared.append(_DeclaredOutput(graph, index, output.name, output.shape))
                output.shape = None
        return declared

    def _restore_declared_outputs(self, declared: list[_DeclaredOutput]) -> None:
        """Put the declared names and shapes back on the graph outputs (where a shape was declared)."""
        graphs = {id(graph) for graph in self.model.graphs()}
        for entry in declared:
            graph = entry.graph
            if id(graph) not in graphs:
                continue  # the body of an If with a constant condition, now inlined
            output = graph.outputs[entry.index]
            if output.name != entry.name:
                output = _output_named(graph, entry.index, entry.name)
            if entry.shape is not None:
                output.shape = entry.shape

    def _stats(self) -> list[str]:
        counted = [(verb, what, n) for (verb, what), n in self.tally.items() if n]
        counted.sort(key=lambda item: (_VERB_ORDER.index(item[0]), -item[2], item[1]))
        return [f"{verb} {n} {what}" for verb, what, n in counted] or ["inferred shapes"]


def _output_named(graph: ir.Graph, index: int, name: str) -> ir.Value:
    """Make ``graph.outputs[index]`` carry ``name`` again after a rewrite renamed or replaced it."""
    value = graph.outputs[index]
    # Renaming is only safe for a value this graph alone defines and lists once among its outputs.
    shared = value.graph is not graph or value.is_graph_input() or sum(1 for o in graph.outputs if o is value) > 1
    if not shared:
        value.name = name
        return value
    identity = ir.node("Identity", inputs=[value], outputs=[ir.Value(name=name, type=value.type)])
    graph.append(identity)
    graph.outputs[index] = identity.outputs[0]
    return identity.outputs[0]


# ---------------------------------------------------------------------------------------------------------
# Peers


def run_peer(backend: str, model: ir.Model) -> PassResult:
    """Run onnxsim, onnxoptimizer or onnxslim with its defaults on a copy of ``model``; returns a new model."""
    try:
        module = importlib.import_module(backend)
    except ImportError as e:
        raise SpecError(
            f"simplify backend '{backend}' is not installed",
            hint=f"pip install {backend}  (or pip install 'onnxkit[peers]')",
        ) from e
    proto = modelio.to_proto(model)
    try:
        if backend == "onnxsim":
            simplified, _ = module.simplify(proto)
        elif backend == "onnxoptimizer":
            simplified = module.optimize(proto)
        else:
            simplified = module.slim(proto)
    except Exception as e:  # peers raise anything from RuntimeError to their own C++ errors
        raise PassFailedError(f"{backend} failed on this model: {type(e).__name__}: {e}",
                              hint="run simplify with the default backend=onnxkit") from e
    if not isinstance(simplified, onnx.ModelProto):
        raise PassFailedError(f"{backend} returned no model", hint="run simplify with the default backend=onnxkit")
    modified = simplified.SerializeToString(deterministic=True) != proto.SerializeToString(deterministic=True)
    return PassResult(ir.serde.deserialize_model(simplified), modified, [f"ran {backend}"] if modified else [])
