"""Two constant steps written as one: ``(x * c1) * c2`` as ``x * (c1 * c2)`` (and Add likewise), and
``x * (1 / y)`` as ``x / y``."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes.fuse._base import FLOAT_TYPES, FusionContext, constant_array, new_constant, rank_of


class MergeConstantSteps(RewriteRuleClassBase):
    """``(x * c1) * c2`` → ``x * (c1 * c2)``, and ``(x + c1) + c2`` → ``x + (c1 + c2)``, for constants c1, c2.

    The result has the same shape either way: broadcasting ``x`` with ``c1`` and then ``c2`` is broadcasting
    it with the broadcast of the two.
    """

    def __init__(
        self, step: str, context: FusionContext, *, inner_constant_first: bool, outer_constant_first: bool
    ) -> None:
        super().__init__(name=f"merge-{step}-{int(inner_constant_first)}{int(outer_constant_first)}")
        self.step, self.context = step, context
        self.inner_constant_first, self.outer_constant_first = inner_constant_first, outer_constant_first

    def pattern(self, op: Any, x: ir.Value, c1: ir.Value, c2: ir.Value) -> Any:
        step = getattr(op, self.step)
        inner = step(c1, x, _outputs=["inner"]) if self.inner_constant_first else step(x, c1, _outputs=["inner"])
        return step(c2, inner) if self.outer_constant_first else step(inner, c2)

    def check(self, context: Any, x: ir.Value, c1: ir.Value, c2: ir.Value, inner: ir.Value) -> MatchResult:
        result = MatchResult()
        first, second = constant_array(c1), constant_array(c2)
        if first is None or second is None or first.dtype != second.dtype:
            return result.fail("the steps are not constants of one type")
        if constant_array(x) is not None:
            return result.fail("all constant: constant folding's business")
        if len(inner.uses()) != 1 or inner.is_graph_output():
            return result.fail("the first step's result is read elsewhere")
        merged = first * second if self.step == "Mul" else first + second
        self._plan = (merged.astype(first.dtype), isinstance(context.graph_or_function, ir.Function))
        return result

    def rewrite(self, op: Any, x: ir.Value, c2: ir.Value, **_: Any) -> ir.Value:
        merged, in_function = self._plan
        constant = new_constant(op, merged, self.context.fresh_name(c2.name), in_function=in_function)
        return getattr(op, self.step)(x, constant)


def constant_step_rules(context: FusionContext) -> list[Any]:
    return [
        MergeConstantSteps.rule(step, context, inner_constant_first=inner, outer_constant_first=outer)
        for step in ("Mul", "Add")
        for inner in (False, True)
        for outer in (False, True)
    ]


class MulByReciprocal(RewriteRuleClassBase):
    """``x * (1 / y)`` → ``x / y``, where nothing else reads ``1 / y``.

    T5's RMS norm computes ``x * (1 / sqrt(mean(x²) + eps))``; ONNX Runtime's basic level writes the Div
    (its DivMulFusion). ``x / y`` rounds once where ``x * (1 / y)`` rounds twice, so results move by an ulp
    at most: exact within floating-point tolerance. Float types only: integer ``1 / y`` truncates to 0. Not
    in a graph that quantizes activations as it runs: there an ulp moves a value across a rounding step of
    the quantizer (traceforge_encoder_int8's RMS norms feed DynamicQuantizeLinear; ORT basic's Div fails
    exact parity on its held-out samples).
    """

    def __init__(self, *, reciprocal_first: bool) -> None:
        super().__init__(name=f"mul-by-reciprocal-{int(reciprocal_first)}")
        self.reciprocal_first = reciprocal_first
        self._quantizing: dict[int, bool] = {}  # id(graph) → whether it quantizes at run time

    def pattern(self, op: Any, x: ir.Value, one: ir.Value, y: ir.Value) -> Any:
        reciprocal = op.Div(one, y, _outputs=["reciprocal"])
        return op.Mul(reciprocal, x) if self.reciprocal_first else op.Mul(x, reciprocal)

    def check(self, context: Any, x: ir.Value, one: ir.Value, y: ir.Value, reciprocal: ir.Value) -> MatchResult:
        result = MatchResult()
        ones = constant_array(one)
        if ones is None or ones.size != 1 or ones.reshape(-1)[0] != 1 or y.dtype not in FLOAT_TYPES:
            return result.fail("not the reciprocal of a float value")
        ranks = [rank_of(x), rank_of(y)]
        if ones.ndim and (None in ranks or ones.ndim > max(r for r in ranks if r is not None)):
            return result.fail("the 1 may add axes to the result")
        if len(reciprocal.uses()) != 1 or reciprocal.is_graph_output():
            return result.fail("the reciprocal is read elsewhere")
        if constant_array(x) is not None and constant_array(y) is not None:
            return result.fail("all constant: constant folding's business")
        graph = context.graph_or_function
        if id(graph) not in self._quantizing:
            self._quantizing[id(graph)] = any(_quantizes_at_run_time(node) for node in graph)
        if self._quantizing[id(graph)]:
            return result.fail("the graph quantizes activations: rounding differences become quantization steps")
        return result

    def rewrite(self, op: Any, x: ir.Value, y: ir.Value, **_: Any) -> ir.Value:
        return op.Div(x, y)


def _quantizes_at_run_time(node: ir.Node) -> bool:
    # QuantizeLinear, DynamicQuantizeLinear, and ONNX Runtime's DynamicQuantizeMatMul/DynamicQuantizeLSTM.
    return node.op_type == "QuantizeLinear" or node.op_type.startswith("DynamicQuantize")


def reciprocal_rules(context: FusionContext) -> list[Any]:
    return [MulByReciprocal.rule(reciprocal_first=first) for first in (False, True)]
