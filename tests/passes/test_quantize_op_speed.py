"""The latency gate's op speed table (``quantize.op_speed``) and its batched timing (``quantize.latency``).

Decisions are tested with injected tables and scripted timings, never against absolute speed; the chains the
table times are real models run by ONNX Runtime."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import cpu, latency, op_speed


def table(ratio_by_kind: dict[str, float], key: str = "test CPU", per_mac: float = 1e-9) -> op_speed.SpeedTable:
    """A table where every kind runs at ``per_mac`` seconds per MAC in float and ``ratio`` times that in INT8."""
    points = {
        kind: [op_speed.Point(macs, macs * per_mac, macs * per_mac * ratio) for macs in (1e3, 1e5, 1e7)]
        for kind, ratio in ratio_by_kind.items()
    }
    return op_speed.SpeedTable(key, points)


def conv_chains() -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, Any]]:
    """A float chain of four 3x3 Convs (8 channels, 8x8) and its QDQ INT8 twin, as the table times them."""
    float_model, int8_model, feed, _ = op_speed._chain("Conv", 8, 8)
    return float_model, int8_model, feed


def predictor_for(speed_table: op_speed.SpeedTable, float_model: onnx.ModelProto, feed: dict) -> op_speed.Predictor:
    predictor = op_speed.Predictor(float_model, feed)
    predictor.table = speed_table
    return predictor


# -- the table -------------------------------------------------------------------------------------------------


def test_table_is_measured_once_per_cpu_key_and_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(op_speed, "SIZES", {"Conv": ((8, 8),), "MatMul": ((8, 32),)})  # keep the test fast
    first = op_speed.load_or_measure(tmp_path, key="cpu A")
    assert not first.cached and set(first.points) == {"Conv", "MatMul"}
    point = first.points["Conv"][0]
    assert point.macs == 8 * 8 * 9 * 8 * 8 and point.float_s > 0 and point.int8_s > 0

    def must_not_measure(key: str, budget_s: float = 0.0) -> op_speed.SpeedTable:
        raise AssertionError("measured again")

    monkeypatch.setattr(op_speed, "measure", must_not_measure)
    again = op_speed.load_or_measure(tmp_path, key="cpu A")
    assert again.cached and again.points == first.points

    measured: list[str] = []

    def measure(key: str, budget_s: float = 0.0) -> op_speed.SpeedTable:
        measured.append(key)
        return table({"Conv": 1}, key)

    monkeypatch.setattr(op_speed, "measure", measure)
    other = op_speed.load_or_measure(tmp_path, key="cpu B")  # another CPU or onnxruntime: its own table
    assert measured == ["cpu B"] and not other.cached


def test_table_key_names_the_cpu_its_kernel_flags_and_onnxruntime() -> None:
    text = "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse4_1 avx2 avx512_vnni ht\n"
    assert cpu.parse_cpuinfo_model(text) == "Example CPU 9000"
    key = op_speed.table_key()
    assert cpu.speed_key() in key and "onnxruntime" in key


def test_table_interpolates_between_sizes_and_scales_past_the_largest() -> None:
    speed_table = op_speed.SpeedTable("k", {"Conv": [op_speed.Point(1e3, 1e-6, 2e-6), op_speed.Point(1e5, 1e-4, 5e-5)]})
    assert speed_table.cost("Conv", 1e2) == (1e-6, 2e-6)  # below the smallest: its per-op time
    halfway = speed_table.cost("Conv", 1e4)  # halfway in log space
    assert halfway is not None
    float_s, int8_s = halfway
    assert float_s == pytest.approx(1e-5) and int8_s == pytest.approx((2e-6 * 5e-5) ** 0.5)
    assert speed_table.cost("Conv", 1e6) == pytest.approx((1e-3, 5e-4))
    assert speed_table.cost("MatMul", 1e4) is None


# -- predictions -----------------------------------------------------------------------------------------------


def test_prediction_prices_the_int8_nodes_from_their_shapes() -> None:
    float_model, int8_model, feed = conv_chains()
    shapes = op_speed.inferred_shapes(float_model, feed)
    prediction = op_speed.predict(table({"Conv": 0.5}), float_model, int8_model, shapes)
    assert prediction is not None and prediction.nodes == op_speed.CHAIN
    assert prediction.ratio == pytest.approx(0.5)
    assert prediction.float_ms == pytest.approx(op_speed.CHAIN * 8 * 8 * 9 * 8 * 8 * 1e-9 * 1000)
    assert op_speed.predict(table({"MatMul": 0.5}), float_model, int8_model, shapes) is None  # Conv unpriced
    assert op_speed.predict(table({"Conv": 0.5}), float_model, float_model, shapes) is None  # nothing in INT8


def test_depthwise_convolutions_are_priced_as_their_own_kind() -> None:
    float_model, int8_model, feed, macs = op_speed._chain("DepthwiseConv", 8, 8)
    assert macs == 8 * 9 * 8 * 8
    shapes = op_speed.inferred_shapes(float_model, feed)
    prediction = op_speed.predict(table({"Conv": 0.5, "DepthwiseConv": 1.5}), float_model, int8_model, shapes)
    assert prediction is not None and prediction.ratio == pytest.approx(1.5)


# -- the gate's decisions --------------------------------------------------------------------------------------


def scripted(timings: list[latency.Timing]) -> Any:
    def compare(float_model, candidate, samples, max_slowdown=None) -> latency.Timing:
        if not timings:
            raise AssertionError("timed end to end, where the table should have decided")
        return timings.pop(0)

    return compare


def test_gate_keeps_int8_without_timing_when_the_table_says_clearly_faster(monkeypatch) -> None:
    float_model, int8_model, feed = conv_chains()
    monkeypatch.setattr(latency, "compare", scripted([]))
    gate = latency.latency_gate(
        float_model,
        int8_model,
        ["Conv"],
        lambda kept: float_model,
        [feed],
        1.0,
        predictor_for(table({"Conv": 0.3}, per_mac=1e-7), float_model, feed),
    )
    assert gate.model is int8_model and not gate.timing.timed and gate.timing.ratio == pytest.approx(0.3)
    assert (gate.timed, gate.predicted_only) == (0, 1)
    assert "predicted 0.30×" in gate.timing.describe()


def test_gate_keeps_float_where_int8_is_predicted_and_measured_slower(monkeypatch) -> None:
    float_model, int8_model, feed = conv_chains()
    # A close call (1.1x predicted): timed, and the timing (1.25x) confirms INT8 is slower.
    monkeypatch.setattr(latency, "compare", scripted([latency.Timing(1.0, 1.25, noise=0.03)]))
    predictor = predictor_for(table({"Conv": 1.1}), float_model, feed)
    gate = latency.latency_gate(float_model, int8_model, ["Conv"], lambda kept: float_model, [feed], 1.0, predictor)
    assert gate.model is None and gate.timing.timed and gate.timing.predicted == pytest.approx(1.1)
    summary = latency.summary(gate, 1.0, predictor)
    assert summary["prediction_confirmed"] is True and summary["timed"] == 1
    assert summary["op_speed_table"]["key"] == "test CPU"
    # Clearly slower (2x): decided by the table alone.
    monkeypatch.setattr(latency, "compare", scripted([]))
    slow = predictor_for(table({"Conv": 2.0}), float_model, feed)
    gate = latency.latency_gate(float_model, int8_model, ["Conv"], lambda kept: float_model, [feed], 1.0, slow)
    assert gate.model is None and not gate.timing.timed


def test_timing_overrules_a_wrong_close_prediction_and_says_so(monkeypatch) -> None:
    float_model, int8_model, feed = conv_chains()
    monkeypatch.setattr(latency, "compare", scripted([latency.Timing(1.0, 1.3)]))
    predictor = predictor_for(table({"Conv": 0.8}), float_model, feed)
    gate = latency.latency_gate(float_model, int8_model, ["Conv"], lambda kept: float_model, [feed], 1.0, predictor)
    assert gate.model is None
    assert latency.summary(gate, 1.0, predictor)["prediction_confirmed"] is False


def test_predictions_are_trusted_only_on_the_side_the_float_rest_cannot_cross(monkeypatch) -> None:
    """The INT8 nodes' ratio bounds the whole model's only towards 1: with max_slowdown 2, INT8 nodes 3x slower
    may still leave the model within 2x, so that is timed; with max_slowdown 0.5, 0.3x is timed too."""
    float_model, int8_model, feed = conv_chains()
    for max_slowdown, ratio in ((2.0, 3.0), (0.5, 0.3)):
        monkeypatch.setattr(latency, "compare", scripted([latency.Timing(1.0, 1.0)]))
        timing = latency.assess(
            float_model, int8_model, [feed], max_slowdown, predictor_for(table({"Conv": ratio}), float_model, feed)
        )
        assert timing.timed and timing.predicted == pytest.approx(ratio)


# -- batched timing of tiny models -----------------------------------------------------------------------------


class CountingSession:
    """Stands in for an ORT session whose run takes ``seconds``; counts its runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.runs = seconds, 0

    def get_inputs(self) -> list[Any]:
        return [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])]

    def run(self, outputs: Any, feed: Any) -> list[np.ndarray]:
        self.runs += 1
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return [np.zeros(1, np.float32)]


def test_tiny_models_are_timed_in_batches_long_enough_to_measure(monkeypatch) -> None:
    made = [CountingSession(20e-6), CountingSession(20e-6)]
    sessions = iter(made)
    monkeypatch.setattr(latency, "make_session", lambda model: next(sessions))
    monkeypatch.setattr(latency, "ROUND_BUDGET_S", 0.0)  # the minimum rounds only
    float_ms, quantized_ms = latency.time_models([onnx.ModelProto(), onnx.ModelProto()], [{"x": np.zeros(1)}])
    rounds = latency.MIN_ROUNDS
    for session in made:
        # Two runs to size the batch, then per round one untimed run and a batch of about 1 ms / 20 us.
        batch = (session.runs - 2) / rounds - 1
        assert batch >= 0.5 * latency.BATCH_FLOOR_S / 20e-6
    assert 0.02 <= float_ms < 0.2 and 0.02 <= quantized_ms < 0.2  # per run, not per batch


def test_a_slow_model_is_timed_one_run_at_a_time() -> None:
    assert latency._batch_size(CountingSession(2 * latency.BATCH_FLOOR_S), {}) == 1


def test_the_noise_is_the_spread_of_the_ratio_from_sample_to_sample() -> None:
    assert latency._noise([[1.0], [0.8]]) is None  # one sample: nothing to compare
    assert latency._noise([[1.0, 1.0, 1.0], [0.9, 1.0, 1.1]]) == pytest.approx(0.1)
    assert latency._noise([[1.0, math.inf], [0.9, math.inf]]) is None  # a slow model's untimed sample


def test_table_chains_run_in_onnxruntime_and_agree_with_their_float_twin() -> None:
    """What the table times is what the pass makes: ORT accepts the QDQ chain, and it computes the same thing."""
    from onnxkit.passes.quantize.runtime import make_session

    for kind in ("Conv", "MatMul", "Gemm"):
        float_model, int8_model, feed, _ = op_speed._chain(kind, *op_speed.SIZES[kind][0])
        onnx.checker.check_model(int8_model)
        expected = make_session(float_model).run(None, feed)[0]
        got = make_session(int8_model).run(None, feed)[0]
        cosine = float(np.dot(expected.ravel(), got.ravel()) / np.linalg.norm(expected) / np.linalg.norm(got))
        assert cosine > 0.95, kind


def test_weights_as_initializers_are_shaped_without_their_data() -> None:
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w_"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    shapes = op_speed.inferred_shapes(model, {"x": np.zeros((2, 3, 5, 5), np.float32)})
    assert shapes["y"] == [2, 4, 5, 5] and shapes["w"] == [4, 3, 3, 3]
    assert op_speed._kind_and_macs(model.graph.node[0], shapes) == ("Conv", 2 * 4 * 5 * 5 * 3 * 9)


def test_slower_is_called_early_only_when_every_sample_says_so() -> None:
    float_times = [1.0, 1.0, 1.0, 1.0]
    assert latency._clear([float_times, [1.3, 1.3, 1.3, 1.3]], 1.0)
    assert not latency._clear([float_times, [1.3, 1.3, 1.3, 1.05]], 1.0)  # one sample within: keep timing
    assert not latency._clear([[1.0, 1.0], [1.3, 1.3]], 1.0)  # too few samples to call it
    assert latency._clear([float_times, [0.5, 0.5, 0.5, 0.5]], 1.0)  # clearly faster, as before


def test_a_value_of_unknown_rank_has_no_shape_rather_than_a_scalar_one() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Custom", ["x"], ["h"], domain="test"),
            helper.make_node("Cast", ["h"], ["c"], to=TensorProto.FLOAT),  # typed by inference, shape unknown
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("test", 1)]
    shapes = op_speed.inferred_shapes(helper.make_model(graph, opset_imports=opsets), {"x": np.zeros((1, 4))})
    assert shapes["x"] == [1, 4] and "c" not in shapes and "y" not in shapes


def test_clearly_faster_is_not_trusted_on_a_tiny_model(monkeypatch) -> None:
    """The chains' INT8 Convs price at 0.2x, but at well under TRUSTED_FLOAT_MS the edges' conversions the
    table leaves out could outweigh that: timed."""
    float_model, int8_model, feed = conv_chains()
    tiny = op_speed.SpeedTable("k", {"Conv": [op_speed.Point(1e3, 1e-9, 0.2e-9)]})
    monkeypatch.setattr(latency, "compare", scripted([latency.Timing(1.0, 1.3)]))
    timing = latency.assess(float_model, int8_model, [feed], 1.0, predictor_for(tiny, float_model, feed))
    assert timing.timed and not timing.within(1.0) and timing.predicted == pytest.approx(0.2)
