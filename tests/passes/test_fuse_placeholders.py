"""``placeholder-layout``: a layout op over a ConstantOfShape placeholder becomes one ConstantOfShape, so a
model-zoo "light" model loses the node without its placeholder weights being materialized."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from onnxkit.passes.fuse import FusePass
from tests.conftest import run_model
from tests.passes.test_fuse import fuse, make_model, op_types, tensor, value


def _placeholder_then(layout: onnx.NodeProto, extra_initializers=(), *, also_read: bool = False) -> onnx.ModelProto:
    """inception_v1's classifier: weights ``ConstantOfShape([1, 1, 10, 8])`` reshaped to ``[10, 8]``."""
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape"], ["w"], value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.02])
        ),
        layout,
        helper.make_node("Add", ["x", "w2"], ["y"]),
    ]
    outputs = [value("y", [10, 8])]
    if also_read:
        nodes.append(helper.make_node("ReduceSum", ["w"], ["total"], keepdims=0))
        outputs.append(value("total", []))
    initializers = [tensor("shape", np.array([1, 1, 10, 8], dtype=np.int64)), *extra_initializers]
    return make_model(nodes, [value("x", [10, 8])], outputs, initializers, opset=13)


LAYOUTS = {
    "Reshape": (
        helper.make_node("Reshape", ["w", "target"], ["w2"]),
        [tensor("target", np.array([10, -1], dtype=np.int64))],
    ),
    "Squeeze": (helper.make_node("Squeeze", ["w", "axes"], ["w2"]), [tensor("axes", np.array([0, 1], dtype=np.int64))]),
    "Flatten": (helper.make_node("Flatten", ["w"], ["w2"], axis=3), []),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_reshaped_placeholder_is_one_constant_of_shape(rng, layout):
    node, initializers = LAYOUTS[layout]
    model = _placeholder_then(node, initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["ConstantOfShape", "Add"]
    assert stats == ["wrote 1 reshaped ConstantOfShape placeholders as one node"]
    feeds = {"x": rng.standard_normal((10, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(fused, feeds)[0], run_model(model, feeds)[0])


def test_a_placeholder_read_elsewhere_or_reshaped_at_run_time_stays(rng):
    node, initializers = LAYOUTS["Reshape"]
    shared = _placeholder_then(node, initializers, also_read=True)
    assert not FusePass()(ir.from_proto(shared)).modified
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["w"]),
        helper.make_node("Shape", ["x"], ["target"]),
        helper.make_node("Reshape", ["w", "target"], ["w2"]),
        helper.make_node("Add", ["x", "w2"], ["y"]),
    ]
    computed = make_model(
        nodes,
        [value("x", ["N", 8])],
        [value("y", ["N", 8])],
        [tensor("shape", np.array([1, 1, 10, 8], dtype=np.int64))],
        opset=13,
    )
    assert not FusePass()(ir.from_proto(computed)).modified
