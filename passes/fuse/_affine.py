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
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

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
from onnxkit.passes.fuse._gemm import GEMM_BROADCAST_OPSET

_COMMUTATIVE = frozenset({"Mul", "Add"})


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
