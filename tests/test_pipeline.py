"""The run loop: verification between passes, instrumentation, the parity guard, provenance."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxkit import modelio
from onnxkit import ParityError, Pass, PassFailedError, PassResult, Pipeline, register_pass, unregister_pass
from onnxkit.examples import build_example
from tests.conftest import run_model


class ScaleFirstWeightPass(Pass):
    """Deliberately wrong: multiplies one weight by 1.5 while claiming to be exact."""

    name = "scale-weight"
    kind = "exact"

    def call(self, model: ir.Model) -> PassResult:
        value = next(v for v in model.graph.initializers.values() if v.const_value.size > 1)
        value.const_value = ir.tensor(value.const_value.numpy() * 1.5, name=value.name)
        return PassResult(model, True, [f"scaled {value.name}"])


class RenameOutputPass(Pass):
    """Deliberately wrong: renames the graph output."""

    name = "rename-output"

    def call(self, model: ir.Model) -> PassResult:
        model.graph.outputs[0].name = "renamed"
        return PassResult(model, True, ["renamed the output"])


class CrashPass(Pass):
    """Deliberately broken: raises."""

    name = "crash"

    def call(self, model: ir.Model) -> PassResult:
        raise RuntimeError("boom")


class ContribReluPass(Pass):
    """Deliberately undeclared: swaps Relu for an ONNX Runtime contrib op while declaring standard ops only."""

    name = "contrib-relu"

    def call(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.domain, node.op_type = "com.microsoft", "Gelu"
                model.opset_imports["com.microsoft"] = 1
                return PassResult(model, True, ["swapped a Relu"])
        return PassResult(model, False)


@pytest.fixture(autouse=True)
def broken_passes():
    for cls in (ScaleFirstWeightPass, RenameOutputPass, CrashPass, ContribReluPass):
        register_pass(cls)
    yield
    for cls in (ScaleFirstWeightPass, RenameOutputPass, CrashPass, ContribReluPass):
        unregister_pass(cls.name)


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


def test_warn_keeps_the_pass_and_marks_the_report():
    result = Pipeline.parse("scale-weight").run(build_example("mlp"), on_fail="warn")
    assert result.report.passes[0].status == "parity-warning"
    assert result.report.parity_failed


def test_check_end_compares_final_with_original():
    with pytest.raises(ParityError, match="drifted"):
        Pipeline.parse("cleanup,scale-weight").run(build_example("mlp"), check="end")
    result = Pipeline.parse("cleanup").run(build_example("mlp"), check="end")
    assert result.report.final_parity["passed"]
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
    with pytest.raises(PassFailedError, match="added ops of domain 'com.microsoft', which it does not declare"):
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
        [onnx.helper.make_node("Relu", ["x"], ["r"]), onnx.helper.make_node("Identity", ["r"], ["y"])], "g",
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
