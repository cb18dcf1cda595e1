"""The run loop: verification between passes, instrumentation, the parity guard, provenance."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import ParityError, PassFailedError, Pipeline, modelio
from onnxkit.errors import DataError
from onnxkit.examples import build_example
from tests import plugin_passes
from tests.conftest import run_model


@pytest.fixture(autouse=True)
def broken_passes():
    plugin_passes.register_all()
    yield
    plugin_passes.unregister_all()


def _feeds(batch: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((batch, 16)).astype(np.float32)}


def test_instrumentation_per_pass():
    result = Pipeline.parse("cleanup,shape-inference").run(build_example("mlp"))
    cleanup, shapes = result.report.passes
    assert (cleanup.nodes_before, cleanup.nodes_after) == (8, 5)
    assert cleanup.op_delta == {"Identity": -2, "Sigmoid": -1}
    assert cleanup.bytes_after < cleanup.bytes_before
    assert cleanup.seconds > 0
    assert cleanup.parity["passed"] and cleanup.parity["max_abs_error"] == 0.0
    assert shapes.modified and shapes.stats == ["annotated 4 values"]
    json.dumps(result.report.to_dict())  # the report is JSON-serialisable


def test_wrong_pass_is_pinned_by_name_with_metrics():
    with pytest.raises(ParityError) as info:
        Pipeline.parse("cleanup,scale-weight,shape-inference").run(build_example("mlp"))
    assert "pass 'scale-weight'" in info.value.message
    assert "max abs" in info.value.message or "max_abs" in info.value.message


def test_rollback_discards_the_wrong_pass_and_goes_on():
    original = build_example("mlp")
    result = Pipeline.parse("cleanup,scale-weight,shape-inference").run(original, on_fail="rollback")
    statuses = {p.name: p.status for p in result.report.passes}
    assert statuses == {"cleanup": "ok", "scale-weight": "rolled-back", "shape-inference": "ok"}
    assert result.report.rolled_back == ["scale-weight"]
    assert result.report.passes[1].parity["passed"] is False
    final = ir.serde.serialize_model(result.model)
    np.testing.assert_allclose(run_model(final, _feeds())[0], run_model(original, _feeds())[0], rtol=1e-6, atol=1e-6)
    provenance = json.loads(result.model.metadata_props["onnxkit.passes"])
    assert provenance[1]["status"] == "rolled-back"


def test_a_run_from_a_file_starts_from_its_bytes_and_rolls_back_to_them(tmp_path):
    """A model given as a path is snapshot as the file's bytes (``modelio.load_source``): the report counts the
    file's size, the checks and parity start from them, a rolled-back pass hands on the file's model, and a
    run that changes nothing saves the file's graph with the provenance appended."""
    path = tmp_path / "mlp.onnx"
    onnx.save(build_example("mlp"), path)
    original = onnx.load(path)
    result = Pipeline.parse("scale-weight").run(path, on_fail="rollback")
    assert result.report.input_summary["bytes"] == path.stat().st_size
    assert result.report.passes[0].status == "rolled-back" and result.report.passes[0].parity["passed"] is False
    assert result.serialized is not None and result.serialized[0] == path.read_bytes()
    saved, metadata = _without_metadata(onnx.load_model_from_string(b"".join(result.serialized)))
    assert saved == original and metadata["onnxkit.spec"] == "scale-weight"
    rolled_back = _without_metadata(modelio.to_proto(result.model))[0]
    assert rolled_back.graph.node == original.graph.node
    assert {t.name: t.raw_data for t in rolled_back.graph.initializer} == {
        t.name: t.raw_data for t in original.graph.initializer
    }
    assert path.read_bytes() == original.SerializeToString()  # the input file is never written


def test_warn_keeps_the_pass_and_marks_the_report():
    result = Pipeline.parse("scale-weight").run(build_example("mlp"), on_fail="warn")
    assert result.report.passes[0].status == "parity-warning"
    assert result.report.parity_failed


def test_check_end_compares_final_with_original():
    with pytest.raises(ParityError, match="drifted"):
        Pipeline.parse("cleanup,scale-weight").run(build_example("mlp"), check="end")
    result = Pipeline.parse("cleanup").run(build_example("mlp"), check="end")
    assert result.report.final_parity["passed"]
    assert ("parity, input to output", result.report.final_parity["summary"]) in result.report.details()
    assert result.report.passes[0].parity is None


def test_check_off_runs_no_comparison():
    result = Pipeline.parse("scale-weight").run(build_example("mlp"), check="off")
    assert result.report.passes[0].parity is None and result.report.passes[0].status == "ok"


def test_verification_failure_names_the_pass():
    with pytest.raises(PassFailedError) as info:
        Pipeline.parse("cleanup,rename-output").run(build_example("mlp"))
    assert "pass 'rename-output' broke the model" in info.value.message
    assert "graph outputs changed" in info.value.message


def test_pass_adding_an_undeclared_domain_is_refused():
    with pytest.raises(PassFailedError, match=r"added ops of domain 'com\.microsoft', which it does not declare"):
        Pipeline.parse("contrib-relu").run(build_example("mlp"), check="off")


def test_verification_failure_is_never_kept_even_with_warn():
    result = Pipeline.parse("rename-output,cleanup").run(build_example("mlp"), on_fail="warn")
    assert result.report.passes[0].status == "rolled-back"
    assert result.model.graph.outputs[0].name == "logits"


def test_model_over_the_in_memory_limit_keeps_parity_and_rollback(monkeypatch):
    """Over the limit a snapshot stays a proto: the in-memory checker and shape inference are skipped
    (save checks on disk), parity runs ORT from a file, and rollback restores the proto."""
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1000)
    original = build_example("mlp")
    expected_bytes = modelio.to_proto(modelio.as_ir_model(original)).ByteSize()
    assert expected_bytes > 1000
    reference = run_model(original, _feeds())[0]
    result = Pipeline.parse("cleanup,scale-weight").run(original, on_fail="rollback")
    assert result.report.input_summary["bytes"] == expected_bytes
    assert [p.status for p in result.report.passes] == ["ok", "rolled-back"]
    assert result.report.passes[1].parity["passed"] is False
    final = ir.serde.serialize_model(result.model)
    np.testing.assert_allclose(run_model(final, _feeds())[0], reference, rtol=1e-6, atol=1e-6)


def test_crashing_pass_is_named_and_can_be_rolled_back():
    with pytest.raises(PassFailedError, match="pass 'crash' hit an internal error: RuntimeError: boom"):
        Pipeline.parse("crash").run(build_example("mlp"))
    result = Pipeline.parse("crash,cleanup").run(build_example("mlp"), on_fail="rollback")
    assert [p.status for p in result.report.passes] == ["rolled-back", "ok"]


def test_cleanup_reaches_into_if_branches():
    original = build_example("branchy")
    result = Pipeline.parse("cleanup").run(original)
    histogram = result.report.passes[0].op_delta
    assert histogram == {"Identity": -2}
    final = ir.serde.serialize_model(result.model)
    for sign in (1.0, -1.0):
        feeds = {"x": (sign * np.abs(np.random.default_rng(3).standard_normal((2, 4)))).astype(np.float32)}
        np.testing.assert_allclose(run_model(final, feeds)[0], run_model(original, feeds)[0], rtol=1e-6)


def test_passes_are_idempotent_with_byte_identical_output():
    first = Pipeline.parse("cleanup,shape-inference").run(build_example("branchy"))
    second = Pipeline.parse("cleanup,shape-inference").run(ir.serde.serialize_model(first.model))
    assert not any(p.modified for p in second.report.passes)
    graph_bytes = [ir.serde.serialize_model(r.model).graph.SerializeToString() for r in (first, second)]
    assert graph_bytes[0] == graph_bytes[1]


def test_identity_producing_a_graph_output_keeps_the_output_name():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("Identity", ["r"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    result = Pipeline.parse("cleanup").run(model)
    assert [o.name for o in result.model.graph.outputs] == ["y"]


def test_provenance_records_version_spec_and_stats():
    result = Pipeline.parse("cleanup").run(build_example("mlp"))
    metadata = result.model.metadata_props
    assert metadata["onnxkit.spec"] == "cleanup"
    assert metadata["onnxkit.version"]
    record = json.loads(metadata["onnxkit.passes"])[0]
    assert record["stats"] == ["removed 3 nodes", "removed 1 unused initializers"]
    assert record["parity"]["passed"] is True


def _without_metadata(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    del proto.metadata_props[:]
    return proto, metadata


def test_the_runs_bytes_are_the_model_it_returns_with_its_provenance(tmp_path):
    """``serialized`` (what the CLI saves instead of serializing the model again) is the last snapshot's bytes
    with the provenance appended: read back, the very model ``to_proto`` gives, metadata included."""
    result = Pipeline.parse("cleanup,shape-inference").run(build_example("mlp"))
    assert result.serialized is not None
    read_back, metadata = _without_metadata(onnx.load_model_from_string(b"".join(result.serialized)))
    expected, expected_metadata = _without_metadata(modelio.to_proto(result.model))
    assert read_back == expected and metadata == expected_metadata
    assert metadata["onnxkit.spec"] == "cleanup,shape-inference"
    # A model that carries an earlier run's provenance is serialized afresh: appended, its keys would repeat.
    again = Pipeline.parse("cleanup").run(result.model)
    assert again.serialized is None
    # Through the CLI, once and again on its own output: each key once, the last run's.
    from click.testing import CliRunner

    from onnxkit.cli import main

    onnx.save(build_example("mlp"), tmp_path / "m.onnx")
    for source, output in (("m.onnx", "once.onnx"), ("once.onnx", "twice.onnx")):
        command = ["optimize", str(tmp_path / source), "--passes", "cleanup", "-o", str(tmp_path / output)]
        assert CliRunner().invoke(main, command).exit_code == 0
    keys = [entry.key for entry in onnx.load(tmp_path / "twice.onnx").metadata_props]
    assert sorted(keys) == ["onnxkit.passes", "onnxkit.spec", "onnxkit.version"]
    onnx.checker.check_model(onnx.load(tmp_path / "once.onnx"), full_check=True)


# ---------------------------------------------------------------------------------------------------------
# A pass cannot sink the run


def test_internal_error_is_one_line_with_the_traceback_in_the_report():
    original = build_example("mlp")
    result = Pipeline.parse("type-error,cleanup").run(original, on_fail="rollback")
    failed, cleanup = result.report.passes
    assert failed.status == "rolled-back" and cleanup.status == "ok"
    assert failed.error.startswith("pass 'type-error' hit an internal error: TypeError: ")
    assert "\n" not in failed.error
    assert "Traceback" in failed.traceback and "plugin_passes.py" in failed.traceback
    assert json.loads(result.report.to_json())["passes"][0]["traceback"] == failed.traceback
    assert result.report.exit_code == 1
    # The pass removed a node before it crashed: the next pass starts from the model as it was.
    assert cleanup.nodes_before == 8
    np.testing.assert_allclose(
        run_model(ir.serde.serialize_model(result.model), _feeds())[0],
        run_model(original, _feeds())[0],
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(PassFailedError, match="pass 'type-error' hit an internal error: TypeError") as info:
        Pipeline.parse("type-error").run(build_example("mlp"))
    assert isinstance(info.value.__cause__, TypeError)


def test_user_error_inside_a_pass_stays_a_user_error():
    with pytest.raises(DataError, match="3 dims in the data") as info:
        Pipeline.parse("cleanup,bad-data").run(build_example("mlp"), on_fail="rollback")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("on_fail", ["stop", "rollback", "warn"])
def test_pass_that_edits_while_claiming_no_change_is_caught(on_fail):
    original = build_example("mlp")
    if on_fail == "stop":
        with pytest.raises(PassFailedError, match="changed the model but reported modified=False"):
            Pipeline.parse("silent-edit").run(original, on_fail=on_fail)
        return
    result = Pipeline.parse("silent-edit").run(original, on_fail=on_fail)
    entry = result.report.passes[0]
    assert entry.status == "rolled-back" and "modified=False" in entry.error  # never kept, even with warn
    assert result.report.exit_code == 1
    np.testing.assert_allclose(
        run_model(ir.serde.serialize_model(result.model), _feeds())[0],
        run_model(original, _feeds())[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_an_honest_no_op_passes_the_claim_check():
    first = Pipeline.parse("cleanup").run(build_example("mlp")).model
    result = Pipeline.parse("cleanup,shape-inference").run(ir.serde.serialize_model(first))
    cleanup = result.report.passes[0]
    assert (cleanup.modified, cleanup.status) == (False, "ok")
    assert result.report.exit_code == 0


def test_exit_code_follows_the_report():
    assert Pipeline.parse("cleanup").run(build_example("mlp")).report.exit_code == 0
    assert Pipeline.parse("scale-weight").run(build_example("mlp"), on_fail="rollback").report.exit_code == 1
    assert Pipeline.parse("scale-weight").run(build_example("mlp"), on_fail="warn").report.exit_code == 1


# ---------------------------------------------------------------------------------------------------------
# Narrowing a failing pass to the rule and site responsible


@pytest.mark.parametrize(
    ("spec", "failure"),
    [
        ("two-rules", "parity: output 'y'"),
        ("two-rules-checker", "onnx.checker: Unrecognized attribute: alpha for operator Max"),
    ],
)
def test_failing_pass_is_narrowed_to_the_one_bad_site(spec, failure):
    original = plugin_passes.relu_chain()
    result = Pipeline.parse(spec).run(original, dims={"batch": 2})
    entry = result.report.passes[0]
    assert entry.status == "narrowed" and result.report.exit_code == 0
    assert [(s["rule"], s["node"]) for s in entry.skipped] == [("relu-as-max", "relu_1")]
    assert entry.skipped[0]["failure"].startswith(failure)
    assert 0 < entry.narrowing_reruns <= 32
    # Everything else the pass did is kept: both rules at every other site.
    ops = {node.name: node.op_type for node in result.model.graph}
    assert ops == {"add_0": "Add", "relu_0": "Max", "add_1": "Add", "relu_1": "Relu", "add_2": "Add", "relu_2": "Max"}
    assert all(node.inputs[0].name.startswith("c") for node in result.model.graph if node.op_type == "Add")
    assert entry.parity["passed"]
    line = f"skipped relu-as-max at node relu_1 ({entry.skipped[0]['failure']})"
    assert (spec, line) in result.report.details()
    assert line in json.loads(result.model.metadata_props["onnxkit.passes"])[0]["skipped"]
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)}
    np.testing.assert_allclose(
        run_model(ir.serde.serialize_model(result.model), feeds)[0], run_model(original, feeds)[0], rtol=1e-6, atol=1e-6
    )


def test_pass_narrowed_down_to_nothing_hands_its_input_on():
    original = plugin_passes.relu_chain()
    result = Pipeline.parse("abs-everywhere,cleanup").run(original, dims={"batch": 2})
    narrowed, cleanup = result.report.passes
    assert narrowed.status == "narrowed" and not narrowed.modified and cleanup.status == "ok"
    assert [(s["rule"], s["node"]) for s in narrowed.skipped] == [("relu-as-abs", f"relu_{i}") for i in range(3)]
    assert [node.op_type for node in result.model.graph].count("Relu") == 3
    assert result.report.exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# Parity inputs, and what a run costs


def test_parity_runs_on_the_held_out_calibration_samples():
    samples = [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(10)]
    result = Pipeline.parse("cleanup").run(build_example("mlp"), calibration_data=samples)
    assert result.report.parity_inputs.startswith("held-out samples of the calibration data")
    assert result.report.passes[0].parity["samples"] == 2  # 1 of every HOLDOUT_EVERY = 5
    given = Pipeline.parse("cleanup").run(build_example("mlp"), data=samples[:3], calibration_data=samples)
    assert given.report.parity_inputs.startswith("--data") and given.report.passes[0].parity["samples"] == 3


@pytest.fixture
def counted(monkeypatch) -> dict[str, list]:
    """Records each dataset the pipeline asks onnxkit.data for (None: synthetic inputs, probed or not), and each
    ONNX Runtime session made."""
    import onnxruntime as ort

    import onnxkit.data
    from onnxkit.data import probe

    calls: dict[str, list] = {"datasets": [], "sessions": []}
    real_as_dataset, real_session, real_probe = onnxkit.data.as_dataset, ort.InferenceSession, probe.Probe.__init__

    def counting_as_dataset(*args, **kwargs):
        calls["datasets"].append(args[0])
        return real_as_dataset(*args, **kwargs)

    def counting_probe(self, *args, **kwargs):
        calls["datasets"].append(None)
        real_probe(self, *args, **kwargs)

    monkeypatch.setattr(probe.Probe, "__init__", counting_probe)

    def counting_session(*args, **kwargs):
        calls["sessions"].append(args[0])
        return real_session(*args, **kwargs)

    monkeypatch.setattr(onnxkit.data, "as_dataset", counting_as_dataset)
    monkeypatch.setattr(ort, "InferenceSession", counting_session)
    return calls


def test_synthetic_inputs_are_made_once_and_exact_passes_share_one_check(counted):
    # The batch bound by the caller leaves nothing to probe, so every session here is one of parity's.
    result = Pipeline.parse("cleanup,shape-inference").run(build_example("mlp"), dims={"batch": 2})
    assert counted["datasets"] == [None]
    assert "x float32[2,16]" in result.report.parity_inputs
    # Two exact passes in a row: the input and the last output are compared, each model loaded once.
    assert len(counted["sessions"]) == 2
    cleanup, shapes = result.report.passes
    assert cleanup.parity["passed"] and cleanup.parity["passes"] == ["cleanup", "shape-inference"]
    assert shapes.parity == cleanup.parity


def _length_to_probe() -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], ["copy"]), helper.make_node("Relu", ["copy"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "probed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "length"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def runs_are_fast(monkeypatch):
    """Where a test counts two synthetic samples, a stall of the loaded test machine during the first run must
    not make the model look slow (``parity.chain.SLOW_RUN_SECONDS``, tested on its own below)."""
    from onnxkit.parity import chain as parity_chain

    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", float("inf"))


def test_the_probes_run_is_the_references_first_sample(counted, runs_are_fast, monkeypatch):
    # A length to probe: the probe's session, and its outputs on sample 0, start the reference's run.
    from onnxkit import snapshot

    snapshots, real_of = [], snapshot.Snapshot.of.__func__

    def recording_of(cls, *args, **kwargs):
        snapshots.append(real_of(cls, *args, **kwargs))
        return snapshots[-1]

    monkeypatch.setattr(snapshot.Snapshot, "of", classmethod(recording_of))
    result = Pipeline.parse("cleanup").run(_length_to_probe())
    assert "probed" in result.report.parity_inputs
    (cleanup,) = result.report.passes
    assert cleanup.modified and cleanup.parity["passed"] and cleanup.parity["samples"] == 2
    assert len(counted["sessions"]) == 2  # the probe's (then the reference's) and cleanup's output
    # The probe's session is made from the very bytes of the run's first snapshot, not from another serialization.
    assert counted["sessions"][0] is snapshots[0].model


def test_a_model_whose_probe_run_is_slow_is_checked_on_the_probed_sample_alone(counted, monkeypatch):
    """The probe's run is timed: past ``SLOW_RUN_SECONDS`` an exact pass is compared on that one sample, and
    the report says why (rapid_table_det_edge_int8: four runs of 6 s each became two)."""
    from onnxkit.parity import chain as parity_chain

    monkeypatch.setattr(parity_chain, "SLOW_RUN_SECONDS", 0.0)
    result = Pipeline.parse("cleanup").run(_length_to_probe())
    assert "1 sample for exact passes: a run takes" in result.report.parity_inputs
    (cleanup,) = result.report.passes
    assert cleanup.parity["passed"] and cleanup.parity["samples"] == 1


def test_slow_run_threshold_is_the_reports_one_sample_rule(counted, monkeypatch):
    """A run just under ``SLOW_RUN_SECONDS`` keeps both samples, one at it takes one: the probe's measured run
    decides, and the report says so with the measured time."""
    from onnxkit.data import probe
    from onnxkit.parity import chain as parity_chain

    real_probe_run = probe.ProbeRun

    def probe_run_taking(seconds):
        return lambda session, outputs, _measured: real_probe_run(session, outputs, seconds)

    for seconds, samples in ((parity_chain.SLOW_RUN_SECONDS * 0.99, 2), (parity_chain.SLOW_RUN_SECONDS, 1)):
        monkeypatch.setattr(probe, "ProbeRun", probe_run_taking(seconds))
        result = Pipeline.parse("cleanup").run(_length_to_probe())
        assert result.report.passes[0].parity["samples"] == samples
        assert ("1 sample for exact passes" in result.report.parity_inputs) == (samples == 1)


def test_exact_passes_compare_fewer_synthetic_samples_than_lossy_ones(runs_are_fast):
    result = Pipeline.parse("cleanup,quantize{mode=dynamic,max_slowdown=none}").run(build_example("mlp"))
    cleanup, quantize = result.report.passes
    assert cleanup.parity["samples"] == 2  # the same outputs on every input: two random ones show a difference
    assert quantize.parity["samples"] == 4  # a cosine budget is a statistic: every synthetic sample
    # The recording of cleanup's output covers two samples: the lossy comparison runs it again on all four.
    assert "reference_runs" in quantize.timings["parity"] and "replayed" not in quantize.timings["parity"]
    data = [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(3)]
    assert Pipeline.parse("cleanup").run(build_example("mlp"), data=data).report.passes[0].parity["samples"] == 3


def test_drift_in_a_run_of_exact_passes_is_pinned_on_its_pass(counted):
    result = Pipeline.parse("cleanup,shape-inference,scale-weight").run(
        build_example("mlp"), dims={"batch": 2}, on_fail="rollback"
    )
    assert [p.status for p in result.report.passes] == ["ok", "ok", "rolled-back"]
    cleanup, shapes, scaled = result.report.passes
    assert "passes" not in cleanup.parity and scaled.parity["passed"] is False
    # The input and the run's output once, then each pass's output once; each pass's input is replayed from
    # the comparison before (or the one before the rollback), never run again. shape-inference's output
    # computes what cleanup's does: it is only loaded, and scale-weight is compared with cleanup's outputs.
    assert len(counted["sessions"]) == 5
    assert "reference_runs" not in cleanup.timings["parity"] and "replayed" in cleanup.timings["parity"]
    assert shapes.parity["skipped"] and set(shapes.timings["parity"]) == {"sessions"}
    assert "replayed" in scaled.timings["parity"]
    assert result.report.timings["segment_retries"] > 0
    original = build_example("mlp")
    np.testing.assert_allclose(
        run_model(ir.serde.serialize_model(result.model), _feeds())[0],
        run_model(original, _feeds())[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_time_is_split_by_step_in_the_report_and_the_table():
    result = Pipeline.parse("cleanup").run(build_example("mlp"))
    timings = result.report.passes[0].timings
    assert {"transform", "serialize", "checker", "shape_inference", "parity"} <= set(timings)
    assert {"sessions", "candidate_runs", "comparison"} <= set(timings["parity"])
    assert set(result.report.timings) >= {"serialize", "baseline_checks", "parity_inputs"}
    cell = result.report.rows()[0][4]
    assert result.report.HEADERS[4] == "time = pass+checks+parity"
    assert re.fullmatch(r"[\d.]+ (ms|s) = [\d.]+\+[\d.]+\+[\d.]+", cell), cell
    json.dumps(result.report.to_dict())


def test_quantize_target_met_means_the_pipeline_parity_passes():
    """The pass judges its target on the held-out calibration samples; the pipeline's parity, given only the
    calibration data, runs on those samples too, so the two verdicts cannot disagree."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) / 4, name)
        for name, shape in (("w0", (32, 64)), ("w1", (64, 64)), ("w2", (64, 10)))
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="mm0"),
        helper.make_node("Relu", ["h0"], ["a0"]),
        helper.make_node("MatMul", ["a0", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(40)]
    for mode in ("static", "dynamic"):
        result = Pipeline.parse(f"quantize{{mode={mode},max_slowdown=none}}").run(model, calibration_data=samples)
        entry = result.report.passes[0]
        assert entry.details["target_met"] is True and entry.modified
        assert entry.parity["passed"], entry.parity["summary"]
        assert entry.parity["samples"] == 8 and "held-out" in result.report.parity_inputs


def test_rollback_of_a_model_whose_weights_stay_on_disk_finds_them_from_another_folder(tmp_path, monkeypatch):
    """Past the in-memory limit weights stay in the model's external-data file, referenced relative to the
    model's folder; the copy a rollback restores must still find them when onnxkit runs elsewhere."""
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)  # the 256-byte weight counts as large
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        model_dir / "model.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = Pipeline.parse("type-error").run(model_dir / "model.onnx", on_fail="rollback")
    assert result.report.passes[0].status == "rolled-back"
    restored = result.model.graph.initializers["w"].const_value
    np.testing.assert_array_equal(restored.numpy().ravel(), np.arange(64, dtype=np.float32))
