"""What a bench found: one ``ToolRecord`` per tool, the ``BenchReport``, ratios against the original and the best
peer of each pipeline's class, and the text cells shared by the terminal table and RESULTS.md."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxkit.units import format_bytes


@dataclasses.dataclass
class ToolRecord:
    """Everything measured for one tool on one model. Times are seconds, sizes bytes, latency milliseconds."""

    label: str
    runner: str
    klass: str
    spec: str | None = None
    ok: bool = True
    error: str | None = None
    nodes: int | None = None
    op_histogram: dict[str, int] = dataclasses.field(default_factory=dict)
    file_bytes: int | None = None
    transform_seconds: float | None = None
    process_seconds: float | None = None
    peak_rss_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    latency: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    parity: dict[str, Any] | None = None
    accuracy: float | None = None
    ratios: dict[str, Any] = dataclasses.field(default_factory=dict)

    def p50(self, key: str) -> float | None:
        value = self.latency.get(key, {}).get("p50_ms")
        return float(value) if value is not None else None


@dataclasses.dataclass
class BenchReport:
    model: str
    specs: list[str]
    settings: dict[str, Any]
    machine: dict[str, Any]
    tools: list[ToolRecord]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def latency_keys(self) -> list[str]:
        return [f"b{b}-t{t}" for t in self.settings["threads"] for b in self.settings["batch_sizes"]]

    def tool(self, label: str) -> ToolRecord:
        return next(t for t in self.tools if t.label == label)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        return cls(**{**data, "tools": [ToolRecord(**t) for t in data["tools"]]})

    def render(self, console: Any) -> None:
        """The comparison as a rich table, one row per tool (a block per tool where the console is too narrow);
        failures are spelled out under it."""
        from onnxkit.tables import print_table

        keys = self.latency_keys
        rows = [summary_cells(record, keys) for record in self.tools]
        print_table(console, f"onnxkit bench: {Path(self.model).name}", summary_headers(keys), rows, lead=2)
        for record in self.tools:
            if not record.ok:
                console.print(f"[red]{record.label} failed:[/] {record.error}")
        for note in self.notes:
            console.print(f"[dim]note: {note}[/]")


def summary_headers(keys: Sequence[str]) -> list[str]:
    return [
        "tool",
        "result",
        "nodes",
        "size",
        "transform",
        "peak mem",
        *(f"p50 {k} ms" for k in keys),
        f"× orig {keys[0]}",
        f"× best peer {keys[0]}",
        "max abs err",
        "cosine",
        "accuracy",
    ]


def summary_cells(record: ToolRecord, keys: Sequence[str]) -> list[str]:
    """One row of text cells, shared by the terminal table and RESULTS.md."""
    vs_original = record.ratios.get("vs_original", {}).get("latency", {}).get(keys[0])
    vs_peer = record.ratios.get("vs_best_peer", {}).get("latency", {}).get(keys[0])
    parity_failed = record.parity is not None and not record.parity.get("passed", True)
    result = "FAILED" if not record.ok else "parity FAILED" if parity_failed else "ok"
    latency_cells = []
    for key in keys:
        entry = record.latency.get(key, {})
        latency_cells.append(f"{entry['p50_ms']:.3g}" if "p50_ms" in entry else ("n/a" if entry else "—"))
    parity = record.parity or {}
    return [
        record.label,
        result,
        _fmt(record.nodes, "{:d}"),
        format_bytes(record.file_bytes),
        _fmt(record.transform_seconds, "{:.2f} s"),
        format_bytes(record.peak_rss_bytes),
        *latency_cells,
        _fmt(vs_original, "{:.2f}×"),
        _fmt(vs_peer, "{:.2f}×"),
        _fmt(parity.get("max_abs_error"), "{:.1e}"),
        _fmt(parity.get("min_cosine"), "{:.6f}"),
        _fmt(record.accuracy, "{:.2%}"),
    ]


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def compute_ratios(records: list[ToolRecord], reference: ToolRecord, keys: Sequence[str]) -> None:
    """Each tool against the original, and each onnxkit pipeline against the best peer of its class."""

    def ratio(mine: float | None, theirs: float | None) -> float | None:
        return mine / theirs if mine is not None and theirs else None

    def metrics(record: ToolRecord) -> dict[str, Any]:
        return {
            "nodes": record.nodes,
            "file_bytes": record.file_bytes,
            "latency": {key: record.p50(key) for key in keys},
        }

    def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        return {
            "nodes": ratio(mine["nodes"], theirs["nodes"]),
            "file_bytes": ratio(mine["file_bytes"], theirs["file_bytes"]),
            "latency": {key: ratio(mine["latency"][key], theirs["latency"][key]) for key in keys},
        }

    for record in records:
        if record.ok:
            record.ratios["vs_original"] = compare(metrics(record), metrics(reference))
    for record in records:
        if record.runner != "onnxkit" or not record.ok:
            continue
        # A peer whose output fails parity is no standard to meet: it is left out of "best".
        classes = ("dynamic", "static") if record.klass == "auto" else (record.klass,)
        peers = [
            p
            for p in records
            if p.runner not in ("onnxkit", "original")
            and p.ok
            and p.klass in classes
            and (p.parity or {}).get("passed", True)
        ]
        if not peers:
            continue
        best_latency = {key: min((v for p in peers if (v := p.p50(key)) is not None), default=None) for key in keys}
        best: dict[str, Any] = {
            "nodes": min((p.nodes for p in peers if p.nodes is not None), default=None),
            "file_bytes": min((p.file_bytes for p in peers if p.file_bytes is not None), default=None),
            "latency": best_latency,
        }
        record.ratios["vs_best_peer"] = compare(metrics(record), best)
        record.ratios["best_peer"] = {
            "nodes": next((p.label for p in peers if p.nodes == best["nodes"]), None),
            "latency": {key: next((p.label for p in peers if p.p50(key) == best_latency[key]), None) for key in keys},
        }
