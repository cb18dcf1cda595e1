"""``ort-optimize``: ONNX Runtime's offline optimizer as a pass, portable at level=basic, tied to ORT at
level=extended, with external data written and read back, and an honest ``modified``."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import PassFailedError, Pipeline
from onnxkit.passes import ort_optimize
from onnxkit.passes.ort_optimize import OrtOptimizePass
from tests import helpers

FLOAT = TensorProto.FLOAT


def conv_bn_relu_model(channels: int = 8) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv → BatchNormalization → Relu → y, with weights big enough for external data."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "bias"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, channels).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", channels, 8, 8])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((batch, 3, 8, 8)).astype(np.float32)}


def op_types(model: onnx.ModelProto) -> list[str]:
    return [f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in model.graph.node]


def optimize(model: onnx.ModelProto, spec: str):
    result = Pipeline.parse(spec).run(model)  # verification and the parity guard run inside
    return ir.serde.serialize_model(result.model), result.report.passes[-1]


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    for batch in (1, 3):
        helpers.assert_same_outputs(before, after, feeds(batch))


def test_basic_level_folds_batchnorm_with_standard_ops_only():
    model = conv_bn_relu_model()
    optimized, entry = optimize(model, "ort-optimize")
    assert entry.modified and entry.status == "ok"
    assert "BatchNormalization" not in op_types(optimized)
    assert all(not n.domain for n in optimized.graph.node)
    assert {o.domain for o in optimized.opset_import} == {""}  # ORT's other domain imports are dropped
    assert [i.name for i in optimized.graph.input] == ["x"] and [o.name for o in optimized.graph.output] == ["y"]
    assert any("removed" in line and "BatchNormalization" in line for line in entry.stats), entry.stats
    assert_same_outputs(model, optimized)


def test_extended_level_emits_onnxruntime_ops():
    model = conv_bn_relu_model()
    optimized, _entry = optimize(model, "ort-optimize{level=extended}")
    assert "com.microsoft::FusedConv" in op_types(optimized)
    assert "com.microsoft" in {o.domain for o in optimized.opset_import}
    assert "com.microsoft" in OrtOptimizePass.emits_domains
    assert_same_outputs(model, optimized)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_second_run_changes_nothing(level):
    first = OrtOptimizePass(level=level)(ir.serde.deserialize_model(conv_bn_relu_model()))
    second = OrtOptimizePass(level=level)(first.model)
    assert first.modified and not second.modified and second.stats == []
    assert second.model is not first.model  # a functional pass never hands back its input


def test_nothing_to_optimize_is_not_a_modification():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2])],
        [helper.make_tensor_value_info("y", FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = OrtOptimizePass()(ir.serde.deserialize_model(model))
    assert not result.modified


def test_initializers_go_through_external_data_and_come_back_in_memory(tmp_path, monkeypatch):
    # Keep ORT's working folder to look at what it wrote; a small threshold sends every weight outside.
    @contextlib.contextmanager
    def kept_folder(prefix: str = ""):
        yield str(tmp_path)

    monkeypatch.setattr(ort_optimize.tempfile, "TemporaryDirectory", kept_folder)
    monkeypatch.setattr(ort_optimize, "EXTERNAL_INITIALIZER_MIN_BYTES", 16)
    model = conv_bn_relu_model(channels=16)
    result = OrtOptimizePass()(ir.serde.deserialize_model(model))

    written = onnx.load(tmp_path / "optimized.onnx", load_external_data=False)
    external = [t.name for t in written.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external and (tmp_path / "optimized.onnx.data").stat().st_size > 16 * 27 * 4
    # The result holds its tensors in memory: it outlives ORT's folder.
    for file in tmp_path.iterdir():
        os.remove(file)
    optimized = ir.serde.serialize_model(result.model)
    assert all(t.data_location != TensorProto.EXTERNAL for t in optimized.graph.initializer)
    assert_same_outputs(model, optimized)


def test_a_model_onnxruntime_cannot_load_is_a_clear_error():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="example.custom")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", FLOAT, [2])], [helper.make_tensor_value_info("y", FLOAT, [2])]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
    with pytest.raises(PassFailedError, match="ONNX Runtime cannot load"):
        OrtOptimizePass()(ir.serde.deserialize_model(model))
