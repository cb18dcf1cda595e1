"""Shape inference on tree ensembles: their long tree arrays go to ONNX cut short, with the same result."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxkit.passes import shape_inference
from onnxkit.passes.shape_inference import infer_shapes
from tests.conftest import run_model


def _tree_classifier() -> ir.Model:
    """One tree: x[0] <= 0.5 → class 0, else class 1."""
    tree = helper.make_node(
        "TreeEnsembleClassifier",
        ["x"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        name="trees",
        nodes_treeids=[0, 0, 0],
        nodes_nodeids=[0, 1, 2],
        nodes_featureids=[0, 0, 0],
        nodes_values=[0.5, 0.0, 0.0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
        nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0],
        class_treeids=[0, 0],
        class_nodeids=[1, 2],
        class_ids=[0, 1],
        class_weights=[1.0, 1.0],
        classlabels_int64s=[0, 1],
    )
    copy = helper.make_node("Identity", ["scores"], ["probabilities"], name="copy")
    graph = helper.make_graph(
        [tree, copy],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    return ir.serde.deserialize_model(proto)


def _inferred_types(model: ir.Model) -> dict[str, str]:
    infer_shapes(model)
    return {v.name: f"{v.type} {v.shape}" for n in model.graph for v in n.outputs if v.name}


def test_tree_arrays_sent_short_infer_the_same_and_come_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = _inferred_types(_tree_classifier())
    model = _tree_classifier()
    attributes_before = dict(model.graph.node(0).attributes)
    monkeypatch.setattr(shape_inference, "LONG_ML_LIST", 1)  # every tree array counts as long
    sent_lengths: list[int] = []
    real_infer = onnx.shape_inference.infer_shapes

    def spy(proto: onnx.ModelProto, **kwargs: object) -> onnx.ModelProto:
        sent_lengths.extend(len(a.floats) + len(a.ints) + len(a.strings) for a in proto.graph.node[0].attribute)
        return real_infer(proto, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    assert _inferred_types(model) == whole
    assert max(sent_lengths) == 1  # ONNX saw every tree array cut short
    assert whole["scores"] == "FLOAT None"  # inferred: nothing declared it
    assert all(model.graph.node(0).attributes[name] is attribute for name, attribute in attributes_before.items())
    # The model still runs as it did.
    after, before = ir.serde.serialize_model(model), ir.serde.serialize_model(_tree_classifier())
    for x in (0.2, 0.9):
        feeds = {"x": np.array([[x, 0.0]], np.float32)}
        assert all(np.array_equal(a, b) for a, b in zip(run_model(after, feeds), run_model(before, feeds)))
