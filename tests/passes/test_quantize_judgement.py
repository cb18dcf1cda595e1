"""The pipeline takes a lossy pass's own parity check of its output (``PassResult.judgement``) only when it
compared exactly what the pipeline would: same samples, same reference outputs, the model handed on, the same
tolerance and session settings. A claim that does not match any of those is not trusted."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest

from onnxkit import parity
from onnxkit.data import input_specs
from onnxkit.parity import judgement as parity_judgement
from onnxkit.parity.judgement import Judgement, digest_inputs, digest_model, digest_outputs
from onnxkit.pass_base import Pass, PassResult
from onnxkit.pipeline import Pipeline
from onnxkit.registry import register_pass
from onnxkit.report import PassReport
from tests.passes.test_quantize import mlp, samples

DATA = samples("x", (2, 16), 10)
OTHER_DATA = samples("x", (2, 16), 10, seed=7)
LOSSY = parity.Tolerance.for_kind("lossy")


def _judge(reference: ir.Model, candidate: ir.Model, data: list[dict], tolerance: parity.Tolerance) -> Judgement:
    """An honest judgement: ``candidate`` against ``reference`` on ``data``, as the pipeline's chain compares."""
    reference_proto, candidate_proto = ir.serde.serialize_model(reference), ir.serde.serialize_model(candidate)
    specs = input_specs(reference_proto)
    chain = parity.ParityChain(data, specs, "test samples", data_given=True)
    report = chain.compare(reference_proto, candidate_proto, tolerance)
    recorded = chain.recorded(reference_proto)
    assert recorded is not None and recorded.complete
    outputs = digest_outputs(recorded.outputs, recorded.values)
    inputs, model = digest_inputs(data, specs), digest_model(candidate)
    assert inputs is not None and outputs is not None and model is not None
    return Judgement(report, inputs, outputs, model, (chain.ort_optimizations, chain.threads, chain.prepack))


@dataclasses.dataclass(frozen=True)
class ScaleOptions:
    factor: float = 1.0
    claim: str = "honest"  # what the judgement it attaches says: see CLAIMS


def _claim(kind: str, before: ir.Model, after: ir.Model) -> Judgement:
    honest = _judge(before, after, DATA, LOSSY)
    if kind == "honest":
        return honest
    # A passing report, from comparing the unchanged model, with every digest but one of what the pipeline compares
    unchanged = _judge(before, before, DATA, LOSSY)
    passing = dataclasses.replace(honest, report=unchanged.report)
    if kind == "other model":
        return dataclasses.replace(passing, candidate=unchanged.candidate)
    if kind == "other samples":
        return dataclasses.replace(passing, inputs=_judge(before, after, OTHER_DATA, LOSSY).inputs)
    if kind == "other reference":
        return dataclasses.replace(passing, reference=_judge(after, after, DATA, LOSSY).reference)
    if kind == "other tolerance":
        loose = dataclasses.replace(LOSSY, min_cosine=-1.0)
        return dataclasses.replace(passing, report=dataclasses.replace(unchanged.report, tolerance=loose))
    if kind == "other session":
        return dataclasses.replace(passing, session=(True, 1, True))
    raise AssertionError(kind)


class ScaleSecondLayer(Pass):
    """Scale the second layer's weights (test pass): lossy, with a parity claim attached."""

    name = "test-scale-w2"
    kind = "lossy"
    Options = ScaleOptions

    def call(self, model: ir.Model) -> PassResult:
        before = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        weight = model.graph.initializers["w2"]
        assert weight.const_value is not None
        values = weight.const_value.numpy() * np.float32(self.options.factor)
        weight.const_value = ir.tensor(values, name="w2")
        return PassResult(model, True, judgement=_claim(self.options.claim, before, model))


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    register_pass(ScaleSecondLayer)


def _run(spec: str) -> PassReport:
    """The lossy pass's entry in the report of ``simplify,<spec>`` (on_fail=warn: a failed check is kept, to read)."""
    # simplify lifts the Constant weights, so the chain has recorded the model the lossy pass starts from
    return (
        Pipeline.parse(f"simplify,{spec}").run(mlp(constant_weights=True), data=DATA, on_fail="warn").report.passes[-1]
    )


def test_an_honest_judgement_is_taken_and_says_so() -> None:
    entry = _run("test-scale-w2{factor=1.001}")
    assert entry.parity is not None and entry.parity["passed"]
    assert "compared by the pass itself" in entry.parity["data"]
    assert "candidate_runs" not in entry.timings["parity"]  # the pipeline did not run the model again


@pytest.mark.parametrize(
    "claim", ["other model", "other samples", "other reference", "other tolerance", "other session"]
)
def test_a_judgement_that_does_not_match_is_not_trusted(claim: str) -> None:
    """The pass negates the weights (cosine -1) and claims a passing check of something else: the pipeline runs its
    own, which fails."""
    entry = _run(f"test-scale-w2{{factor=-1,claim={claim}}}")
    assert entry.status == "parity-warning"
    assert entry.parity is not None and not entry.parity["passed"]
    assert "compared by the pass itself" not in entry.parity["data"]
    assert entry.timings["parity"]["candidate_runs"] > 0


def test_quantize_hands_its_final_check_to_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Static INT8 confirms its final model as the pipeline checks it, against the pipeline's recorded outputs of
    the pass's input (``PassContext.parity_reference``: the float model is not run on those samples again); the
    pipeline takes that check, and it is the verdict the pipeline's own comparison of the same two models gives."""
    data = samples("x", (2, 16), 20)
    against_recorded: list[int] = []
    compare_with = parity_judgement.compare_with

    def counted(
        reference: parity_judgement.ParityReference, candidate: object, tolerance: parity.Tolerance
    ) -> parity.ParityReport:
        against_recorded.append(len(reference.recording.values))
        return compare_with(reference, candidate, tolerance)

    monkeypatch.setattr(parity_judgement, "compare_with", counted)
    result = Pipeline.parse("simplify,quantize{mode=static,max_slowdown=none}").run(
        mlp(constant_weights=True), data=data
    )
    _, quantized = result.report.passes
    assert quantized.modified and quantized.parity is not None
    assert "compared by the pass itself" in quantized.parity["data"]
    assert "candidate_runs" not in quantized.timings["parity"]
    reference = Pipeline.parse("simplify").run(mlp(constant_weights=True), data=data, check="off").model
    own = parity.compare_models(reference, result.model, data=data, tolerance=LOSSY)
    assert quantized.parity["passed"] == own.passed
    assert quantized.parity["samples"] == own.samples == len(data)
    assert quantized.parity["min_cosine"] == pytest.approx(own.min_cosine, abs=1e-12)
    assert against_recorded and set(against_recorded) == {len(data)}


def test_quantize_does_not_confirm_as_the_pipeline_checks_when_it_checks_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``check=off`` there is no pipeline check to pass: the pass judges its target on held-out samples
    (ORT optimizations on) and makes no comparison with ORT optimizations off, the confirmation that costs a run
    of both models on every sample read; it hands the same model on as with the check."""
    data = samples("x", (2, 16), 20)
    optimized: list[bool] = []
    compare = parity.ParityChain.compare

    def recorded(self: parity.ParityChain, *args: object, **kwargs: object) -> parity.ParityReport:
        optimized.append(self.ort_optimizations)
        return compare(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(parity.ParityChain, "compare", recorded)
    spec = "quantize{mode=static,max_slowdown=none}"
    unchecked = Pipeline.parse(spec).run(mlp(constant_weights=True), data=data, check="off")
    assert optimized and all(optimized)
    (entry,) = unchecked.report.passes
    assert entry.modified and entry.parity is None
    optimized.clear()
    checked = Pipeline.parse(spec).run(mlp(constant_weights=True), data=data, check="end")
    assert False in optimized  # with a check to pass, the pass still confirms as that check compares
    # The same graph (the metadata differs: the report says which comparisons were made).
    assert ir.serde.serialize_model(unchecked.model).graph == ir.serde.serialize_model(checked.model).graph
    assert not any("ORT optimizations off" in line for line in unchecked.report.passes[0].stats)
    assert any("ORT optimizations off" in line for line in checked.report.passes[0].stats)
