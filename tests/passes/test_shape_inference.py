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
