"""``onnxkit debug quant``: where INT8 loses accuracy, layer by layer, and why each float node stayed float.

The quantize pass runs exactly as ``optimize`` runs it with the same spec: the same preparation, calibration,
parity target and latency gate. The debugger keeps the pass's per-run object (``QuantizeRun``) while it runs,
so everything it measures comes from the pass's own machinery, never from a second quantizer:

- the model with *every* candidate node in INT8 (the user's exclusions apart), from the run's own ranges;
- per activation, on samples calibration did not see: SQNR (dB) and cosine of the float model's tensor
  against the one the quantized model's consumers read (``<name>_DequantizeLinear_Output`` in QDQ), matched
  by name as ONNX Runtime's ``qdq_loss_debug`` matches them (its ``create_activation_matching``), compared
  sample by sample by the parity check's own ``OutputComparison``, so memory stays one sample's tensors;
- per candidate node, its own contribution: the noise it adds on top of its inputs' and its own INT8
  rounding, from the pass's sensitivity measure (``sensitivity.measure_sensitivity``), which also orders
  the layers worst first, as the pass's keep-in-float search orders them;
- for the ``isolate`` worst layers, each alone: the model's outputs with only that node in INT8 (one more
  quantization by the run and one run over the samples each), which checks the ranking against the output;
- per node left float: the pass's own reason (the search's rank and measured effect, the latency gate, the
  user's exclusion, or the whole model kept float), or why ONNX Runtime's quantizer did not quantize it.

``quant_debug_report`` renders the result (console table, JSON, Markdown, PNG plot).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

from onnxkit import modelio, parity, validate
from onnxkit.errors import OnnxkitError, SpecError
from onnxkit.pass_base import PassContext
from onnxkit.passes.quantize import QuantizePass, QuantizeResult
from onnxkit.passes.quantize.calibration import FLOAT_TYPES
from onnxkit.passes.quantize.report import quantized_nodes
from onnxkit.passes.quantize.run import QuantizeRun
from onnxkit.passes.quantize.runtime import TensorTap
from onnxkit.passes.quantize.sensitivity import NodeSensitivity, measure_sensitivity
from onnxkit.spec import parse_pass_text, split_top_level

# Samples the errors are measured on: enough for stable powers, few enough that running both models with
# every activation as an output stays quick (the pass's own ranking uses 8).
DEFAULT_SAMPLES = 16


@dataclasses.dataclass(frozen=True)
class TensorError:
    """One tensor of the float model against its quantized counterpart, over all measured samples."""

    name: str
    producer: str  # the node that writes it ("" for a graph input)
    op_type: str
    sqnr_db: float
    cosine: float


@dataclasses.dataclass(frozen=True)
class LayerError:
    """One candidate node: its output's error with every candidate in INT8, its own contribution, and what
    the pass finally did with it."""

    node: str
    op_type: str
    position: int  # its index among the candidate nodes, in graph order
    output: str  # the output tensor whose error is shown (the worst of the node's outputs)
    sqnr_db: float
    cosine: float
    added_nsr: float | None  # noise power it adds on top of its inputs', relative to its output's power
    rounding_nsr: float | None  # its own INT8 rounding on clean inputs (qdq_loss_debug's pre/post QDQ error)
    int8_when_all_quantized: bool  # whether ORT's quantizer put it in INT8 when asked to quantize everything
    pass_kept_float: str | None  # None: INT8 in the pass's result; else why the pass left it float
    # The model's outputs with only this node in INT8 (measured for the ``isolate`` worst layers): the worst
    # output's SQNR and cosine. None: not measured.
    alone_sqnr_db: float | None = None
    alone_cosine: float | None = None


@dataclasses.dataclass
class QuantDebugResult:
    model: str
    spec: str
    settings: str  # the pass's first stats line: mode, format, weights, activations
    samples: int
    samples_from: str
    layers: list[LayerError]  # worst first
    tensors: list[TensorError]  # every compared activation, in graph order
    outputs_all_int8: list[TensorError]  # the graph outputs with every candidate in INT8
    outputs_pass_result: list[TensorError]  # the graph outputs of the model the pass hands on (empty: float)
    pass_stats: list[str]
    pass_report: dict[str, Any]
    # "added": ordered by the noise each layer adds in the all-INT8 model (the pass's ranking); "alone": by
    # the output error each causes as the only INT8 layer (every ranked layer was isolated).
    ranked_by: Literal["added", "alone"] = "added"
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def worst(self) -> list[LayerError]:
        """The layers INT8 hurts most, worst first: the ranked ones (in INT8 when everything is)."""
        return [layer for layer in self.layers if layer.added_nsr is not None]


# ---------------------------------------------------------------------------------------------------------
# The pass, run as optimize runs it, with its per-run object kept


class _RecordingQuantizePass(QuantizePass):
    """The quantize pass itself; it only remembers the ``QuantizeRun`` its steps worked on."""

    recorded: QuantizeRun | None = None

    def _quantize(self, run: QuantizeRun) -> onnx.ModelProto | None:  # type: ignore[override]  # a staticmethod upstream; same call shape
        self.recorded = run
        return QuantizePass._quantize(run)


def parse_quantize_spec(spec: str) -> _RecordingQuantizePass:
    """``quantize{mode=static,...}`` as the pass it names; anything else is a one-line user error."""
    from onnxkit.registry import get_pass_class
    from onnxkit.spec import build_pass

    pieces = split_top_level(spec)
    names = [parse_pass_text(piece)[0] for piece in pieces]
    if names != ["quantize"]:
        raise SpecError(
            f"--spec must be one quantize pass, not {spec!r}",
            hint="e.g. --spec 'quantize{mode=static,calib=minmax}'; run other passes first with onnxkit optimize",
        )
    built = build_pass(*parse_pass_text(pieces[0]))
    assert isinstance(built, get_pass_class("quantize"))
    if built.options.mode == "weight-only":
        raise SpecError(
            "debug quant explains static and dynamic INT8; weight-only quantization keeps activations float",
            hint="use mode=static or mode=dynamic",
        )
    return _RecordingQuantizePass(built.options)


def debug_quant(
    model: str | Path | ir.Model,
    calibration_data: Any,
    spec: str = "quantize",
    *,
    dims: Mapping[str, int] | None = None,
    samples: int = DEFAULT_SAMPLES,
    isolate: int | Literal["all"] = 0,
    calib_cache: str | Path | None = None,
    progress: bool = False,
) -> QuantDebugResult:
    """Quantize ``model`` as ``onnxkit optimize --passes SPEC --calib-data DATA`` would, then measure the
    error of every layer with everything in INT8 and say why each node the pass left float stayed float.

    ``calibration_data`` is any source ``onnxkit.load_dataset`` reads; the errors are measured on up to
    ``samples`` of the samples the pass holds out from calibration. ``isolate``: for that many of the worst
    layers (``"all"``: every ranked layer), also quantize the layer alone (every other node float) and measure
    the model's outputs, one quantization and one run over the samples each. With every ranked layer
    isolated, the layers are ordered by that output error instead: the noise a layer adds where it sits can
    be masked by noise upstream, or damped downstream (on MiniLM the two orders differ). Bad input raises
    ``OnnxkitError``.
    """
    quantize = parse_quantize_spec(spec)
    if samples < 1 or (isolate != "all" and isolate < 0):
        raise SpecError("samples must be at least 1, and isolate not negative")
    model_dir = Path(model).parent if isinstance(model, (str, Path)) else None
    loaded = modelio.load_model(model) if isinstance(model, (str, Path)) else model
    from onnxkit.data import load_dataset

    data = load_dataset(calibration_data)
    validate.check_run(
        loaded, [quantize], check="off", data=None, calibration_data=data, model_dir=model_dir, dims=dims
    )
    # The pipeline's context when given calibration data only: the pass judges its target on held-out samples.
    quantize.context = PassContext(
        data=data,
        dims=dict(dims or {}),
        model_dir=model_dir,
        show_progress=progress,
        parity_on_held_out=True,
        calib_cache=Path(calib_cache) if calib_cache is not None else None,
    )
    result = quantize.call(loaded)
    run = quantize.recorded
    if run is None:  # stopped before calibrating: already quantized, nothing to quantize, ORT cannot run it
        raise OnnxkitError(
            f"nothing to debug: {'; '.join(result.stats)}",
            hint="debug quant needs a float model with nodes the quantize pass can quantize",
        )
    return _measure(
        str(model) if isinstance(model, (str, Path)) else "(in memory)", quantize.spec(), run, result, samples, isolate
    )


def _measure(
    model_name: str, spec: str, run: QuantizeRun, result: QuantizeResult, samples: int, isolate: int | Literal["all"]
) -> QuantDebugResult:
    # What ORT quantizes: the model as given, or its SmoothQuant twin when the pass kept smoothing. Layers are
    # compared with it (the twin's activations are scaled per channel); the outputs with the model as given.
    float_proto, original = run.float_proto, run.original
    notes = []
    measured_settings = run.settings
    if run.settings.mode == "static" and run.settings.format == "qoperator":
        # QOperator renames every tensor; its QDQ twin, from the same ranges, keeps the float names to match.
        measured_settings = dataclasses.replace(run.settings, format="qdq")
        notes.append("format=qoperator renames every tensor: errors are measured on its QDQ twin (same ranges)")
    measured_run = dataclasses.replace(run, settings=measured_settings)
    all_int8 = measured_run.quantize(())
    in_int8 = {node.name or "" for node in quantized_nodes(float_proto, all_int8)}
    measured_samples = list(itertools.islice(run.data.held_out, samples))
    samples_from = (
        "calibration samples (too few to hold any out)"
        if run.data.reused_calibration_for_holdout
        else "held-out samples (not used for calibration)"
    )

    ranking = measure_sensitivity(
        float_proto, all_int8, [n for n in run.candidates if n.name in in_int8], run.types, measured_samples
    )
    tensors = tensor_errors(float_proto, all_int8, run.types, measured_samples)
    output_names = [o.name for o in float_proto.graph.output]
    by_name = {t.name: t for t in tensors}
    # An unmodified result is the float model: the pass kept it whole, with the reason in its report.
    outputs_pass = (
        tensor_errors(original, modelio.to_proto(result.model), run.types, measured_samples, names=output_names)
        if result.modified
        else []
    )
    outputs_all_int8 = tensor_errors(original, all_int8, run.types, measured_samples, names=output_names)
    if original is not float_proto:
        notes.append(
            "SmoothQuant kept: layers are compared with the smoothed float model ORT quantized, outputs "
            "with the model as given"
        )
    layers = _layers(run, result, ranking, by_name, in_int8)
    ranked = sum(layer.added_nsr is not None for layer in layers)  # they come first
    isolated = ranked if isolate == "all" else min(isolate, ranked)
    for index, layer in enumerate(layers[:isolated]):
        alone = measured_run.quantize([n.name for n in run.candidates if n.name != layer.node])
        worst_output = min(
            tensor_errors(original, alone, run.types, measured_samples, names=output_names),
            key=lambda t: t.sqnr_db,
            default=None,
        )
        if worst_output is not None:
            layers[index] = dataclasses.replace(
                layer, alone_sqnr_db=worst_output.sqnr_db, alone_cosine=worst_output.cosine
            )
    ranked_by: Literal["added", "alone"] = "added"
    if ranked and isolated == ranked and all(layer.alone_sqnr_db is not None for layer in layers[:ranked]):
        ranked_by = "alone"
        layers[:ranked] = sorted(layers[:ranked], key=lambda layer: layer.alone_sqnr_db or 0.0)
    return QuantDebugResult(
        model=model_name,
        spec=spec,
        settings=result.stats[0] if result.stats else "",
        samples=len(measured_samples),
        samples_from=samples_from,
        layers=layers,
        tensors=tensors,
        outputs_all_int8=outputs_all_int8,
        outputs_pass_result=outputs_pass,
        pass_stats=list(result.stats),
        pass_report=dict(result.details),
        ranked_by=ranked_by,
        notes=notes,
    )


def _layers(
    run: QuantizeRun,
    result: QuantizeResult,
    ranking: Sequence[NodeSensitivity],
    tensors: Mapping[str, TensorError],
    in_int8: set[str],
) -> list[LayerError]:
    """Every candidate node, worst first: ranked nodes by the noise they add, then the ones never in INT8."""
    details = result.details
    whole_model_float = details.get("latency_gate", {}).get("kept_whole_model_float")
    kept_float: Mapping[str, str] = details.get("kept_float", {})
    measured = {s.node: s for s in ranking}
    order = {s.node: index for index, s in enumerate(ranking)}
    layers = []
    for position, node in enumerate(_with_excluded(run)):
        outputs = [tensors[name] for name in node.output if name in tensors]
        worst = min(outputs, key=lambda t: t.sqnr_db, default=None)
        sensitivity = measured.get(node.name)
        if node.name in run.excluded:
            reason: str | None = "excluded by the user"
        elif node.name not in in_int8:
            reason = _why_not_quantized(node, run)
        elif whole_model_float:
            reason = f"the pass kept the whole model float: {whole_model_float}"
        else:
            reason = kept_float.get(node.name)
        layers.append(
            LayerError(
                node=node.name,
                op_type=node.op_type,
                position=position,
                output=worst.name if worst else "",
                sqnr_db=worst.sqnr_db if worst else math.nan,
                cosine=worst.cosine if worst else math.nan,
                added_nsr=sensitivity.added_nsr if sensitivity else None,
                rounding_nsr=sensitivity.rounding_nsr if sensitivity else None,
                int8_when_all_quantized=node.name in in_int8,
                pass_kept_float=reason,
            )
        )
    layers.sort(
        key=lambda layer: (
            order.get(layer.node, len(order)),
            layer.sqnr_db if not math.isnan(layer.sqnr_db) else math.inf,
        )
    )
    return layers


def _with_excluded(run: QuantizeRun) -> list[onnx.NodeProto]:
    """The candidates and the nodes of the same op types the user excluded, in graph order; not those with no
    float output (a Gather of shape values, say): they are arithmetic on integers, not layers INT8 could hurt."""
    candidates = {id(n) for n in run.candidates}
    return [
        n
        for n in run.float_proto.graph.node
        if (id(n) in candidates or (n.name in run.excluded and n.op_type in run.settings.op_types))
        and any(run.types.get(name) in FLOAT_TYPES for name in n.output)
    ]


def _why_not_quantized(node: onnx.NodeProto, run: QuantizeRun) -> str:
    """Why ONNX Runtime's quantizer left a candidate float even with nothing kept float."""
    weights = {i.name for i in run.float_proto.graph.initializer}
    if (
        run.settings.mode == "dynamic"
        and node.op_type in ("MatMul", "Gemm")
        and not any(name in weights for name in node.input[:2])
    ):
        return "ONNX Runtime's dynamic quantizer needs a constant weight input, and this node has none"
    if node.op_type in ("Relu", "Clip"):
        return (
            "ONNX Runtime quantizes Relu and Clip only by folding them into a quantized producer's range, "
            "and this one reads a float tensor"
        )
    return "ONNX Runtime's quantizer did not quantize it (no calibrated range, or its inputs are not float)"


# ---------------------------------------------------------------------------------------------------------
# Tensor errors


def tensor_errors(
    float_proto: onnx.ModelProto,
    quantized: onnx.ModelProto,
    types: Mapping[str, int],
    samples: Iterable[Mapping[str, Any]],
    names: Sequence[str] | None = None,
) -> list[TensorError]:
    """SQNR and cosine of each float activation (``names``, default: every node output of a float type)
    against the tensor the quantized model's consumers read, over ``samples``; graph order. The metrics are the
    parity check's (``parity.OutputComparison``): SQNR from the powers summed over samples, the worst sample's
    cosine. A tensor whose shape differs between the two models (a rewrite changed its layout) is left out."""
    producers = {out: node for node in float_proto.graph.node for out in node.output if out}
    present = {out for node in quantized.graph.node for out in node.output} | {o.name for o in quantized.graph.output}
    wanted = names if names is not None else [name for name in producers if types.get(name) in FLOAT_TYPES]
    pairs = {}
    for name in wanted:
        consumed = f"{name}{DEQUANT_OUTPUT_SUFFIX}"
        if consumed in present:
            pairs[name] = consumed
        elif name in present and types.get(name) in FLOAT_TYPES:
            pairs[name] = name
    if not pairs:
        return []
    float_tap = TensorTap(float_proto, list(pairs), types)
    quantized_tap = TensorTap(quantized, list(pairs.values()), {q: types[f] for f, q in pairs.items()})
    comparisons = {name: parity.OutputComparison(name, parity.Tolerance()) for name in pairs}
    for index, sample in enumerate(samples):
        reference, candidate = float_tap.run(sample), quantized_tap.run(sample)
        for name, consumed in pairs.items():
            comparisons[name].add(reference[name], candidate[consumed], index)
    reports = {name: comparison.finish() for name, comparison in comparisons.items()}
    return [
        TensorError(
            name,
            producers[name].name if name in producers else "",
            producers[name].op_type if name in producers else "",
            report.sqnr_db if report.sqnr_db is not None else math.nan,
            report.cosine if report.cosine is not None else math.nan,
        )
        for name, report in reports.items()
        if not report.errors
    ]
