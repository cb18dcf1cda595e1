"""Fusions into ONNX Runtime's contrib ops (domain ``com.microsoft``), used only under ``target=onnxruntime``.

Conv and Gemm absorb a following activation (FusedConv, FusedGemm), and transformer blocks become
Attention/MultiHeadAttention, SkipLayerNormalization, BiasGelu and FusedMatMul through
``onnxscript.rewriter.ort_fusions``.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes._graph_utils import all_nodes, opset_problem
from onnxkit.passes.fuse._base import (
    CONTRIB_DOMAIN,
    FusionContext,
    annotate_shapes,
    constant_array,
)

# Activations ONNX Runtime's FusedConv and FusedGemm apply, and the parameters each takes (with defaults).
_CONV_ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Clip")
_GEMM_ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid")
_ACTIVATION_ATTRIBUTES = {"LeakyRelu": (("alpha", 0.01),), "HardSigmoid": (("alpha", 0.2), ("beta", 0.5))}
_FLOAT32_RANGE = (float(np.finfo(np.float32).min), float(np.finfo(np.float32).max))


def _activation_parameters(activation: ir.Node) -> list[float] | None:
    """The activation's parameters in FusedConv's ``activation_params`` order; None if not constant."""
    if activation.op_type != "Clip":
        return [
            activation.attributes.get_float(name, default)
            for name, default in _ACTIVATION_ATTRIBUTES.get(activation.op_type, ())
        ]
    if "min" in activation.attributes or "max" in activation.attributes or len(activation.inputs) == 1:
        return [
            activation.attributes.get_float("min", _FLOAT32_RANGE[0]),
            activation.attributes.get_float("max", _FLOAT32_RANGE[1]),
        ]
    bounds = []
    for index, default in zip((1, 2), _FLOAT32_RANGE):
        bound = activation.inputs[index] if len(activation.inputs) > index else None
        if bound is None:
            bounds.append(default)
            continue
        array = constant_array(bound)
        if array is None or array.size != 1:
            return None
        bounds.append(float(array.reshape(-1)[0]))
    return bounds


class LayerActivationFusion(RewriteRuleClassBase):
    """``Activation(Conv(...))`` → ``FusedConv``, ``Activation(Gemm(...))`` → ``FusedGemm``."""

    def __init__(self, layer: str, activation: str) -> None:
        super().__init__(name=f"{layer}-{activation}")
        self.layer, self.activation = layer, activation

    def pattern(self, op: Any, x: ir.Value) -> Any:
        layer_out = getattr(op, self.layer)(x, _allow_other_inputs=True, _outputs=["layer_out"])
        return getattr(op, self.activation)(layer_out, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, layer_out: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        # The contrib kernels are float32 only.
        if x.dtype != ir.DataType.FLOAT:
            return result.fail("FusedConv and FusedGemm take float32 only")
        activation = out.producer()
        assert activation is not None  # the matched activation node
        parameters = _activation_parameters(activation)
        if parameters is None:
            return result.fail("the activation's bounds are not constant")
        self._parameters = parameters
        return result

    def rewrite(self, op: Any, x: ir.Value, layer_out: ir.Value, **_: Any) -> ir.Value:
        layer = layer_out.producer()
        assert layer is not None  # the matched Conv or Gemm
        # the layer's own attributes, plus the activation's parameters as plain values (the op builder takes both)
        attributes: dict[str, ir.Attr | float | list[float]] = dict(layer.attributes)
        if self.layer == "Conv":
            if self._parameters:
                attributes["activation_params"] = self._parameters
            return op.FusedConv(*layer.inputs, activation=self.activation, _domain=CONTRIB_DOMAIN, **attributes)
        for name, value in zip(("activation_alpha", "activation_beta"), self._parameters):
            attributes[name] = value
        return op.FusedGemm(*layer.inputs, activation=self.activation, _domain=CONTRIB_DOMAIN, **attributes)


def conv_activation_rules(context: FusionContext) -> list[Any]:
    return [LayerActivationFusion.rule("Conv", activation) for activation in _CONV_ACTIVATIONS]


def gemm_activation_rules(context: FusionContext) -> list[Any]:
    return [LayerActivationFusion.rule("Gemm", activation) for activation in _GEMM_ACTIVATIONS]


# ---------------------------------------------------------------------------------------------------------
# Transformer fusions from onnxscript.rewriter.ort_fusions

# onnxscript's attention fusions pass through ops of this private domain, which no runtime implements;
# a fusion that stops half-way must not leave one behind.
INTERMEDIATE_DOMAIN = "ai.onnxruntime._fusion"


def _contrib_op_counts(model: ir.Model, op_types: tuple[str, ...]) -> int:
    counts: collections.Counter[str] = collections.Counter()
    for node in all_nodes(model):
        if node.domain == CONTRIB_DOMAIN:
            counts[node.op_type] += 1
    return sum(counts[op] for op in op_types)


def _has_intermediate_ops(model: ir.Model) -> bool:
    return any(node.domain == INTERMEDIATE_DOMAIN for node in all_nodes(model))


def _adopt(model: ir.Model, fused: ir.Model) -> None:
    model.graph = fused.graph
    model.functions.clear()
    model.functions.update(fused.functions)


def _settle(model: ir.Model) -> None:
    common_passes.RemoveUnusedNodesPass()(model)
    annotate_shapes(model)


def apply_attention(model: ir.Model, context: FusionContext) -> int:
    """SDPA → MultiHeadAttention → Attention, as far as the model's shapes allow; all or nothing.

    These fusions pass through intermediate ops that no runtime implements, so they run on a copy, which
    replaces the model's graph only if none is left over, every standard op is valid at the model's opset,
    and onnxscript did not fail on a graph it did not foresee. A model the fusion cannot finish is left
    exactly as it was.
    """
    from onnxscript.rewriter.ort_fusions.attention import fuse_attention
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha

    fused_ops = ("Attention", "MultiHeadAttention")
    before = _contrib_op_counts(model, fused_ops)
    candidate = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    try:
        if not fuse_sdpa(candidate):
            return 0
        # Each step matches on shapes, including those of the nodes the step before created, and only
        # where the nodes it replaces have no other users, dead ones included.
        _settle(candidate)
        if fuse_mha1(candidate) + fuse_mha2(candidate):
            for step in (fuse_mha_scale, fuse_mha_bias, fuse_attention):
                _settle(candidate)
                step(candidate)
        replace_sdpa_by_mha(candidate)
        common_passes.RemoveUnusedNodesPass()(candidate)
    except Exception as error:  # a third-party rewriter on an unforeseen graph: skip the fusion, keep the pass
        warnings.warn(f"attention fusion skipped: onnxscript raised {type(error).__name__}: {error}", stacklevel=2)
        return 0
    if _has_intermediate_ops(candidate) or any(opset_problem(node, context.opset) for node in all_nodes(candidate)):
        return 0
    _adopt(model, candidate)
    return _contrib_op_counts(model, fused_ops) - before


def _onnxscript_fusion(module: str, function: str) -> Callable[[ir.Model, FusionContext], int]:
    """One of onnxscript's ``fuse_*`` functions, imported when first used."""

    def apply(model: ir.Model, context: FusionContext) -> int:
        import importlib

        return getattr(importlib.import_module(f"onnxscript.rewriter.ort_fusions.{module}"), function)(model)

    return apply


apply_skip_layer_norm = _onnxscript_fusion("skip_normalization", "fuse_skip_layer_normalization")
apply_bias_gelu = _onnxscript_fusion("bias_gelu", "fuse_bias_gelu")


def fused_matmul_rules(context: FusionContext) -> list[Any]:
    from onnxscript.rewriter.ort_fusions.fused_matmul_rule_sets import fused_matmul_rule_sets

    return list(fused_matmul_rule_sets())
