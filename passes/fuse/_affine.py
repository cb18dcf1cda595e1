"""Fold a per-channel affine step into the weights and bias of the layer before it.

``BatchNormalization``, and ``Mul``/``Add``/``Sub``/``Div`` by a constant, compute ``y * scale + shift`` with
one ``scale`` and ``shift`` per output channel. After a layer with constant weights (Conv, ConvTranspose,
Gemm, MatMul) that step folds exactly into the layer: ``W' = W * scale`` along the output-channel axis of
``W``, and ``b' = b * scale + shift``.

A constant folds only when its broadcast touches the output-channel axis alone, and never raises the
output's rank: ``Conv(x) * c`` with ``c`` of shape ``[C, 1, 1]`` folds, with ``c`` of shape ``[C]`` it does
not (that multiplies the last spatial axis). Weights shared with another node are left alone, so folding
never duplicates a tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase
from onnxscript.rewriter.rules.common._matmul_add_to_gemm import (
    MatMulAddToGemm,
    TransABMatMulAddToGemm,
    TransAMatMulAddToGemm,
    TransBMatMulAddToGemm,
)

from onnxkit.passes.fuse._base import (
    FLOAT_TYPES,
    FusionContext,
    constant_array,
    matched_node,
    new_constant,
    only_used_by,
    present_input,
    rank_of,
    static_dims,
)

_COMMUTATIVE = frozenset({"Mul", "Add"})
# Gemm's C broadcasts to the product's shape without an attribute from opset 7 (Gemm-6 needs broadcast=1).
GEMM_BROADCAST_OPSET = 7


@dataclasses.dataclass(frozen=True)
class _Layer:
    """Where a layer keeps its output channels: in its output, and in its weight tensor."""

    op_type: str

    def output_rank(self, node: ir.Node, weights: np.ndarray) -> int | None:
        if self.op_type in ("Conv", "ConvTranspose"):
            return weights.ndim
        if self.op_type == "Gemm":
            return 2
        return rank_of(present_input(node, 0))  # MatMul with 2-D weights keeps the rank of its input

    def output_channel_axis(self, rank: int) -> int:
        return 1 if self.op_type in ("Conv", "ConvTranspose") else rank - 1

    def channels(self, node: ir.Node, weights: np.ndarray) -> int:
        if self.op_type == "Conv":
            return weights.shape[0]
        if self.op_type == "ConvTranspose":
            return weights.shape[1] * node.attributes.get_int("group", 1)
        if self.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0:
            return weights.shape[0]
        return weights.shape[1]

    def scale_weights(self, node: ir.Node, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``weights`` times ``scale`` per output channel, computed in place: the caller hands over a copy it
        owns (a new array per layer costs as much as the product on large convolutions)."""
        if self.op_type == "Conv":
            weights *= scale.reshape((-1,) + (1,) * (weights.ndim - 1))
        elif self.op_type == "ConvTranspose":
            # Weights are [C_in, C_out / group, *kernel]; output channel g * C_out/group + j lives at
            # weights[g * C_in/group + i, j] for every i.
            group = node.attributes.get_int("group", 1)
            c_in, c_out_per_group = weights.shape[:2]
            kernel = weights.shape[2:]
            grouped = weights.reshape((group, c_in // group, c_out_per_group) + kernel)  # a view: contiguous
            grouped *= scale.reshape((group, 1, c_out_per_group) + (1,) * len(kernel))
        elif self.op_type == "Gemm" and node.attributes.get_int("transB", 0) != 0:
            weights *= scale[:, None]
        else:
            weights *= scale[None, :]
        return weights


class FoldAffineIntoLayer(RewriteRuleClassBase):
    """``Step(Layer(x, W, b), ...)`` → ``Layer(x, W', b')`` for a per-channel affine ``Step``."""

    def __init__(self, layer: str, step: str, context: FusionContext, *, constant_first: bool = False) -> None:
        super().__init__(name=f"fold-{step}-into-{layer}{'-swapped' if constant_first else ''}")
        self.layer = _Layer(layer)
        self.step = step
        self.constant_first = constant_first
        self.context = context

    def pattern(self, op: Any, x: ir.Value, a: ir.Value, b: ir.Value, c: ir.Value, d: ir.Value) -> Any:
        layer_out = getattr(op, self.layer.op_type)(x, _allow_other_inputs=True, _outputs=["layer_out"])
        if self.step == "BatchNormalization":
            return op.BatchNormalization(layer_out, a, b, c, d, _outputs=["step_out"])
        operands = (a, layer_out) if self.constant_first else (layer_out, a)
        return getattr(op, self.step)(*operands, _outputs=["step_out"])

    def check(self, context: Any, x: ir.Value, layer_out: ir.Value, step_out: ir.Value, **params: Any) -> MatchResult:  # type: ignore[override]  # onnxscript's check(op, *args, **kwargs) stands for any pattern's variables
        result = MatchResult()
        layer, step = matched_node(layer_out), matched_node(step_out)
        weight_value = layer.inputs[1] if len(layer.inputs) > 1 else None
        weights = constant_array(weight_value)
        if weights is None or weight_value is None:
            return result.fail("the layer's weights are not constant")
        if weight_value.dtype not in FLOAT_TYPES:
            return result.fail("the weights are not floating point")
        bias_value = layer.inputs[2] if len(layer.inputs) > 2 else None
        bias = constant_array(bias_value) if bias_value is not None else None
        if bias_value is not None and bias is None:
            return result.fail("the layer's bias is not constant")
        if self.layer.op_type in ("MatMul", "Gemm") and weights.ndim != 2:
            return result.fail("only 2-D weights fold")
        if self.layer.op_type == "ConvTranspose" and weights.shape[0] % layer.attributes.get_int("group", 1):
            return result.fail("ConvTranspose input channels do not divide into groups")
        # A folded tensor replaces the original only for this layer; sharing it would duplicate weights.
        for tensor in (weight_value, bias_value):
            if tensor is not None and not only_used_by(tensor, [layer]):
                return result.fail(f"{tensor.name} is shared with another node")
        rank = self.layer.output_rank(layer, weights)
        channels = self.layer.channels(layer, weights)
        affine = self._per_channel_affine(step, params, rank, channels, weights.dtype)
        if affine is None:
            return result.fail("the step is not a per-channel affine map of the layer's output")
        scale, shift = affine
        if self.layer.op_type == "MatMul" and np.any(shift):
            # MatMul has no bias: a shift folds only by turning the MatMul into a 2-D Gemm, whose bias
            # broadcasts without Gemm-6's ``broadcast`` attribute from opset 7 on.
            if rank_of(x) != 2:
                return result.fail("a shift after an N-D MatMul has no bias to fold into")
            if self.context.opset < GEMM_BROADCAST_OPSET:
                return result.fail("Gemm broadcasts its bias only from opset 7")
        self._plan = (weights, bias, scale, shift, isinstance(context.graph_or_function, ir.Function))
        return result

    def _per_channel_affine(
        self, step: ir.Node, params: dict[str, ir.Value], rank: int | None, channels: int, dtype: np.dtype
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(scale, shift)`` of length ``channels`` such that ``step(y) == y * scale + shift`` per channel."""
        if self.step == "BatchNormalization":
            # Training mode normalizes with batch statistics; opset-6 spatial=0 normalizes per element.
            if (
                step.attributes.get_int("training_mode", 0)
                or step.attributes.get_int("spatial", 1) != 1
                or len(step.outputs) != 1
            ):
                return None
            arrays = [constant_array(params[k]) for k in ("a", "b", "c", "d")]
            per_channel_arrays = [a for a in arrays if a is not None and a.shape == (channels,)]
            if len(per_channel_arrays) != len(arrays):
                return None
            if rank is None or rank < 2 or self.layer.output_channel_axis(rank) != 1:
                return None  # BatchNormalization normalizes axis 1; it must be the layer's channel axis
            gamma, beta, mean, var = (a.astype(np.float64) for a in per_channel_arrays)
            scale = gamma / np.sqrt(var + step.attributes.get_float("epsilon", 1e-5))
            return scale, beta - mean * scale
        constant = constant_array(params["a"])
        if constant is None or constant.dtype != dtype:
            return None
        per_channel = _broadcast_per_channel(constant, rank, channels, self.layer)
        if per_channel is None:
            return None
        if self.step == "Mul":
            return per_channel, np.zeros(channels)
        if self.step == "Div":
            return (1.0 / per_channel, np.zeros(channels)) if np.all(per_channel != 0) else None
        if self.step == "Add":
            return np.ones(channels), per_channel
        return np.ones(channels), -per_channel  # Sub

    def rewrite(self, op: Any, x: ir.Value, layer_out: ir.Value, **_: Any) -> ir.Value:
        layer = matched_node(layer_out)
        weights, bias, scale, shift, in_function = self._plan
        dtype = weights.dtype
        attributes = dict(layer.attributes)
        names = self.context
        new_weights = new_constant(
            op,
            self.layer.scale_weights(layer, weights.astype(np.float64), scale).astype(dtype),
            names.fresh_name(present_input(layer, 1).name),
            in_function=in_function,
        )
        inputs = [x, new_weights]
        if self.layer.op_type == "Gemm":
            # Gemm adds beta * C; fold beta into the new bias and drop it.
            beta = attributes.pop("beta").as_float() if "beta" in attributes else 1.0
            bias = None if bias is None else bias.astype(np.float64) * beta
        if bias is not None or np.any(shift):
            base = np.zeros_like(shift) if bias is None else bias.astype(np.float64)
            new_bias = base * scale + shift
            bias_name = present_input(layer, 2).name if bias is not None else f"{present_input(layer, 1).name}_bias"
            inputs.append(
                new_constant(op, new_bias.astype(dtype), names.fresh_name(bias_name), in_function=in_function)
            )
        if self.layer.op_type == "MatMul" and len(inputs) == 3:
            return op.Gemm(*inputs)
        return getattr(op, self.layer.op_type)(*inputs, **attributes)


def _broadcast_per_channel(constant: np.ndarray, rank: int | None, channels: int, layer: _Layer) -> np.ndarray | None:
    """The constant as one value per output channel, or None when its broadcast reaches another axis or
    would raise the output's rank."""
    if rank is None:
        # Only a 0-D or 1-D constant is safe on a MatMul of unknown rank: it lines up with the last axis.
        if layer.op_type != "MatMul" or constant.ndim > 1:
            return None
        rank = max(constant.ndim, 1)
    if constant.ndim > rank:
        return None
    aligned = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
    channel_axis = layer.output_channel_axis(rank)
    if any(size != 1 for axis, size in enumerate(aligned.shape) if axis != channel_axis):
        return None
    if aligned.shape[channel_axis] not in (1, channels):
        return None
    return np.broadcast_to(aligned.reshape(-1).astype(np.float64), (channels,)).copy()


def affine_rules(layers: tuple[str, ...], steps: tuple[str, ...], context: FusionContext) -> list[Any]:
    rules = []
    for layer in layers:
        for step in steps:
            rules.append(FoldAffineIntoLayer.rule(layer, step, context))
            if step in _COMMUTATIVE:
                rules.append(FoldAffineIntoLayer.rule(layer, step, context, constant_first=True))
    return rules


class FoldInputScaleIntoLayer(RewriteRuleClassBase):
    """``Layer(x * c, W, ...)`` → ``Layer(x, W', ...)`` for a constant ``c`` per input channel (or a scalar).

    A scale on the layer's input is a scale on the rows of its weights that read that channel:
    ``W'[:, i] = W[:, i] * c[i]`` for a Conv (per group), ``W'[i, :] = W[i, :] * c[i]`` for MatMul and Gemm.
    Exact with any padding, as padded zeros scale to zeros. ``Div`` by ``c`` is a scale by ``1 / c``.
    """

    def __init__(self, layer: str, step: str, context: FusionContext, *, constant_first: bool = False) -> None:
        super().__init__(name=f"fold-input-{step}-into-{layer}{'-swapped' if constant_first else ''}")
        self.layer, self.step, self.constant_first, self.context = layer, step, constant_first, context

    def pattern(self, op: Any, x: ir.Value, c: ir.Value) -> Any:
        operands = (c, x) if self.constant_first else (x, c)
        scaled = getattr(op, self.step)(*operands, _outputs=["scaled"])
        return getattr(op, self.layer)(scaled, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, c: ir.Value, scaled: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        layer = matched_node(out)
        if len(layer.inputs) < 2 or any(value is scaled for value in layer.inputs[1:]):
            return result.fail("the scaled value is also the layer's weights or bias")
        if not only_used_by(scaled, [layer]):
            return result.fail("the scaled value is read elsewhere")
        weight_value = layer.inputs[1]
        weights = constant_array(weight_value)
        if (
            weights is None
            or weight_value is None
            or weight_value.dtype not in FLOAT_TYPES
            or not only_used_by(weight_value, [layer])
        ):
            return result.fail("the weights are not constant floating point of this layer alone")
        constant = constant_array(c)
        if constant is None or constant.dtype != weights.dtype:
            return result.fail("the scale is not a constant of the weights' type")
        if self.layer == "Gemm" and layer.attributes.get_int("transA", 0) != 0:
            return result.fail("a transposed Gemm input")
        if self.layer in ("MatMul", "Gemm") and weights.ndim != 2:
            return result.fail("only 2-D weights fold")
        rank = weights.ndim if self.layer == "Conv" else rank_of(x)
        if rank is None or rank < 1 or constant.ndim > rank:
            return result.fail("the scale could raise the input's rank")
        channel_axis = 1 if self.layer == "Conv" else rank - 1
        channels = (
            weights.shape[1] * layer.attributes.get_int("group", 1)
            if self.layer == "Conv"
            else (
                weights.shape[1]
                if self.layer == "Gemm" and layer.attributes.get_int("transB", 0) != 0
                else weights.shape[0]
            )
        )
        aligned = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
        if any(size != 1 for axis, size in enumerate(aligned.shape) if axis != channel_axis) or aligned.shape[
            channel_axis
        ] not in (1, channels):
            return result.fail("the scale is not one value per input channel")
        dims = static_dims(x)
        if aligned.shape[channel_axis] != 1 and (dims is None or len(dims) != rank or dims[channel_axis] != channels):
            return result.fail("the scale could widen the input's channel axis")  # x with 1 channel, broadcast
        scale = np.broadcast_to(aligned.reshape(-1).astype(np.float64), (channels,))
        if self.step == "Div":
            if not np.all(scale != 0):
                return result.fail("division by zero")
            scale = 1.0 / scale
        self._plan = (weights, scale, isinstance(context.graph_or_function, ir.Function))
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        layer = matched_node(out)
        weights, scale, in_function = self._plan
        scaled = weights.astype(np.float64)
        if self.layer == "Conv":
            # Weights are [C_out, C_in / group, *kernel]; output channel o reads input channels of its group.
            group = layer.attributes.get_int("group", 1)
            c_out, c_in_per_group = weights.shape[:2]
            per_output = scale.reshape(group, 1, c_in_per_group).repeat(c_out // group, axis=1)
            scaled *= per_output.reshape((c_out, c_in_per_group) + (1,) * (weights.ndim - 2))
        elif self.layer == "Gemm" and layer.attributes.get_int("transB", 0) != 0:
            scaled *= scale[None, :]
        else:
            scaled *= scale[:, None]
        new_weights = new_constant(
            op,
            scaled.astype(weights.dtype),
            self.context.fresh_name(present_input(layer, 1).name),
            in_function=in_function,
        )
        return getattr(op, self.layer)(x, new_weights, *layer.inputs[2:], **layer.attributes)


def input_scale_rules(context: FusionContext) -> list[Any]:
    return [
        FoldInputScaleIntoLayer.rule(layer, step, context, constant_first=first)
        for layer in ("Conv", "MatMul", "Gemm")
        for step, first in (("Mul", False), ("Mul", True), ("Div", False))
    ]


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


class PadIntoConv(RewriteRuleClassBase):
    """``Conv(Pad(x, pads, mode=constant, value=0))`` → ``Conv(x)`` with the spatial pads added to its own,
    when the Pad leaves the batch and channel axes alone and only adds (never crops)."""

    def __init__(self) -> None:
        super().__init__(name="pad-into-conv")

    def pattern(self, op: Any, x: ir.Value) -> Any:
        padded = op.Pad(x, _allow_other_inputs=True, _outputs=["padded"])
        return op.Conv(padded, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, padded: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        pad, conv = matched_node(padded), matched_node(out)
        if any(value is padded for value in conv.inputs[1:]):
            return result.fail("the padded value is also the Conv's weights or bias")
        if pad.attributes.get_string("mode", "constant") != "constant":
            return result.fail("the Pad is not constant padding")
        if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return result.fail("the Conv computes its own padding")
        if "pads" in pad.attributes:  # Pad before opset 11
            pads, value = list(pad.attributes.get_ints("pads")), pad.attributes.get_float("value", 0.0)
        else:
            array = constant_array(pad.inputs[1]) if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
            if array is None or (len(pad.inputs) > 3 and pad.inputs[3] is not None):
                return result.fail("the pads are not constant, or name axes")
            fill = constant_array(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else np.zeros(1)
            if fill is None or fill.size != 1:
                return result.fail("the padding value is not a constant scalar")
            pads, value = [int(p) for p in array.reshape(-1)], float(fill.reshape(-1)[0])
        rank = len(pads) // 2
        begins, ends = pads[:rank], pads[rank:]
        if value != 0.0 or rank < 3 or any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
            return result.fail("the Pad fills with a non-zero value, pads batch or channels, or crops")
        spatial = rank - 2
        conv_pads = list(conv.attributes.get_ints("pads", [0] * (2 * spatial)))
        if len(conv_pads) != 2 * spatial:
            return result.fail("the Conv's pads do not fit the Pad's rank")
        self._pads = [conv_pads[i] + begins[2 + i] for i in range(spatial)] + [
            conv_pads[spatial + i] + ends[2 + i] for i in range(spatial)
        ]
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        conv = matched_node(out)
        attributes = {name: attr for name, attr in conv.attributes.items() if name != "pads"}
        return op.Conv(x, *conv.inputs[1:], pads=self._pads, **attributes)


def pad_conv_rules(context: FusionContext) -> list[Any]:
    return [PadIntoConv.rule()]


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
