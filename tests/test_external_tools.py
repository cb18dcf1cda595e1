"""onnxkit.external_tools: each tool's one runner, in memory and to a file, on a small inline model run in ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import external_tools, runtime


def clutter_model() -> onnx.ModelProto:
    """x[2, 8] → Identity → MatMul w → Add b → y[2, 4]: the Identity is what every simplifier removes."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["x1"]),
            helper.make_node("MatMul", ["x1", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["y"]),
        ],
        "clutter",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


FEED = {"x": np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)}


def outputs(model: onnx.ModelProto | Path) -> np.ndarray:
    return runtime.make_session(model if isinstance(model, onnx.ModelProto) else str(model)).run(None, FEED)[0]


@pytest.mark.parametrize("tool", sorted(external_tools.SIMPLIFIERS))
def test_each_simplifier_runs_in_memory_and_to_a_file_alike(tool: str, tmp_path: Path) -> None:
    pytest.importorskip(tool)  # the peers are an optional extra
    model = clutter_model()
    before = model.SerializeToString()
    in_memory = external_tools.SIMPLIFIERS[tool](model, None).model
    assert model.SerializeToString() == before, "the caller's model is left as it was"
    assert in_memory is not None and "Identity" not in [n.op_type for n in in_memory.graph.node]
    source, output = tmp_path / "model.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    external_tools.SIMPLIFIERS[tool](source, output)
    written = onnx.load(str(output))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in in_memory.graph.node]
    np.testing.assert_allclose(outputs(written), outputs(model), rtol=1e-5, atol=1e-6)


def test_ort_quantize_dynamic_and_static_write_int8_models(tmp_path: Path) -> None:
    model = clutter_model()
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    assert not external_tools.needs_external_data(source) and not external_tools.needs_external_data(model)
    external_tools.run_ort_quantize(model, tmp_path / "dynamic.onnx", "dynamic")
    samples = [{"x": np.random.default_rng(seed).standard_normal((2, 8)).astype(np.float32)} for seed in range(4)]
    external_tools.run_ort_quantize(source, tmp_path / "static.onnx", "static", samples=samples)
    for name, int8_op in (("dynamic", "MatMulInteger"), ("static", "QuantizeLinear")):
        quantized = onnx.load(str(tmp_path / f"{name}.onnx"))
        assert int8_op in {n.op_type for n in quantized.graph.node}, name
        reference = outputs(model)
        cosine = float(
            np.dot(outputs(quantized).ravel(), reference.ravel())
            / (np.linalg.norm(outputs(quantized)) * np.linalg.norm(reference))
        )
        assert cosine > 0.99, (name, cosine)
