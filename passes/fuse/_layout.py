"""Collapse chains of layout-only ops: Reshape, Squeeze, Unsqueeze, Flatten, and Transpose pairs.

Two layout ops in a row become one (or none, when the pair changes nothing). The output shape of the
pair is computed from the input's shape and the ops' constant arguments, never read from a declared
output shape: a model may declare a wrong shape for a graph output, and trusting it would change what
the model computes. Dynamic dimensions stay dynamic: the new Reshape copies them with ``0`` or infers
one with ``-1``, and a pair whose result cannot be written that way is left alone.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes.fuse._base import (
    FusionContext,
    constant_array,
    matched_node,
    new_constant,
    pass_through,
    rank_of,
    static_dims,
)

# A dimension: a known size, a named symbolic size, or None when nothing is known about it.
Dim = int | ir.SymbolicDim | None

RESHAPING_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
# Squeeze and Unsqueeze take their axes as an input from opset 13, as an attribute before.
AXES_INPUT_OPSET = 13


def _same_dim(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a.value is not None and a.value == b.value


def _same_shape(final: list[Dim], dims: list[Dim]) -> bool:
    """Whether a layout op's output shape ``final`` is its input's ``dims``. Layout ops keep the element
    count, so one dimension nothing is known about matches when all others do (the ``-1`` a Reshape
    inferred), unless a size may be 0, where the count says nothing."""
    if len(final) != len(dims) or any(d == 0 for d in (*final, *dims)):
        return False
    unmatched = [i for i, (a, b) in enumerate(zip(final, dims)) if not _same_dim(a, b)]
    return not unmatched or (len(unmatched) == 1 and final[unmatched[0]] is None)


def _product(dims: list[Dim]) -> tuple[int, Counter[str]] | None:
    """A product of dimensions as (known factor, multiset of symbol names); None if a dim is unknown."""
    known, symbols = 1, Counter[str]()
    for d in dims:
        if isinstance(d, int):
            known *= d
        elif d is None or d.value is None:  # a symbolic dim without a name is as unknown as None
            return None
        else:
            symbols[d.value] += 1
    return known, symbols


def _as_dim(product: tuple[int, Counter[str]] | None) -> Dim:
    if product is None:
        return None
    known, symbols = product
    if not symbols:
        return known
    if known == 1 and sum(symbols.values()) == 1:
        return ir.SymbolicDim(next(iter(symbols)))
    return None


def _quotient(total: tuple[int, Counter[str]] | None, part: tuple[int, Counter[str]] | None) -> Dim:
    if total is None or part is None or part[0] == 0 or total[0] % part[0] or part[1] - total[1]:
        return None
    return _as_dim((total[0] // part[0], total[1] - part[1]))


def _axes(node: ir.Node) -> list[int] | None:
    """The axes of a Squeeze/Unsqueeze, from its attribute (opset < 13) or its constant input; [] if absent."""
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return []
    array = constant_array(node.inputs[1])
    return None if array is None else [int(a) for a in array.reshape(-1)]


def output_dims(node: ir.Node, dims: list[Dim]) -> list[Dim] | None:
    """The output shape of one layout op given its input's, or None when it cannot be known statically."""
    rank = len(dims)
    if node.op_type == "Reshape":
        shape = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None  # opset < 5: an attribute
        if shape is None:
            return None
        allow_zero = node.attributes.get_int("allowzero", 0)
        out: list[Dim] = []
        for i, size in enumerate(int(s) for s in shape.reshape(-1)):
            if size == 0 and not allow_zero:
                if i >= rank:
                    return None
                out.append(dims[i])
            else:
                out.append(size)
        if out.count(-1) > 1:
            return None
        if -1 in out:
            inferred = out.index(-1)
            out[inferred] = _quotient(_product(dims), _product(out[:inferred] + out[inferred + 1 :]))
        return out
    if node.op_type == "Flatten":
        axis = node.attributes.get_int("axis", 1)
        axis = axis + rank if axis < 0 else axis
        return [_as_dim(_product(dims[:axis])), _as_dim(_product(dims[axis:]))]
    axes = _axes(node)
    if axes is None:
        return None
    if node.op_type == "Squeeze":
        if not axes:  # squeeze every dimension of size 1: only decidable when every size is known
            return [d for d in dims if d != 1] if all(isinstance(d, int) for d in dims) else None
        squeezed = {a + rank if a < 0 else a for a in axes}
        return [d for i, d in enumerate(dims) if i not in squeezed]
    # Unsqueeze: axes index the output
    out_rank = rank + len(axes)
    inserted = {a + out_rank if a < 0 else a for a in axes}
    rest = iter(dims)
    return [1 if i in inserted else next(rest) for i in range(out_rank)]


def _normalized_axes(node: ir.Node, rank: int) -> list[int] | None:
    axes = _axes(node)
    if not axes:
        return None
    return sorted(a + rank if a < 0 else a for a in axes)


def _undoes(first: ir.Node, second: ir.Node, rank: int | None) -> bool:
    """Whether ``second`` removes exactly the axes ``first`` inserted (Unsqueeze, Squeeze) or inserts exactly
    those it removed (Squeeze, Unsqueeze) -- whatever the other dimensions are, even unknown."""
    if {first.op_type, second.op_type} != {"Squeeze", "Unsqueeze"}:
        return False
    axes_first, axes_second = _axes(first), _axes(second)
    if not axes_first or not axes_second:
        return False  # a Squeeze without axes removes whichever dimensions are 1
    if any(a < 0 for a in (*axes_first, *axes_second)):
        if rank is None:
            return False
        # Both lists index the larger of the two ranks: the Unsqueeze's output, the Squeeze's input.
        wide = rank + len(axes_first) if first.op_type == "Unsqueeze" else rank
        axes_first = [a + wide if a < 0 else a for a in axes_first]
        axes_second = [a + wide if a < 0 else a for a in axes_second]
    return sorted(axes_first) == sorted(axes_second)


class CollapseLayoutPair(RewriteRuleClassBase):
    """``Second(First(x))`` for two layout ops → one Reshape, one Squeeze/Unsqueeze, or nothing.

    The first op may feed several layout ops: each then reads ``x`` directly, and the first op goes
    once the last of them has. It is kept as long as anything else reads it.
    """

    def __init__(self, first: str, second: str, context: FusionContext) -> None:
        super().__init__(name=f"collapse-{first}-{second}", remove_nodes=False)
        self.first, self.second, self.context = first, second, context

    def pattern(self, op: Any, x: ir.Value) -> Any:
        middle = getattr(op, self.first)(x, _allow_other_inputs=True, _outputs=["middle"])
        return getattr(op, self.second)(middle, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, middle: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        first, second = matched_node(middle), matched_node(out)
        # Where the first op's result is needed as it is, the first op stays; the pair still goes when the
        # second op undoes the first, as its readers can then read x.
        needed_as_it_is = middle.is_graph_output() or any(
            user.op_type not in RESHAPING_OPS or index != 0 for user, index in middle.uses()
        )
        self._graph = context.graph_or_function
        self._in_function = isinstance(self._graph, ir.Function)
        # A Reshape to a constant shape without copied dimensions only reads its input's element count,
        # which the pair's input shares: the pair is that Reshape applied to x.
        free_shape = None
        if second.op_type == "Reshape" and len(second.inputs) > 1:
            shape = constant_array(second.inputs[1])
            if shape is not None and (second.attributes.get_int("allowzero", 0) != 0 or not np.any(shape == 0)):
                free_shape = shape.astype(np.int64)
        dims = static_dims(x)
        final = None
        if dims is not None:
            middle_dims = dims if free_shape is not None else output_dims(first, dims)
            final = output_dims(second, middle_dims) if middle_dims is not None else None
        if (final is not None and dims is not None and _same_shape(final, dims)) or _undoes(first, second, rank_of(x)):
            # (what the replacement is, its shape or axes, allowzero)
            self._plan: tuple[str, np.ndarray | list[int] | None, int] = ("identity", None, 0)
            return result
        if needed_as_it_is:
            return result.fail("the first op's result is needed as it is")
        if free_shape is not None:
            self._plan = ("reshape", free_shape, second.attributes.get_int("allowzero", 0))
            return result
        if dims is None:
            return result.fail("the input's shape is unknown")
        if first.op_type == second.op_type and first.op_type in ("Squeeze", "Unsqueeze"):
            merged = self._merged_axes(first, second, len(dims))
            if merged is not None:
                self._plan = (first.op_type, merged, 0)
                return result
        if final is None:
            return result.fail("the pair's output shape cannot be computed")
        target = []
        for i, size in enumerate(final):
            if isinstance(size, int):
                if size <= 0:
                    return result.fail("a zero-sized dimension cannot be written without allowzero")
                target.append(size)
            elif i < len(dims) and _same_dim(size, dims[i]):
                target.append(0)  # copy the input's dimension at the same index
            else:
                target.append(-1)
        if target.count(-1) > 1:
            return result.fail("more than one dimension would have to be inferred")
        if target == [0, -1]:
            # Flatten(axis=1) computes [0, -1] and, unlike that Reshape, also runs on an empty batch.
            self._plan = ("flatten", None, 0)
            return result
        if -1 in target and 0 in target:
            # A copied dimension that is 0 at run time (an empty batch) leaves the -1 nothing to divide by:
            # ORT refuses the Reshape where the pair it replaces ran.
            return result.fail("a -1 beside a copied dimension fails on an empty batch")
        self._plan = ("reshape", np.array(target, dtype=np.int64), 0)
        return result

    @staticmethod
    def _merged_axes(first: ir.Node, second: ir.Node, rank: int) -> list[int] | None:
        if first.op_type == "Unsqueeze":
            axes1 = _normalized_axes(first, rank + len(_axes(first) or []))
            middle_rank = rank + len(axes1 or [])
            axes2 = _normalized_axes(second, middle_rank + len(_axes(second) or []))
            if axes1 is None or axes2 is None:
                return None
            # Positions of the first op's new axes, in the final output: skip the second op's insertions.
            final_positions = [i for i in range(middle_rank + len(axes2)) if i not in axes2]
            return sorted(axes2 + [final_positions[a] for a in axes1])
        axes1 = _normalized_axes(first, rank)
        if axes1 is None:
            return None
        axes2 = _normalized_axes(second, rank - len(axes1))
        if axes2 is None:
            return None
        kept = [i for i in range(rank) if i not in axes1]
        return sorted(axes1 + [kept[a] for a in axes2])

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        kind, argument, allow_zero = self._plan
        if kind == "identity":
            return pass_through(op, x, out, self._graph)
        if kind == "flatten":
            return op.Flatten(x, axis=1)
        if kind == "reshape":
            assert isinstance(argument, np.ndarray)  # a reshape plan carries its target shape
            shape = new_constant(
                op, argument, self.context.fresh_name(f"{out.name}_shape"), in_function=self._in_function
            )
            return op.Reshape(x, shape, allowzero=allow_zero) if allow_zero else op.Reshape(x, shape)
        axes = np.array(argument, dtype=np.int64)
        if self.context.opset < AXES_INPUT_OPSET:
            return getattr(op, kind)(x, axes=argument)
        return getattr(op, kind)(
            x, new_constant(op, axes, self.context.fresh_name(f"{out.name}_axes"), in_function=self._in_function)
        )


class DropShapeKeepingReshape(RewriteRuleClassBase):
    """``Reshape(x, shape)`` → ``x`` when the Reshape gives x's own shape, such as ``[-1, 5, 8]`` on an
    ``[N, 5, 8]`` tensor (exporters write these between Transposes, which can then merge)."""

    def __init__(self) -> None:
        super().__init__(name="drop-shape-keeping-reshape")

    def pattern(self, op: Any, x: ir.Value, shape: ir.Value) -> Any:
        return op.Reshape(x, shape, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, shape: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        dims = static_dims(x)
        final = output_dims(matched_node(out), dims) if dims is not None else None
        if final is None or dims is None or not _same_shape(final, dims):
            return result.fail("the Reshape changes the shape, or its result cannot be computed")
        self._graph = context.graph_or_function
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        return pass_through(op, x, out, self._graph)


class CollapseTransposePair(RewriteRuleClassBase):
    """``Transpose(Transpose(x, p1), p2)`` → one Transpose, or nothing when the permutations cancel."""

    def __init__(self) -> None:
        super().__init__(name="collapse-transpose-pair")

    def pattern(self, op: Any, x: ir.Value) -> Any:
        return op.Transpose(op.Transpose(x, _outputs=["middle"]), _outputs=["out"])

    def check(self, context: Any, x: ir.Value, middle: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        first, second = (matched_node(value).attributes.get("perm") for value in (middle, out))
        if first is None or second is None or first.is_ref() or second.is_ref():
            # Without perm, Transpose reverses the axes; that needs the rank, which the pair does not carry.
            return result.fail("a permutation is implicit or a reference")
        p1, p2 = list(first.as_ints()), list(second.as_ints())
        if len(p1) != len(p2):
            return result.fail("the permutations have different lengths")
        self._perm = [p1[i] for i in p2]
        self._graph = context.graph_or_function
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        if self._perm == list(range(len(self._perm))):
            return pass_through(op, x, out, self._graph)
        return op.Transpose(x, perm=self._perm)


class ReshapeThroughUnitTranspose(RewriteRuleClassBase):
    """``Reshape(Transpose(x, perm), shape)`` → ``Reshape(x, shape')`` when the Transpose only moves axes of
    size 1: it then keeps the elements in their order, and the Reshape can read ``x`` directly.

    An LSTM's output ``[seq, 1, batch, hidden]`` transposed to ``[seq, batch, 1, hidden]`` and reshaped to
    ``[seq, batch, hidden]`` is the common case. A ``0`` in the shape copies a dimension of the transposed
    value: it becomes that size where known, stays ``0`` where ``x`` has the same dimension at that index
    (an axis the Transpose leaves in place, or the same named symbol), or else becomes the one ``-1``.
    """

    def __init__(self, context: FusionContext) -> None:
        super().__init__(name="reshape-through-unit-transpose")
        self.context = context

    def pattern(self, op: Any, x: ir.Value, shape: ir.Value) -> Any:
        transposed = op.Transpose(x, _outputs=["transposed"])
        return op.Reshape(transposed, shape, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, shape: ir.Value, transposed: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        dims = static_dims(x)
        perm_attribute = matched_node(transposed).attributes.get("perm")
        target = constant_array(shape)
        if dims is None or perm_attribute is None or target is None:
            return result.fail("the input's rank, the permutation or the target shape is unknown")
        perm = list(perm_attribute.as_ints())
        if sorted(perm) != list(range(len(dims))):
            return result.fail("the permutation does not fit the input's rank")
        moved = [axis for axis in perm if dims[axis] != 1]
        if moved != sorted(moved):
            return result.fail("the Transpose reorders axes that are not of size 1")
        new_shape = [int(size) for size in target.reshape(-1)]
        if not matched_node(out).attributes.get_int("allowzero", 0):
            for i, size in enumerate(new_shape):
                if size != 0:
                    continue
                copied = dims[perm[i]] if i < len(perm) else None
                if isinstance(copied, int):
                    new_shape[i] = copied
                elif i < len(perm) and perm[i] == i:
                    continue  # an axis the Transpose leaves in place: x has it at index i too, known or not
                elif copied is None or not (i < len(dims) and _same_dim(dims[i], copied)):
                    new_shape[i] = -1
        if new_shape.count(-1) > 1:
            return result.fail("more than one dimension would have to be inferred")
        written_before = [int(size) for size in target.reshape(-1)]
        if -1 in new_shape and 0 in new_shape and not (-1 in written_before and 0 in written_before):
            # As in CollapseLayoutPair: a copied 0 (an empty batch) beside a -1 makes the Reshape fail.
            return result.fail("a -1 beside a copied dimension fails on an empty batch")
        self._shape = np.array(new_shape, dtype=np.int64)
        self._in_function = isinstance(context.graph_or_function, ir.Function)
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        shape = new_constant(
            op, self._shape, self.context.fresh_name(f"{out.name}_shape"), in_function=self._in_function
        )
        return op.Reshape(x, shape, **matched_node(out).attributes)


class MergeSlicesOfOtherAxes(RewriteRuleClassBase):
    """``Slice(Slice(x, s1, e1, a1, p1), s2, e2, a2, p2)`` → ``Slice(x, s1+s2, e1+e2, a1+a2, p1+p2)`` when both
    slice constant ranges of different axes: slices of different axes commute, so one Slice takes both.

    An STFT done as a Conv then split into real and imaginary halves is the common case: the frequency axis
    is sliced, then every other frame (Silero VAD). The first Slice may feed others: YOLO's Focus slices
    every other row, then every other column twice (ddddocr_common_det); each pair merges, and the first
    Slice goes once nothing reads it (so the matched nodes are left to dead-code removal, not removed).
    """

    def __init__(self) -> None:
        super().__init__(name="merge-slices-of-other-axes", remove_nodes=False)

    def pattern(self, op: Any, x: ir.Value) -> Any:
        first = op.Slice(x, _allow_other_inputs=True, _outputs=["first"])
        return op.Slice(first, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, first: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        first_ranges, second_ranges = _slice_ranges(matched_node(first)), _slice_ranges(matched_node(out))
        if first_ranges is None or second_ranges is None:
            return result.fail("a Slice's starts, ends, axes or steps are not constant")
        ranges = (first_ranges, second_ranges)
        rank = rank_of(x)
        axes = [[a % rank if rank is not None else a for a in r[2]] for r in ranges]
        if any(a < 0 for a in axes[0] + axes[1]) or set(axes[0]) & set(axes[1]):
            return result.fail("the Slices may cut the same axis")
        self._merged = [np.concatenate([ranges[0][k], ranges[1][k]]).astype(np.int64) for k in range(4)]
        self._in_function = isinstance(context.graph_or_function, ir.Function)
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        inputs = [
            new_constant(op, array, f"{out.name}_{part}", in_function=self._in_function)
            for part, array in zip(("starts", "ends", "axes", "steps"), self._merged, strict=True)
        ]
        return op.Slice(x, *inputs)


def _slice_ranges(node: ir.Node) -> list[np.ndarray] | None:
    """A Slice's (opset >= 10) starts, ends, axes and steps as int64 arrays, the defaults filled in; None
    where one is not constant."""
    if len(node.inputs) < 3:
        return None
    arrays = [constant_array(value) for value in node.inputs[1:3]]
    if arrays[0] is None or arrays[1] is None:
        return None
    count = arrays[0].size
    for index, default in ((3, np.arange(count)), (4, np.ones(count))):
        given = node.inputs[index] if len(node.inputs) > index else None
        arrays.append(default if given is None else constant_array(given))
    known = [a for a in arrays if a is not None and a.size == count]
    if len(known) != len(arrays):
        return None
    return [a.reshape(-1).astype(np.int64) for a in known]


def slice_rules(context: FusionContext) -> list[Any]:
    return [MergeSlicesOfOtherAxes.rule()]


def unit_transpose_rules(context: FusionContext) -> list[Any]:
    return [ReshapeThroughUnitTranspose.rule(context)]


def layout_rules(context: FusionContext) -> list[Any]:
    return [
        CollapseLayoutPair.rule(first, second, context)
        for first, second in itertools.product(RESHAPING_OPS, RESHAPING_OPS)
    ] + [DropShapeKeepingReshape.rule()]


def transpose_rules(context: FusionContext) -> list[Any]:
    return [CollapseTransposePair.rule()]
