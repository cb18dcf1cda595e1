"""What weight-only mode did (``WeightOnlyReport``): its settings, every quantized model judged, the one
returned, the latency gate, size, and the nodes left above 4 bits; as the pass's stats lines and its JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from onnxkit.passes.quantize import latency
from onnxkit.passes.quantize.float_search import Verdict
from onnxkit.passes.quantize.report import size_line


@dataclasses.dataclass
class WeightOnlyReport:
    settings: dict[str, Any]
    headroom: float  # the share of the noise the target allows that the search aims for
    data: str = ""
    target: str = ""
    tries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    chosen: dict[str, Any] | None = None  # the try whose model the pass returns (a bisection may end on a failure)
    timing: latency.Timing | None = None
    gate: str = ""
    kept_float_model: str | None = None
    float_bytes: int = 0
    quantized_bytes: int | None = None
    quantized_nodes: dict[str, int] = dataclasses.field(default_factory=dict)
    eight_bit: list[str] = dataclasses.field(default_factory=list)
    float_tables: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def record_try(
        self, accuracy_level: int, eight_bit: int, float_tables: int, verdict: Verdict, headroom: bool
    ) -> None:
        """One quantized model judged: ``eight_bit`` MatMuls at 8 bits, ``float_tables`` tables float;
        ``headroom``: whether it passed with the headroom the search aims for."""
        self.tries.append(
            {
                "accuracy_level": accuracy_level,
                "eight_bit": eight_bit,
                "float_tables": float_tables,
                "passed": verdict.passed,
                "headroom": headroom,
                "min_cosine": worst_cosine(verdict.detail),
                "summary": brief(verdict.detail),
            }
        )

    def stats(self) -> list[str]:
        s = self.settings
        head = (
            f"weight-only INT{s['bits']} ({s['algo']}, block {s['block']}, accuracy_level {s['accuracy_level']}: "
            f"{s['accuracy_reason']})"
        )
        lines = [head]
        if self.quantized_nodes:
            lines.append(
                "quantized " + ", ".join(f"{count} {op}" for op, count in sorted(self.quantized_nodes.items()))
            )
        if self.eight_bit:
            lines.append(
                f"{len(self.eight_bit)} MatMuls at 8 bits to meet the target: "
                + ", ".join(self.eight_bit[:3])
                + (" …" if len(self.eight_bit) > 3 else "")
            )
        if self.float_tables:
            lines.append(
                f"{len(self.float_tables)} embedding tables float to meet the target: " + ", ".join(self.float_tables)
            )
        judged = self.chosen or (self.tries[-1] if self.tries else None)
        if judged is not None:
            lines.append(
                f"target {self.target} {'met' if judged['passed'] else 'NOT met'} ({judged['summary']}; "
                f"{len(self.tries)} quantized models judged"
                + (
                    f"; searched for at most {self.headroom:.0%} of the noise it allows)"
                    if judged.get("headroom")
                    else ")"
                )
            )
        if self.timing is not None:
            timing = self.timing
            lines.append(
                f"weight-only/FP32 latency {timing.ratio:.2f}× ({timing.quantized_ms:.2f} ms vs "
                f"{timing.float_ms:.2f} ms); {self.gate}"
            )
        if self.kept_float_model:
            lines.append(f"kept the float model: {self.kept_float_model}")
        if self.quantized_bytes is not None:
            lines.append(size_line(self.float_bytes, self.quantized_bytes))
        return lines + [f"warning: {w}" for w in self.warnings]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "weight-only",
            "settings": dict(self.settings),
            "data": self.data,
            "target": self.target,
            "tries": list(self.tries),
            "chosen": self.chosen,
            "latency": self.timing.to_dict() if self.timing else None,
            "latency_gate": self.gate,
            "kept_whole_model_float": self.kept_float_model,
            "size": {
                "float_bytes": self.float_bytes,
                "quantized_bytes": self.quantized_bytes,
                "ratio": round(self.quantized_bytes / self.float_bytes, 4) if self.quantized_bytes else None,
            },
            "quantized_nodes": dict(self.quantized_nodes),
            "eight_bit": list(self.eight_bit),
            "float_tables": list(self.float_tables),
            "warnings": list(self.warnings),
        }


def brief(detail: Mapping[str, Any]) -> str:
    """Each comparison's samples and worst cosine, or a metric's value. The judge's "held-out" comparison runs
    on every sample here (``_EverySampleJudges``), and says so."""
    return "; ".join(
        f"{key.replace('held-out', 'every sample')}: {value.samples} samples, cosine {value.min_cosine:.4f}"
        if hasattr(value, "samples")
        else f"{key} {value:.4f}"
        for key, value in detail.items()
    )


def worst_cosine(detail: Mapping[str, Any]) -> float | None:
    cosines = [value.min_cosine for value in detail.values() if hasattr(value, "min_cosine")]
    return round(min(cosines), 6) if cosines else None
