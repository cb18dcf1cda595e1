"""What a quantize run did, as stats lines and as a JSON-ready dict: settings, calibration, the search and why
each float node stayed float, the latency gate, size."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import onnx

from onnxkit import modelio
from onnxkit.passes.quantize import latency
from onnxkit.passes.quantize.rewrite import QuantizeSettings
from onnxkit.passes.quantize.sensitivity import NodeSensitivity

# The ranking in the JSON report: the worst nodes, most sensitive first.
RANKING_SHOWN = 20


@dataclasses.dataclass
class Report:
    model_bytes: int
    settings: QuantizeSettings
    cpu: str
    preprocessing: list[str]
    data: str = ""
    calibration: dict[str, Any] | None = None
    smoothing: str | None = None
    target: str = "none"
    target_met: bool | None = None
    verdict: Any = None
    search_rounds: int = 0
    search_verifications: int = 0
    sensitivity_cache: str = "off"
    search_out_of_time: str | None = None
    ranking: list[NodeSensitivity] = dataclasses.field(default_factory=list)
    timing: latency.Timing | None = None
    gate_float_op_types: list[str] = dataclasses.field(default_factory=list)
    gate_attempts: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    gate_summary: dict[str, Any] = dataclasses.field(default_factory=dict)  # latency.summary
    kept_whole_model_float: str | None = None
    quantized_bytes: int | None = None
    quantized_nodes: dict[str, int] = dataclasses.field(default_factory=dict)
    kept_float: dict[str, str] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def finish(
        self,
        float_proto: onnx.ModelProto,
        quantized: onnx.ModelProto,
        keep_float: Mapping[str, str],
        excluded: set[str],
    ) -> None:
        self.quantized_bytes = modelio.proto_bytes(quantized)
        self.kept_float = {**dict.fromkeys(sorted(excluded), "excluded by the user"), **keep_float}
        for op_type in self.gate_float_op_types:
            self.kept_float.update(
                {
                    n.name: f"{op_type} kept float by the latency gate"
                    for n in float_proto.graph.node
                    if n.op_type == op_type and n.name not in self.kept_float
                }
            )
        in_int8 = quantized_nodes(float_proto, quantized, float_nodes=self.kept_float)
        self.quantized_nodes = dict(Counter(n.op_type for n in in_int8 if n.op_type in self.settings.op_types))

    def parity(self) -> dict[str, Any] | None:
        if self.verdict is None:
            return None
        return {key: value.to_dict() if hasattr(value, "to_dict") else value for key, value in self.verdict.items()}

    def stats(self) -> list[str]:
        s = self.settings
        head = (
            f"{s.mode} {s.format.upper() if s.mode == 'static' else ''} INT8".replace("  ", " ")
            + f" ({'per-channel' if s.per_channel else 'per-tensor'} {s.weight_type} weights"
            + (f", {s.act_type} activations" if s.mode == "static" else "")
            + f", reduce_range {'on' if s.reduce_range else 'off'})"
        )
        lines = [head]
        if self.calibration:
            lines.append(
                f"calibrated {self.calibration['tensors']} tensors on {self.calibration['samples']} samples "
                f"({self.data}), {self.calibration['method']}, cache {self.calibration['cache']}"
            )
            if "chosen" in self.calibration:
                lines.append(f"calibration ranges: {self.calibration['chosen']}")
        if self.smoothing:
            lines.append(self.smoothing)
        if self.quantized_nodes and not self.kept_whole_model_float:
            total = sum(self.quantized_nodes.values())
            lines.append(
                f"quantized {total} nodes: " + ", ".join(f"{c} {op}" for op, c in sorted(self.quantized_nodes.items()))
            )
        if self.kept_float and not self.kept_whole_model_float:
            lines.append(
                f"kept {len(self.kept_float)} nodes in float: "
                + ", ".join(list(self.kept_float)[:5])
                + (" …" if len(self.kept_float) > 5 else "")
            )
        if self.verdict is not None:
            met = "met" if self.target_met else "NOT met"
            results = "; ".join(f"{key}: {brief(value)}" for key, value in self.verdict.items())
            lines.append(f"target {self.target} {met} ({results})")
        if self.search_verifications > 1:
            lines.append(
                f"search: {self.search_rounds} sensitivity ranking(s), {self.search_verifications} candidates "
                f"judged, sensitivity cache {self.sensitivity_cache}"
            )
        if self.timing is not None:
            gate = f"; kept {', '.join(self.gate_float_op_types)} float for speed" if self.gate_float_op_types else ""
            lines.append(self.timing.describe() + gate)
        if self.kept_whole_model_float:
            lines.append(f"kept the float model: {self.kept_whole_model_float}")
        if self.quantized_bytes is not None:
            lines.append(size_line(self.model_bytes, self.quantized_bytes))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": dataclasses.asdict(self.settings),
            "cpu": self.cpu,
            "preprocessing": list(self.preprocessing),
            "data": self.data,
            "calibration": self.calibration,
            "smoothing": self.smoothing,
            "target": self.target,
            "target_met": self.target_met,
            "search_rounds": self.search_rounds,
            "search": {
                "rankings": self.search_rounds,
                "verifications": self.search_verifications,
                "sensitivity_cache": self.sensitivity_cache,
                "out_of_time": self.search_out_of_time,
                "worst_nodes": ranking_dicts(self.ranking[:RANKING_SHOWN], self.ranking),
            },
            "parity": self.parity(),
            "latency": self.timing.to_dict() if self.timing else None,
            "latency_gate": {
                "float_op_types": list(self.gate_float_op_types),
                "attempts": [list(a) for a in self.gate_attempts],
                **self.gate_summary,
                "kept_whole_model_float": self.kept_whole_model_float,
            },
            "size": {
                "float_bytes": self.model_bytes,
                "quantized_bytes": self.quantized_bytes,
                "ratio": round(self.quantized_bytes / self.model_bytes, 4) if self.quantized_bytes else None,
            },
            "quantized_nodes": dict(self.quantized_nodes),
            "kept_float": dict(self.kept_float),
            "warnings": list(self.warnings),
        }


def ranking_dicts(shown: Sequence[NodeSensitivity], ranking: Sequence[NodeSensitivity]) -> list[dict[str, Any]]:
    """The shown nodes with their measured effect and their share of all the noise the ranked nodes add."""
    total = sum(s.added_nsr for s in ranking if s.added_nsr > 0 and s.added_nsr != float("inf"))
    return [
        {
            "node": s.node,
            "op_type": s.op_type,
            "added_nsr": _finite(s.added_nsr),
            "output_sqnr_db": _finite(s.output_sqnr_db),
            "share_of_added_noise": round(s.added_nsr / total, 4)
            if total > 0 and s.added_nsr > 0 and s.added_nsr != float("inf")
            else None,
        }
        for s in shown
    ]


def _finite(value: float) -> float | str:
    return round(value, 6) if abs(value) != float("inf") else str(value)


def size_line(float_bytes: int, quantized_bytes: int) -> str:
    """``size 3.20 MB → 0.85 MB (0.27×)``: both quantize modes' stats line for what quantizing saved."""
    return f"size {float_bytes / 1e6:.2f} MB → {quantized_bytes / 1e6:.2f} MB ({quantized_bytes / float_bytes:.2f}×)"


def brief(verdict: Any) -> str:
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


def quantized_nodes(
    float_proto: onnx.ModelProto, quantized: onnx.ModelProto, float_nodes: Collection[str] = ()
) -> list[onnx.NodeProto]:
    """Float nodes, subgraphs and functions included, that the quantized model runs in INT8: replaced by other
    ops (QOperator, dynamic), or reading rewired inputs (DequantizeLinear outputs in QDQ, INT8 tables for Gather).

    ``float_nodes`` (excluded or kept float) are never counted: in QDQ a float node reads the DequantizeLinear
    output of an activation another node quantized (ORT rewires every reader), and computes in float on it.
    Read from the protos, not through onnx_ir: names are all it needs, and deserializing both models took
    longer than the rest of the call (MiniLM), made three times a run."""
    same = {(n.name, n.op_type): list(n.input) for n in _all_nodes(quantized)}
    return [
        node
        for node in _all_nodes(float_proto)
        if node.name not in float_nodes and same.get((node.name, node.op_type)) != list(node.input)
    ]


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the main graph, of local functions, and of the bodies inside them at any depth."""
    pending = [*model.graph.node, *(node for function in model.functions for node in function.node)]
    while pending:
        node = pending.pop()
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                pending.extend(attribute.g.node)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                pending.extend(n for g in attribute.graphs for n in g.node)
