"""Probabilities (Softmax outputs, and what only moves or selects their values) keep their observed range under
entropy and percentile calibration: the rare large attention weights are what the clipping would flatten."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import calibration
from onnxkit.passes.quantize.runtime import tensor_elem_types


def attention_like_model() -> onnx.ModelProto:
    """x -> Softmax -> p; Where(IsNaN(p), 0, p) -> q (as MiniLM's TorchScript export); p * 1 -> scaled (a Mul:
    no longer known to be a probability, so calibrated as any activation)."""
    nodes = [
        helper.make_node("Softmax", ["x"], ["p"], axis=-1),
        helper.make_node("IsNaN", ["p"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "p"], ["q"]),
        helper.make_node("Mul", ["p", "one"], ["scaled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 32]) for name in ("q", "scaled")],
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_probabilities_keep_their_observed_range(method: calibration.CalibMethod) -> None:
    model = attention_like_model()
    assert calibration.probability_tensors(model) == {"p", "q"}
    types = tensor_elem_types(model)
    rng = np.random.default_rng(0)
    rows = (3.0 * rng.standard_normal((256, 32))).astype(np.float32)  # peaked rows: a few weights near 1
    names = ["p", "q", "scaled"]
    data = [{"x": rows[i : i + 32]} for i in range(0, len(rows), 32)]
    settings = calibration.CalibrationSettings(method, percentile=99.0)
    ranges = {
        name: tuple(float(v) for v in value.range_value)
        for name, value in calibration.calibrate(model, names, types, data, settings).data.items()
    }
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    observed_max = float(probabilities.max())
    assert ranges["p"][1] == pytest.approx(observed_max, rel=1e-5)
    assert ranges["q"] == ranges["p"]
    # The same values through a Mul are clipped by the method, well below the largest probability.
    assert ranges["scaled"][1] < 0.9 * observed_max
