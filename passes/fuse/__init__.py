"""``fuse``: operator fusions, portable (``target=standard``) or for ONNX Runtime (``target=onnxruntime``)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Literal

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxkit.pass_base import Pass, PassResult, Site
from onnxkit.passes._graph_utils import all_nodes
from onnxkit.passes.fuse import (
    _affine,
    _gemm,
    _layout,
    _normalization,
    _onnxruntime,
    _pad_conv,
    _placeholders,
    _reductions,
    _reshape_as_squeeze,
    _shape_of_transpose,
    _space_to_depth,
    _steps,
    _tidy,
    _transpose_region,
)
from onnxkit.passes.fuse._base import (
    CONTRIB_DOMAIN,
    Fusion,
    FusionContext,
    annotate_shapes,
    rule_fusion,
    shapeless_values,
)
from onnxkit.passes.fuse._rule_index import Census

ORT_ONLY = frozenset({"onnxruntime"})

# The fusions, in the order they run. Order matters where one fusion feeds another: BatchNormalization
# and constant steps fold into a layer before the layer absorbs its activation; MatMul+Add becomes Gemm
# before Gemm+activation; LayerNormalization and Gelu exist before SkipLayerNormalization and BiasGelu.
FUSIONS: tuple[Fusion, ...] = (
    Fusion(
        "transpose-chain",
        "Transpose pairs → one Transpose, or none when they cancel",
        "collapsed {n} Transpose pairs",
        rule_fusion(_layout.transpose_rules),
        requires=("Transpose",),
    ),
    Fusion(
        "transpose-region",
        "Transposes around elementwise ops (and Squeeze/Unsqueeze) → none; the ops run in the untransposed layout",
        "cancelled the Transposes around {n} regions of elementwise ops",
        _transpose_region.apply_transpose_regions,
        requires=("Transpose",),
    ),
    Fusion(
        "shape-of-transpose",
        "Shape of a Transpose, where the Shape of its input exists → Gather of that Shape",
        "read {n} Transposes' shapes from their inputs' Shape instead",
        _shape_of_transpose.apply_shape_of_transpose,
        requires=("Transpose", "Shape"),
    ),
    Fusion(
        "reshape-chain",
        "Reshape/Squeeze/Unsqueeze/Flatten pairs → one op, or none; a shape-keeping Reshape → none",
        "collapsed {n} Reshape/Squeeze/Unsqueeze/Flatten pairs and shape-keeping Reshapes",
        rule_fusion(_layout.layout_rules),
        requires=("Reshape|Squeeze|Unsqueeze|Flatten",),
    ),
    Fusion(
        "reshape-squeeze",
        "Reshape to a computed shape → Squeeze/Unsqueeze of size-1 axes, or a constant target of 0-copies",
        "wrote {n} Reshapes to computed shapes with constant axes or targets",
        _reshape_as_squeeze.apply_reshape_as_squeeze,
        requires=("Reshape",),
    ),
    Fusion(
        "placeholder-layout",
        "Reshape/Flatten/Squeeze/Unsqueeze/Transpose/Expand of a ConstantOfShape → ConstantOfShape",
        "wrote {n} reshaped ConstantOfShape placeholders as one node",
        rule_fusion(_placeholders.placeholder_layout_rules),
        requires=("ConstantOfShape", "|".join(_placeholders.LAYOUT_OPS)),
    ),
    Fusion(
        "transpose-reshape",
        "Transpose that moves only size-1 axes + Reshape → Reshape",
        "dropped {n} Transposes of size-1 axes before a Reshape",
        rule_fusion(_layout.unit_transpose_rules),
        requires=("Transpose", "Reshape"),
    ),
    Fusion(
        "reduce-keepdims",
        "reduction + Unsqueeze of the reduced axes (Squeeze of the kept ones) → keepdims",
        "set keepdims on {n} reductions instead of a Squeeze/Unsqueeze",
        rule_fusion(_reductions.keepdims_rules),
        requires=("|".join(_reductions.REDUCTIONS), "Squeeze|Unsqueeze"),
    ),
    Fusion(
        "reduce-transpose",
        "Transpose + reduction that drops the axes and keeps the others' order → reduction",
        "read {n} reductions through the Transpose before them",
        rule_fusion(_reductions.reduce_transpose_rules),
        requires=("Transpose", "|".join(_reductions.REDUCTIONS)),
    ),
    Fusion(
        "slice-chain",
        "Slice of a Slice of other axes, both constant → one Slice",
        "merged {n} pairs of Slices of different axes",
        rule_fusion(_layout.slice_rules),
        requires=("Slice",),
        min_opset=10,
    ),
    Fusion(
        "space-to-depth",
        "Focus block: four Slices x[:, :, h0::2, w0::2] concatenated on channels → SpaceToDepth",
        "wrote {n} Focus blocks as SpaceToDepth (and a channel Gather)",
        _space_to_depth.apply_space_to_depth,
        requires=("Slice", "Concat"),
        min_opset=10,
    ),
    Fusion(
        "conv-bn",
        "Conv + BatchNormalization → Conv with folded weights and bias",
        "folded {n} BatchNormalization into Conv",
        rule_fusion(lambda c: _affine.affine_rules(("Conv",), ("BatchNormalization",), c)),
        requires=("Conv", "BatchNormalization"),
    ),
    Fusion(
        "conv-transpose-bn",
        "ConvTranspose + BatchNormalization → ConvTranspose",
        "folded {n} BatchNormalization into ConvTranspose",
        rule_fusion(lambda c: _affine.affine_rules(("ConvTranspose",), ("BatchNormalization",), c)),
        requires=("ConvTranspose", "BatchNormalization"),
    ),
    Fusion(
        "gemm-bn",
        "Gemm/MatMul with constant weights + BatchNormalization → Gemm/MatMul",
        "folded {n} BatchNormalization into Gemm/MatMul",
        rule_fusion(lambda c: _affine.affine_rules(("Gemm", "MatMul"), ("BatchNormalization",), c)),
        requires=("Gemm|MatMul", "BatchNormalization"),
    ),
    Fusion(
        "conv-affine",
        "Conv/ConvTranspose + per-channel constant Mul/Add/Sub/Div → Conv/ConvTranspose",
        "folded {n} constant Mul/Add/Sub/Div into Conv/ConvTranspose",
        rule_fusion(lambda c: _affine.affine_rules(("Conv", "ConvTranspose"), ("Mul", "Add", "Sub", "Div"), c)),
        requires=("Conv|ConvTranspose", "Mul|Add|Sub|Div"),
    ),
    Fusion(
        "gemm-affine",
        "Gemm + per-column constant Mul/Add/Sub/Div, MatMul + constant Mul/Div → folded weights",
        "folded {n} constant Mul/Add/Sub/Div into Gemm/MatMul",
        rule_fusion(
            lambda c: (
                _affine.affine_rules(("Gemm",), ("Mul", "Add", "Sub", "Div"), c)
                + _affine.affine_rules(("MatMul",), ("Mul", "Div"), c)
            )
        ),
        requires=("Gemm|MatMul", "Mul|Add|Sub|Div"),
    ),
    Fusion(
        "input-scale",
        "constant Mul/Div before a Conv/MatMul/Gemm, per input channel → folded into its weights",
        "folded {n} constant Mul/Div into the weights of the layer after it",
        rule_fusion(_affine.input_scale_rules),
        requires=("Conv|MatMul|Gemm", "Mul|Div"),
    ),
    Fusion(
        "pad-conv",
        "zero constant Pad of the spatial axes + Conv → Conv with larger pads",
        "folded {n} Pad into Conv",
        rule_fusion(_pad_conv.pad_conv_rules),
        requires=("Pad", "Conv"),
    ),
    Fusion(
        "matmul-add-gemm",
        "2-D MatMul + Add (and Transposes of its inputs) → Gemm",
        "fused {n} MatMul+Add into Gemm",
        rule_fusion(lambda c: _gemm.matmul_add_to_gemm_rules()),
        requires=("MatMul", "Add"),
        min_opset=_gemm.GEMM_BROADCAST_OPSET,
    ),
    Fusion(
        "layer-norm",
        "decomposed layer normalization → LayerNormalization (opset >= 17)",
        "fused {n} decomposed layer norms into LayerNormalization",
        rule_fusion(_normalization.layer_norm_rules),
        requires=("ReduceMean", "Sub", "Sqrt"),
        min_opset=17,
    ),
    Fusion(
        "layer-norm-affine",
        "LayerNormalization + constant Mul/Add over the normalized axes → LayerNormalization",
        "folded {n} constant Mul/Add into LayerNormalization",
        rule_fusion(_normalization.layer_norm_affine_rules),
        requires=("LayerNormalization", "Mul|Add"),
        min_opset=17,
    ),
    Fusion(
        "gelu",
        "decomposed GELU (erf or tanh form) → Gelu (opset >= 20; any opset for onnxruntime)",
        "fused {n} decomposed GELUs into Gelu",
        rule_fusion(_normalization.gelu_rules),
        requires=("Erf|Tanh", "Mul"),
    ),
    Fusion(
        "hard-swish",
        "x * HardSigmoid(x, 1/6, 1/2) → HardSwish (opset >= 14)",
        "fused {n} hardswishes into HardSwish",
        rule_fusion(_normalization.hard_swish_rules),
        requires=("HardSigmoid", "Mul"),
        min_opset=14,
    ),
    Fusion(
        "constant-steps",
        "Mul by a constant after Mul by a constant (Add after Add) → one Mul (Add)",
        "merged {n} pairs of constant Mul/Add steps",
        rule_fusion(_steps.constant_step_rules),
        requires=("Mul|Add",),
    ),
    Fusion(
        "reciprocal-mul",
        "x * (1 / y) → x / y, where nothing else reads 1 / y",
        "wrote {n} multiplications by a reciprocal as one Div",
        rule_fusion(_steps.reciprocal_rules),
        requires=("Div", "Mul"),
    ),
    Fusion(
        "attention",
        "attention blocks → MultiHeadAttention/Attention",
        "fused {n} attention blocks into MultiHeadAttention/Attention",
        _onnxruntime.apply_attention,
        requires=("Softmax", "MatMul"),
        targets=ORT_ONLY,
        per_site=False,
    ),
    Fusion(
        "skip-layer-norm",
        "Add + LayerNormalization → SkipLayerNormalization",
        "fused {n} Add+LayerNormalization into SkipLayerNormalization",
        _onnxruntime.apply_skip_layer_norm,
        requires=("LayerNormalization", "Add"),
        targets=ORT_ONLY,
        per_site=False,
    ),
    Fusion(
        "bias-gelu",
        "Add + Gelu → BiasGelu",
        "fused {n} Add+Gelu into BiasGelu",
        _onnxruntime.apply_bias_gelu,
        requires=("Gelu", "Add"),
        targets=ORT_ONLY,
        per_site=False,
    ),
    Fusion(
        "fused-matmul",
        "MatMul with transposed inputs or a scalar scale → FusedMatMul",
        "fused {n} Transpose/scale into FusedMatMul",
        rule_fusion(_onnxruntime.fused_matmul_rules),
        requires=("MatMul|FusedMatMul", "Transpose|Div|Mul"),
        targets=ORT_ONLY,
    ),
    Fusion(
        "conv-activation",
        "Conv + Relu/Clip/LeakyRelu/Sigmoid/HardSigmoid/Tanh → FusedConv",
        "fused {n} activations into FusedConv",
        rule_fusion(_onnxruntime.conv_activation_rules),
        requires=("Conv",),
        targets=ORT_ONLY,
    ),
    Fusion(
        "gemm-activation",
        "Gemm + Relu/LeakyRelu/Sigmoid/HardSigmoid/Tanh → FusedGemm",
        "fused {n} activations into FusedGemm",
        rule_fusion(_onnxruntime.gemm_activation_rules),
        requires=("Gemm",),
        targets=ORT_ONLY,
    ),
)
FUSION_NAMES = tuple(f.name for f in FUSIONS)
_GELU_STANDARD_OPSET = 20
# From IR version 4 initializers need not be listed among the graph inputs.
_INITIALIZERS_APART_IR = 4
# Each round applies every fusion once; a fusion can enable another that ran earlier in the round
# (a Conv that absorbed a Mul can then absorb a BatchNormalization). Real models settle in two rounds.
_MAX_ROUNDS = 8


@dataclasses.dataclass(frozen=True)
class FuseOptions:
    target: Literal["standard", "onnxruntime"] = "standard"
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.skip if name not in FUSION_NAMES]
        if unknown:
            raise ValueError(f"unknown fusion {', '.join(unknown)} in skip; fusions are: {', '.join(FUSION_NAMES)}")


class FusePass(Pass):
    """Fuse operators: fold BatchNormalization and constant scales into weights, MatMul+Add into Gemm, and more.

    ``target=standard`` emits standard ONNX ops only, so the model stays portable; ``target=onnxruntime``
    also emits ONNX Runtime's contrib ops (FusedConv, FusedGemm, Attention, SkipLayerNormalization, ...).
    Any fusion can be skipped by name: ``fuse{skip=conv-bn,gelu}``. Reaches into If/Loop/Scan bodies and
    local functions; graph input and output names never change. Every node a fusion writes exists, with its
    attributes, at the model's opset. Each fusion applied is reported as a ``Site(fusion, anchor node)``, so
    the pipeline can switch off one fusion at one node when the output fails.
    """

    name = "fuse"
    kind = "exact"
    Options = FuseOptions
    emits_domains = frozenset({"", CONTRIB_DOMAIN})

    def allowed_domains(self) -> frozenset[str]:
        return self.emits_domains if self.options.target == "onnxruntime" else frozenset({""})

    @classmethod
    def describe_extra(cls) -> list[str]:
        width = max(len(name) for name in FUSION_NAMES)
        return ["fusions (skip any with skip=NAME,...):"] + [
            f"  {f.name:<{width}}  {f.summary}{' [onnxruntime]' if f.targets == ORT_ONLY else ''}" for f in FUSIONS
        ]

    def call(self, model: ir.Model) -> PassResult:
        # Before IR 4 every initializer is also listed as a graph input, yet it is a constant (ONNX Runtime
        # lets no caller override it). Rules see initializers as constants while they run; then the IR 3
        # model gets its list back, with the initializers fusions created added to it.
        listed_inputs = _tidy.unlist_initializer_inputs(model) if model.ir_version < _INITIALIZERS_APART_IR else None
        try:
            return self._fuse(model)
        finally:
            if listed_inputs is not None:
                _tidy.relist_initializer_inputs(model, listed_inputs)

    def _fuse(self, model: ir.Model) -> PassResult:
        context = FusionContext.for_model(model, self.options.target, allows=self.context.allows)
        fusions = [f for f in FUSIONS if self._applies(f, context)]
        counts: collections.Counter[str] = collections.Counter()
        # Rules read shapes (ranks, channel counts), including those of values that earlier rules created.
        # Inference keeps every shape a value has, so on a model where every value has one (simplify's
        # output, any model with its value_info) it would tell nothing: it runs only where one lacks it.
        unknown = shapeless_values(model)
        remove_annotations = annotate_shapes(model) if unknown else _nothing_to_undo
        unknown = shapeless_values(model)
        context.census = census = Census.of(model)
        initializers_before = _tidy.initializer_ids(model)
        # A fusion finds nothing new in a model it already searched in vain: ``changes`` counts what altered
        # the model (a fusion firing, shapes inferred), and a fusion is searched again only once it moved on
        # since that fusion's last fruitless search. Rounds still run until one changes nothing; the last one
        # searches only what the round before left out, instead of every fusion again.
        changes, searched_at = 0, dict.fromkeys((f.name for f in fusions), -1)
        for _ in range(_MAX_ROUNDS):
            fired_this_round = 0
            for fusion in fusions:
                if searched_at[fusion.name] == changes or not fusion.can_match(census.op_types):
                    continue
                fired = self._apply(fusion, model, context)
                if fired:
                    # Taken before the dead nodes go (their op types too, as before), so only a superset.
                    context.census = census = Census.of(model)
                    # Nodes a rule made dead must not be matched by the next rule.
                    common_passes.RemoveUnusedNodesPass()(model)
                    changes += 1  # its own rewrites may enable it again: it stays due
                else:
                    searched_at[fusion.name] = changes
                counts[fusion.name] += fired
                fired_this_round += fired
            if not fired_this_round:
                break
            # A rewrite's results take the shapes of the values they replace; values inside it have none
            # until inference runs again. Rules refuse what they cannot see, and get it next round. Inference
            # keeps every shape a value has, so it can only tell something new where a value without one
            # appeared (new values, even where they replace shapeless ones, are new objects): otherwise it
            # would be a whole run for nothing (a third of fuse's time on a large model).
            now_unknown = shapeless_values(model)
            if not now_unknown <= unknown:
                annotate_shapes(model)
                now_unknown = shapeless_values(model)
                changes += 1  # shapes rules refused to guess without may be known now
            unknown = now_unknown
        if not sum(counts.values()):
            remove_annotations()  # a pass that changes nothing leaves even the shapes as they were
            return PassResult(model, False, [])
        _tidy.bypass_created_identities(model)
        _tidy.lift_created_constants(model)
        _tidy.remove_unused_subgraph_initializers(model)
        merged = _tidy.merge_created_duplicates(model, initializers_before)  # those still read
        _tidy.drop_unused_opsets(model, (CONTRIB_DOMAIN, _onnxruntime.INTERMEDIATE_DOMAIN))
        stats = [f.stat.format(n=counts[f.name]) for f in FUSIONS if counts[f.name]]
        if merged:
            stats.append(f"merged {merged} equal constants the fusions created")
        return PassResult(model, True, stats, sites=context.sites)

    def _apply(self, fusion: Fusion, model: ir.Model, context: FusionContext) -> int:
        """Apply one fusion, recording its sites.

        Rule fusions record and honour single sites themselves. The onnxscript transformer fusions rewrite
        whole blocks at once and cannot be held back at one node, so a disabled site of theirs disables the
        fusion, and each contrib node they create is reported as a site.
        """
        fusion_context = context.for_fusion(fusion.name)
        if fusion.per_site:
            return fusion.apply(model, fusion_context)
        if any(isinstance(item, Site) and item.rule == fusion.name for item in self.context.disabled):
            return 0
        existing = {node.name for node in _contrib_nodes(model)}  # by name: a fusion may swap in a new graph
        fired = fusion.apply(model, fusion_context)
        context.sites.extend(
            Site(fusion.name, node.name or "") for node in _contrib_nodes(model) if node.name not in existing
        )
        return fired

    def _applies(self, fusion: Fusion, context: FusionContext) -> bool:
        if fusion.name in self.options.skip or context.target not in fusion.targets:
            return False
        if not self.context.allows(fusion.name):
            return False
        if fusion.name == "gelu" and context.target == "standard":
            return context.opset >= _GELU_STANDARD_OPSET
        return context.opset >= fusion.min_opset


def _nothing_to_undo() -> None:
    """What ``annotate_shapes`` returns to undo, where it did not run."""


def _contrib_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for node in all_nodes(model) if node.domain == CONTRIB_DOMAIN]
