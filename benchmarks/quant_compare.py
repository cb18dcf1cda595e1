"""onnxkit's quantize pipelines beside ORT's quantizers: which nodes each kept in float, and the compact table.

"Nodes kept in float" is counted the same way on every tool's output model, from the graph alone, so onnxkit's
pipelines and ORT's ``quantize_static``/``quantize_dynamic`` are compared like with like. The candidates are the
nodes of the op types onnxkit's quantize pass considers in that mode (``STATIC_OP_TYPES``, ``DYNAMIC_OP_TYPES``);
each one in the output model runs either in INT8 or in float (a node whose first input is an integer tensor, a
Gather on a shape, is no candidate):

- static (QDQ): a candidate runs in INT8 when every input it computes on (Conv/ConvTranspose: X and W; MatMul,
  Gemm: A and B; the others: their first input) comes from a ``DequantizeLinear`` and its output goes to a
  ``QuantizeLinear`` (MatMul and Gemm may also give float, which ORT runs as ``MatMulIntegerToFloat``/``QGemm``):
  the node units ONNX Runtime fuses into integer kernels. Anything else is float, whatever reads it.
- dynamic: a MatMul or Gemm replaced by ``MatMulInteger``/``DynamicQuantizeMatMul``/``MatMulIntegerToFloat``, an
  Attention by ``QAttention``, an LSTM by ``DynamicQuantizeLSTM``, and a Gather reading an 8-bit table (or a
  dequantized one) run in INT8; a remaining float MatMul, Gemm, Attention, LSTM, GRU or float Gather is float.
  ORT's ``quantize_dynamic`` also turns Conv into ``ConvInteger``, which onnxkit never considers in dynamic mode
  (slower than float on CPU): Conv is left out of both counts.

A candidate ORT's quantizer removed (it drops a Relu or Clip whose range the QuantizeLinear before it already
covers) is neither: each tool's count of candidates is the INT8 and float nodes in its own output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxkit.bench import BenchReport, ToolRecord, format_bytes
from onnxkit.passes.quantize.options import DYNAMIC_OP_TYPES, STATIC_OP_TYPES

# Ops whose quantized form may keep a float output (ORT: MatMulIntegerToFloat, QGemm without an output scale).
_FLOAT_OUTPUT_ALLOWED = frozenset({"MatMul", "Gemm"})
# How many inputs of each op the integer kernel computes on (the rest: bias, shapes, indices).
_COMPUTED_INPUTS = {"Conv": 2, "ConvTranspose": 2, "MatMul": 2, "Gemm": 2}
# Dynamic mode's integer replacements, by the float op they stand for.
_DYNAMIC_INT8_OPS = {
    "MatMulInteger": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "MatMulIntegerToFloat": "MatMul",
    "QGemm": "Gemm",
    "QAttention": "Attention",
    "DynamicQuantizeLSTM": "LSTM",
}
_INT8_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})
_FLOAT = onnx.TensorProto.FLOAT
_FLOAT_TYPES = frozenset({_FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})

# Which onnxkit pipeline is set beside which ORT quantizer.
PAIRS = (("static", "ort-quantize-static"), ("dynamic", "ort-quantize-dynamic"))


def float_nodes(model: onnx.ModelProto | str | Path, mode: str) -> dict[str, Any]:
    """The candidates of ``mode`` (static or dynamic) in a quantized model's main graph: ``kept_float`` (their
    names) and ``int8`` (how many run in INT8), counted as the module's docstring defines."""
    if mode not in ("static", "dynamic"):
        raise ValueError(f"mode must be static or dynamic, not {mode!r}")
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    nodes = list(proto.graph.node)
    producer = {output: node for node in nodes for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in proto.graph.output}
    tables = {t.name: t.data_type for t in proto.graph.initializer}
    types = _element_types(proto)

    def dequantized(name: str) -> bool:
        source = producer.get(name)
        return source is not None and source.op_type == "DequantizeLinear"

    def computes_on_float(node: onnx.NodeProto) -> bool:
        # A Gather on a shape or on token ids is no candidate; a type shape inference cannot tell counts as float.
        return dequantized(node.input[0]) or types.get(node.input[0], _FLOAT) in _FLOAT_TYPES

    def requantized(name: str) -> bool:
        readers = consumers.get(name, [])
        return bool(readers) and name not in graph_outputs and all(r.op_type == "QuantizeLinear" for r in readers)

    kept_float, int8 = [], 0
    for node in nodes:
        if mode == "static" and node.op_type in STATIC_OP_TYPES and computes_on_float(node):
            computed = [n for n in node.input[: _COMPUTED_INPUTS.get(node.op_type, 1)] if n]
            outputs_ok = node.op_type in _FLOAT_OUTPUT_ALLOWED or all(requantized(o) for o in node.output if o)
            if all(dequantized(n) for n in computed) and outputs_ok:
                int8 += 1
            else:
                kept_float.append(node.name)
        elif mode == "dynamic":
            if _DYNAMIC_INT8_OPS.get(node.op_type) in DYNAMIC_OP_TYPES:
                int8 += 1
            elif node.op_type == "Gather" and (tables.get(node.input[0]) in _INT8_TYPES or dequantized(node.input[0])):
                int8 += 1
            elif node.op_type in DYNAMIC_OP_TYPES and computes_on_float(node):
                kept_float.append(node.name)
    return {"kept_float": kept_float, "int8": int8}


def _element_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Each tensor's element type, where the graph or ONNX's shape inference states it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a contrib op inference does not know: the graph's own annotations still count
        inferred = proto
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def count_outputs(report: BenchReport, outputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``float_nodes`` of every quantized tool's output (``outputs``: label → model file), keyed by label."""
    counts = {}
    for record in report.tools:
        mode = record.klass
        if mode in ("static", "dynamic") and record.ok and record.label in outputs:
            counts[record.label] = float_nodes(outputs[record.label], mode)
    return counts


# ---------------------------------------------------------------------------------------------------------
# The compact table


def onnxkit_record(report: BenchReport, mode: str) -> ToolRecord | None:
    return next((r for r in report.tools if r.runner == "onnxkit" and r.klass == mode), None)


def _cell(mine: str, theirs: str) -> str:
    return f"{mine} / {theirs}"


def _seconds(record: ToolRecord | None) -> str:
    if record is None or not record.ok or record.transform_seconds is None:
        return "—"
    seconds = record.transform_seconds
    return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"


def _kept(record: ToolRecord | None, counts: dict[str, dict[str, Any]]) -> str:
    if record is None or not record.ok or record.label not in counts:
        return "—"
    count = counts[record.label]
    total = len(count["kept_float"]) + count["int8"]
    return f"{len(count['kept_float'])} of {total}"


def _cosine(record: ToolRecord | None) -> str:
    if record is None or not record.ok or not record.parity:
        return "—"
    cosine = record.parity.get("min_cosine")
    failed = "" if record.parity.get("passed", True) else " ✗"
    return "—" if cosine is None else f"{cosine:.4f}{failed}"


def _vs_fp32(record: ToolRecord | None, keys: Sequence[str]) -> str:
    if record is None or not record.ok:
        return "—"
    latency = record.ratios.get("vs_original", {}).get("latency", {})
    values = [latency.get(k) for k in keys]
    return " · ".join("—" if v is None else f"{v:.2f}×" for v in values)


def _size(record: ToolRecord | None) -> str:
    if record is None or not record.ok or record.file_bytes is None:
        return "—"
    ratio = record.ratios.get("vs_original", {}).get("file_bytes")
    return format_bytes(record.file_bytes) + (f" ({ratio:.2f}×)" if ratio is not None else "")


def _time_ratio(mine: ToolRecord | None, theirs: ToolRecord | None) -> str:
    if not (mine and theirs and mine.ok and theirs.ok and mine.transform_seconds and theirs.transform_seconds):
        return ""
    return f" ({mine.transform_seconds / theirs.transform_seconds:.1f}×)"


def whole_model_float(record: ToolRecord | None) -> str | None:
    """The quantize pass's reason for handing on the float model, from its stats line, if it did."""
    marker = "kept the float model: "
    for note in record.notes if record is not None and record.ok else []:
        if marker in note:
            return note.split(marker, 1)[1].split("; ")[0]
    return None


def comparison_rows(models: Iterable[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """One row per suite model and mode, and notes on what the table could not show (an entry measured before the
    float-node count existed, a model that did not run)."""
    rows, notes, uncounted = [], [], []
    for entry in models:
        if "report" not in entry:
            notes.append(f"{entry['name']}: not measured ({entry.get('error', 'no report')})")
            continue
        report = BenchReport.from_dict(entry["report"])
        counts = entry.get("float_nodes", {})
        keys = report.latency_keys
        latency_keys = [k for k in keys if k.endswith("-t1")] or keys
        shown = [latency_keys[0], latency_keys[-1]] if len(latency_keys) > 1 else latency_keys
        for mode, peer_label in PAIRS:
            mine = onnxkit_record(report, mode)
            theirs = next((r for r in report.tools if r.label == peer_label), None)
            if mine is None and theirs is None:
                continue
            rows.append(
                [
                    entry["name"],
                    mode,
                    _cell(_seconds(mine), _seconds(theirs)) + _time_ratio(mine, theirs),
                    _cell(_kept(mine, counts), _kept(theirs, counts)),
                    _cell(_cosine(mine), _cosine(theirs)),
                    _cell(_vs_fp32(mine, shown), _vs_fp32(theirs, shown)),
                    _cell(_size(mine), _size(theirs)),
                ]
            )
            for record in (mine, theirs):
                if record is not None and not record.ok:
                    notes.append(f"{entry['name']} / {record.label}: failed: {record.error}")
            why = whole_model_float(mine)
            if why:
                notes.append(f"{entry['name']} / {mode}: onnxkit kept the float model: {why}")
        if not counts:
            uncounted.append(entry["name"])
        if entry.get("quant_rerun"):
            notes.append(f"{entry['name']}: quantization rows {entry['quant_rerun']}")
    if uncounted:
        notes.append(
            f"{', '.join(uncounted)}: measured before nodes kept in float were counted; `python -m benchmarks "
            "--quant-only " + " ".join(f"--model {name}" for name in uncounted) + "` reruns these rows"
        )
    return rows, notes


def section(results: dict[str, Any]) -> list[str]:
    """RESULTS.md's "Quantization beside ORT's quantizers" section."""
    rows, notes = comparison_rows(results["models"])
    lines = [
        "## Quantization beside ORT's quantizers",
        "",
        (
            "Per suite model, onnxkit's `simplify,fuse,quantize{mode=static}` beside ORT's `quantize_static` (QDQ, "
            "MinMax, calibrated on the same 64 samples), and `simplify,fuse,quantize{mode=dynamic}` beside "
            "`quantize_dynamic`, both as users call them. Each cell: **onnxkit / ORT**. *transform*: the tool's own "
            "time on the model, the ratio onnxkit's over ORT's. *kept in float*: the candidate nodes that still run "
            "in float in the output model, of all candidates in it, counted the same way on both (candidates: the "
            "op types onnxkit's pass considers in that mode; static: a node runs in INT8 when the inputs it computes "
            "on come from DequantizeLinear and its output goes to QuantizeLinear, MatMul and Gemm may give float; "
            "dynamic: replaced by an integer op, or a Gather on an 8-bit table; Conv, which ORT's quantize_dynamic "
            "turns into ConvInteger and onnxkit does not consider in dynamic mode, is counted in neither; "
            "`benchmarks/quant_compare.py` says it exactly). onnxkit's own report lists the nodes its search or gate "
            "kept in float; this count also has those left float by them, e.g. a MaxPool reading a float Relu. *cosine*: the worst over the parity samples against "
            "the original model (✗: below the 0.99 budget). *latency × FP32*: p50 over the original's, batch 1 · "
            "the largest batch, one thread, timed interleaved in the same run. *size*: the file, and over FP32's. "
            "onnxkit keeps a node float where its parity target or its latency gate asks; `N of N` kept float is "
            "the whole float model kept (the note in the model's own table says why). Weight-only (INT4/INT8 `MatMulNBits`) "
            "beside ORT's `MatMulNBitsQuantizer`: see [Weight-only quantization](#weight-only-quantization)."
        ),
        "",
    ]
    if not rows:
        return lines + ["Nothing measured yet.", ""]
    from benchmarks.report import markdown_table  # report renders this section: imported late, not circular

    lines += markdown_table(["model", "mode", "transform", "kept in float", "cosine", "latency × FP32", "size"], rows)
    return lines + [""] + [f"- {note}" for note in notes] + ([""] if notes else [])
