"""quantize on a model past protobuf's 2 GB limit, simulated by lowering the threshold at which onnxkit treats a
model as too large to serialize in one piece: every session and save then goes through external data."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxkit.passes.quantize import QuantizePass

from onnxkit import modelio
from onnxkit.pass_base import PassContext
from tests.conftest import run_model
from tests.passes.test_quantize import convnet, cosine, samples


def test_quantize_over_the_protobuf_limit_gives_a_valid_model_and_leaves_the_input_alone(monkeypatch) -> None:
    model = convnet()
    original = model.SerializeToString()
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1024)  # the weights are ~6 KB: "over the limit"
    data = samples("x", (2, 3, 8, 8), 12)
    pass_ = QuantizePass(mode="static", max_slowdown=1e9)  # the gate runs (and re-quantizes) but always accepts
    pass_.context = PassContext(data=data)
    float_model = ir.serde.deserialize_model(model)
    float_model_bytes = ir.serde.serialize_model(float_model).SerializeToString()
    result = pass_(float_model)

    assert result.modified
    assert result.details["latency"] is not None
    assert model.SerializeToString() == original
    assert ir.serde.serialize_model(float_model).SerializeToString() == float_model_bytes
    monkeypatch.undo()
    quantized = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(quantized, full_check=True)
    assert {n.op_type for n in quantized.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert cosine(run_model(model, feeds)[0], run_model(quantized, feeds)[0]) >= 0.99
