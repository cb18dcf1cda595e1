"""Read reductions through the layout ops around them: a Squeeze or Unsqueeze of exactly the reduced axes
becomes the reduction's ``keepdims``, and a Transpose before a reduction that keeps the other axes in order
becomes a change of the reduced axes. Both are bit-exact."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes.fuse._base import FusionContext, matched_node, new_constant, rank_of
from onnxkit.passes.fuse._layout import _axes

REDUCTIONS = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
)


def _reduced_axes(node: ir.Node) -> list[int] | None:
    """The axes a reduction reduces, from its ``axes`` (or ArgMax/ArgMin's ``axis``) attribute or constant
    input; None when unknown or empty (an empty list reduces every axis, or none)."""
    if node.op_type in ("ArgMax", "ArgMin"):
        return [node.attributes.get_int("axis", 0)]
    return _axes(node) or None


class ReductionKeepdims(RewriteRuleClassBase):
    """``Unsqueeze(Reduce(x, keepdims=0), axes)`` → ``Reduce(x, keepdims=1)`` when the Unsqueeze puts back
    exactly the reduced axes, and ``Squeeze(Reduce(x, keepdims=1), axes)`` → ``Reduce(x, keepdims=0)`` when
    it takes exactly them away.

    The Unsqueeze's axes index its output and the Squeeze's their input, both of x's rank, as the
    reduction's do.
    """

    def __init__(self, reduction: str, reshaping: str) -> None:
        super().__init__(name=f"{reduction}-{reshaping}-keepdims")
        self.reduction, self.reshaping = reduction, reshaping

    def pattern(self, op: Any, x: ir.Value) -> Any:
        reduced = getattr(op, self.reduction)(x, _allow_other_inputs=True, _outputs=["reduced"])
        return getattr(op, self.reshaping)(reduced, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, reduced: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        reduction, reshaping = matched_node(reduced), matched_node(out)
        keepdims = reduction.attributes.get_int("keepdims", 1)
        if keepdims != (self.reshaping == "Squeeze"):
            return result.fail("the reduction does not keep (or drop) the axes the other op changes")
        reduced_axes, changed_axes = _reduced_axes(reduction), _axes(reshaping)
        if not reduced_axes or not changed_axes:
            return result.fail("the axes are unknown or implicit")
        # Both lists index a tensor of x's rank; written alike, they name the same axes whatever the rank.
        rank = rank_of(x)
        if rank is not None:
            reduced_axes, changed_axes = [a % rank for a in reduced_axes], [a % rank for a in changed_axes]
        if sorted(reduced_axes) != sorted(changed_axes):
            return result.fail("the other op changes different axes than the reduction")
        return result

    def rewrite(self, op: Any, x: ir.Value, reduced: ir.Value, **_: Any) -> ir.Value:
        reduction = matched_node(reduced)
        attributes = {name: attr for name, attr in reduction.attributes.items() if name != "keepdims"}
        return getattr(op, self.reduction)(*reduction.inputs, keepdims=int(self.reshaping == "Unsqueeze"), **attributes)


class ReduceThroughTranspose(RewriteRuleClassBase):
    """``Reduce(Transpose(x, perm), axes, keepdims=0)`` → ``Reduce(x, perm[axes], keepdims=0)`` when the axes
    the reduction keeps stay in their order through the Transpose: it then only chose which axes to reduce.

    Keras global pooling exported channels-last is the common case: ``Transpose(0,2,3,1)`` then
    ``ReduceMax(axes=[1,2])`` is ``ReduceMax(axes=[2,3])`` of the NCHW tensor (DNSMOS). Each output element is
    reduced over the same elements, in the same order of the kept axes, so the result is bit-exact.
    """

    def __init__(self, reduction: str) -> None:
        super().__init__(name=f"{reduction}-through-transpose")
        self.reduction = reduction

    def pattern(self, op: Any, x: ir.Value) -> Any:
        transposed = op.Transpose(x, _outputs=["transposed"])
        return getattr(op, self.reduction)(transposed, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, transposed: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        reduction, perm_attribute = matched_node(out), matched_node(transposed).attributes.get("perm")
        if reduction.attributes.get_int("keepdims", 1) != 0:
            return result.fail("the reduction keeps the reduced axes: the Transpose would still be needed")
        if perm_attribute is None or perm_attribute.is_ref():
            return result.fail("the permutation is implicit or a reference")
        perm = list(perm_attribute.as_ints())
        axes = _reduced_axes(reduction)
        if not axes:
            return result.fail("the axes are unknown or implicit")
        reduced = {a % len(perm) for a in axes}
        kept = [perm[i] for i in range(len(perm)) if i not in reduced]
        if kept != sorted(kept):
            return result.fail("the Transpose reorders the kept axes")
        self._axes = sorted(perm[a] for a in reduced)
        self._in_function = isinstance(context.graph_or_function, ir.Function)
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        reduction = matched_node(out)
        attributes = {name: attr for name, attr in reduction.attributes.items() if name != "axes"}
        if "axes" in reduction.attributes:
            return getattr(op, self.reduction)(x, axes=self._axes, **attributes)
        axes = new_constant(op, np.array(self._axes, np.int64), f"{out.name}_axes", in_function=self._in_function)
        return getattr(op, self.reduction)(x, axes, **attributes)


def reduce_transpose_rules(context: FusionContext) -> list[Any]:
    return [ReduceThroughTranspose.rule(reduction) for reduction in REDUCTIONS if reduction.startswith("Reduce")]


def keepdims_rules(context: FusionContext) -> list[Any]:
    return [
        ReductionKeepdims.rule(reduction, reshaping)
        for reduction in REDUCTIONS
        for reshaping in ("Unsqueeze", "Squeeze")
    ]
