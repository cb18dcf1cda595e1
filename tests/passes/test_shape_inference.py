"""Shape inference sends ONNX the model without its weights' data, and still reads the small constants it needs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.shape_inference import infer_shapes


def _matmul_then_reshape() -> ir.Model:
    """y = Reshape(x @ W, target): W is 16 KiB of weights, the target three int64s."""
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "target"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "target"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def test_weights_go_without_their_data_and_a_reshape_target_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[onnx.ModelProto] = []
    original = onnx.shape_inference.infer_shapes

    def recording(proto: onnx.ModelProto, *args: object, **kwargs: object) -> onnx.ModelProto:
        sent.append(proto)
        return original(proto, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", recording)
    model = _matmul_then_reshape()
    weight = model.graph.initializers["W"].const_value
    assert weight is not None

    infer_shapes(model)

    (proto,) = sent
    assert [tensor.name for tensor in proto.graph.initializer] == ["target"]  # W's 16 KiB stay behind
    stated = {value.name: value for value in proto.graph.input}
    assert [d.dim_value for d in stated["W"].type.tensor_type.shape.dim] == [64, 64]  # its type and shape go
    # The Reshape's output is known from the target's values: its 2 × 64 values read as [-1, 8, 8] are [2, 8, 8].
    reshaped = model.graph.node(1).outputs[0]
    assert reshaped.shape == ir.Shape([2, 8, 8])
    assert model.graph.node(0).outputs[0].shape == ir.Shape([2, 64])
    # The model is left whole: W keeps its data, and is no graph input.
    assert model.graph.initializers["W"].const_value is weight
    assert [value.name for value in model.graph.inputs] == ["x"]


def test_inferred_shapes_are_frozen_and_each_value_keeps_a_type_of_its_own() -> None:
    # Each distinct inferred type is read once; its shape is frozen, so handing it to several values is safe,
    # while each value keeps a type of its own (setting one value's dtype edits its type object in place).
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    infer_shapes(model)
    first, second = model.graph.node(0).outputs[0], model.graph.node(1).outputs[0]
    assert first.shape == second.shape == ir.Shape([3, 4])
    assert first.shape is not None and first.shape.frozen
    first.dtype = ir.DataType.DOUBLE
    assert second.dtype == ir.DataType.FLOAT


def _if_reading_outer_weights() -> onnx.ModelProto:
    """y = If(c, then: Reshape(x @ W, target), else: Reshape(x @ W2, target)): both bodies read main-graph
    initializers, a weight (16 KiB, sent as a declared input) and the Reshape target (three int64s, sent with
    its values)."""
    rng = np.random.default_rng(0)
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "target"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W2"], ["e0"]), helper.make_node("Reshape", ["e0", "target"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Relu", ["y"], ["z"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "target"),
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _shapes(graph: onnx.GraphProto, found: dict[str, list[int | str]] | None = None) -> dict[str, list[int | str]]:
    """Every value's inferred shape in ``graph`` and its bodies, by name."""
    found = {} if found is None else found
    for info in (*graph.value_info, *graph.output):
        dims = info.type.tensor_type.shape.dim
        found[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _shapes(attribute.g, found)
    return found


def test_weightless_inference_finds_the_shapes_inference_on_the_whole_model_finds_in_if_bodies_too() -> None:
    proto = _if_reading_outer_weights()
    whole = _shapes(onnx.shape_inference.infer_shapes(proto, data_prop=True).graph)
    model = ir.serde.deserialize_model(proto)

    infer_shapes(model)

    weightless = _shapes(ir.serde.serialize_model(model).graph)
    # The bodies' MatMuls see the weights' shapes, declared without their data.
    assert weightless["h"] == weightless["e0"] == [2, 64]
    assert whole["h"] == [2, 64] and len(whole) >= 5
    assert {name: weightless.get(name) for name in whole} == whole


def test_the_model_keeps_its_initializers_in_order_and_its_inputs_as_they_were() -> None:
    # Weights go to ONNX as inputs of a view of the graph: the model itself is never edited (onnx_ir's helper
    # moved each weight out and back, which left the weights after the small initializers).
    model = ir.serde.deserialize_model(_if_reading_outer_weights())
    tensors = {name: value.const_value for name, value in model.graph.initializers.items()}

    infer_shapes(model)

    assert list(model.graph.initializers) == ["W", "target", "W2"]
    assert {name: value.const_value for name, value in model.graph.initializers.items()} == tensors
    assert [value.name for value in model.graph.inputs] == ["x", "c"]
