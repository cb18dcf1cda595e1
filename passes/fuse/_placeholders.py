"""A layout op over a ``ConstantOfShape`` → one ``ConstantOfShape`` of the layout op's output shape.

Model-zoo "light" models hold their weights as ``ConstantOfShape`` placeholders, which simplify keeps
unmaterialized (folding them would grow the file by their full size). A Reshape, Flatten, Squeeze,
Unsqueeze, Transpose or Expand of a tensor that holds one value everywhere is that value in the new
shape: the pair becomes one ``ConstantOfShape`` with a new shape constant, and the file does not grow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes.fuse._base import FusionContext, constant_array, new_constant
from onnxkit.passes.fuse._layout import output_dims

LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand")


def _output_shape(node: ir.Node, shape: list[int]) -> list[int] | None:
    """The static output shape of ``node`` applied to a tensor of ``shape``; None where it is not static."""
    if node.op_type == "Transpose":
        perm = node.attributes.get("perm")
        order = list(perm.as_ints()) if perm is not None and not perm.is_ref() else list(range(len(shape)))[::-1]
        return [shape[axis] for axis in order] if sorted(order) == list(range(len(shape))) else None
    if node.op_type == "Expand":
        target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None:
            return None
        try:
            return [int(d) for d in np.broadcast_shapes(tuple(shape), tuple(int(t) for t in target.reshape(-1)))]
        except ValueError:
            return None
    dims = output_dims(node, list(shape))
    static = [d for d in dims or () if isinstance(d, int) and d >= 0]
    return static if dims is not None and len(static) == len(dims) else None


class LayoutOfPlaceholder(RewriteRuleClassBase):
    """``Layout(ConstantOfShape(shape))`` → ``ConstantOfShape(shape')`` with the same fill value."""

    def __init__(self, layout_op: str, context: FusionContext) -> None:
        super().__init__(name=f"{layout_op.lower()}-of-placeholder")
        self.layout_op, self.context = layout_op, context

    def pattern(self, op: Any, shape: ir.Value) -> Any:
        filled = op.ConstantOfShape(shape, _outputs=["filled"])
        return getattr(op, self.layout_op)(filled, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, shape: ir.Value, filled: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        sizes = constant_array(shape)
        if sizes is None:
            return result.fail("the placeholder's shape is computed at run time")
        if filled.is_graph_output() or len(filled.uses()) != 1:
            return result.fail("the placeholder is read elsewhere: a second one would save nothing")
        layout_node, placeholder = out.producer(), filled.producer()
        assert layout_node is not None and placeholder is not None  # the matched nodes
        new_shape = _output_shape(layout_node, [int(s) for s in sizes.reshape(-1)])
        if new_shape is None:
            return result.fail("the layout op's output shape is not static")
        self._new_shape = np.array(new_shape, dtype=np.int64)
        self._in_function = isinstance(context.graph_or_function, ir.Function)
        self._fill = placeholder.attributes.get("value")
        return result

    def rewrite(self, op: Any, shape: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        new_shape = new_constant(
            op, self._new_shape, self.context.fresh_name(f"{out.name}_shape"), in_function=self._in_function
        )
        if self._fill is None:
            return op.ConstantOfShape(new_shape)
        return op.ConstantOfShape(new_shape, value=self._fill.as_tensor())


def placeholder_layout_rules(context: FusionContext) -> list[Any]:
    return [LayoutOfPlaceholder.rule(layout_op, context) for layout_op in LAYOUT_OPS]
