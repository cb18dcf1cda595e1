"""How a quantized candidate is accepted: the user's metric, else the parity target on held-out samples.

This is the one module of the pass that compares model outputs, through ``onnxkit.parity`` (``ParityChain``,
``Tolerance``): the pass's verdict must be the pipeline's own, computed the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import parity
from onnxkit.data import CalibrationSplit, input_specs
from onnxkit.parity import judgement as parity_judgement
from onnxkit.parity.judgement import Judgement
from onnxkit.passes.quantize.float_search import Verdict
from onnxkit.passes.quantize.runtime import make_session

# The pipeline judges a lossy pass by this tolerance. The pass's default target is the same, and its own
# tolerance differs from it only in the targets the user sets, so a model the pass accepts is one the
# pipeline's parity check accepts.
PIPELINE_TOLERANCE = parity.Tolerance.for_kind("lossy", "int8")
# Confirmations kept (with their candidate models) until the pass says which model it hands on.
CONFIRMATIONS_KEPT = 4


@dataclasses.dataclass
class Judge:
    """``check`` judges a candidate during the search; ``confirm`` judges the model about to be handed on,
    adding the checks a search step can skip. Both return a ``Verdict``. ``judgement`` is the confirmation of
    a candidate as the pipeline's own parity check makes it, for the pipeline to take (None: none was made)."""

    target: str
    check: Callable[[onnx.ModelProto], Verdict]
    confirm: Callable[[onnx.ModelProto], Verdict]
    judgement: Callable[[onnx.ModelProto, ir.Model], Judgement | None] = lambda candidate, returned: None

    def __call__(self, candidate: onnx.ModelProto) -> Verdict:
        """The search's judgement: ``check``, then ``confirm`` for a candidate that passes it."""
        verdict = self.check(candidate)
        return self.confirm(candidate) if verdict.passed else verdict


def by_metric(float_proto: onnx.ModelProto, evaluate: Callable[[Any], float], max_drop: float) -> Judge:
    """A user metric (higher is better, over an ORT session) may fall at most ``max_drop`` below float's."""
    float_score = float(evaluate(make_session(float_proto)))

    def check(candidate: onnx.ModelProto) -> Verdict:
        score = float(evaluate(make_session(candidate)))
        return Verdict(score >= float_score - max_drop, {"metric": score})

    target = f"metric ≥ {float_score - max_drop:.4f} (float {float_score:.4f} minus max_metric_drop {max_drop})"
    return Judge(target, check, check)


def by_parity(
    float_proto: onnx.ModelProto,
    data: CalibrationSplit,
    *,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    pipeline_checks_held_out: bool,
    pipeline_reference: parity_judgement.ParityReference | None = None,
    pipeline_checks: bool = True,
) -> Judge:
    """The parity target, as the pipeline will check it.

    ``check``: held-out samples, ORT optimizations on, to judge the fused INT8 kernels that will run.
    ``confirm`` adds the pipeline's own check: ORT optimizations off, where QDQ is emulated in float and rounds
    differently from the fused kernels. Given ``pipeline_reference`` (the pipeline's parity samples and its
    recorded outputs of the pass's input on them) it is that very check, with no run of the float model; else on
    the held-out samples when the pipeline checks those (``pipeline_checks_held_out``: it was given calibration
    data only), else on every sample read (that data is its parity data too). A model this pass accepts passes
    the pipeline's check in each case. Where the pipeline checks nothing (``pipeline_checks`` False: check=off)
    there is no such check to pass: ``confirm`` is ``check``, and no judgement is handed on.
    """
    tolerance = dataclasses.replace(PIPELINE_TOLERANCE, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1)
    # Chains record the float model's outputs on the first comparison and replay them for every candidate.
    specs = input_specs(float_proto)
    on_held_out = parity.ParityChain(data.held_out, specs, "held-out samples", data_given=True, ort_optimizations=True)
    pipeline_samples = data.held_out if pipeline_checks_held_out else data.all_samples
    pipeline_description = "held-out samples" if pipeline_checks_held_out else "every sample read"
    as_the_pipeline_checks = parity.ParityChain(
        pipeline_samples, specs, pipeline_description, data_given=True, ort_optimizations=False
    )
    held_out_verdicts: dict[int, Any] = {}  # by candidate identity: confirm reuses check's comparison
    # The last candidates compared as the pipeline compares them, with the report: the search may confirm a
    # longer prefix after the one it hands on.
    as_the_pipeline: list[tuple[onnx.ModelProto, parity.ParityReport]] = []

    def check(candidate: onnx.ModelProto) -> Verdict:
        verdict = on_held_out.compare(float_proto, candidate, tolerance)
        held_out_verdicts.clear()
        held_out_verdicts[id(candidate)] = verdict
        return Verdict(verdict.passed, {"held-out": verdict}, noise_excess([verdict], tolerance))

    if not pipeline_checks:
        # resnet18: the confirmation ran float and INT8 on all 64+ samples with ORT optimizations off, 3.3 s of 8.
        return Judge(tolerance.describe(), check, check)

    def confirm(candidate: onnx.ModelProto) -> Verdict:
        verdicts = {
            "held-out": held_out_verdicts.get(id(candidate)) or on_held_out.compare(float_proto, candidate, tolerance)
        }
        if verdicts["held-out"].passed:
            key = "held-out" if pipeline_checks_held_out else "all"
            if pipeline_reference is not None:
                report = parity_judgement.compare_with(pipeline_reference, candidate, tolerance)
            else:
                report = as_the_pipeline_checks.compare(float_proto, candidate, tolerance)
            verdicts[f"{key}, ORT optimizations off"] = report
            as_the_pipeline[:] = [*as_the_pipeline[-(CONFIRMATIONS_KEPT - 1) :], (candidate, report)]
        return Verdict(all(v.passed for v in verdicts.values()), verdicts, noise_excess(verdicts.values(), tolerance))

    def judgement(candidate: onnx.ModelProto, returned: ir.Model) -> Judgement | None:
        """The confirmation of ``candidate`` (``returned`` is the model the pass hands on, made from it) with
        digests of what it compared; None if it was not confirmed or its float outputs were not all recorded."""
        report = next((r for c, r in as_the_pipeline if c is candidate), None)
        if pipeline_reference is not None:
            recorded: parity.Recording | None = pipeline_reference.recording
            samples, sample_specs, session = (
                pipeline_reference.dataset,
                pipeline_reference.specs,
                pipeline_reference.session,
            )
        else:
            chain = as_the_pipeline_checks
            recorded = chain.recorded(float_proto)
            samples, sample_specs = pipeline_samples, specs
            session = (chain.ort_optimizations, chain.threads, chain.prepack)
        if report is None or recorded is None or not recorded.complete:
            return None
        inputs = parity_judgement.digest_inputs(samples, sample_specs)
        reference = parity_judgement.digest_outputs(recorded.outputs, recorded.values)
        model = parity_judgement.digest_model(returned)
        if inputs is None or reference is None or model is None:
            return None
        return Judgement(report, inputs, reference, model, session)

    return Judge(tolerance.describe(), check, confirm, judgement)


def noise_excess(verdicts: Iterable[Any], tolerance: Any) -> float | None:
    """How many times more output noise power than the cosine and SQNR targets allow (≤ 1 when they hold);
    None when a failing top-1 target is all that fails, since noise power does not predict it."""
    excess = 0.0
    for verdict in verdicts:
        for output in verdict.outputs:
            if tolerance.min_cosine is not None and output.cosine is not None:
                allowed = 1.0 / tolerance.min_cosine**2 - 1.0 if tolerance.min_cosine > 0 else math.inf
                # cosine = 1 / sqrt(1 + NSR) for noise uncorrelated with the signal
                noise = 1.0 / output.cosine**2 - 1.0 if output.cosine > 0 else math.inf
                excess = max(excess, noise / allowed if allowed > 0 else math.inf)
            if tolerance.min_sqnr is not None and output.sqnr_db is not None:
                excess = max(excess, 10.0 ** ((tolerance.min_sqnr - output.sqnr_db) / 10.0))
            top1_fails = (
                tolerance.min_top1 is not None
                and output.top1_agreement is not None
                and output.top1_agreement < tolerance.min_top1
            )
            if top1_fails and excess <= 1.0:
                return None
    return excess
