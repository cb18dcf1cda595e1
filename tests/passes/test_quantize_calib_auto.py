"""calib=auto: entropy's ranges, or minmax's where every node in INT8 misses the target with entropy's and comes
out closer to float with minmax's; both from the one calibration pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxkit.parity import chain
from onnxkit.passes.quantize import calibration
from tests.passes.test_quantize import NO_GATE, convnet, quantize, samples
from tests.passes.test_quantize_smoothing import outlier_block, outlier_samples


def test_auto_takes_minmax_where_entropy_misses_the_target_in_int8() -> None:
    model, data = outlier_block(), outlier_samples(12)
    auto, auto_model = quantize(model, data, mode="static", target_cosine=0.995, **NO_GATE)
    entropy, _ = quantize(
        model, data, mode="static", calib="entropy", smooth_alpha=None, target_cosine=0.995, **NO_GATE
    )
    _, minmax_model = quantize(model, data, mode="static", calib="minmax", target_cosine=0.995, **NO_GATE)
    chosen = auto.details["calibration"]["chosen"]
    assert chosen.startswith("minmax: with every candidate node in INT8")
    # Entropy's all-INT8 model misses the target: the search keeps nodes float; minmax's meets it.
    assert len(entropy.details["kept_float"]) > 0
    assert auto.details["kept_float"] == {}
    assert auto_model.SerializeToString() == minmax_model.SerializeToString()
    assert any(line.startswith("calibration ranges: minmax") for line in auto.stats)


def test_auto_keeps_entropy_where_it_meets_the_target_and_judges_the_int8_model_once(monkeypatch) -> None:
    compared = []
    original = chain.ParityChain.compare

    def counting(self, reference, candidate, tolerance):
        compared.append(candidate)
        return original(self, reference, candidate, tolerance)

    monkeypatch.setattr(chain.ParityChain, "compare", counting)
    model, data = convnet(), samples("x", (2, 3, 8, 8), 10)
    auto, auto_model = quantize(model, data, mode="static", **NO_GATE)
    judged = list(compared)
    _, entropy_model = quantize(model, data, mode="static", calib="entropy", **NO_GATE)
    assert "chosen" not in auto.details["calibration"]
    assert auto.details["kept_float"] == {}
    assert auto_model.SerializeToString() == entropy_model.SerializeToString()
    # choose_ranges, try_smoothing and the search all judge the all-INT8 model: its held-out check runs once,
    # then the confirmation as the pipeline checks (ORT optimizations off).
    assert len(judged) == 2


def test_calibration_ranges_skip_nan_and_infinity() -> None:
    """Min and max come before any pass for non-finite values; where one is not finite, those values are left
    out of the range and the histogram alike."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    types = {"x": TensorProto.FLOAT, "y": TensorProto.FLOAT, "z": TensorProto.FLOAT}
    rows = [np.array([-1.0, 0.0, 0.5, 4.0], np.float32), np.array([2.0, 3.0, 0.25, 1.0], np.float32)]
    finite = np.log(np.concatenate(rows)[np.concatenate(rows) > 0])
    for method in ("minmax", "entropy"):
        ranges = calibration.calibrate(
            model, ["x", "y"], types, [{"x": r} for r in rows], calibration.CalibrationSettings(method, 2048, 99.999)
        ).data
        assert [float(v) for v in ranges["x"].range_value] == [-1.0, 4.0]
        low, high = (float(v) for v in ranges["y"].range_value)
        assert np.isfinite([low, high]).all()
        assert low >= float(finite.min()) - 1e-6 and high <= float(finite.max()) + 1e-6
        if method == "minmax":
            assert (low, high) == pytest.approx((float(finite.min()), float(finite.max())), abs=1e-6)
