"""``fuse`` writes only what the model's opset has: no LayerNormalization before 17, no Gelu before 20 under
the portable target, Squeeze/Unsqueeze axes in the form of the opset, no Gemm whose bias needs Gemm-6's
``broadcast``, and no op, attribute or input a schema at that opset lacks. Every output passes the full
``onnx.checker`` at the opset the model declares."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from onnxkit.passes.fuse import FusePass
from tests.conftest import run_model
from tests.passes.test_fuse import (
    assert_same_outputs,
    batchnorm,
    batchnorm_params,
    decomposed_layer_norm,
    erf_gelu_nodes,
    op_types,
    tensor,
    value,
    weights,
)


def model_at(opset: int, nodes: list, inputs: list, outputs: list, initializers: list) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def fuse_and_check(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    fused = ir.to_proto(FusePass(**options)(ir.from_proto(model)).model)
    onnx.checker.check_model(fused, full_check=True)
    assert list(fused.opset_import) == list(model.opset_import) or options.get("target") == "onnxruntime"
    return fused


def every_pattern(opset: int, rng: np.random.Generator) -> onnx.ModelProto:
    """One model holding a site of every standard fusion, written as an exporter writes it at ``opset``."""

    def unsqueeze(x: str, y: str, axis: int) -> onnx.NodeProto:
        if opset >= 13:
            return helper.make_node("Unsqueeze", [x, f"axes_{y}"], [y])
        return helper.make_node("Unsqueeze", [x], [y], axes=[axis])

    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
        batchnorm("bn", "c", "b"),
        helper.make_node("Mul", ["b", "per_channel"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Flatten", ["t2"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["m"]),
        helper.make_node("Add", ["m", "fc_b"], ["logits"]),
        unsqueeze("logits", "u1", 0),
        unsqueeze("u1", "u2", 3),
    ]
    ln_nodes, ln_initializers = decomposed_layer_norm(opset)
    nodes += [
        helper.make_node(
            n.op_type,
            [f"ln_{i}" if i in ("x", "y") else i for i in n.input],
            [f"ln_{o}" if o in ("x", "y") else o for o in n.output],
            **{a.name: helper.get_attribute_value(a) for a in n.attribute},
        )
        for n in ln_nodes
    ]
    initializers = [
        weights(rng, "w", 4, 3, 3, 3),
        *batchnorm_params(rng, "bn", 4),
        tensor("per_channel", rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)),
        weights(rng, "fc_w", 4 * 5 * 5, 6),
        weights(rng, "fc_b", 6),
        *ln_initializers,
        tensor("axes_u1", np.array([0], np.int64)),
        tensor("axes_u2", np.array([3], np.int64)),
    ]
    outputs = [value("u2", [1, 2, 6, 1]), value("ln_y", [2, 8])]
    inputs = [value("image", [2, 3, 5, 5]), value("ln_x", [2, 8])]
    if opset >= 9:  # Erf exists from opset 9
        nodes += [
            helper.make_node(n.op_type, [f"g_{i}" for i in n.input], [f"g_{o}" for o in n.output])
            for n in erf_gelu_nodes()[0]
        ]
        initializers += [tensor(f"g_{t.name}", onnx.numpy_helper.to_array(t)) for t in erf_gelu_nodes()[1]]
        inputs.append(value("g_x", [2, 16]))
        outputs.append(value("g_y", [2, 16]))
    if opset < 13:
        initializers = [t for t in initializers if not t.name.startswith("axes_")]
    return model_at(opset, nodes, inputs, outputs, initializers)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 14, 17, 18, 20])
def test_every_fusion_writes_ops_of_the_models_opset(rng, opset):
    model = every_pattern(opset, rng)
    fused = fuse_and_check(model)
    ops = op_types(fused)
    assert "BatchNormalization" not in ops and "Mul" not in ops[:2] and ops.count("Transpose") == 0
    assert ops.count("Unsqueeze") == 1 and "Gemm" in ops
    assert ("LayerNormalization" in ops) == (opset >= 17)
    assert ("Gelu" in ops) == (opset >= 20)
    feeds = {
        "image": rng.standard_normal((2, 3, 5, 5)).astype(np.float32),
        "ln_x": rng.standard_normal((2, 8)).astype(np.float32),
    }
    if opset >= 9:
        feeds["g_x"] = rng.standard_normal((2, 16)).astype(np.float32)
    assert_same_outputs(model, fused, feeds)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_onnxruntime_target_keeps_standard_ops_of_the_opset(rng, opset):
    model = every_pattern(opset, rng)
    fused = ir.to_proto(FusePass(target="onnxruntime")(ir.from_proto(model)).model)
    onnx.checker.check_model(fused, full_check=True)
    assert ("LayerNormalization" in op_types(fused)) == (opset >= 17)


def test_matmul_add_at_opset_6_stays_because_gemm_6_broadcasts_only_with_an_attribute(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"], broadcast=1)]
    model = model_at(
        6, nodes, [value("x", [3, 8])], [value("y", [3, 4])], [weights(rng, "w", 8, 4), weights(rng, "b", 4)]
    )
    assert op_types(fuse_and_check(model)) == ["MatMul", "Add"]


def test_a_pair_only_a_newer_reshape_could_write_stays(rng):
    """Flatten→Flatten collapses into a Reshape with a shape input, which Reshape has only from opset 5."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=2), helper.make_node("Flatten", ["f"], ["y"], axis=0)]
    model = model_at(4, nodes, [value("x", [2, 3, 4])], [value("y", [1, 24])], [])
    assert op_types(fuse_and_check(model)) == ["Flatten", "Flatten"]
    at_5 = model_at(5, nodes, [value("x", [2, 3, 4])], [value("y", [1, 24])], [])
    fused = fuse_and_check(at_5)
    assert op_types(fused) == ["Reshape"]
    feeds = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(fused, feeds)[0], run_model(at_5, feeds)[0])
