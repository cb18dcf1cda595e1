"""Decomposed LayerNormalization and GELU back into single ops.

Exporters at older opsets write LayerNormalization as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add,
and GELU as 5 to 9 arithmetic nodes. ONNX has LayerNormalization since opset 17 and Gelu since opset 20;
ONNX Runtime has had its own Gelu and FastGelu (the tanh form) for longer.

GELU is written in many groupings (``0.5 * x * (1 + erf(x / sqrt 2))``, ``x * (erf(...) + 1) * 0.5``, ...),
so it is recognised by flattening products and sums of single-use nodes into their factors and terms,
not by enumerating every ordering as a pattern.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, pattern

from onnxkit.passes.fuse._base import (
    CONTRIB_DOMAIN,
    FLOAT_TYPES,
    FusionContext,
    constant_array,
    matched_node,
    new_constant,
    present_input,
    static_dims,
)

# ---------------------------------------------------------------------------------------------------------
# LayerNormalization


def _reduce_axes(node: ir.Node) -> list[int] | None:
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        array = constant_array(node.inputs[1])
        return None if array is None else [int(a) for a in array.reshape(-1)]
    return None  # no axes: reduce everything, which is not a layer norm over trailing axes


def _trailing_axis(axes: list[int], rank: int | None) -> int | None:
    """The first normalized axis, as a negative index, if ``axes`` are exactly the trailing axes."""
    if not axes:
        return None
    if rank is not None:
        axes = [a - rank if a >= 0 else a for a in axes]
    elif any(a >= 0 for a in axes):
        return None
    if sorted(axes) != list(range(-len(axes), 0)):
        return None
    return -len(axes)


class LayerNormFusion(RewriteRuleClassBase):
    """``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)`` → ``LayerNormalization(x, ones)``.

    The scale and shift that usually follow fold in afterwards (``LayerNormAffineFold``), so one small
    pattern serves every variant.
    """

    def __init__(self, *, reciprocal: bool, swapped: bool, context: FusionContext) -> None:
        super().__init__(name=f"layer-norm{'-reciprocal' if reciprocal else ''}{'-swapped' if swapped else ''}")
        self.reciprocal, self.swapped, self.context = reciprocal, swapped, context

    def pattern(self, op: Any, x: ir.Value, exponent: ir.Value, eps: ir.Value) -> Any:
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = pattern.OrValue([op.Pow(deviation, exponent), op.Mul(deviation, deviation)])
        variance = op.ReduceMean(squared, _allow_other_inputs=True, _outputs=["variance"])
        std = op.Sqrt(pattern.OrValue([op.Add(variance, eps), op.Add(eps, variance)]))
        if not self.reciprocal:
            return op.Div(deviation, std)
        inverse = op.Reciprocal(std)
        return op.Mul(inverse, deviation) if self.swapped else op.Mul(deviation, inverse)

    def check(  # type: ignore[override]  # onnxscript's check(op, *args, **kwargs) stands for any pattern's variables
        self,
        context: Any,
        x: ir.Value,
        mean: ir.Value,
        variance: ir.Value,
        eps: ir.Value,
        exponent: ir.Value | None = None,
        **_: Any,
    ) -> MatchResult:
        result = MatchResult()
        if x.dtype not in FLOAT_TYPES:
            return result.fail("LayerNormalization takes floating point")
        if exponent is not None:
            power = constant_array(exponent)
            if power is None or power.size != 1 or float(power.reshape(-1)[0]) != 2.0:
                return result.fail("the deviation is not squared")
        reductions = (matched_node(mean), matched_node(variance))
        if any(r.attributes.get_int("keepdims", 1) != 1 for r in reductions):
            return result.fail("a mean drops the reduced axes")
        axes = [_reduce_axes(r) for r in reductions]
        rank = None if x.shape is None else x.shape.rank()
        axis = _trailing_axis(axes[0], rank) if axes[0] is not None else None
        if axis is None or axes[0] != axes[1]:
            return result.fail("the means are not over the same trailing axes")
        epsilon = constant_array(eps)
        if epsilon is None or epsilon.size != 1:
            return result.fail("epsilon is not a constant scalar")
        dims = static_dims(x)
        normalized_dims = dims[axis:] if dims is not None else None
        normalized_shape = tuple(d for d in normalized_dims or () if isinstance(d, int))
        if normalized_dims is None or len(normalized_shape) != len(normalized_dims):
            return result.fail("the normalized dimensions are not static")
        self._axis, self._epsilon = axis, float(epsilon.reshape(-1)[0])
        self._shape, self._in_function = normalized_shape, isinstance(context.graph_or_function, ir.Function)
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> ir.Value:
        assert x.dtype is not None  # check took floating point only
        ones = np.ones(self._shape, dtype=x.dtype.numpy())
        scale = new_constant(op, ones, self.context.fresh_name(f"{x.name}_ln_scale"), in_function=self._in_function)
        return op.LayerNormalization(x, scale, axis=self._axis, epsilon=self._epsilon)


def layer_norm_rules(context: FusionContext) -> list[Any]:
    return [
        LayerNormFusion.rule(reciprocal=reciprocal, swapped=swapped, context=context)
        for reciprocal, swapped in ((False, False), (True, False), (True, True))
    ]


class LayerNormAffineFold(RewriteRuleClassBase):
    """``LayerNormalization(x, g, b) * c + d`` → ``LayerNormalization(x, g*c, b*c + d)`` for constants that
    broadcast over the normalized axes only (a residual branch added after the norm is not a bias)."""

    def __init__(self, step: str, *, constant_first: bool, context: FusionContext) -> None:
        super().__init__(name=f"layer-norm-{step}{'-swapped' if constant_first else ''}")
        self.step, self.constant_first, self.context = step, constant_first, context

    def pattern(self, op: Any, x: ir.Value, c: ir.Value) -> Any:
        normalized = op.LayerNormalization(x, _allow_other_inputs=True, _outputs=["normalized"])
        operands = (c, normalized) if self.constant_first else (normalized, c)
        return getattr(op, self.step)(*operands)

    def check(self, context: Any, x: ir.Value, c: ir.Value, normalized: ir.Value) -> MatchResult:
        result = MatchResult()
        norm = matched_node(normalized)
        scale = constant_array(norm.inputs[1])
        bias_value = norm.inputs[2] if len(norm.inputs) > 2 else None
        bias = constant_array(bias_value) if bias_value is not None else None
        constant = constant_array(c)
        if scale is None or (bias_value is not None and bias is None) or constant is None:
            return result.fail("the scale, bias or step is not constant")
        if constant.dtype != scale.dtype:
            return result.fail("the step's type differs")
        rank = None if x.shape is None else x.shape.rank()
        axis = norm.attributes.get_int("axis", -1)
        normalized_rank = -axis if axis < 0 else (rank - axis if rank is not None else None)
        if normalized_rank is None or scale.ndim > normalized_rank or constant.ndim > (rank or normalized_rank):
            return result.fail("the normalized axes are unknown, or the step raises the rank")
        # Leading axes of the step (outside the normalized ones) must all be 1.
        leading = constant.shape[: max(constant.ndim - normalized_rank, 0)]
        if any(size != 1 for size in leading):
            return result.fail("the step varies outside the normalized axes")
        tail = constant.reshape(constant.shape[len(leading) :])
        normalized_shape = (1,) * (normalized_rank - scale.ndim) + scale.shape
        try:
            np.broadcast_shapes(tail.shape, normalized_shape)
        except ValueError:
            return result.fail("the step does not broadcast into the normalized shape")
        if np.broadcast_shapes(tail.shape, normalized_shape) != normalized_shape:
            return result.fail("the step would widen the normalized shape")
        self._plan = (scale, bias, tail, isinstance(context.graph_or_function, ir.Function))
        return result

    def rewrite(self, op: Any, x: ir.Value, normalized: ir.Value, **_: Any) -> ir.Value:
        norm = matched_node(normalized)
        scale, bias, step, in_function = self._plan
        if self.step == "Mul":
            scale, bias = scale * step, (None if bias is None else bias * step)
        else:
            bias = (np.zeros_like(scale) if bias is None else bias) + step
        # Scale and bias keep one shape: the broadcast of both (at most the normalized shape).
        shape = np.broadcast_shapes(scale.shape, *([] if bias is None else [bias.shape]))
        inputs = [
            x,
            new_constant(
                op,
                np.broadcast_to(scale, shape).astype(scale.dtype),
                self.context.fresh_name(present_input(norm, 1).name),
                in_function=in_function,
            ),
        ]
        if bias is not None:
            inputs.append(
                new_constant(
                    op,
                    np.broadcast_to(bias, shape).astype(scale.dtype),
                    self.context.fresh_name(f"{x.name}_ln_bias"),
                    in_function=in_function,
                )
            )
        return op.LayerNormalization(*inputs, **norm.attributes)


def layer_norm_affine_rules(context: FusionContext) -> list[Any]:
    return [
        LayerNormAffineFold.rule(step, constant_first=first, context=context)
        for step in ("Mul", "Add")
        for first in (False, True)
    ]


# ---------------------------------------------------------------------------------------------------------
# GELU


class _Expression:
    """Walks producers from a root node, flattening single-use Mul/Add trees into their factors/terms.

    Every node taken becomes part of what the fusion replaces, so only nodes whose result feeds nothing
    but the expression are taken.
    """

    def __init__(self, graph: ir.Graph | ir.Function, root: ir.Node) -> None:
        self.graph = graph
        self.interior: list[ir.Node] = [root]

    def take(self, value: ir.Value, op_type: str) -> ir.Node | None:
        node = value.producer()
        if (
            node is None
            or node.op_type != op_type
            or node.domain not in ("", "ai.onnx")
            or node.graph is not self.graph
            or len(value.uses()) != 1
            or value.is_graph_output()
        ):
            return None
        self.interior.append(node)
        return node

    def flatten(self, value: ir.Value, op_type: str) -> list[ir.Value]:
        node = self.take(value, op_type)
        if node is None:
            return [value]
        return [leaf for operand in node.inputs if operand is not None for leaf in self.flatten(operand, op_type)]


_Operand = TypeVar("_Operand", bound="ir.Value | None")


def _without_constant(operands: list[_Operand], expected: float) -> list[_Operand] | None:
    """The operands other than one constant close to ``expected``; None if there is no such constant."""
    for i, value in enumerate(operands):
        array = constant_array(value)
        if array is not None and array.size == 1 and math.isclose(float(array.reshape(-1)[0]), expected, rel_tol=1e-4):
            return operands[:i] + operands[i + 1 :]
    return None


_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


class GeluFusion(RewriteRuleClassBase):
    """``0.5 * x * (1 + erf(x / sqrt 2))`` → Gelu, and ``0.5 * x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
    → Gelu(approximate=tanh), in any grouping and operand order. Under ``target=onnxruntime``: the contrib
    Gelu and FastGelu, which ONNX Runtime can fuse further with a preceding bias."""

    def __init__(self, context: FusionContext) -> None:
        super().__init__(name="gelu")
        self.context = context

    def pattern(self, op: Any, a: ir.Value, b: ir.Value) -> Any:
        return op.Mul(a, b)

    def check(self, context: Any, a: ir.Value, b: ir.Value, **_: Any) -> MatchResult:  # type: ignore[override]  # onnxscript's check(op, *args, **kwargs) stands for any pattern's variables
        result = MatchResult()
        expression = _Expression(context.graph_or_function, context.root)
        rest = _without_constant(expression.flatten(a, "Mul") + expression.flatten(b, "Mul"), 0.5)
        if rest is None or len(rest) != 2:
            return result.fail("not 0.5 * x * (...)")
        for x, bracket in (rest, rest[::-1]):
            mark = len(expression.interior)
            approximate = self._bracket_form(expression, x, bracket) if x.dtype in FLOAT_TYPES else None
            if approximate is not None:
                if not _is_private(expression.interior):
                    return result.fail("an intermediate value is used outside the GELU")
                self._x, self._approximate = x, approximate
                return result
            del expression.interior[mark:]
        return result.fail("not a GELU")

    @staticmethod
    def _bracket_form(expression: _Expression, x: ir.Value, bracket: ir.Value) -> str | None:
        """'none' for ``1 + erf(x / sqrt 2)``, 'tanh' for ``1 + tanh(...)``, None for anything else."""
        terms = _without_constant(expression.flatten(bracket, "Add"), 1.0)
        if terms is None or len(terms) != 1:
            return None
        if (erf := expression.take(terms[0], "Erf")) is not None:
            argument = present_input(erf, 0)
            if (div := expression.take(argument, "Div")) is not None:
                return "none" if _without_constant(list(div.inputs[1:]), _SQRT_2) == [] and div.inputs[0] is x else None
            return "none" if _without_constant(expression.flatten(argument, "Mul"), 1 / _SQRT_2) == [x] else None
        if (tanh := expression.take(terms[0], "Tanh")) is not None:
            inner = _without_constant(expression.flatten(present_input(tanh, 0), "Mul"), _SQRT_2_OVER_PI)
            if inner is None or len(inner) != 1:
                return None
            terms = expression.flatten(inner[0], "Add")
            if len(terms) != 2 or x not in terms:
                return None
            cubic = _without_constant(expression.flatten(terms[1] if terms[0] is x else terms[0], "Mul"), _TANH_CUBIC)
            if cubic == [x, x, x]:
                return "tanh"
            if cubic is not None and len(cubic) == 1 and (power := expression.take(cubic[0], "Pow")) is not None:
                exponent = constant_array(power.inputs[1])
                if (
                    power.inputs[0] is x
                    and exponent is not None
                    and exponent.size == 1
                    and float(exponent.reshape(-1)[0]) == 3.0
                ):
                    return "tanh"
        return None

    def rewrite(self, op: Any, **_: Any) -> ir.Value:
        if self.context.target == "onnxruntime":
            contrib_op = "FastGelu" if self._approximate == "tanh" else "Gelu"
            return getattr(op, contrib_op)(self._x, _domain=CONTRIB_DOMAIN)
        return op.Gelu(self._x, approximate=self._approximate)


def _is_private(nodes: list[ir.Node]) -> bool:
    """Whether the values computed inside the expression (not the root's) feed nothing outside it."""
    members = set(nodes)
    return all(
        not output.is_graph_output() and all(user in members for user, _ in output.uses())
        for node in nodes[1:]
        for output in node.outputs
    )


def gelu_rules(context: FusionContext) -> list[Any]:
    return [GeluFusion.rule(context)]


# ---------------------------------------------------------------------------------------------------------
# HardSwish


class HardSwishFusion(RewriteRuleClassBase):
    """``x * HardSigmoid(x, alpha=1/6, beta=0.5)`` → ``HardSwish(x)`` (opset >= 14), as paddle2onnx and
    TorchScript write hardswish for older opsets."""

    def __init__(self, *, hard_sigmoid_first: bool) -> None:
        super().__init__(name=f"hard-swish{'-swapped' if hard_sigmoid_first else ''}")
        self.hard_sigmoid_first = hard_sigmoid_first

    def pattern(self, op: Any, x: ir.Value) -> Any:
        gate = op.HardSigmoid(x, _outputs=["gate"])
        return op.Mul(gate, x) if self.hard_sigmoid_first else op.Mul(x, gate)

    def check(self, context: Any, x: ir.Value, gate: ir.Value) -> MatchResult:
        result = MatchResult()
        attributes = matched_node(gate).attributes
        alpha, beta = attributes.get_float("alpha", 0.2), attributes.get_float("beta", 0.5)
        if not (math.isclose(alpha, 1 / 6, rel_tol=1e-5) and math.isclose(beta, 0.5, rel_tol=1e-6)):
            return result.fail("not hardswish's alpha = 1/6 and beta = 1/2")
        return result

    def rewrite(self, op: Any, x: ir.Value, **_: Any) -> ir.Value:
        return op.HardSwish(x)


def hard_swish_rules(context: FusionContext) -> list[Any]:
    return [HardSwishFusion.rule(hard_sigmoid_first=first) for first in (False, True)]
