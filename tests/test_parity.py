"""onnxkit.parity: real ONNX Runtime runs of small inline models."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import parity
from onnxkit.errors import DataError, ModelLoadError, SpecError
from onnxkit.parity import Tolerance, compare_models
from onnxkit.parity import chain as parity_chain


def linear_model(weight: np.ndarray, *, batch: str | int = "batch") -> onnx.ModelProto:
    """y = x @ W + b, class scores of shape [batch, classes]."""
    features, classes = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        [
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(np.linspace(-1, 1, classes).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def unary_model(
    op: str, in_type: int = TensorProto.FLOAT, out_type: int = TensorProto.FLOAT, shape=(2, 5), **attributes
) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], **attributes)],
        op.lower(),
        [helper.make_tensor_value_info("x", in_type, list(shape))],
        [helper.make_tensor_value_info("y", out_type, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def weight(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((8, 10)).astype(np.float32)


def test_identical_copy_passes_and_perturbed_weight_fails(weight: np.ndarray) -> None:
    reference = linear_model(weight)
    identical = compare_models(reference, linear_model(weight.copy()), dims={"batch": 2})
    assert identical.passed
    assert identical.max_abs_error == 0.0 and identical.min_cosine == pytest.approx(1.0)
    assert identical.samples == parity_default_samples()

    perturbed = weight.copy()
    perturbed[3, 4] += 0.05
    report = compare_models(reference, linear_model(perturbed), dims={"batch": 2})
    assert not report.passed
    (output,) = report.outputs
    assert output.name == "y" and output.shape == [2, 10] and output.dtype == "float32"
    # Only column 4 moves, by 0.05 * x[:, 3]: the largest error is the largest |x3| times 0.05.
    assert 0 < output.max_abs_error < 0.05 * 5
    assert output.mismatched_elements > 0
    assert "would pass with atol >=" in report.summary()
    assert report.summary().startswith("FAILED")


def parity_default_samples() -> int:
    from onnxkit.data import DEFAULT_SYNTHETIC_SAMPLES

    return DEFAULT_SYNTHETIC_SAMPLES


def test_minimum_tolerances_are_the_real_thresholds(weight: np.ndarray) -> None:
    perturbed = weight * np.float32(1.01)
    reference, candidate = linear_model(weight), linear_model(perturbed)
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    report = compare_models(reference, candidate, tolerance=tolerance)
    (output,) = report.outputs
    assert not report.passed and output.min_atol > 1e-4 and 1e-3 < output.min_rtol < np.inf

    def passes(**fields: float) -> bool:
        return compare_models(reference, candidate, tolerance=dataclasses.replace(tolerance, **fields)).passed

    # At the reported figure (a hair above, against float rounding) it passes; a little below it fails.
    assert passes(atol=output.min_atol * (1 + 1e-6))
    assert not passes(atol=output.min_atol * 0.99)
    assert passes(rtol=output.min_rtol * (1 + 1e-6))
    assert not passes(rtol=output.min_rtol * 0.99)
    # The printed, rounded-up figures pass too.
    text = output.would_pass_text(tolerance)
    printed_atol = float(text.split("atol >= ")[1].split(" ")[0])
    printed_rtol = float(text.split("rtol >= ")[1].split(" ")[0])
    assert passes(atol=printed_atol) and passes(rtol=printed_rtol)


def test_default_exact_tolerance_passes_a_real_conv_batchnorm_folding(rng: np.random.Generator) -> None:
    """Six Conv+BatchNormalization+Relu layers against the same layers with BN folded into the Conv weights."""
    channels, layers, eps = 32, 6, 1e-5
    plain_nodes, folded_nodes, plain_init, folded_init = [], [], [], []
    current = "x"
    for i in range(layers):
        in_channels = 3 if i == 0 else channels
        w = (rng.standard_normal((channels, in_channels, 3, 3)) * np.sqrt(2 / (9 * in_channels))).astype(np.float32)
        b, beta, mean = (rng.standard_normal((3, channels)) * 0.1).astype(np.float32)
        gamma, var = rng.uniform(0.5, 1.5, (2, channels)).astype(np.float32)
        scale = gamma / np.sqrt(var + eps)
        plain_init += [
            numpy_helper.from_array(a, f"{n}{i}")
            for n, a in {"w": w, "b": b, "gamma": gamma, "beta": beta, "mean": mean, "var": var}.items()
        ]
        folded_init += [
            numpy_helper.from_array((w * scale[:, None, None, None]).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), f"b{i}"),
        ]
        plain_nodes += [
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization",
                [f"conv{i}", f"gamma{i}", f"beta{i}", f"mean{i}", f"var{i}"],
                [f"bn{i}"],
                epsilon=eps,
            ),
            helper.make_node("Relu", [f"bn{i}"], [f"act{i}"]),
        ]
        folded_nodes += [
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"bn{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"bn{i}"], [f"act{i}"]),
        ]
        current = f"act{i}"

    def model(nodes: list, initializers: list) -> onnx.ModelProto:
        graph = helper.make_graph(
            nodes,
            "cnn",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
            [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
            initializers,
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    report = compare_models(model(plain_nodes, plain_init), model(folded_nodes, folded_init), dims={"n": 2})
    assert report.passed, report.summary()
    (output,) = report.outputs
    assert output.max_abs_error > 0  # a real reordering of float sums, not an identical graph
    assert output.max_abs_error < Tolerance.for_kind("exact").atol / 10  # with a wide margin


def test_nan_at_the_same_positions_passes_elsewhere_fails() -> None:
    data = [{"x": np.array([[-1.0, 0.0, 1.0, 2.0, np.e]] * 2, dtype=np.float32)}]
    log = unary_model("Log")
    same = compare_models(log, unary_model("Log"), data)
    assert same.passed, same.summary()  # -1 gives NaN and 0 gives -inf in both
    abs_log = helper.make_model(
        helper.make_graph(
            [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Log", ["a"], ["y"])],
            "abslog",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    report = compare_models(log, abs_log, data, tolerance=Tolerance(atol=1.0, rtol=1.0))
    (output,) = report.outputs
    assert not report.passed and output.nonfinite_mismatches == 2  # one NaN per row became log(1) = 0
    assert "NaN or inf in one model only" in output.failures[0]


def test_integer_outputs_must_be_equal_unless_a_top1_budget_is_given(rng: np.random.Generator) -> None:
    scores = rng.standard_normal((6, 4)).astype(np.float32)
    data = [{"x": scores}]
    argmax = unary_model("ArgMax", out_type=TensorProto.INT64, shape=(6, 4), axis=1)
    assert compare_models(argmax, unary_model("ArgMax", out_type=TensorProto.INT64, shape=(6, 4), axis=1), data).passed
    argmin = unary_model("ArgMin", out_type=TensorProto.INT64, shape=(6, 4), axis=1)
    report = compare_models(argmax, argmin, data, tolerance=Tolerance(atol=10, rtol=10))
    (output,) = report.outputs
    assert not report.passed and output.equality and output.mismatched_elements == 6
    assert "must be equal" in output.failures[0]
    assert output.would_pass_text(report.tolerance) == ""  # no float tolerance makes labels equal
    budget = compare_models(argmax, argmin, data, tolerance=Tolerance(atol=None, rtol=None, min_top1=0.0))
    assert budget.passed and budget.outputs[0].top1_agreement == 0.0


def test_bool_outputs_compare_exactly() -> None:
    data = [{"x": np.array([[-1, 0, 1, 2, 3]] * 2, dtype=np.float32)}]
    zero = numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")

    def compare_with_zero(op: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node(op, ["x", "zero"], ["y"])],
            op,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
            [helper.make_tensor_value_info("y", TensorProto.BOOL, None)],
            [zero],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert compare_models(compare_with_zero("Greater"), compare_with_zero("Greater"), data).passed
    report = compare_models(compare_with_zero("Greater"), compare_with_zero("GreaterOrEqual"), data)
    assert not report.passed and report.outputs[0].mismatched_elements == 2  # the two zeros


def split_model(parts: int) -> onnx.ModelProto:
    split = numpy_helper.from_array(np.array([6 // parts] * parts, dtype=np.int64), "split")
    graph = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x", "split"], ["y"], axis=1)],
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, None)],
        [split],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sequence_outputs_compare_element_by_element() -> None:
    assert compare_models(split_model(3), split_model(3)).passed
    report = compare_models(split_model(3), split_model(2))
    assert not report.passed
    assert "sequence of 3 in the reference but 2 in the candidate" in report.errors[0]


def test_names_dtypes_and_shapes_are_checked_each_with_its_own_error(weight: np.ndarray) -> None:
    reference = linear_model(weight)
    renamed = linear_model(weight)
    renamed.graph.node[-1].output[0] = "z"
    renamed.graph.output[0].name = "z"
    report = compare_models(reference, renamed)
    assert not report.passed
    assert report.errors == [
        "output 'y' is missing from the candidate",
        "the candidate has output 'z' that the reference lacks",
    ]

    widened = linear_model(weight)
    widened.graph.node[-1].output[0] = "y32"
    widened.graph.node.append(helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.DOUBLE))
    widened.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    report = compare_models(reference, widened)
    assert not report.passed
    assert report.errors == ["output 'y' has dtype float32 in the reference but float64 in the candidate"]
    assert report.outputs[0].max_abs_error < 1e-6  # the values are still compared

    sliced = linear_model(weight)
    sliced.graph.node[-1].output[0] = "full"
    sliced.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0]), "start"),
            numpy_helper.from_array(np.array([9]), "end"),
            numpy_helper.from_array(np.array([1]), "axis"),
        ]
    )
    sliced.graph.node.append(helper.make_node("Slice", ["full", "start", "end", "axis"], ["y"]))
    report = compare_models(reference, sliced, num_samples=2)
    assert report.errors == [
        "output 'y' has shape [1, 10] in the reference but [1, 9] in the candidate (sample 0)",
        "output 'y' has shape [1, 10] in the reference but [1, 9] in the candidate (sample 1)",
    ]


def test_lossy_budgets_and_per_output_overrides(weight: np.ndarray) -> None:
    noisy = weight + np.random.default_rng(1).standard_normal(weight.shape).astype(np.float32) * 0.05
    reference, candidate = linear_model(weight), linear_model(noisy)
    int8 = Tolerance.for_kind("lossy")
    assert (int8.atol, int8.rtol, int8.min_cosine) == (None, None, 0.99)
    assert Tolerance.for_kind("lossy", precision="fp16").min_cosine == 0.999
    report = compare_models(reference, candidate, tolerance=int8)
    assert report.passed, report.summary()
    assert 0.99 < report.min_cosine < 1.0 and report.outputs[0].sqnr_db > 20
    strict = dataclasses.replace(int8, per_output={"y": {"min_sqnr": 200.0}})
    failed = compare_models(reference, candidate, tolerance=strict)
    assert not failed.passed
    assert "SQNR" in failed.outputs[0].failures[0] and "min_sqnr <=" in failed.summary()
    with pytest.raises(SpecError):
        Tolerance(per_output={"y": {"tolerance": 1.0}})
    with pytest.raises(SpecError):
        Tolerance(atol=-1.0)


def test_report_is_strict_json(weight: np.ndarray) -> None:
    report = compare_models(linear_model(weight), linear_model(weight))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))  # SQNR of identical outputs is infinite
    assert data["passed"] is True and data["max_abs_error"] == 0.0 and data["min_cosine"] == pytest.approx(1.0)
    assert data["errors"] == [] and data["outputs"][0]["name"] == "y" and data["outputs"][0]["sqnr_db"] is None
    assert report.outputs[0].sqnr_db == float("inf")


def test_candidate_that_ort_cannot_load_fails_and_a_bad_reference_raises(weight: np.ndarray) -> None:
    broken = unary_model("NoSuchOp")
    report = compare_models(linear_model(weight), broken)
    assert not report.passed and report.errors[0].startswith("ONNX Runtime cannot load the candidate model")
    with pytest.raises(ModelLoadError, match="cannot load the reference model"):
        compare_models(broken, linear_model(weight))


def test_models_as_paths_bytes_protos_and_ir(tmp_path, weight: np.ndarray) -> None:
    model = linear_model(weight)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for candidate in (str(path), path, model.SerializeToString(), ir.serde.deserialize_model(model)):
        assert compare_models(model, candidate).passed
    with pytest.raises(ModelLoadError):
        compare_models(path, tmp_path / "missing.onnx")


def test_only_declared_inputs_are_fed_and_data_is_validated(weight: np.ndarray, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 8)).astype(np.float32)
    report = compare_models(linear_model(weight), linear_model(weight), [{"x": x, "label": np.array([1, 2, 3])}])
    assert report.passed and report.samples == 1 and report.outputs[0].shape == [3, 10]
    with pytest.raises(DataError, match="input 'x' has dtype float64"):
        compare_models(linear_model(weight), linear_model(weight), [{"x": x.astype(np.float64)}])
    with pytest.raises(DataError, match="no samples"):
        compare_models(linear_model(weight), linear_model(weight), [])


def test_sessions_are_made_once_and_reused_across_samples(monkeypatch, weight: np.ndarray) -> None:
    import onnxruntime as ort

    made = []
    real = ort.InferenceSession

    def counting(*args, **kwargs):
        session = real(*args, **kwargs)
        made.append(session)
        return session

    monkeypatch.setattr(ort, "InferenceSession", counting)
    # The batch bound by the caller leaves the synthetic inputs nothing to probe (which takes a session of its own).
    report = compare_models(linear_model(weight), linear_model(weight), dims={"batch": 1}, num_samples=5, threads=1)
    assert report.samples == 5 and len(made) == 2
    options = made[0].get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == 1
    compare_models(linear_model(weight), linear_model(weight), ort_optimizations=True)
    assert made[-1].get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_tolerance_from_options() -> None:
    assert parity.tolerance_from_options() == Tolerance.for_kind("exact")
    budget_only = parity.tolerance_from_options(overrides={"min_cosine": 0.98})
    assert (budget_only.atol, budget_only.rtol, budget_only.min_cosine) == (None, None, 0.98)
    both = parity.tolerance_from_options(overrides={"atol": 1e-3, "min_cosine": 0.98})
    assert (both.atol, both.rtol, both.min_cosine) == (1e-3, 1e-4 * 10, 0.98)
    assert parity.tolerance_from_options("int8").min_cosine == 0.99
    assert parity.parse_output_tolerance("output:0:atol=1e-3,min-cosine=none") == (
        "output:0",
        {"atol": 1e-3, "min_cosine": None},
    )
    with pytest.raises(SpecError):
        parity.parse_output_tolerance("logits:tolerance=3")


# ---------------------------------------------------------------------------------------------------------
# A chain of comparisons: each model runs once


def _chain(weight: np.ndarray, samples: int = 3) -> parity.ParityChain:
    from onnxkit.data import as_dataset, input_specs

    model = linear_model(weight)
    return parity.ParityChain(
        as_dataset(None, model, dims={"batch": 2}, num_samples=samples),
        input_specs(model),
        "synthetic",
        data_given=False,
    )


def _samples(weight: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The chain's samples as a list, for a direct comparison on the same inputs."""
    from onnxkit.data import as_dataset

    return list(as_dataset(None, linear_model(weight), dims={"batch": 2}, num_samples=3))


def _reshape_to_3x5(width: int) -> bytes:
    """A model that fails at run time: it reshapes a (batch, ``width``) input to 3x5."""
    return helper.make_model(
        helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"])],
            "broken",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array([3, 5], dtype=np.int64), "shape")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    ).SerializeToString()


def test_chain_replays_the_last_candidate_as_the_next_reference(weight: np.ndarray) -> None:
    first, second = linear_model(weight).SerializeToString(), linear_model(weight.copy()).SerializeToString()
    perturbed = weight.copy()
    perturbed[0, 0] += 1
    third = linear_model(perturbed).SerializeToString()
    chain, exact = _chain(weight), Tolerance.for_kind("exact")
    timings: dict[str, float] = {}
    assert chain.compare(first, second, exact, timings).passed
    assert {"sessions", "reference_runs", "candidate_runs", "comparison"} <= set(timings)
    timings = {}
    replayed = chain.compare(second, third, exact, timings)
    assert "replayed" in timings and "reference_runs" not in timings
    # Replayed outputs give the very verdict and figures that running the reference again gives.
    direct = compare_models(second, third, _samples(weight), tolerance=exact)
    assert not replayed.passed and replayed.samples == direct.samples == 3
    assert replayed.max_abs_error == direct.max_abs_error and replayed.summary() == direct.summary()
    # After a failure the same reference comes back (a rollback): still replayed.
    timings = {}
    assert chain.compare(second, linear_model(weight).SerializeToString(), exact, timings).passed
    assert "replayed" in timings


def test_chain_runs_a_reference_again_past_the_memory_budget_or_the_samples_recorded(
    monkeypatch, weight: np.ndarray
) -> None:
    models = [linear_model(weight).SerializeToString() for _ in range(3)]
    exact = Tolerance.for_kind("exact")
    chain = _chain(weight)
    assert chain.compare(models[0], models[1], exact, limit=2).samples == 2
    timings: dict[str, float] = {}
    assert chain.compare(models[1], models[2], exact, timings).samples == 3  # two recorded, three wanted
    assert "reference_runs" in timings
    monkeypatch.setattr(parity_chain, "RECORDING_BUDGET", 8)
    chain = _chain(weight)
    chain.compare(models[0], models[1], exact)
    timings = {}
    chain.compare(models[1], models[2], exact, timings)
    assert "reference_runs" in timings and "replayed" not in timings


def _model_and_perturbed(weight: np.ndarray) -> tuple[bytes, bytes]:
    perturbed = weight.copy()
    perturbed[0, 0] += 1
    return linear_model(weight).SerializeToString(), linear_model(perturbed).SerializeToString()


def test_chain_runs_a_prefetched_reference_in_the_background_and_replays_it(monkeypatch, weight: np.ndarray) -> None:
    # Two samples are compared here: a stall of the loaded test machine must not pass for a slow model.
    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", float("inf"))
    first, candidate = _model_and_perturbed(weight)
    chain, exact = _chain(weight), Tolerance.for_kind("exact")
    chain.prefetch(first, limit=2)
    timings: dict[str, float] = {}
    prefetched = chain.compare(first, candidate, exact, timings, limit=2)
    assert "reference_wait" in timings and "replayed" in timings and "reference_runs" not in timings
    # The very verdict and figures that running both models on the same two samples gives.
    direct = compare_models(first, candidate, _samples(weight)[:2], tolerance=exact)
    assert not prefetched.passed and prefetched.samples == direct.samples == 2
    assert prefetched.summary() == direct.summary()
    # A recording of two samples does not cover a comparison on three: the reference runs again.
    chain.prefetch(first, limit=2)
    timings = {}
    assert chain.compare(first, candidate, exact, timings).samples == 3
    assert "reference_runs" in timings


def test_a_slow_reference_makes_limited_comparisons_take_one_sample(monkeypatch, weight: np.ndarray) -> None:
    """rapid_table_det_edge_int8 runs seconds a sample: an exact check on synthetic inputs (a limited comparison)
    then compares the one sample the background run made, and says so; an unlimited one still takes them all."""
    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", 0.0)
    first, candidate = _model_and_perturbed(weight)
    chain, exact = _chain(weight), Tolerance.for_kind("exact")
    chain.prefetch(first, limit=2)
    timings: dict[str, float] = {}
    report = chain.compare(first, candidate, exact, timings, limit=2)
    assert report.samples == 1 and "replayed" in timings and "reference_runs" not in timings
    assert "1 sample for exact passes: a run takes" in chain.description
    direct = compare_models(first, candidate, _samples(weight)[:1], tolerance=exact)
    assert not report.passed and report.summary() == direct.summary()
    assert chain.compare(candidate, first, exact, limit=2).samples == 1  # the next one replays that sample
    assert chain.compare(first, candidate, exact).samples == 3


def test_a_prefetched_reference_that_fails_is_reported_as_the_comparison_would_report_it(weight: np.ndarray) -> None:
    broken = _reshape_to_3x5(width=4)
    chain = _chain(weight)
    chain.prefetch(broken, limit=2)
    with pytest.raises(DataError, match="the reference model fails on sample 0"):
        chain.compare(broken, linear_model(weight).SerializeToString(), Tolerance.for_kind("exact"), limit=2)
    # Data given by the caller is never read from a second thread: no background run.
    given = parity.ParityChain(_samples(weight), _chain(weight).specs, "given", data_given=True)
    given.prefetch(broken, limit=2)
    assert given._prefetch is None


# ---------------------------------------------------------------------------------------------------------
# A candidate run beside its reference, still running in the background


class _GatedSession:
    """An ONNX Runtime session whose runs first wait (a few seconds at most) for ``gate``, and note whether it
    was open: the reference's, held back until the candidate has run, proves that both ran at the same time."""

    def __init__(self, session, gate, runs: list[bool]) -> None:
        self.session, self.gate, self.runs = session, gate, runs
        self.get_inputs, self.get_outputs = session.get_inputs, session.get_outputs

    def run(self, names, feed, run_options=None):
        self.runs.append(self.gate.wait(5))
        return self.session.run(names, feed, run_options)


class _NotingSession:
    """An ONNX Runtime session that opens ``gate`` once it has run (or failed to run) a sample."""

    def __init__(self, session, gate, runs: list[bool]) -> None:
        self.session, self.gate, self.runs = session, gate, runs
        self.get_inputs, self.get_outputs = session.get_inputs, session.get_outputs

    def run(self, names, feed, run_options=None):
        try:
            return self.session.run(names, feed, run_options)
        finally:
            self.runs.append(True)
            self.gate.set()


def _figures(report: parity.ParityReport) -> dict:
    """A report's verdict, errors and figures: all but its description of the data."""
    return {key: value for key, value in report.to_dict().items() if key != "data"}


def _gate_reference_on_candidate(monkeypatch, reference: bytes, *, on: str = "run") -> dict[str, list[bool]]:
    """Every session of ``reference`` the chain makes waits, before each run, for the candidate to have run a
    sample (``on="run"``) or to have been loaded (``on="session"``). Returns the runs of each side: the
    reference's as whether the candidate had run (or loaded) by then."""
    import threading

    gate = threading.Event()
    runs: dict[str, list[bool]] = {"reference": [], "candidate": []}
    make_session = parity.ParityChain._session

    def session(chain: parity.ParityChain, model):
        if model is reference:
            return _GatedSession(make_session(chain, model), gate, runs["reference"])
        if on == "session":
            gate.set()
        return _NotingSession(make_session(chain, model), gate, runs["candidate"])

    monkeypatch.setattr(parity.ParityChain, "_session", session)
    return runs


def test_a_candidate_runs_beside_a_reference_still_running_and_reports_the_same(monkeypatch, weight) -> None:
    """rapid_table_det_edge_int8 ran 1.7 s of reference then 1.6 s of candidate, one after the other: the
    candidate now runs while the background run of the reference goes on, with the very report of the path
    that waits for it."""
    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", float("inf"))
    first, candidate = _model_and_perturbed(weight)
    runs = _gate_reference_on_candidate(monkeypatch, first)
    chain, exact = _chain(weight), Tolerance.for_kind("exact")
    chain.prefetch(first, limit=2)
    timings: dict[str, float] = {}
    report = chain.compare(first, candidate, exact, timings, limit=2)
    assert runs["reference"] and all(runs["reference"])  # each reference run started after a candidate run
    assert len(runs["candidate"]) == 2  # each sample once: the comparison took the runs made ahead
    assert {"sessions", "candidate_runs", "replayed"} <= set(timings) and "reference_runs" not in timings
    direct = compare_models(first, candidate, _samples(weight)[:2], tolerance=exact)
    assert not report.passed and report.samples == direct.samples == 2
    assert _figures(report) == _figures(direct)
    # Both recordings go on down the chain: the candidate is replayed as the next reference.
    timings = {}
    assert not chain.compare(candidate, first, exact, timings, limit=2).passed
    assert "replayed" in timings and len(runs["candidate"]) == 2


def test_a_candidate_run_beside_its_reference_that_fails_is_reported(monkeypatch, weight) -> None:
    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", float("inf"))
    first = linear_model(weight).SerializeToString()
    broken = _reshape_to_3x5(width=8)
    exact = Tolerance.for_kind("exact")
    direct = compare_models(first, broken, _samples(weight)[:2], tolerance=exact)
    assert "the candidate model fails on sample 0" in direct.errors[0]
    runs = _gate_reference_on_candidate(monkeypatch, first)
    chain = _chain(weight)
    chain.prefetch(first, limit=2)
    report = chain.compare(first, broken, exact, limit=2)
    assert runs["reference"] and all(runs["reference"])
    assert _figures(report) == _figures(direct)
    # One ONNX Runtime cannot load is reported as before, once the reference is done.
    unloadable = helper.make_model(
        helper.make_graph(
            [helper.make_node("NoSuchOp", ["x"], ["y"])],
            "unloadable",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    ).SerializeToString()
    runs = _gate_reference_on_candidate(monkeypatch, first, on="session")
    chain = _chain(weight)
    chain.prefetch(first, limit=2)
    report = chain.compare(first, unloadable, exact, limit=2)
    assert not report.passed and report.samples == 0
    assert report.errors[0].startswith("ONNX Runtime cannot load the candidate model:")
    assert chain.recorded(first) is not None  # the reference's run was still taken


def test_a_slow_reference_beside_its_candidate_still_takes_one_sample(monkeypatch, weight) -> None:
    """The reference's first run decides a limited comparison's samples: the candidate runs a second one only
    once it knows that the comparison takes it."""
    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", 0.0)
    first, candidate = _model_and_perturbed(weight)
    runs = _gate_reference_on_candidate(monkeypatch, first)
    chain, exact = _chain(weight), Tolerance.for_kind("exact")
    chain.prefetch(first, limit=2)
    report = chain.compare(first, candidate, exact, limit=2)
    assert runs["reference"] == [True] and runs["candidate"] == [True]
    assert "1 sample for exact passes" in chain.description
    direct = compare_models(first, candidate, _samples(weight)[:1], tolerance=exact)
    assert report.samples == 1 and _figures(report) == _figures(direct)


def test_a_reference_failing_beside_its_candidate_is_reported_as_before(monkeypatch, weight) -> None:
    broken = _reshape_to_3x5(width=8)
    runs = _gate_reference_on_candidate(monkeypatch, broken)
    chain = _chain(weight)
    chain.prefetch(broken, limit=2)
    with pytest.raises(DataError, match="the reference model fails on sample 0"):
        chain.compare(broken, linear_model(weight).SerializeToString(), Tolerance.for_kind("exact"), limit=2)
    assert runs["reference"][0] and runs["candidate"]  # the candidate ran while the reference did
