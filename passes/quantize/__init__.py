"""``quantize``: INT8 quantization that stays accurate and is really faster.

ONNX Runtime's quantizers do the rewriting and supply the kernels. Around them this pass adds, in order:

1. preprocessing they need (``preprocess``): Constant and If/Loop weights lifted, opset ≥ 13, names, shapes;
2. streaming calibration in bounded memory for every method (``calibration``), with an optional cache;
3. a parity target: the most sensitive nodes stay float until held-out outputs meet it (``sensitivity``);
4. a latency gate: INT8 must not be slower than float on this CPU (``latency``);
5. a report: size, parity, latency, nodes quantized and kept in float.

A model comes out either quantized within its target or as it came in, with the reason in one line: already
quantized, nothing to quantize, ONNX Runtime cannot run it or its quantizer fails on it, the target not met,
or INT8 slower than float. The default target is the pipeline's own lossy tolerance, judged on the held-out
samples the pipeline's parity check uses when it is given calibration data only, so a model this pass
accepts passes that check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import onnx
import onnx_ir as ir
from onnxkit.passes.quantize import calibration, latency, preprocess, sensitivity
from onnxkit.passes.quantize.cpu import detect_cpu
from onnxkit.passes.quantize.rewrite import (
    QuantizerError,
    QuantizeSettings,
    quantize_model,
)
from onnxkit.passes.quantize.runtime import make_session, tensor_elem_types

from onnxkit import parity, runtime
from onnxkit.data import (
    DEFAULT_CALIBRATION_SAMPLES,
    HOLDOUT_EVERY,
    CalibrationSplit,
    input_specs,
)
from onnxkit.errors import PassFailedError
from onnxkit.modelio import clone_model
from onnxkit.pass_base import Pass, PassResult

# Dynamic mode: where INT8 pays off with activations quantized on the fly, plus Gather, whose embedding
# tables are often half a transformer's size. Not Conv: ConvInteger has no fast kernel and makes CNNs 2-6x
# slower. ORT has no INT8 GRU kernel, so GRU stays float for now.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather")
# Static mode: the compute-heavy ops with INT8 kernels, Gather for embedding tables, and the ops ORT can
# keep in INT8 between them (ReLU/Clip fold into the quantization range, pooling has QLinear kernels).
STATIC_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Relu", "Clip", "MaxPool", "AveragePool",
                   "GlobalAveragePool")
# The ops whose INT8 kernels are where the time and size go; a model with none of them quantized is not worth
# shipping as INT8.
HEAVY_OP_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU"})
# Per-node sensitivity and timing need far fewer samples than calibration.
SENSITIVITY_SAMPLES = 8
TIMING_SAMPLES = 4
EVAL_EXTRA = "quantize_eval"
# The pipeline judges a lossy pass by this tolerance. The pass's default target is the same, and its own
# tolerance differs from it only in the targets the user sets, so a model the pass accepts is one the
# pipeline's parity check accepts.
PIPELINE_TOLERANCE = parity.Tolerance.for_kind("lossy", "int8")


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    mode: Literal["auto", "dynamic", "static"] = "auto"
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    calib: Literal["minmax", "entropy", "percentile"] = "entropy"
    samples: int = DEFAULT_CALIBRATION_SAMPLES
    num_bins: int = 2048
    percentile: float = 99.999
    act_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    reduce_range: bool | None = None
    target_cosine: float | None = PIPELINE_TOLERANCE.min_cosine
    target_sqnr: float | None = None
    target_top1: float | None = None
    max_metric_drop: float = 0.01
    max_slowdown: float | None = 1.0
    on_slow: Literal["keep-float", "refuse"] = "keep-float"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.calib == "entropy" and self.num_bins < 2 * calibration.QUANTIZED_LEVELS:
            raise ValueError(f"calib=entropy needs num_bins ≥ {2 * calibration.QUANTIZED_LEVELS}, to search "
                             f"clipping thresholds finer than the {calibration.QUANTIZED_LEVELS} INT8 levels")
        if self.num_bins < 2:
            raise ValueError("num_bins must be at least 2")
        if not 0 < self.percentile <= 100:
            raise ValueError("percentile must lie in (0, 100]")
        if self.target_cosine is not None and not -1 <= self.target_cosine <= 1:
            raise ValueError("target_cosine must lie between -1 and 1")
        if self.target_top1 is not None and not 0 <= self.target_top1 <= 1:
            raise ValueError("target_top1 must lie between 0 and 1")
        if self.max_slowdown is not None and self.max_slowdown <= 0:
            raise ValueError("max_slowdown must be positive (or none to skip the latency gate)")
        if self.max_metric_drop < 0:
            raise ValueError("max_metric_drop must not be negative")
        if self.act_type == "int8" and self.weight_type == "uint8":
            raise ValueError("ONNX Runtime has no kernels for int8 activations with uint8 weights")
        if self.mode == "dynamic" and self.act_type != "uint8":
            raise ValueError("dynamic mode quantizes activations to uint8 only")


@dataclasses.dataclass
class QuantizeResult(PassResult):
    """``PassResult`` plus ``details``: the structured report (JSON-ready) behind the stats lines."""

    details: dict[str, Any] = dataclasses.field(default_factory=dict)


def _unchanged(model: ir.Model, stats: list[str], details: dict[str, Any]) -> QuantizeResult:
    # A pass that is not in place returns a new model object even when it changes nothing.
    return QuantizeResult(clone_model(model), False, stats, details=details)


class QuantizePass(Pass):
    """Quantize to INT8 (dynamic or static) with ONNX Runtime, keeping a parity target and never getting slower.

    Static mode calibrates activation ranges on the calibration data (``--calib-data``, else ``--data``) in
    bounded memory. A parity target keeps the most sensitive nodes in float until held-out outputs meet it,
    and a latency gate keeps INT8 only where it is faster than float on this CPU. A model that is already
    quantized, or that cannot meet the target or be quantized, is left as it is, with the reason. An evaluation function (a metric over labelled data, higher is better) can
    replace the parity target: put it in ``PassContext.extras["quantize_eval"]``; it takes an
    ``onnxruntime.InferenceSession`` and the quantized score may fall at most ``max_metric_drop`` below float's.
    """

    name = "quantize"
    uses_runtime = True
    kind = "lossy"
    Options = QuantizeOptions
    emits_domains = frozenset({"", "com.microsoft"})
    in_place_pass = False

    @classmethod
    def describe_extra(cls) -> list[str]:
        cpu = detect_cpu()
        return [
            f"this machine: {cpu.describe()} → reduce_range defaults to {'true' if cpu.needs_reduce_range else 'false'}"
            + (" (7-bit weights avoid int16 overflow in u8s8 kernels without VNNI)" if cpu.needs_reduce_range else ""),
            "mode=auto: static when calibration data is given (--calib-data or --data), else dynamic",
            (f"dynamic op_types default: {', '.join(DYNAMIC_OP_TYPES)} (not Conv: ConvInteger is slower than float);"
            " Gemm with constant weights runs as MatMul; ORT has no INT8 GRU kernel yet"),
            f"static op_types default: {', '.join(STATIC_OP_TYPES)}; uint8 activations, int8 per-channel weights",
            f"calibration streams in bounded memory; 1 of every {HOLDOUT_EVERY} samples is held out for the target",
            ("target_cosine/target_sqnr/target_top1: every target set must hold on held-out samples; the most "
            "sensitive nodes stay float until it does (target_cosine=none and no other target: no search)"),
            ("max_slowdown: INT8 latency at most this × FP32 (to within the "
             f"{latency.TIMING_RESOLUTION:.0%} timing can resolve), else costly op types stay float "
             "(on_slow=keep-float) or the pass fails (on_slow=refuse); none skips the gate"),
            "--calib-cache DIR reuses ranges for the same model, data and settings",
        ]

    # -- the pass ---------------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> QuantizeResult:
        options = self.options
        already = preprocess.quantized_op_counts(model)
        if already:
            found = ", ".join(f"{count} {op}" for op, count in sorted(already.items()))
            return _unchanged(model, [f"model is already quantized ({found}); left as it is"],
                              details={"skipped": "already quantized", "quantized_ops": already})

        mode = options.mode if options.mode != "auto" else ("static" if self.context.data is not None else "dynamic")
        cpu = detect_cpu()
        settings = QuantizeSettings(
            mode=mode,
            format=options.format,
            per_channel=options.per_channel,
            reduce_range=cpu.needs_reduce_range if options.reduce_range is None else options.reduce_range,
            act_type=options.act_type,
            weight_type=options.weight_type,
            op_types=options.op_types or (DYNAMIC_OP_TYPES if mode == "dynamic" else STATIC_OP_TYPES),
        )
        prepared = preprocess.prepare(model, want_per_channel=settings.per_channel,
                                      gemm_as_matmul=mode == "dynamic" and "Gemm" in settings.op_types,
                                      localize_subgraph_inputs=mode == "dynamic")
        if not prepared.per_channel_possible:
            settings = dataclasses.replace(settings, per_channel=False)
        if mode == "dynamic" and "Gemm" in settings.op_types:
            settings = dataclasses.replace(settings, op_types=tuple(dict.fromkeys(
                "MatMul" if t == "Gemm" else t for t in settings.op_types)))
        float_proto = prepared.proto
        report = _Report(model_bytes=float_proto.ByteSize(), settings=settings, cpu=cpu.describe(),
                         preprocessing=prepared.steps)
        if (load_error := _load_error(float_proto)) is not None:
            # Calibration, the target and the gate all run the model (qonnx_espcn_quant: onnx.brevitas ops).
            report.kept_whole_model_float = f"ONNX Runtime cannot run the model: {load_error}"
            return _unchanged(model, report.stats(), details=report.to_dict())

        excluded = set(options.exclude)
        unknown = excluded - {n.name for n in float_proto.graph.node}
        if unknown:
            report.warnings.append(f"exclude names no main-graph node: {', '.join(sorted(unknown))}")
        candidates = [n for n in float_proto.graph.node if n.op_type in settings.op_types and n.name not in excluded]
        if not candidates and not _has_subgraph_candidates(float_proto, settings):
            reason = f"no {', '.join(settings.op_types)} nodes to quantize"
            if mode == "dynamic" and (gemms := sum(n.op_type == "Gemm" for n in float_proto.graph.node)):
                # Only a Gemm with constant weights becomes a MatMul, the op dynamic INT8 has a kernel for.
                reason += f" ({gemms} Gemm whose weights are computed at run time stay float)"
            return _unchanged(model, [reason], details={"skipped": "nothing to quantize"})

        data = CalibrationSplit(self._dataset(model, report), options.samples)
        types = tensor_elem_types(float_proto)
        ranges = self._calibrate(float_proto, settings, types, data, report) if mode == "static" else None

        def quantize(keep_float: Any, op_types: tuple[str, ...] = settings.op_types) -> onnx.ModelProto:
            chosen = dataclasses.replace(settings, op_types=tuple(op_types))
            return quantize_model(float_proto, chosen, ranges, excluded | set(keep_float))

        judge = self._judge(float_proto, data, report)
        try:
            quantized, keep_float = self._meet_target(float_proto, quantize, judge, ranges, candidates, types, data,
                                                      settings, report)
            if report.target_met is False:
                return self._target_not_met(model, keep_float, candidates, report)
            if options.max_slowdown is not None:
                gated = self._gate(float_proto, quantized, quantize, keep_float, data, settings, report)
                if gated is not None and report.gate_float_op_types and judge is not None:
                    gated, keep_float = self._recheck_after_gate(float_proto, quantize, judge, ranges, candidates, types,
                                                                 data, settings, keep_float, report)
                if gated is None:
                    return _unchanged(model, report.stats(), details=report.to_dict())
                if report.target_met is False:
                    return self._target_not_met(model, keep_float, candidates, report)
                quantized = gated
        except QuantizerError as e:
            report.kept_whole_model_float = f"ONNX Runtime's quantizer failed: {e}"
            return _unchanged(model, report.stats(), details=report.to_dict())

        if problem := _invalid(quantized):
            report.kept_whole_model_float = f"ONNX Runtime's quantizer produced an invalid model: {problem}"
            return _unchanged(model, report.stats(), details=report.to_dict())
        report.finish(float_proto, quantized, keep_float, excluded)
        if not HEAVY_OP_TYPES & set(report.quantized_nodes):
            report.kept_whole_model_float = "no Conv, MatMul, Gemm or other heavy node is left in INT8"
            report.quantized_bytes = None
            return _unchanged(model, report.stats(), details=report.to_dict())
        return QuantizeResult(ir.serde.deserialize_model(quantized), True, report.stats(), details=report.to_dict())

    # -- steps --------------------------------------------------------------------------------------------

    def _dataset(self, model: ir.Model, report: _Report) -> Any:
        from onnxkit.data import as_dataset

        options = self.options
        if self.context.data is None:
            total = options.samples + options.samples // (HOLDOUT_EVERY - 1) + 1
            report.data = f"synthetic ({total} seeded samples)"
            done = "calibrated and judged" if report.settings.mode == "static" else "judged"
            report.warnings.append(f"no calibration data: {done} on synthetic inputs, which rarely look like real "
                                   "ones; give --calib-data for results you can trust")
            return as_dataset(None, model, dims=self.context.dims, num_samples=total)
        report.data = "calibration data"
        return as_dataset(self.context.data, model, dims=self.context.dims)

    def _calibrate(self, float_proto: onnx.ModelProto, settings: QuantizeSettings, types: Mapping[str, int],
                   data: CalibrationSplit, report: _Report) -> Any:
        options = self.options
        calib_settings = calibration.CalibrationSettings(options.calib, options.num_bins, options.percentile)
        tensors = calibration.calibration_tensors(float_proto, settings.op_types, types)
        cache_folder = self.context.extras.get("calib_cache")
        cache = calibration.CalibrationCache(cache_folder) if cache_folder else None
        key = None
        if cache is not None:
            key = calibration.cache_key(float_proto, calibration.dataset_fingerprint(data.calibration),
                                        calib_settings, tensors)
        ranges = cache.load(key) if cache is not None and key is not None else None
        status = "hit" if ranges is not None else "stored" if cache is not None else "off"
        if ranges is None:
            passes = 1 if options.calib == "minmax" else 2
            with _progress(self.context.show_progress, "calibrating", data.calibration_count() * passes) as advance:
                ranges = calibration.calibrate(float_proto, tensors, types, data.calibration, calib_settings, advance)
            if cache is not None and key is not None:
                cache.store(key, ranges)
        report.calibration = {"method": calib_settings.describe(), "samples": data.calibration_count(),
                              "tensors": len(tensors), "cache": status}
        return ranges

    def _meet_target(self, float_proto: onnx.ModelProto, quantize: Callable[..., onnx.ModelProto],
                     judge: Callable[[onnx.ModelProto], sensitivity.Verdict] | None, ranges: Any,
                     candidates: list[onnx.NodeProto], types: Mapping[str, int], data: CalibrationSplit,
                     settings: QuantizeSettings, report: _Report, keep_float: Mapping[str, str] | None = None
                     ) -> tuple[onnx.ModelProto, dict[str, str]]:
        """Search which nodes stay float until ``judge`` accepts, starting from ``keep_float`` already float."""
        if judge is None:
            return quantize(list(keep_float or ()), settings.op_types), dict(keep_float or {})
        qdq_twin = settings.mode == "static" and settings.format == "qoperator"
        sensitivity_samples = list(itertools.islice(data.calibration, SENSITIVITY_SAMPLES))

        def rank(quantized: onnx.ModelProto, keep: Any) -> list[sensitivity.NodeSensitivity]:
            if qdq_twin:  # QOperator renames every tensor; its QDQ twin keeps the float names to match
                quantized = quantize_model(float_proto, dataclasses.replace(settings, format="qdq"), ranges,
                                           set(self.options.exclude) | set(keep))
            # Only nodes that really run in INT8 can be taken out (dynamic MatMul needs a constant B, say).
            in_int8 = {n.name for n in _quantized_nodes(float_proto, quantized)}
            remaining = [n for n in candidates if n.name not in keep and n.name in in_int8]
            return sensitivity.measure_sensitivity(float_proto, quantized, remaining, types, sensitivity_samples)

        search = sensitivity.keep_sensitive_in_float(lambda keep: quantize(keep, settings.op_types), rank, judge,
                                                     keep_float=keep_float)
        report.target_met = search.verdict.passed
        report.verdict = search.verdict.detail
        report.search_rounds = search.rounds
        return search.model, search.keep_float

    @staticmethod
    def _target_not_met(model: ir.Model, keep_float: Mapping[str, str], candidates: list[onnx.NodeProto],
                        report: _Report) -> QuantizeResult:
        """A model that misses the target is not handed on: the pipeline's parity check would only reject it."""
        report.kept_whole_model_float = (f"target {report.target} not met even with {len(keep_float)} of "
                                         f"{len(candidates)} candidate nodes in float")
        return _unchanged(model, report.stats(), details=report.to_dict())

    def _judge(self, float_proto: onnx.ModelProto, data: CalibrationSplit, report: _Report
               ) -> Callable[[onnx.ModelProto], sensitivity.Verdict] | None:
        """How a candidate model is accepted: the user's metric, else the parity target on held-out data."""
        options = self.options
        evaluate = self.context.extras.get(EVAL_EXTRA)
        if evaluate is not None:
            float_score = float(evaluate(make_session(float_proto)))
            report.target = (f"metric ≥ {float_score - options.max_metric_drop:.4f} (float {float_score:.4f} minus "
                             f"max_metric_drop {options.max_metric_drop})")

            def by_metric(candidate: onnx.ModelProto) -> sensitivity.Verdict:
                score = float(evaluate(make_session(candidate)))
                return sensitivity.Verdict(score >= float_score - options.max_metric_drop, {"metric": score})

            return by_metric
        if options.target_cosine is None and options.target_sqnr is None and options.target_top1 is None:
            return None
        tolerance = dataclasses.replace(PIPELINE_TOLERANCE, min_cosine=options.target_cosine,
                                        min_sqnr=options.target_sqnr, min_top1=options.target_top1)
        report.target = tolerance.describe()
        if data.reused_calibration_for_holdout:
            report.warnings.append("too few samples to hold any out: the target is judged on calibration samples")
        # Chains record the float model's outputs on the first comparison and replay them for every candidate.
        specs = input_specs(float_proto)
        # The target: held-out samples, ORT optimizations on, to judge the fused INT8 kernels that will run.
        on_held_out = parity.ParityChain(data.held_out, specs, "held-out samples", data_given=True,
                                         ort_optimizations=True)
        # The pipeline's parity check runs with ORT optimizations off, where QDQ is emulated in float and rounds
        # differently from the fused kernels, on the held-out samples when it was given calibration data only,
        # on all of them when that data is its parity data too. Every sample read is checked that way, so a
        # model this pass accepts passes the pipeline's check in either case.
        as_the_pipeline_checks = parity.ParityChain(data.all_samples, specs, "every sample read", data_given=True,
                                                    ort_optimizations=False)

        def by_parity(candidate: onnx.ModelProto) -> sensitivity.Verdict:
            verdicts = {"held-out": on_held_out.compare(float_proto, candidate, tolerance)}
            if verdicts["held-out"].passed:
                verdicts["all, ORT optimizations off"] = as_the_pipeline_checks.compare(float_proto, candidate,
                                                                                        tolerance)
            return sensitivity.Verdict(all(v.passed for v in verdicts.values()), verdicts,
                                       _noise_excess(verdicts.values(), tolerance))

        return by_parity

    def _gate(self, float_proto: onnx.ModelProto, quantized: onnx.ModelProto, quantize: Callable[..., onnx.ModelProto],
              keep_float: Mapping[str, str], data: CalibrationSplit, settings: QuantizeSettings, report: _Report
              ) -> onnx.ModelProto | None:
        options = self.options
        assert options.max_slowdown is not None
        timing_samples = list(itertools.islice(data.calibration, TIMING_SAMPLES))
        present = {n.op_type for n in _quantized_nodes(float_proto, quantized)}
        gate = latency.latency_gate(float_proto, quantized, [t for t in settings.op_types if t in present],
                                    lambda op_types: quantize(keep_float, tuple(op_types)), timing_samples,
                                    options.max_slowdown)
        report.timing = gate.timing
        report.gate_float_op_types = gate.float_op_types
        report.gate_attempts = gate.tried
        if gate.model is not None:
            return gate.model
        return self._too_slow(gate.timing, gate.float_op_types, report)

    def _recheck_after_gate(self, float_proto: onnx.ModelProto, quantize: Callable[..., onnx.ModelProto],
                            judge: Callable[[onnx.ModelProto], sensitivity.Verdict], ranges: Any,
                            candidates: list[onnx.NodeProto], types: Mapping[str, int], data: CalibrationSplit,
                            settings: QuantizeSettings, keep_float: Mapping[str, str], report: _Report
                            ) -> tuple[onnx.ModelProto | None, dict[str, str]]:
        """The parity target again, on the op types the latency gate left in INT8.

        Keeping an op type float can lower accuracy: with the Relu after an INT8 Conv float, the Conv's output
        is quantized over its whole range, negative values included, instead of the Relu's, from 0. The gate
        decides by timing, which varies from run to run, so without this check the model handed on was never
        judged against the target. The search resumes from the nodes already float and keeps more float until
        the target holds; since that changes the model again, it is timed again.
        """
        options = self.options
        assert options.max_slowdown is not None
        kept_op_types = tuple(t for t in settings.op_types if t not in report.gate_float_op_types)
        gated_settings = dataclasses.replace(settings, op_types=kept_op_types)
        gated_candidates = [n for n in candidates if n.op_type in kept_op_types]
        rounds_before = report.search_rounds
        quantized, rechecked_keep = self._meet_target(float_proto, quantize, judge, ranges, gated_candidates, types,
                                                      data, gated_settings, report, keep_float=keep_float)
        report.search_rounds += rounds_before
        if set(rechecked_keep) == set(keep_float):
            return quantized, rechecked_keep
        timing = latency.compare(float_proto, quantized, list(itertools.islice(data.calibration, TIMING_SAMPLES)))
        report.timing = timing
        if not timing.within(options.max_slowdown):
            return self._too_slow(timing, report.gate_float_op_types, report), rechecked_keep
        return quantized, rechecked_keep

    def _too_slow(self, timing: latency.Timing, float_op_types: list[str], report: _Report) -> None:
        """Refuse (on_slow=refuse) or record that the float model is kept."""
        options = self.options
        message = (f"INT8 is slower than allowed: {timing.describe()}, above max_slowdown {options.max_slowdown}"
                   + (f" even with {', '.join(float_op_types)} kept float" if float_op_types else ""))
        if options.on_slow == "refuse":
            raise PassFailedError(message, hint="raise max_slowdown, narrow op_types, or use on_slow=keep-float")
        report.kept_whole_model_float = message


def _load_error(proto: onnx.ModelProto) -> str | None:
    """Why ONNX Runtime cannot load ``proto`` (an unknown op or domain, say), in one line; None if it can."""
    try:
        make_session(proto, optimize=False)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every load failure
        return runtime.error_line(e)
    return None


def _invalid(quantized: onnx.ModelProto) -> str | None:
    """What is wrong with the model ORT's quantizer wrote, if anything. It has written invalid models before
    (per-channel axes at opset 11, values shared across If branches, a Loop's outputs out of order); such a
    model is never handed on: the float model is kept, with the reason."""
    if runtime.exceeds_protobuf_limit(quantized):
        return None  # the pipeline checks large models on disk when it saves them
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as e:
        return str(e).strip().splitlines()[0]
    return None


def _noise_excess(verdicts: Any, tolerance: Any) -> float | None:
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
            top1_fails = (tolerance.min_top1 is not None and output.top1_agreement is not None
                          and output.top1_agreement < tolerance.min_top1)
            if top1_fails and excess <= 1.0:
                return None
    return excess


def _has_subgraph_candidates(proto: onnx.ModelProto, settings: QuantizeSettings) -> bool:
    """Dynamic mode also quantizes inside If/Loop/Scan bodies."""
    if settings.mode != "dynamic":
        return False
    model = ir.serde.deserialize_model(proto)
    return any(node.op_type in settings.op_types and node.graph is not model.graph
               for node in ir.traversal.RecursiveGraphIterator(model.graph))


# ---------------------------------------------------------------------------------------------------------
# Data: calibration and held-out samples from one re-iterable dataset


# ---------------------------------------------------------------------------------------------------------
# Report


@dataclasses.dataclass
class _Report:
    model_bytes: int
    settings: QuantizeSettings
    cpu: str
    preprocessing: list[str]
    data: str = ""
    calibration: dict[str, Any] | None = None
    target: str = "none"
    target_met: bool | None = None
    verdict: Any = None
    search_rounds: int = 0
    timing: latency.Timing | None = None
    gate_float_op_types: list[str] = dataclasses.field(default_factory=list)
    gate_attempts: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    kept_whole_model_float: str | None = None
    quantized_bytes: int | None = None
    quantized_nodes: dict[str, int] = dataclasses.field(default_factory=dict)
    kept_float: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def finish(self, float_proto: onnx.ModelProto, quantized: onnx.ModelProto, keep_float: Mapping[str, str],
               excluded: set[str]) -> None:
        self.quantized_bytes = quantized.ByteSize()
        self.quantized_nodes = dict(Counter(n.op_type for n in _quantized_nodes(float_proto, quantized)
                                            if n.op_type in self.settings.op_types))
        self.kept_float = {**{name: "excluded by the user" for name in sorted(excluded)}, **keep_float}
        for op_type in self.gate_float_op_types:
            self.kept_float.update({n.name: f"{op_type} kept float by the latency gate" for n in float_proto.graph.node
                                    if n.op_type == op_type and n.name not in self.kept_float})

    def parity(self) -> dict[str, Any] | None:
        if self.verdict is None:
            return None
        return {key: value.to_dict() if hasattr(value, "to_dict") else value for key, value in self.verdict.items()}

    def stats(self) -> list[str]:
        s = self.settings
        head = (f"{s.mode} {s.format.upper() if s.mode == 'static' else ''} INT8".replace("  ", " ")
                + f" ({'per-channel' if s.per_channel else 'per-tensor'} {s.weight_type} weights"
                + (f", {s.act_type} activations" if s.mode == "static" else "")
                + f", reduce_range {'on' if s.reduce_range else 'off'})")
        lines = [head]
        if self.calibration:
            lines.append(f"calibrated {self.calibration['tensors']} tensors on {self.calibration['samples']} samples "
                         f"({self.data}), {self.calibration['method']}, cache {self.calibration['cache']}")
        if self.quantized_nodes and not self.kept_whole_model_float:
            total = sum(self.quantized_nodes.values())
            lines.append(f"quantized {total} nodes: " + ", ".join(f"{c} {op}" for op, c in sorted(self.quantized_nodes.items())))
        if self.kept_float and not self.kept_whole_model_float:
            lines.append(f"kept {len(self.kept_float)} nodes in float: " + ", ".join(list(self.kept_float)[:5])
                         + (" …" if len(self.kept_float) > 5 else ""))
        if self.verdict is not None:
            met = "met" if self.target_met else "NOT met"
            results = "; ".join(f"{key}: {_brief(value)}" for key, value in self.verdict.items())
            lines.append(f"target {self.target} {met} ({results})")
        if self.timing is not None:
            gate = f"; kept {', '.join(self.gate_float_op_types)} float for speed" if self.gate_float_op_types else ""
            lines.append(self.timing.describe() + gate)
        if self.kept_whole_model_float:
            lines.append(f"kept the float model: {self.kept_whole_model_float}")
        if self.quantized_bytes is not None:
            lines.append(f"size {self.model_bytes / 1e6:.2f} MB → {self.quantized_bytes / 1e6:.2f} MB "
                         f"({self.quantized_bytes / self.model_bytes:.2f}×)")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "cpu": self.cpu,
            "preprocessing": list(self.preprocessing),
            "data": self.data,
            "calibration": self.calibration,
            "target": self.target,
            "target_met": self.target_met,
            "search_rounds": self.search_rounds,
            "parity": self.parity(),
            "latency": self.timing.to_dict() if self.timing else None,
            "latency_gate": {"float_op_types": list(self.gate_float_op_types),
                             "attempts": [list(a) for a in self.gate_attempts],
                             "kept_whole_model_float": self.kept_whole_model_float},
            "size": {"float_bytes": self.model_bytes, "quantized_bytes": self.quantized_bytes,
                     "ratio": round(self.quantized_bytes / self.model_bytes, 4) if self.quantized_bytes else None},
            "quantized_nodes": dict(self.quantized_nodes),
            "kept_float": dict(self.kept_float),
            "warnings": list(self.warnings),
        }


def _brief(verdict: Any) -> str:
    """A parity report's key metrics over all outputs, or a metric's value."""
    if not hasattr(verdict, "outputs"):
        return f"{verdict:.4f}" if isinstance(verdict, float) else str(verdict)
    parts = [f"{verdict.samples} samples, cosine {verdict.min_cosine:.4f}"]
    sqnrs = [o.sqnr_db for o in verdict.outputs if o.sqnr_db is not None]
    if sqnrs:
        parts.append(f"SQNR {min(sqnrs):.1f} dB")
    top1 = [o.top1_agreement for o in verdict.outputs if o.top1_agreement is not None]
    if top1:
        parts.append(f"top-1 {min(top1):.1%}")
    return ", ".join(parts)


def _quantized_nodes(float_proto: onnx.ModelProto, quantized: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Float nodes, subgraphs included, that the quantized model runs in INT8: replaced by other ops
    (QOperator, dynamic), or reading rewired inputs (DequantizeLinear outputs in QDQ, INT8 tables for Gather)."""
    same = {(n.name, n.op_type): n for n in _all_nodes(quantized.graph)}
    result = []
    for node in _all_nodes(float_proto.graph):
        twin = same.get((node.name, node.op_type))
        if twin is None or list(twin.input) != list(node.input):
            result.append(node)
    return result


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _all_nodes(subgraph)


@contextlib.contextmanager
def _progress(show: bool, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps: bar.advance(task, steps)
