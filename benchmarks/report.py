"""Turn the suite's results into ``results.json``, ``RESULTS.md`` and PNG plots.

RESULTS.md is generated, never edited by hand: the causes of known gaps that need a human explanation
live in ``GAP_CAUSES`` below, and the mechanical part of each cause (which ops the better peer removed
that onnxkit kept) is computed from the op histograms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import quant_compare
from benchmarks.peers import PEER_DESCRIPTIONS
from onnxkit.bench import BenchReport, ToolRecord, format_bytes, summary_cells, summary_headers

# Causes that the op histograms cannot tell, keyed by (pipeline spec, model) or (pipeline spec, "*").
# Filled in from the analysis of each run; a gap without an entry still shows its op-count difference, and where
# the quantize pass handed on the float model, its own reason. (resnet18's static parity rejection of 2026-11-29
# is gone: its rows were re-measured on 2026-11-30.)
GAP_CAUSES: dict[tuple[str, str], str] = {}


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Gaps


def _ops_peer_removed(mine: ToolRecord, peer: ToolRecord) -> str:
    """Where the two graphs differ, e.g. 'onnxkit has more Transpose +12; onnxsim has more Gemm +4'."""
    deltas = {
        op: mine.op_histogram.get(op, 0) - peer.op_histogram.get(op, 0)
        for op in set(mine.op_histogram) | set(peer.op_histogram)
    }
    mine_more = [f"{op} +{d}" for op, d in sorted(deltas.items(), key=lambda item: (-item[1], item[0])) if d > 0]
    peer_more = [f"{op} +{-d}" for op, d in sorted(deltas.items(), key=lambda item: (item[1], item[0])) if d < 0]
    if not mine_more and not peer_more:
        return "the same ops"
    parts = [f"onnxkit has more {', '.join(mine_more)}" if mine_more else "onnxkit has no op in excess"]
    return "; ".join(parts + ([f"{peer.label} has more {', '.join(peer_more)}"] if peer_more else []))


def _contrib_op_cause(mine: ToolRecord, peer: ToolRecord) -> str:
    """The cause when the peer's edge is ONNX Runtime's own fused ops, which onnxkit emits only on request."""
    contrib = sorted(op for op in peer.op_histogram if op.startswith("com.microsoft::") and op not in mine.op_histogram)
    if not contrib:
        return ""
    return (
        f" Cause: {peer.label} emits ONNX Runtime contrib ops ({', '.join(op.split('::')[1] for op in contrib)}); "
        "onnxkit's default `fuse{target=standard}` emits standard ONNX only, so the model runs anywhere, and "
        "ORT makes the same fusions itself when it loads the model (`fuse{target=onnxruntime}` emits them)."
    )


def known_gaps(model_name: str, report: BenchReport) -> tuple[list[str], list[str]]:
    """Where an onnxkit pipeline failed or is worse than the best peer of its class, and, apart, the latency
    differences that are ties on this machine (onnxkit's p50 inside the best peer's own p50..p90 spread)."""
    gaps, ties = [], []
    for record in report.tools:
        if record.runner != "onnxkit":
            continue
        where = f"**{model_name} / {record.spec}**"
        cause = GAP_CAUSES.get((record.spec or "", model_name)) or GAP_CAUSES.get((record.spec or "", "*"))
        float_model = quant_compare.whole_model_float(record)
        cause = cause or (f"the quantize pass kept the float model: {float_model}." if float_model else None)
        suffix = f" Cause: {cause}" if cause else ""
        if not record.ok:
            gaps.append(f"{where}: failed: {record.error}.{suffix}")
            continue
        vs_peer = record.ratios.get("vs_best_peer")
        if not vs_peer:
            continue
        best = record.ratios["best_peer"]
        if (vs_peer.get("nodes") or 0) > 1:
            peer = report.tool(best["nodes"])
            gaps.append(
                f"{where}: {record.nodes} nodes vs {peer.nodes} for {peer.label} "
                f"({_ops_peer_removed(record, peer)}).{suffix or _contrib_op_cause(record, peer)}"
            )
        tied = []
        for key in report.latency_keys:
            ratio = vs_peer["latency"].get(key)
            if ratio is None or ratio <= 1:
                continue
            peer = report.tool(best["latency"][key])
            if record.p50(key) <= peer.latency[key]["p90_ms"]:
                tied.append(f"{key} {ratio:.2f}× {peer.label}")
                continue
            gaps.append(
                f"{where}: latency {key} is {ratio:.2f}× {peer.label}'s, beyond its p90 "
                f"({_ops_peer_removed(record, peer)}).{suffix}"
            )
        if tied:
            ties.append(f"{where}: {', '.join(tied)}")
    return gaps, ties


# ---------------------------------------------------------------------------------------------------------
# Markdown


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    escape = lambda cell: str(cell).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(escape(c) for c in row) + " |" for row in rows),
    ]


def _machine_lines(machine: dict[str, Any], models: Sequence[dict[str, Any]] = ()) -> list[str]:
    versions = ", ".join(f"{name} {v}" for name, v in machine["versions"].items() if v)
    memory = format_bytes(machine["memory_bytes"]) if machine.get("memory_bytes") else "?"
    lines = [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores visible, {memory} RAM; {machine.get('int8', '')}",
        f"- {machine['platform']}, Python {machine['python']}",
        f"- {versions}",
    ]
    # Quantization rows re-measured alone (--quant-only) may come from another machine: INT8 speed depends on it.
    rerun_on: dict[str, list[str]] = {}
    for entry in models:
        other = entry.get("quant_machine")
        if other:
            where = f"{other['cpu']}, {other['cores']} cores visible; {other.get('int8', '')}"
            rerun_on.setdefault(where, []).append(entry["name"])
    lines += [f"- quantization rows of {', '.join(names)} re-measured on: {where}" for where, names in rerun_on.items()]
    return lines


def _headline_rows(models: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for entry in models:
        if "report" not in entry:
            rows.append([entry["name"], "—", entry["error"], "", "", ""])
            continue
        report = BenchReport.from_dict(entry["report"])
        keys = report.latency_keys
        for record in report.tools:
            if record.runner != "onnxkit":
                continue
            vs_original = record.ratios.get("vs_original", {})
            vs_peer = record.ratios.get("vs_best_peer", {})
            best = record.ratios.get("best_peer", {})
            no_peer = "" if vs_peer or not record.ok else f" ({_why_no_peer(record, report)})"
            rows.append(
                [
                    entry["name"],
                    record.spec or "",
                    "ok" if record.ok else "FAILED (see Known gaps)",
                    _ratio(vs_original.get("nodes"))
                    + " / "
                    + _ratio(vs_peer.get("nodes"))
                    + (f" ({best.get('nodes')})" if best.get("nodes") else no_peer),
                    " · ".join(_ratio(vs_original.get("latency", {}).get(k)) for k in (keys[0], keys[-1])),
                    " · ".join(_ratio(vs_peer.get("latency", {}).get(k)) for k in (keys[0], keys[-1])) + no_peer,
                ]
            )
    return rows


def _why_no_peer(record: ToolRecord, report: BenchReport) -> str:
    """Why a pipeline has no best peer to be compared with: every peer of its class failed or broke parity."""
    classes = ("dynamic", "static") if record.klass == "auto" else (record.klass,)
    peers = [p for p in report.tools if p.runner not in ("onnxkit", "original") and p.klass in classes]
    if not peers:
        return "no peer of its class ran"
    failed_parity = [p.label for p in peers if p.ok and not (p.parity or {}).get("passed", True)]
    return (f"{', '.join(failed_parity)} failed parity" if failed_parity else "") or "every peer of its class failed"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def write_markdown(results: dict[str, Any], path: Path, plots: Sequence[str]) -> None:
    settings = results["settings"]
    lines = [
        "# onnxkit benchmark results",
        "",
        f"Generated by `python -m benchmarks{' --quick' if settings['quick'] else ''}` on {results['date']}"
        f" in {results['seconds'] / 60:.0f} min. Do not edit: rerun the suite."
        + ("" if results.get("complete") else " **Partial run**: the steps marked 'not measured' did not run."),
        (
            "These machines are shared and noisy: read medians and ratios taken side by side in one run, not lone times."
            " Latency: ONNX Runtime CPU, default session options (ORT_ENABLE_ALL), median (p50) and p90 of "
            f"at least {settings['repeats']} interleaved rounds (more for fast models, up to {settings['min_seconds']:g} s "
            f"of timing) after {settings['warmup']} warm-up rounds, per batch size (b) and intra-op threads (t). "
            "All-thread runs on a machine whose cores other jobs also use include waits for descheduled worker threads, "
            "so compare tools within one column (same conditions, interleaved) and prefer the one-thread columns. "
            "Peak memory: the transforming process's peak resident set (VmHWM), interpreter and imports included. "
            "Parity: onnxkit.parity against the original with ORT optimizations off (exact: atol 1e-4 "
            "+ rtol 1e-3; quantized: cosine ≥ 0.99)."
        ),
        "",
        "## Machine",
        "",
        *_machine_lines(results["machine"], results["models"]),
        "",
        "## Tools",
        "",
        "- onnxkit pipelines: "
        + ", ".join(f"`{p}`" for p in results["pipelines"])
        + " (parity checked after each pass)",
        *(
            f"- {name} ({results['peer_versions'].get(name) or 'not installed'}): {text}"
            for name, text in PEER_DESCRIPTIONS.items()
        ),
        "",
        (
            "Each onnxkit pipeline is compared with the best peer of its class: `simplify,fuse` with the float tools "
            "(onnxsim, onnxslim, onnxoptimizer, ort-basic, ort-extended), the quantizing pipelines with ORT's plain "
            "quantizer in the same mode."
        ),
        "",
        "## Headline",
        "",
        "Ratios below 1 are better. Latency columns: batch 1 on one thread · the largest batch on all threads.",
        "",
        *markdown_table(
            [
                "model",
                "pipeline",
                "result",
                "nodes × original / × best peer",
                "latency × original",
                "latency × best peer",
            ],
            _headline_rows(results["models"]),
        ),
        "",
    ]
    lines += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += quant_compare.section(results)
    lines += [
        "## Known gaps",
        "",
        (
            "Every place an onnxkit pipeline failed, or is worse than the best peer of its class on node count or "
            "latency (p50 beyond the peer's p90), with its cause."
        ),
        "",
    ]
    gaps, ties = [], []
    for entry in results["models"]:
        if "report" in entry:
            model_gaps, model_ties = known_gaps(entry["name"], BenchReport.from_dict(entry["report"]))
            gaps += model_gaps
            ties += model_ties
        else:
            gaps.append(f"**{entry['name']}**: {entry['error']}")
    lines += [f"- {gap}" for gap in gaps] or ["None: onnxkit matches or beats the best peer everywhere."]
    if ties:
        lines += [
            "",
            ("Slower p50 than the best peer but inside that peer's own p50–p90 spread, a tie on this machine:"),
            "",
        ] + [f"- {tie}" for tie in ties]
    lines += ["", "## Every model × tool", ""]
    for entry in results["models"]:
        lines += [f"### {entry['name']}", ""]
        if "report" not in entry:
            lines += [f"Not measured: {entry['error']}", ""]
            continue
        report = BenchReport.from_dict(entry["report"])
        keys = report.latency_keys
        lines += [entry["description"], ""]
        rows = []
        for record in report.tools:
            cells = summary_cells(record, keys)
            if not record.ok:
                cells[1] = f"FAILED: {record.error}"
            rows.append(cells)
        lines += markdown_table(summary_headers(keys), rows) + [""]
        lines += [f"- note: {note}" for note in report.notes]
        lines += [""]
    lines += _scale_section(results.get("scale")) + _calibration_section(results.get("calibration"))
    lines += _training_section(results.get("training"))
    from benchmarks.real.render import carry_section

    path.write_text(carry_section(path, "\n".join(lines).rstrip() + "\n"))


def _scale_section(scale: dict[str, Any] | None) -> list[str]:
    lines = ["## Scale: a model over 2 GB with external data", ""]
    if scale is None:
        return lines + ["Not run (it is opt-in: `python -m benchmarks --scale`).", ""]
    if "error" in scale:
        return lines + [f"Failed: {scale['error']}", ""]
    shape = scale["model"]
    lines += [
        (
            f"{shape['blocks']} blocks of MatMul {shape['hidden']}×{shape['hidden']} + Add + Relu + Identity, "
            f"{format_bytes(shape['data_bytes'])} of external data, {shape['nodes']} nodes. onnxkit ran "
            "`simplify,fuse` and `quantize{mode=dynamic}` with parity checks off, as the peers check nothing; "
            "each quantized model was then checked by `onnx.checker` and loaded in ONNX Runtime (valid)."
        ),
        "",
    ]
    rows = [
        [
            t["label"],
            "ok" if t["ok"] else f"FAILED: {t['error']}",
            str(t.get("nodes") or "—"),
            format_bytes(t.get("file_bytes")),
            t.get("valid", "—"),
            _seconds(t.get("transform_seconds")),
            _seconds(t.get("process_seconds")),
            format_bytes(t.get("peak_rss_bytes")),
        ]
        for t in scale["tools"]
    ]
    return (
        lines
        + markdown_table(
            ["tool", "result", "nodes", "output", "model", "transform", "process wall", "peak memory"], rows
        )
        + [""]
        + _huge_model_section()
    )


def _huge_model_section() -> list[str]:
    """Every command on the same model, parity on (``python -m benchmarks.huge_model``), when it was run."""
    from benchmarks.huge_model import DEFAULT_OUT, markdown

    if not DEFAULT_OUT.exists():
        return []
    return ["### Every command on it, as a user runs them", "", markdown(json.loads(DEFAULT_OUT.read_text())), ""]


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _calibration_section(calibration: dict[str, Any] | None) -> list[str]:
    lines = ["## Calibration memory", ""]
    if calibration is None:
        return lines + ["Not run.", ""]
    if "error" in calibration:
        return lines + [f"Failed: {calibration['error']}", ""]
    lines += [
        (
            f"Static quantization of the {calibration['model']}: peak memory of the whole process at "
            "two calibration-set sizes."
        ),
        "",
    ]
    rows = [
        [
            r["tool"],
            r["method"],
            str(r["samples"]),
            "ok" if r["ok"] else f"FAILED: {r['error']}",
            format_bytes(r["peak_rss_bytes"]),
            _seconds(r["seconds"]),
        ]
        for r in calibration["rows"]
    ]
    return lines + markdown_table(["tool", "method", "samples", "result", "peak memory", "time"], rows) + [""]


def _training_section(training: dict[str, Any] | None) -> list[str]:
    lines = ["## Training-loop overhead", ""]
    if training is None:
        return lines + ["Not run.", ""]
    if "error" in training:
        return lines + [f"Failed: {training['error']}", ""]
    per_epoch = training["seconds_per_epoch"]
    return lines + [
        (
            f"`onnxkit.pytorch.train.Trainer` against a hand-written loop (same model, data, optimizer, batch size; one thread; "
            f"{training['train_samples']} digits per epoch; median of 3 alternating runs): "
            f"**{training['ratio']:.2f}×** the hand-written loop's time per epoch "
            f"({per_epoch['trainer']:.3f} s vs {per_epoch['hand-written']:.3f} s)."
        ),
        "",
    ]


# ---------------------------------------------------------------------------------------------------------
# Plots


def write_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """Latency ratio and size ratio against the original, one panel per model, one bar per tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = [
        (entry["name"], BenchReport.from_dict(entry["report"])) for entry in results["models"] if "report" in entry
    ]
    if not reports:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, title, pick in (
        (
            "latency",
            "latency ÷ original (p50, batch 1, 1 thread); lower is better",
            lambda r, keys: r.ratios.get("vs_original", {}).get("latency", {}).get(keys[0]),
        ),
        (
            "size",
            "file size ÷ original; lower is better",
            lambda r, keys: r.ratios.get("vs_original", {}).get("file_bytes"),
        ),
    ):
        columns = min(len(reports), 4)
        rows = (len(reports) + columns - 1) // columns
        figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
        for axis, (name, report) in zip(axes.flat, reports):
            tools = [r for r in report.tools if r.label != "original"]
            values = [pick(r, report.latency_keys) for r in tools]
            colors = ["tab:blue" if r.runner == "onnxkit" else "tab:gray" for r in tools]
            axis.barh([_short(r.label) for r in tools], [v or 0 for v in values], color=colors)
            for y, value in enumerate(values):
                axis.text(value or 0, y, " failed" if value is None else f" {value:.2f}", va="center", fontsize=6)
            axis.axvline(1.0, color="black", linewidth=0.6)
            axis.set_title(name, fontsize=8)
            axis.tick_params(labelsize=6)
            axis.invert_yaxis()
        for axis in list(axes.flat)[len(reports) :]:
            axis.axis("off")
        figure.suptitle(title, fontsize=9)
        figure.tight_layout()
        path = folder / f"{metric}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        written.append(path)
    return written


def _short(label: str) -> str:
    """``onnxkit[simplify,fuse,quantize{mode=static}]`` → ``onnxkit static``: labels that fit a plot."""
    if not label.startswith("onnxkit["):
        return label
    mode = "static" if "mode=static" in label else "dynamic" if "mode=dynamic" in label else "float"
    return f"onnxkit {mode}"
