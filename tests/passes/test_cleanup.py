"""cleanup: what it removes, and an honest ``modified``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from onnxkit import Pipeline
from onnxkit.passes.cleanup import CleanupPass


def test_trimming_empty_optional_inputs_counts_as_a_change():
    """onnx_ir's dead-node removal turns Clip(x, "", "") into Clip(x) without saying so (node-test corpus:
    test_clip_default_inbounds); cleanup must report the change, and a second run must change nothing."""
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "", ""], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    result = CleanupPass()(model)
    assert result.modified
    assert [v.name if v is not None else "" for v in result.model.graph.node(0).inputs] == ["x"]
    assert not CleanupPass()(result.model).modified


def test_cleanup_in_the_pipeline_passes_the_claim_check():
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "", ""], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = Pipeline.parse("cleanup").run(model, data=[{"x": np.array([-1.0, 0.5, 2.0], np.float32)}])
    assert result.report.passes[0].status == "ok"
