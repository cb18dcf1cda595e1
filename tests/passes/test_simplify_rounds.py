"""How many rounds simplify takes, and fuse's shape inference: work saved without a rewrite lost.

Each round of simplify begins with a whole-model shape inference, the costliest step; these tests count
them, and check the result is what the rounds are for (the rewrites all done, a second run changing nothing).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes import fuse as fuse_module
from onnxkit.passes._graph_utils import model_graphs
from onnxkit.passes.fuse import FusePass
from onnxkit.passes.simplify import SimplifyPass
from onnxkit.passes.simplify import rounds as rounds_module
from tests import helpers


@pytest.fixture
def inferences(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Records one entry per whole-model shape inference simplify runs."""
    calls: list[None] = []
    infer = rounds_module._infer_shapes

    def counted(model: ir.Model, declared: Mapping[ir.Value, ir.Shape] | None = None) -> bool:
        calls.append(None)
        return infer(model, declared)

    monkeypatch.setattr(rounds_module, "_infer_shapes", counted)
    return calls


def _model(nodes, inputs, outputs, initializers, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _keep_two_dims(x: str, out: str, tail: str, index: int) -> list[onnx.NodeProto]:
    """Reshape ``x`` to its first two dims and ``tail``, the target computed from its Shape (paddle2onnx's way)."""
    return [
        helper.make_node("Shape", [x], [f"shape{index}"]),
        helper.make_node("Slice", [f"shape{index}", "start", "end", "axis"], [f"head{index}"]),
        helper.make_node("Concat", [f"head{index}", tail], [f"target{index}"], axis=0),
        helper.make_node("Reshape", [x, f"target{index}"], [out]),
    ]


def _reshape_chain() -> onnx.ModelProto:
    """Three Reshapes, each target computed from the Shape of what the Reshape before it produced. At opset 12
    ONNX's inference tells nothing of the first one's output until its target is a constant."""
    nodes = [
        *_keep_two_dims("x", "r0", "flat", 0),
        helper.make_node("Transpose", ["r0"], ["a0"], perm=[0, 2, 1]),
        *_keep_two_dims("a0", "r1", "split", 1),
        helper.make_node("Relu", ["r1"], ["a1"]),
        *_keep_two_dims("a1", "r2", "flat", 2),
        helper.make_node("Relu", ["r2"], ["y"]),
    ]
    constants = {"axis": [0], "start": [0], "end": [2], "flat": [-1], "split": [2, 2]}
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "hw", 4])],
        [numpy_helper.from_array(np.array(v, dtype=np.int64), name) for name, v in constants.items()],
        opset=12,
    )


def _simplified(model: onnx.ModelProto) -> tuple[ir.Model, onnx.ModelProto]:
    result = SimplifyPass()(ir.serde.deserialize_model(model))
    assert result.modified
    return result.model, ir.serde.serialize_model(result.model)


def _assert_settled(model: ir.Model) -> None:
    """Another run changes nothing: no round the loop skipped had anything left to do."""
    assert not SimplifyPass()(model).modified


def test_a_chain_of_computed_reshapes_settles_in_one_round(inferences):
    model = _reshape_chain()
    simplified, proto = _simplified(model)
    # One round rewrites the whole chain (inferring, node by node, what each new constant target tells),
    # one more confirms. Before, each link took a round of its own: four inferences.
    assert len(inferences) == 2
    targets = [numpy_helper.to_array(t).tolist() for t in proto.graph.initializer]
    assert sorted(targets) == sorted([[0, 4, -1], [0, 0, 2, 2], [0, 0, -1]])
    assert [node.op_type for node in proto.graph.node] == ["Reshape", "Transpose", "Reshape", "Relu", "Reshape", "Relu"]
    for shape in ((1, 4, 2, 3), (3, 4, 5, 2)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        helpers.assert_same_outputs(model, proto, {"x": x})
    # The dims the sweep named for itself are gone: the confirming round's inference named them afresh.
    assert not any("unk__1000" in str(node.outputs[0].shape) for node in simplified.graph)
    _assert_settled(simplified)


def test_a_round_that_only_lifts_and_merges_constants_is_the_last(inferences):
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [3], [1.5, 2.5, 3.5])
    nodes = [
        helper.make_node("Constant", [], ["c1"], value=scale),
        helper.make_node("Constant", [], ["c2"], value=scale),
        helper.make_node("Add", ["x", "c1"], ["a"]),
        helper.make_node("Mul", ["a", "c2"], ["y"]),
    ]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [],
        opset=17,
    )
    simplified, proto = _simplified(model)
    assert len(inferences) == 1  # no second round: equal tensors merged change nothing a rule reads
    assert [node.op_type for node in proto.graph.node] == ["Add", "Mul"]
    assert len(proto.graph.initializer) == 1
    helpers.assert_same_outputs(model, proto, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    _assert_settled(simplified)


def _dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    values = [*model.graph.value_info, *model.graph.output]
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def test_a_second_simplify_keeps_the_names_inference_gave_unknown_dims():
    """ONNX numbers the dims it cannot size (unk__N) on the model it is sent, where the graph output's
    declared shape is hidden: the first run numbered the rest from unk__1 or unk__2, a second run from unk__0.
    Numbered again on the result, they come out the same on every run."""
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Transpose", ["nz"], ["t"], perm=[1, 0]),
        helper.make_node("Cast", ["t"], ["tf"], to=TensorProto.FLOAT),
        helper.make_node("NonZero", ["tf"], ["nz2"]),
        helper.make_node("Identity", ["nz2"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])]
    outputs = [
        helper.make_tensor_value_info("tf", TensorProto.FLOAT, ["M", 1]),
        helper.make_tensor_value_info("y", TensorProto.INT64, None),
    ]
    # y declares no shape, which the full check refuses (ONNX Runtime runs it): built without _model's check
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    first = ir.to_proto(SimplifyPass()(ir.serde.deserialize_model(model)).model)
    assert _dims(first) == {"nz": [1, "unk__0"], "t": ["unk__0", 1], "tf": ["M", 1], "y": [2, "unk__1"]}
    second = SimplifyPass()(ir.serde.deserialize_model(first))
    assert not second.modified
    assert ir.to_proto(second.model).SerializeToString() == first.SerializeToString()


def test_fuse_infers_shapes_only_where_a_value_lacks_one(monkeypatch):
    calls: list[None] = []
    annotate = fuse_module.annotate_shapes

    def counted(model: ir.Model):
        calls.append(None)
        return annotate(model)

    monkeypatch.setattr(fuse_module, "annotate_shapes", counted)
    model = _reshape_chain()
    FusePass()(ir.serde.deserialize_model(model))
    assert len(calls) == 1  # a model as exported: its intermediate values have no shapes
    calls.clear()
    simplified, _ = _simplified(model)  # simplify leaves every value with its inferred shape
    FusePass()(simplified)
    assert not calls


def test_model_graphs_lists_what_onnx_ir_lists_bodies_without_nodes_included() -> None:
    # Rules and simplify's declared-output bookkeeping walk model_graphs instead of ir.Model.graphs (a fraction
    # of its cost): same graphs, same order, a nested If's bodies right after their holder, and each else branch
    # that only returns an outer value (no nodes, still an output whose declared shape simplify keeps).
    inner = helper.make_node(
        "If",
        ["c"],
        ["t"],
        then_branch=helper.make_graph(
            [helper.make_node("Neg", ["x"], ["n"])], "inner_then", [], [helper.make_tensor_value_info("n", 1, [2])]
        ),
        else_branch=helper.make_graph([], "inner_else", [], [helper.make_tensor_value_info("x", 1, [2])]),
    )
    outer = helper.make_node(
        "If",
        ["c"],
        ["y"],
        then_branch=helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("t", 1, [2])]),
        else_branch=helper.make_graph([], "else", [], [helper.make_tensor_value_info("x", 1, [2])]),
    )
    graph = helper.make_graph(
        [outer],
        "main",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", 1, [2])],
        [helper.make_tensor_value_info("y", 1, [2])],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    listed = model_graphs(model)

    # (helper.make_node writes attributes sorted by name: else_branch before then_branch)
    assert [g.name for g in listed] == ["main", "else", "then", "inner_else", "inner_then"]
    assert [id(g) for g in listed] == [id(g) for g in model.graphs()]
