"""2-D MatMul + Add → Gemm: onnxscript's rules, with the checks they leave out."""

from __future__ import annotations

from typing import Any, cast

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common._matmul_add_to_gemm import (
    MatMulAddToGemm,
    TransABMatMulAddToGemm,
    TransAMatMulAddToGemm,
    TransBMatMulAddToGemm,
)

from onnxkit.passes.fuse._base import FLOAT_TYPES, static_dims

# Gemm's C broadcasts to the product's shape without an attribute from opset 7 (Gemm-6 needs broadcast=1).
GEMM_BROADCAST_OPSET = 7


class _CheckedGemmMixin:
    """Adds what onnxscript's MatMul+Add→Gemm rules leave out: Gemm's ``C`` broadcasts one way only, so
    the addend must fit the product's shape without changing it, and Gemm takes floating point only."""

    trans_a: bool
    trans_b: bool

    def check(self, context: Any, input_a: ir.Value, input_b: ir.Value, input_c: ir.Value, **_: Any) -> MatchResult:
        # the rank-2 check of the onnxscript rule this is mixed into (which mypy cannot see from the mixin)
        result = super().check(context, input_a, input_b)  # type: ignore[misc]  # super() is the mixed-in rule
        if not result:
            return result
        if input_a.dtype not in FLOAT_TYPES or input_a.dtype != input_b.dtype or input_c.dtype != input_a.dtype:
            return result.fail("Gemm takes floating-point inputs of one type")
        dims_a, dims_b = static_dims(input_a), static_dims(input_b)
        assert dims_a is not None and dims_b is not None  # the rule's own check proved both of rank 2
        rows = dims_a[1 if self.trans_a else 0]
        columns = dims_b[0 if self.trans_b else 1]
        addend = static_dims(input_c)
        if addend is None or len(addend) > 2:
            return result.fail("the addend's rank is unknown or above 2")
        for size, target in zip(reversed(addend), (columns, rows)):
            if size != 1 and not (isinstance(size, int) and size == target) and not _same_symbol(size, target):
                return result.fail("the addend does not broadcast into the product's shape")
        return result


def _same_symbol(a: object, b: object) -> bool:
    return isinstance(a, ir.SymbolicDim) and isinstance(b, ir.SymbolicDim) and a.value == b.value


def matmul_add_to_gemm_rules() -> list[Any]:
    rules = []
    for base in (TransABMatMulAddToGemm, TransAMatMulAddToGemm, TransBMatMulAddToGemm, MatMulAddToGemm):
        # type() makes a subclass of ``base``, a RewriteRuleClassBase, with the mixin's check in front
        checked = cast(type[RewriteRuleClassBase], type(f"Checked{base.__name__}", (_CheckedGemmMixin, base), {}))
        rules.extend(checked.rule().commute())
    return rules
