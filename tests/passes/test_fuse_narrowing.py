"""``fuse`` reports where each fusion fired (``PassResult.sites``) and honours ``PassContext.disabled``, so the
pipeline can narrow a failing fuse down to one fusion at one node and keep the rest."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from onnxkit import Pipeline
from onnxkit.pass_base import PassContext, Site
from onnxkit.passes.fuse import FusePass, _affine
from tests.passes.test_fuse import (
    assert_same_outputs,
    batchnorm,
    batchnorm_params,
    make_model,
    op_types,
    value,
    weights,
)


def two_conv_bn_and_a_gemm(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv→BN→Conv→BN→Flatten→MatMul→Add: two conv-bn sites and one matmul-add-gemm site."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        batchnorm("bn1", "c1", "y1", name="bn1"),
        helper.make_node("Conv", ["y1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        batchnorm("bn2", "c2", "y2", name="bn2"),
        helper.make_node("Flatten", ["y2"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fc_b"], ["y"], name="fc_bias"),
    ]
    initializers = [
        weights(rng, "w1", 4, 3, 3, 3),
        weights(rng, "w2", 4, 4, 3, 3),
        weights(rng, "fc_w", 4 * 5 * 5, 6),
        weights(rng, "fc_b", 6),
        *batchnorm_params(rng, "bn1", 4),
        *batchnorm_params(rng, "bn2", 4),
    ]
    return make_model(nodes, [value("x", ["N", 3, 5, 5])], [value("y", ["N", 6])], initializers)


def run_fuse(model: onnx.ModelProto, disabled: frozenset = frozenset()) -> tuple[onnx.ModelProto, list[Site]]:
    fuse = FusePass()
    fuse.context = PassContext(disabled=disabled)
    result = fuse(ir.from_proto(model))
    return ir.to_proto(result.model), result.sites


def test_every_fusion_applied_is_reported_as_a_site_at_its_anchor_node(rng):
    _, sites = run_fuse(two_conv_bn_and_a_gemm(rng))
    assert sorted(sites, key=str) == [
        Site("conv-bn", "bn1"),
        Site("conv-bn", "bn2"),
        Site("matmul-add-gemm", "fc_bias"),
    ]


def test_a_disabled_site_leaves_exactly_that_fusion_undone(rng):
    model = two_conv_bn_and_a_gemm(rng)
    fused, sites = run_fuse(model, frozenset({Site("conv-bn", "bn2")}))
    assert sorted(sites, key=str) == [Site("conv-bn", "bn1"), Site("matmul-add-gemm", "fc_bias")]
    assert op_types(fused) == ["Conv", "Conv", "BatchNormalization", "Flatten", "Gemm"]
    bn = next(node for node in fused.graph.node if node.op_type == "BatchNormalization")
    assert bn.name == "bn2"
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})


def test_a_disabled_fusion_is_not_applied_anywhere(rng):
    fused, sites = run_fuse(two_conv_bn_and_a_gemm(rng), frozenset({"conv-bn"}))
    assert sites == [Site("matmul-add-gemm", "fc_bias")]
    assert op_types(fused).count("BatchNormalization") == 2


def test_transformer_fusions_that_cannot_stop_at_one_node_are_switched_off_by_any_of_their_sites(rng):
    # Add + LayerNormalization → SkipLayerNormalization comes from onnxscript as a whole-model rewrite.
    nodes = [
        helper.make_node("Add", ["x", "r"], ["s"], name="residual"),
        helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, name="norm"),
    ]
    model = make_model(
        nodes,
        [value("x", ["N", 8, 16]), value("r", ["N", 8, 16])],
        [value("y", ["N", 8, 16])],
        [weights(rng, "g", 16), weights(rng, "b", 16)],
    )
    fuse = FusePass(target="onnxruntime")
    result = fuse(ir.from_proto(model))
    (site,) = result.sites
    assert site.rule == "skip-layer-norm" and "com.microsoft::SkipLayerNormalization" in op_types(
        ir.to_proto(result.model)
    )

    fuse = FusePass(target="onnxruntime")
    fuse.context = PassContext(disabled=frozenset({site}))
    result = fuse(ir.from_proto(model))
    assert not result.modified and result.sites == []


def test_the_pipeline_skips_exactly_the_broken_fusion_site_and_keeps_the_rest(rng, monkeypatch):
    """A conv-bn fold made wrong at conv2 only: the pipeline narrows fuse down to that one site."""
    scale_weights = _affine._Layer.scale_weights

    def wrong_for_conv2(self, node, weights_array, scale):
        scaled = scale_weights(self, node, weights_array, scale)
        return scaled * 2 if weights_array.shape == (4, 4, 3, 3) else scaled

    monkeypatch.setattr(_affine._Layer, "scale_weights", wrong_for_conv2)
    model = two_conv_bn_and_a_gemm(rng)
    result = Pipeline.parse("fuse").run(model, check="each", on_fail="stop")
    entry = result.report.passes[0]
    assert entry.status == "narrowed"
    assert [line.split(" (")[0] for line in entry.skipped_lines()] == ["skipped conv-bn at node bn2"]
    fused = ir.to_proto(result.model)
    assert op_types(fused) == ["Conv", "Conv", "BatchNormalization", "Flatten", "Gemm"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})
