"""SmoothQuant in the quantize pass (passes/quantize/smoothing.py): the float model is unchanged, outlier
channels stop ruining INT8 activations, and the pass keeps smoothing only where it measures better."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import calibration, preprocess, smoothing
from onnxkit.passes.quantize.runtime import tensor_elem_types, with_outputs
from tests.conftest import run_model
from tests.passes.test_quantize import NO_GATE, _weight, cosine, mlp, quantize, samples

OUTLIER_CHANNELS = (0, 1)


def outlier_block(seed: int = 0) -> onnx.ModelProto:
    """x[N,8,32] read by two MatMuls (as Q and K read one LayerNorm output in a transformer), and through a
    Flatten by a Gemm with transB."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(_weight(rng, 32, 64), "w1"),
        numpy_helper.from_array(_weight(rng, 32, 16), "w2"),
        numpy_helper.from_array(_weight(rng, 16, 32), "wg"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y1"], name="fc1"),
        helper.make_node("MatMul", ["x", "w2"], ["y2"], name="fc2"),
        helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=2),
        helper.make_node("Gemm", ["flat", "wg"], ["z"], name="gemm", transB=1),
    ]
    outputs = [
        helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 8, 64]),
        helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 8, 16]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, ["M", 16]),
    ]
    graph = helper.make_graph(
        nodes, "outliers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 32])], outputs, initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def outlier_samples(count: int, seed: int = 1) -> list[dict]:
    """Most channels near ±1, two about 100 times larger: one per-tensor INT8 scale cannot serve both."""
    scale = np.ones(32, dtype=np.float32)
    scale[list(OUTLIER_CHANNELS)] = 100.0
    return [{"x": s["x"] * scale} for s in samples("x", (2, 8, 32), count, seed=seed)]


def _prepared(model: onnx.ModelProto) -> onnx.ModelProto:
    return preprocess.prepare(ir.serde.deserialize_model(model), want_per_channel=True).proto


def test_smoothing_leaves_the_float_model_as_it_was_and_shrinks_the_outliers() -> None:
    proto = _prepared(outlier_block())
    types = tensor_elem_types(proto)
    sites = smoothing.find_sites(proto, ["fc1", "fc2", "gemm"], types)
    assert {s.activation: sorted(n.name for n in s.nodes) for s in sites} == {"x": ["fc1", "fc2"], "flat": ["gemm"]}
    data = outlier_samples(6)
    maxima = smoothing.observe(proto, [s.activation for s in sites], types, data).maxima
    result = smoothing.smooth(proto, sites, maxima, alpha=0.7)
    assert result is not None and (result.activations, result.nodes) == (2, 3)
    onnx.checker.check_model(result.model)
    assert [n.op_type for n in result.model.graph.node].count("Mul") == 2
    for sample in data:
        for before, after in zip(run_model(proto, sample), run_model(result.model, sample)):
            np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    # The outlier channels' share of the range: about 100 times the median channel before, a few times after.
    tapped = with_outputs(result.model, ["x_smoothed"], result.types)
    before = np.abs(data[0]["x"]).max(axis=(0, 1))
    after = np.abs(run_model(tapped, data[0])[-1]).max(axis=(0, 1))
    assert before.max() / np.median(before) > 50
    assert after.max() / np.median(after) < 10


def test_the_scaled_activations_calibrate_from_the_kept_values_as_from_the_smoothed_model() -> None:
    proto = _prepared(outlier_block())
    types = tensor_elem_types(proto)
    sites = smoothing.find_sites(proto, ["fc1", "fc2", "gemm"], types)
    data = outlier_samples(6)
    seen = smoothing.observe(proto, [s.activation for s in sites], types, data, keep_bytes=2**20)
    assert seen.values is not None and len(seen.values) == len(data)
    assert smoothing.observe(proto, [s.activation for s in sites], types, data, keep_bytes=100).values is None
    result = smoothing.smooth(proto, sites, seen.maxima, alpha=0.5)
    assert result is not None
    settings = calibration.CalibrationSettings("entropy", 2048, 99.99)
    from_values = calibration.calibrate(result.scaling_model(), list(result.types), result.types, seen.values, settings)
    from_model = calibration.calibrate(result.model, list(result.types), {**types, **result.types}, data, settings)
    assert sorted(from_values.data) == sorted(from_model.data) == ["flat_smoothed", "x_smoothed"]
    for name in from_model.data:
        np.testing.assert_allclose(from_values.data[name].range_value, from_model.data[name].range_value, rtol=1e-5)


def test_a_weight_read_by_another_node_is_not_smoothed() -> None:
    model = outlier_block()
    model.graph.node.append(helper.make_node("Identity", ["w1"], ["w1_copy"], name="copy"))
    model.graph.output.append(helper.make_tensor_value_info("w1_copy", TensorProto.FLOAT, [32, 64]))
    proto = _prepared(model)
    sites = smoothing.find_sites(proto, ["fc1", "fc2", "gemm"], tensor_elem_types(proto))
    # Scaling w1's rows for x would change what the Identity returns.
    assert {s.activation: [n.name for n in s.nodes] for s in sites}["x"] == ["fc2"]


def test_the_pass_keeps_smoothing_where_outliers_ruin_int8() -> None:
    model, data = outlier_block(), outlier_samples(12)
    # Entropy's ranges, with which every node in INT8 misses the target (calib=auto takes minmax's here, which
    # meet it without smoothing).
    smoothed, smoothed_model = quantize(model, data, mode="static", calib="entropy", target_cosine=0.995, **NO_GATE)
    plain, _ = quantize(model, data, mode="static", calib="entropy", target_cosine=0.995, smooth_alpha=None, **NO_GATE)
    assert "; kept:" in smoothed.details["smoothing"]
    assert plain.details["smoothing"] is None
    # Smoothed, every candidate stays INT8; plain, the outliers force some float to meet the same target.
    assert smoothed.details["kept_float"] == {}
    assert len(plain.details["kept_float"]) > 0
    held_out = outlier_samples(4, seed=7)[0]
    assert cosine(run_model(model, held_out)[0], run_model(smoothed_model, held_out)[0]) >= 0.995


def test_the_pass_drops_smoothing_where_it_does_not_help() -> None:
    # A random MLP has no outlier channels: smoothed, its INT8 outputs are further from float's.
    result, quantized = quantize(
        mlp(), samples("x", (4, 16), 10), mode="static", calib="minmax", target_cosine=0.999, **NO_GATE
    )
    assert "; not kept:" in result.details["smoothing"]
    assert result.modified and result.details["quantized_nodes"]  # the plain model, one node kept float
    assert "Mul" not in {n.op_type for n in quantized.graph.node}


def test_the_pass_does_not_try_smoothing_when_every_node_meets_the_target_in_int8() -> None:
    result, quantized = quantize(mlp(), samples("x", (4, 16), 10), mode="static", calib="minmax", **NO_GATE)
    assert result.details["smoothing"].startswith("SmoothQuant not tried")
    assert "Mul" not in {n.op_type for n in quantized.graph.node}
    assert result.details["quantized_nodes"] == {"MatMul": 2}


def test_the_calibration_pass_observes_what_smoothing_needs(monkeypatch) -> None:
    """The channel maxima and kept values come from calibration's own pass, the same as a pass of their own,
    and the pass then makes no pass over the model for them."""
    proto = _prepared(outlier_block())
    types = tensor_elem_types(proto)
    activations = [s.activation for s in smoothing.find_sites(proto, ["fc1", "fc2", "gemm"], types)]
    data = outlier_samples(6)
    observer = smoothing.ActivationObserver(activations, keep_bytes=2**20)
    tensors = calibration.calibration_tensors(proto, ("MatMul", "Gemm"), types)
    settings = calibration.CalibrationSettings("entropy", 2048, 99.99)
    calibration.calibrate(proto, tensors, types, data, settings, observe=observer.add)
    alone = smoothing.observe(proto, activations, types, data, keep_bytes=2**20)
    assert sorted(observer.maxima) == sorted(alone.maxima) == sorted(activations)
    for name in activations:
        np.testing.assert_array_equal(observer.maxima[name], alone.maxima[name])
    assert observer.values is not None and alone.values is not None
    assert [sorted(v) for v in observer.values] == [sorted(v) for v in alone.values]

    def no_second_pass(*args, **kwargs):
        raise AssertionError("smoothing ran the model again")

    monkeypatch.setattr(smoothing, "observe", no_second_pass)
    result, _ = quantize(
        outlier_block(), outlier_samples(12), mode="static", calib="entropy", target_cosine=0.995, **NO_GATE
    )
    assert "; kept:" in result.details["smoothing"]
