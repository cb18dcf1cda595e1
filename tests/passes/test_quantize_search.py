"""The keep-in-float search: one ranking, a few judged candidates, a reason per float node, a cached ranking;
and the streaming histogram under calibration."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import float_search
from onnxkit.passes.quantize.calibration import StreamingHistogram
from onnxkit.passes.quantize.sensitivity import NodeSensitivity
from tests.conftest import run_model
from tests.passes.test_quantize import NO_GATE, _weight, cosine, quantize, samples


def two_outlier_chain() -> onnx.ModelProto:
    """fc1 → fc2 → fc3 → fc4 → fc5 (MatMuls, width 16). fc1 and fc3 put one channel 1000 times above the rest,
    which the next MatMul ignores: quantizing fc2's and fc4's inputs per tensor wipes out what they read, so
    those two, and only they, must stay float."""
    rng = np.random.default_rng(0)
    weights = [_weight(rng, 16, 16) for _ in range(5)]
    for outlier in (0, 2):
        weights[outlier][:, 0] *= 1000.0
        weights[outlier + 1][0, :] = 0.0
    names = ["x", "h1", "h2", "h3", "h4", "y"]
    nodes = [helper.make_node("MatMul", [names[i], f"w{i + 1}"], [names[i + 1]], name=f"fc{i + 1}") for i in range(5)]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(weights)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_search_ranks_once_judges_few_and_says_why_each_node_stayed_float() -> None:
    model = two_outlier_chain()
    data = samples("x", (4, 16), 25)
    result, quantized = quantize(model, data, mode="static", calib="minmax", **NO_GATE)
    details = result.details
    assert details["target_met"]
    assert sorted(details["kept_float"]) == ["fc2", "fc4"]
    # fc2's ruined input hides what fc4 would ruin itself: the first ranking finds fc2, the second fc4.
    assert details["kept_float"]["fc2"].startswith("rank 1 of 5: output SQNR 0.0 dB, adds 99.99% relative noise")
    assert details["kept_float"]["fc4"].startswith("rank 1 of 4 (ranking 2): output SQNR 0.0 dB")
    assert all("of the noise all" in reason for reason in details["kept_float"].values())
    search = details["search"]
    assert search["rankings"] == 2 and search["verifications"] <= 4
    assert search["worst_nodes"][0]["node"] == "fc4"
    assert sum(row["share_of_added_noise"] or 0.0 for row in search["worst_nodes"]) <= 1.0 + 1e-9
    for sample in data:
        assert cosine(run_model(model, sample)[0], run_model(quantized, sample)[0]) >= 0.99


def test_sensitivity_ranking_is_cached_per_model_and_data(tmp_path) -> None:
    model, data = two_outlier_chain(), samples("x", (4, 16), 25)
    extras = {"calib_cache": tmp_path / "cache"}
    first, quantized = quantize(model, data, extras, mode="static", calib="minmax", **NO_GATE)
    second, again = quantize(model, data, extras, mode="static", calib="minmax", **NO_GATE)
    other_data, _ = quantize(model, samples("x", (4, 16), 25, seed=2), extras, mode="static", calib="minmax", **NO_GATE)
    assert first.details["search"]["sensitivity_cache"] == "stored"
    assert second.details["search"]["sensitivity_cache"] == "hit"
    assert other_data.details["search"]["sensitivity_cache"] == "stored"
    assert second.details["kept_float"] == first.details["kept_float"]
    assert again.SerializeToString() == quantized.SerializeToString()
    assert len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 2


def test_search_gives_up_within_its_budget_when_nothing_passes() -> None:
    judged = []

    def quantize_keeping(keep):
        return helper.make_model(helper.make_graph([], "g", [], []))

    def rank(model, keep):
        return [NodeSensitivity(f"n{i}", "MatMul", 1.0 / (i + 1), 10.0) for i in range(40)]

    def never(model):
        judged.append(model)
        return float_search.Verdict(False, excess=1.01)

    search = float_search.keep_sensitive_in_float(quantize_keeping, rank, never)
    assert not search.verdict.passed
    assert len(judged) == search.verifications <= float_search.MAX_VERIFICATIONS
    assert search.rounds <= float_search.MAX_RANKINGS


def test_streaming_histogram_merges_exactly() -> None:
    """Counting sample by sample, with the grid widening as the range grows, gives the counts of one histogram
    of all the values on the final grid."""
    rng = np.random.default_rng(3)
    chunks = [rng.standard_normal(500).astype(np.float32) * scale for scale in (0.01, 1.0, 0.5, 30.0)]
    streamed = StreamingHistogram(capacity=256)
    for chunk in chunks:
        streamed.add(chunk, float(chunk.min()), float(chunk.max()))
    assert streamed.exponent is not None
    values = np.concatenate(chunks).astype(np.float64)
    width = 2.0**streamed.exponent
    direct = np.bincount((np.floor(values / width) - streamed.first).astype(np.int64), minlength=streamed.counts.size)
    assert streamed.counts.size <= 256 and streamed.counts.size > 128
    np.testing.assert_array_equal(streamed.counts, direct)
    assert streamed.counts.sum() == values.size


def test_pass_checks_the_samples_the_pipeline_will_check() -> None:
    """Given calibration data only, the pipeline checks the held-out samples: the pass checks ORT's unoptimized
    run on those (not on all 25 it read). Given --data, the pipeline checks all of it, and so does the pass."""
    from onnxkit.pipeline import Pipeline
    from tests.passes.test_quantize import mlp

    data = samples("x", (4, 16), 25)
    spec = Pipeline.parse("quantize{mode=static,max_slowdown=none}")
    calibration_only = spec.run(mlp(), calibration_data=data).report.passes[0].details["parity"]
    given_data = spec.run(mlp(), data=data).report.passes[0].details["parity"]
    assert calibration_only["held-out, ORT optimizations off"]["samples"] == 5
    assert "all, ORT optimizations off" not in calibration_only
    assert given_data["all, ORT optimizations off"]["samples"] == 25


def test_tensors_no_input_reaches_are_calibrated_on_one_sample(monkeypatch) -> None:
    """A weight computed from constants at run time (w = a * b, as ConstantOfShape placeholders are) is the same
    on every sample: read on the first only, with the ranges every sample would give."""
    from onnxkit.passes.quantize import calibration
    from onnxkit.passes.quantize.runtime import tensor_elem_types

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "b"], ["w"], name="weight"),
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "computed_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(_weight(rng, 16, 8), "a"), numpy_helper.from_array(_weight(rng, 16, 8), "b")],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    types = tensor_elem_types(model)
    names = calibration.calibration_tensors(model, ("MatMul", "Relu"), types)
    assert calibration.sample_independent(model, names) == {"w"}
    data = samples("x", (4, 16), 12)
    for method in ("minmax", "entropy", "percentile"):
        settings = calibration.CalibrationSettings(method=method)
        once = calibration.calibrate(model, names, types, data, settings)
        with monkeypatch.context() as patch:
            patch.setattr(calibration, "sample_independent", lambda proto, tensors: set())
            every_sample = calibration.calibrate(model, names, types, data, settings)
        assert list(once.data) == list(every_sample.data) == names
        assert all(once[n].range_value == every_sample[n].range_value for n in names), method


def test_search_stops_at_its_time_budget_and_says_so() -> None:
    from tests.passes.test_quantize import outlier_model

    result, _ = quantize(
        outlier_model(), samples("x", (4, 16), 25), mode="static", calib="minmax", search_budget=1e-9, **NO_GATE
    )
    assert not result.modified and result.details["target_met"] is False
    assert result.details["search"]["out_of_time"] == "the search stopped at its 1e-09 s budget (search_budget)"
    reason = result.details["latency_gate"]["kept_whole_model_float"]
    assert reason.endswith("; the search stopped at its 1e-09 s budget (search_budget)")
    assert result.details["search"]["verifications"] == 1 and result.details["search"]["rankings"] == 0


def _quantize_keeping(keep):
    """A stand-in candidate for the search: a model that says only how many nodes it keeps float."""
    return helper.make_model(helper.make_graph([], str(len(keep)), [], []))


def _forty_ranked_matmuls(model, keep):
    """A stand-in ranking: 40 MatMuls, the noisiest first."""
    return [NodeSensitivity(f"n{i}", "MatMul", 1.0 / (i + 1), 10.0) for i in range(40)]


def test_the_search_confirms_only_where_it_ends_and_grows_past_a_prefix_the_confirmation_fails() -> None:
    """``confirm`` (the pipeline's own check, the costly part) is made on the first passing prefix and on the
    one the bisection settles on, not on every passing step; a prefix the check passes and the confirmation
    fails counts as failing, and what is handed on was confirmed."""
    checked: list[int] = []
    confirmed: list[int] = []

    def judged_from(threshold: int, record: list[int]):
        def judge(model):
            record.append(int(model.graph.name))
            return float_search.Verdict(record[-1] >= threshold, excess=0.5 if record[-1] >= threshold else 3.0)

        return judge

    # Where they agree: the first pass and the settled prefix are confirmed, the steps between only checked.
    search = float_search.keep_sensitive_in_float(
        _quantize_keeping, _forty_ranked_matmuls, judged_from(6, checked), confirm=judged_from(6, confirmed)
    )
    assert search.verdict.passed and len(search.keep_float) == 6
    passing_steps = [count for count in checked if count >= 6]
    assert len(passing_steps) >= 3 and confirmed == [passing_steps[0], 6]

    # Where the confirmation is stricter than the check, nothing it fails is handed on.
    checked.clear()
    confirmed.clear()
    search = float_search.keep_sensitive_in_float(
        _quantize_keeping, _forty_ranked_matmuls, judged_from(6, checked), confirm=judged_from(9, confirmed)
    )
    assert search.verdict.passed and len(search.keep_float) >= 9
    assert len(search.keep_float) in confirmed and all(count >= 6 for count in confirmed)


def test_the_gate_stops_timing_once_the_answer_is_clear() -> None:
    from onnxkit.passes.quantize import latency

    # Past the minimum rounds, INT8 well below max_slowdown ends the timing before its time budget; looking
    # slower never does (noise on a loaded machine only adds time, to either model).
    assert latency._clear([[1.0, 1.0], [0.6, 0.7]], 1.0)
    assert not latency._clear([[1.0, 1.0], [1.4, 1.5]], 1.0)
    assert not latency._clear([[1.0, 1.0], [0.95, 1.05]], 1.0)
    assert not latency._clear([[1.0, 1.0], [0.5, 0.5]], None)
    assert latency._enough(latency.MIN_ROUNDS, 0.1, 4, clear=True)
    assert not latency._enough(latency.MIN_ROUNDS, 0.1, 4, clear=False)
    assert not latency._enough(2, 0.1, 4, clear=True)  # every sample timed first


def test_a_check_that_understates_the_noise_is_scaled_so_the_search_still_confirms_only_twice() -> None:
    """MiniLM: the held-out check passed a prefix that every sample, unoptimized, failed (cosine 0.994 against
    0.988), and from then on each passing step was confirmed (4 confirmations, 1.8 s each). Now the ratio of
    the two measurements scales the check's later passes, and only the first pass and the settled prefix are
    confirmed; what is handed on passes the confirmation, within the bisection's tolerance of the shortest."""
    checked: list[int] = []
    confirmed: list[int] = []

    def judged(scale: float, record: list[int]):
        def judge(model):  # each node kept float takes a fifth of the output noise away
            record.append(int(model.graph.name))
            excess = scale * 0.8 ** record[-1]
            return float_search.Verdict(excess <= 1.0, excess=excess)

        return judge

    search = float_search.keep_sensitive_in_float(
        _quantize_keeping, _forty_ranked_matmuls, judged(3.0, checked), confirm=judged(60.0, confirmed)
    )
    shortest = next(k for k in range(41) if 60.0 * 0.8**k <= 1.0)  # 19
    assert search.verdict.passed and search.verdict.excess == 60.0 * 0.8 ** len(search.keep_float)
    assert shortest <= len(search.keep_float) <= shortest * (1 + float_search.BISECT_TOLERANCE)
    assert len(confirmed) == 2 and confirmed[-1] == len(search.keep_float)
    assert search.rounds == 1 and len(checked) <= 5
