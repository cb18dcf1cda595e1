"""onnxkit.graph: walks that reach every graph, and the fingerprint the pipeline checks a pass's claims with."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxkit import graph
from onnxkit.examples import build_example
from onnxkit.modelio import as_ir_model


def _two_weights() -> ir.Model:
    nodes = [
        helper.make_node("Add", ["x", "a"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "b"], ["y"], name="mul"),
    ]
    weights = [numpy_helper.from_array(np.full((2,), value, np.float32), name) for name, value in (("a", 1), ("b", 2))]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
            weights,
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return as_ir_model(model)


def test_walks_reach_subgraphs_and_count_ops():
    model = as_ir_model(build_example("branchy"))
    assert len(list(graph.graphs(model))) == 3  # the main graph and both If branches
    assert graph.count_nodes(model) == 9
    assert sum(graph.op_histogram(model).values()) == 9


def test_fingerprint_sees_edits_but_not_copies_or_reordering():
    model = _two_weights()
    before = graph.fingerprint(model)
    assert graph.fingerprint(model) == before
    # A new tensor object with the same contents, and initializers listed in another order: no change.
    b = model.graph.initializers.pop("b")
    b.const_value = ir.tensor(np.full((2,), 2, np.float32), name="b")
    model.graph.register_initializer(b)
    assert graph.fingerprint(model) == before
    # New contents, an attribute, a renamed value: changes.
    b.const_value = ir.tensor(np.full((2,), 3, np.float32), name="b")
    assert graph.fingerprint(model) != before
    other = _two_weights()
    reference = graph.fingerprint(other)
    other.graph.node(0).attributes["note"] = ir.AttrString("note", "x")
    assert graph.fingerprint(other) != reference
    renamed = _two_weights()
    renamed.graph.node(0).outputs[0].name = "t"
    assert graph.fingerprint(renamed) != reference
