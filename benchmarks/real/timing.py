"""Where ``simplify,fuse`` spends its time on the real corpus, beside onnxsim on the same models in the same run.

``python -m benchmarks.real.timing [--corpus public|holdout] [--only a,b] [--repeat 3]`` runs, per model,
onnxkit's ``simplify,fuse`` (the CLI in a subprocess, exactly as the sweep runs it, parity included) and onnxsim
(through the same peer runner as the sweep), alternating, ``--repeat`` times each. It prints per model the median
seconds of both (after imports, as the sweep counts them), their ratio, and onnxkit's time split by step from its
own report, then the median ratio over the models and how many are over 2x and 5x. It publishes nothing: the
sweep (``python -m benchmarks --real``) owns RESULTS.md; this is the quick loop for working on the time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.real import own
from benchmarks.real.corpus import cache_dir, load_manifest
from benchmarks.real.sweep import Run, SweepModel, run_onnxkit, run_peer

SPEC = "simplify,fuse"
ONNXSIM = Run("onnxsim", "exact", runner="onnxsim")


def _split(report: dict[str, Any]) -> dict[str, float]:
    """onnxkit's seconds by step, summed over its passes: the run's own steps (serializing its input, the
    baseline checks, choosing parity inputs) and each pass's (transform, serialize, checker, shape inference,
    parity sessions and runs, ...)."""
    split: dict[str, float] = {}

    def add(prefix: str, timings: dict[str, Any]) -> None:
        for key, value in timings.items():
            if isinstance(value, dict):
                add(f"{key}.", value)
            elif isinstance(value, (int, float)):
                split[prefix + key] = split.get(prefix + key, 0.0) + float(value)

    add("run.", report.get("timings", {}))
    for one in report.get("passes", []):
        add("", one.get("timings", {}))
    return split


def time_model(model: SweepModel, repeat: int, scratch: Path, timeout: float = 300.0) -> dict[str, Any]:
    ours: list[float] = []
    theirs: list[float] = []
    splits: list[dict[str, float]] = []
    for attempt in range(repeat):
        folder = scratch / f"{model.name}-{attempt}"
        record = run_onnxkit(model, SPEC, folder / "onnxkit", None, timeout)
        report_path = folder / "onnxkit" / "report.json"
        if record.get("seconds") is not None and record.get("exit_code") == 0:
            ours.append(record["seconds"])
            if report_path.exists():
                splits.append(_split(json.loads(report_path.read_text())))
        peer = run_peer(model, ONNXSIM, folder / "onnxsim", folder, timeout)
        if peer.get("seconds") is not None and peer.get("finished"):
            theirs.append(peer["seconds"])
        shutil.rmtree(folder, ignore_errors=True)
    entry: dict[str, Any] = {"name": model.name, "onnxkit": ours, "onnxsim": theirs}
    if ours and theirs:
        entry["ratio"] = statistics.median(ours) / statistics.median(theirs)
    if splits:
        keys = sorted({k for s in splits for k in s})
        entry["split"] = {k: statistics.median(s.get(k, 0.0) for s in splits) for k in keys}
        # What no step accounts for: loading, validation, saving, the report.
        entry["split"]["rest"] = statistics.median(ours) - sum(entry["split"].values())
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=("public", "holdout"), default="public")
    parser.add_argument("--only", default="", help="comma-separated model names (default: every cached model)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-mb", type=float, default=30.0, help="public corpus: models up to this size")
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n] or None
    cache = cache_dir()
    # Our own exports (own_*) are in the public corpus's sweep too, in their own folder of the cache.
    exports = sorted(own.own_dir(cache).glob("own_*.onnx")) if args.corpus == "public" else []
    exports = [path for path in exports if only is None or path.stem in only]
    published = [n for n in only if not n.startswith("own_")] if only else None
    manifest = (
        load_manifest(
            only=published, max_mb=None if only or args.corpus == "holdout" else args.max_mb, corpus=args.corpus
        )
        if published is None or published
        else []
    )
    models = [SweepModel(m.name, m.path(cache), "public", m.license, "", False) for m in manifest]
    models += [SweepModel(path.stem, path, "own", "ours", "", False) for path in exports]
    models = [m for m in models if m.path.exists()]
    records = []
    with tempfile.TemporaryDirectory(prefix="onnxkit-timing-") as scratch:
        for model in models:
            entry = time_model(model, args.repeat, Path(scratch))
            records.append(entry)
            ratio = f"{entry['ratio']:6.2f}x" if "ratio" in entry else "   n/a "
            ours = f"{statistics.median(entry['onnxkit']):.3f}" if entry["onnxkit"] else "fail"
            theirs = f"{statistics.median(entry['onnxsim']):.3f}" if entry["onnxsim"] else "fail"
            top = sorted(entry.get("split", {}).items(), key=lambda kv: -kv[1])[:5]
            parts = " ".join(f"{k}={v:.3f}" for k, v in top)
            print(f"{ratio} {model.name:40s} onnxkit {ours} s  onnxsim {theirs} s  | {parts}", flush=True)
    ratios = [r["ratio"] for r in records if "ratio" in r]
    if ratios:
        print(
            f"median onnxkit/onnxsim {statistics.median(ratios):.2f}x over {len(ratios)} models; "
            f"over 2x: {sum(r > 2 for r in ratios)}, over 5x: {sum(r > 5 for r in ratios)}"
        )
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
