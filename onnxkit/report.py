"""What a pipeline run did: per-pass records, rendered as a terminal table, JSON, or Markdown."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from onnxkit.units import format_bytes


@dataclasses.dataclass
class PassReport:
    """One pass's run: outcome, statistics, timing, size, and parity against its input."""

    name: str
    spec: str
    kind: str
    modified: bool = False
    # ok | narrowed (some rules or sites skipped, the rest kept) | rolled-back | parity-warning | parity-failed | failed
    status: str = "ok"
    stats: list[str] = dataclasses.field(default_factory=list)
    # a pass's structured report beside its stats lines (e.g. quantize: parity, latency, nodes kept float)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # the pass itself; ``timings`` splits everything the pipeline spent on it
    # seconds per step: transform, instrument, serialize, checker, shape_inference, narrowing, and parity
    # (a dict: sessions, reference_runs, replayed, candidate_runs, comparison)
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    nodes_before: int = 0
    nodes_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    op_delta: dict[str, int] = dataclasses.field(default_factory=dict)
    parity: dict[str, Any] | None = None
    error: str | None = None
    verification: list[str] = dataclasses.field(default_factory=list)
    traceback: str | None = None  # of an internal error in the pass
    # rules and sites the pipeline disabled to make the pass's output pass: {"rule", "node" (None: the whole
    # rule), "failure"}, and how many reruns finding them took
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    narrowing_reruns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def total_seconds(self) -> float:
        return sum(_flatten_seconds(self.timings))

    def time_split(self) -> dict[str, float]:
        """Seconds in the pass itself, in the checks around it (serializing, checker, shape inference,
        instrumentation), in parity, and in narrowing."""
        parity = sum(_flatten_seconds(self.timings.get("parity", {})))
        transform = self.timings.get("transform", 0.0)
        narrowing = self.timings.get("narrowing", 0.0)
        return {
            "pass": transform,
            "checks": self.total_seconds() - transform - parity - narrowing,
            "parity": parity,
            "narrowing": narrowing,
        }

    def skipped_lines(self) -> list[str]:
        """``skipped materialize-reshape at node /Reshape_3 (onnx.checker: ...)``, one per rule or site."""
        return [
            f"skipped {s['rule']}"
            + (f" at node {s['node']}" if s["node"] is not None else " (every site)")
            + f" ({s['failure']})"
            for s in self.skipped
        ]


@dataclasses.dataclass
class PipelineReport:
    """The whole run. JSON-serialisable through ``to_dict``."""

    spec: str
    check: str = "each"
    on_fail: str = "stop"
    passes: list[PassReport] = dataclasses.field(default_factory=list)
    input_summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    final_parity: dict[str, Any] | None = None
    rolled_back: list[str] = dataclasses.field(default_factory=list)
    parity_failed: bool = False
    failed: bool = False
    output_path: str | None = None
    parity_inputs: str | None = None  # where parity's samples came from
    # seconds the run spent outside the passes: serialize, baseline_checks, parity_inputs, final_parity
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every pass did its job within tolerance (a narrowed pass did); 1 when a pass failed, was
        rolled back, or was kept by ``on_fail=warn`` although it failed parity."""
        return 1 if self.failed or self.rolled_back or self.parity_failed else 0

    def to_dict(self) -> dict[str, Any]:
        from onnxkit import __version__

        data = dataclasses.asdict(self)
        data["onnxkit_version"] = __version__
        data["exit_code"] = self.exit_code
        data["passes"] = [p.to_dict() for p in self.passes]
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def provenance(self) -> list[dict[str, Any]]:
        """The deterministic part of each pass's record, for the saved model's metadata."""
        records = []
        for p in self.passes:
            record: dict[str, Any] = {"pass": p.spec, "status": p.status, "modified": p.modified, "stats": p.stats}
            if p.parity is not None:
                record["parity"] = _parity_brief(p.parity)
            if p.skipped:
                record["skipped"] = p.skipped_lines()
            records.append(record)
        return records

    HEADERS = ("pass", "result", "nodes", "size", "time = pass+checks+parity", "parity")

    def rows(self) -> list[list[str]]:
        """One row per pass, without the details (``details`` gives those, one line each)."""
        return [
            [
                p.name,
                p.status if p.modified or p.status != "ok" else "unchanged",
                f"{p.nodes_before} → {p.nodes_after}",
                format_bytes(p.bytes_after or p.bytes_before),
                _time_cell(p),
                _parity_cell(p),
            ]
            for p in self.passes
        ]

    def details(self) -> list[tuple[str, str]]:
        """(pass, line) for every statistic and error, in pass order."""
        lines = []
        for p in self.passes:
            lines += [(p.name, stat) for stat in p.stats]
            lines += [(p.name, line) for line in p.skipped_lines()]
            if p.error:
                lines.append((p.name, p.error))
        if self.final_parity is not None:
            lines.append(("parity, input to output", self.final_parity.get("summary", "")))
        if self.parity_inputs:
            lines.append(("parity inputs", self.parity_inputs))
        return lines

    def to_markdown(self) -> str:
        lines = [
            f"Pipeline `{self.spec}`",
            "",
            "| " + " | ".join(self.HEADERS) + " |",
            "|" + "---|" * len(self.HEADERS),
        ]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows()]
        lines += [""] + [f"- **{name}**: {line}" for name, line in self.details()]
        return "\n".join(lines) + "\n"

    def render(self, console: Any) -> None:
        """Print the per-pass table (folded into a block per pass where the console is too narrow), then each
        pass's statistics as its own line, to a rich console."""
        from onnxkit.tables import print_table

        print_table(console, f"onnxkit: {self.spec}", self.HEADERS, self.rows(), lead=2)
        for name, line in self.details():
            console.print(f"  [bold]{name}[/]: {line}", highlight=False, soft_wrap=True)


def _parity_brief(parity: dict[str, Any]) -> dict[str, Any]:
    keep = ("passed", "max_abs_error", "min_cosine")
    return {k: parity[k] for k in keep if k in parity}


def _parity_cell(report: PassReport) -> str:
    """PASSED/FAILED with the figure that matters for the pass's kind: max abs error, or cosine if lossy."""
    parity = report.parity
    if parity is None:
        return "—"
    if parity.get("skipped"):  # a check that could not fail, not run (pipeline_parity.SameComputation)
        return "same function"
    verdict = "PASSED" if parity.get("passed") else "FAILED"
    key, label = ("min_cosine", "cos") if report.kind == "lossy" else ("max_abs_error", "max abs")
    value = parity.get(key)
    if not isinstance(value, (int, float)):
        return verdict
    return f"{verdict} {label} {value:.4f}" if key == "min_cosine" else f"{verdict} {label} {value:.1e}"


def _flatten_seconds(timings: dict[str, Any]) -> list[float]:
    return [v for value in timings.values() for v in (_flatten_seconds(value) if isinstance(value, dict) else [value])]


def _time_cell(report: PassReport) -> str:
    """``1.2 s = 0.4+0.1+0.7``: the total, then the pass, the checks and parity (the header says so), in one
    unit; ``+ 0.3 narrowing`` when narrowing reran the pass."""
    total = report.total_seconds()
    split = report.time_split()
    scale, unit, digits = (1000, "ms", 0) if total < 1 else (1, "s", 1)

    def number(seconds: float) -> str:
        return f"{seconds * scale:.{digits}f}"

    cell = f"{number(total)} {unit} = " + "+".join(number(split[key]) for key in ("pass", "checks", "parity"))
    return cell + (f" + {number(split['narrowing'])} narrowing" if split["narrowing"] else "")
