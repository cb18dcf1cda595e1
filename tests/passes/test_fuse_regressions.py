"""Regressions found by running ``fuse`` over real models, each reproduced on a small inline graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from onnxkit.passes.fuse import FusePass
from tests.passes.test_fuse import (
    assert_same_outputs,
    batchnorm,
    batchnorm_params,
    make_model,
    op_types,
    tensor,
    value,
    weights,
)


def test_a_run_that_fuses_nothing_leaves_the_model_exactly_as_it_was(rng):
    """chars2vec: MatMul and Add are present, no fusion fires, yet the shapes fuse inferred for its rules
    stayed behind and the initializers came back reordered, so the pass changed the model while reporting
    it unchanged."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    # 3-D: no Gemm. A weight over 1 KB is one onnx_ir's shape inference takes out and puts back last.
    model = make_model(
        nodes, [value("x", ["N", 3, 64])], [value("y", ["N", 3, 4])], [weights(rng, "w", 64, 4), weights(rng, "b", 4)]
    )
    result = FusePass()(ir.from_proto(model))
    assert not result.modified
    untouched = ir.to_proto(ir.from_proto(model))
    assert ir.to_proto(result.model).SerializeToString() == untouched.SerializeToString()


def test_a_dimension_stored_as_minus_one_is_unknown_not_a_size(rng):
    """paddle2onnx writes unknown dimensions as the integer -1. A layer norm over such a dimension has no
    static normalized shape; reading -1 as a size made fuse build a scale of shape (-1,) and crash."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["y"]),
    ]
    model = make_model(nodes, [value("x", [-1, -1])], [value("y", [-1, -1])], [tensor("eps", np.float32(1e-5))])
    result = FusePass()(ir.from_proto(model))
    assert not result.modified
    # Known trailing dimensions still fuse.
    model = make_model(nodes, [value("x", [-1, 6])], [value("y", [-1, 6])], [tensor("eps", np.float32(1e-5))])
    fused = ir.to_proto(FusePass()(ir.from_proto(model)).model)
    assert op_types(fused) == ["LayerNormalization"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 6)).astype(np.float32)})


def test_a_layout_pair_over_minus_one_dimensions_is_not_computed_from_them(rng):
    """Two -1 dimensions multiplied to a 'known' size 1: Flatten(axis=0) of [-1, -1] read as [1, 1], and
    the pair with the Reshape after it collapsed into a Reshape to [1, 1]."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=0), helper.make_node("Reshape", ["f", "s"], ["y"])]
    model = make_model(nodes, [value("x", [-1, -1])], [value("y", [1, -1])], [tensor("s", np.array([0, 0], np.int64))])
    fused = ir.to_proto(FusePass()(ir.from_proto(model)).model)
    assert_same_outputs(model, fused, {"x": rng.standard_normal((5, 3)).astype(np.float32)})


def test_a_run_that_fuses_nothing_keeps_unused_optional_outputs(rng):
    """A TorchScript LSTM export: onnxscript's clean-up after the layout rules dropped the LSTM's unused
    state outputs although no rule fired, so the pass changed the model while reporting it unchanged."""
    nodes = [
        helper.make_node("LSTM", ["x", "w", "r"], ["seq", "h", "c"], hidden_size=4),
        helper.make_node("Squeeze", ["seq", "axis_1"], ["y"]),
    ]
    model = make_model(
        nodes,
        [value("x", [5, "N", 3])],
        [value("y", [5, "N", 4])],
        [weights(rng, "w", 1, 16, 3), weights(rng, "r", 1, 16, 4), tensor("axis_1", np.array([1], np.int64))],
    )
    result = FusePass()(ir.from_proto(model))
    assert not result.modified
    assert [v.name for v in result.model.graph.node(0).outputs] == ["seq", "h", "c"]


def test_initializers_listed_as_inputs_before_ir_4_are_constants(rng):
    """qonnx_mnist_cntk (IR 3) lists every initializer among the graph inputs, as IR 3 requires, and nothing
    folded. They are constants there (ONNX Runtime lets no caller override them); the fused model lists its
    new initializers as inputs too, so IR 3's checker accepts it."""
    initializers = [weights(rng, "w", 4, 3, 3, 3), *batchnorm_params(rng, "bn", 4)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), batchnorm("bn", "c", "y")]
    listed = [value("x", [1, 3, 5, 5])] + [value(t.name, list(t.dims)) for t in initializers]
    graph = helper.make_graph(nodes, "g", listed, [value("y", [1, 4, 3, 3])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    result = FusePass()(ir.from_proto(model))
    fused = ir.to_proto(result.model)
    assert fused.ir_version == 3 and op_types(fused) == ["Conv"]
    assert {i.name for i in fused.graph.input} == {"x"} | {t.name for t in fused.graph.initializer}
    onnx.checker.check_model(fused, full_check=True)
    assert_same_outputs(model, fused, {"x": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)})
