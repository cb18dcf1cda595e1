"""quantize on a model past protobuf's 2 GB limit, simulated by lowering the threshold at which onnxkit treats a
model as too large to hold in one protobuf: the model is loaded lazily from its external data, and every
session and save goes through files."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxkit import modelio
from onnxkit.pass_base import PassContext
from onnxkit.passes.quantize import QuantizePass, latency, op_speed
from tests.conftest import run_model
from tests.passes.test_quantize import convnet, cosine, samples


def test_quantize_over_the_protobuf_limit_gives_a_valid_model_and_leaves_the_input_alone(monkeypatch, tmp_path) -> None:
    path = tmp_path / "model" / "convnet.onnx"
    path.parent.mkdir()
    onnx.save_model(convnet(), str(path), save_as_external_data=True, location="convnet.onnx.data", size_threshold=0)
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1024)  # the weights are ~6 KB: "over the limit"
    monkeypatch.chdir(tmp_path)  # not the model's folder
    float_model = modelio.load_model(path)
    float_model_bytes = ir.serde.serialize_model(float_model).SerializeToString()
    data = samples("x", (2, 3, 8, 8), 12)
    timings = iter([latency.Timing(float_ms=1.0, quantized_ms=2.0)])  # the first INT8 model is "slow"

    def first_slow_then_fast(float_model, candidate, timing_samples, max_slowdown=None) -> latency.Timing:
        # Both models really run, through files, as the gate runs them; only the verdict is scripted.
        latency.time_models([float_model, candidate], timing_samples[:1])
        return next(timings, latency.Timing(float_ms=1.0, quantized_ms=0.5))

    # The gate re-quantizes the same prepared model once per op type it tries, then the target search runs on
    # what it kept: every step after the first reads a model that a save with external data would have emptied.
    monkeypatch.setattr(latency, "compare", first_slow_then_fast)
    monkeypatch.setattr(op_speed.Predictor, "__call__", lambda self, candidate: None)  # timing decides
    pass_ = QuantizePass(mode="static", max_slowdown=1.0)
    pass_.context = PassContext(data=data, calib_cache=tmp_path / "cache")
    result = pass_(float_model)

    assert result.modified
    assert result.details["latency_gate"]["float_op_types"] and len(result.details["latency_gate"]["attempts"]) > 1
    assert result.details["latency"] is not None and result.details["calibration"]["cache"] == "stored"
    assert ir.serde.serialize_model(float_model).SerializeToString() == float_model_bytes
    monkeypatch.undo()
    quantized = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(quantized, full_check=True)
    assert {n.op_type for n in quantized.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    feeds = {"x": np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert cosine(run_model(convnet(), feeds)[0], run_model(quantized, feeds)[0]) >= 0.99
