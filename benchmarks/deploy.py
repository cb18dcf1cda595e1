"""The real-world corpus through ``onnxkit deploy-check``: OpenVINO and ONNX Runtime Mobile.

    python -m benchmarks.deploy [--only a,b] [--targets openvino,ort-mobile] [--samples 8] [--json out.json] [--resume]

Each model runs ``deploy-check --json`` as a user would, in its own subprocess with a timeout (a runtime that
crashes costs one row), on its calibration samples (``calib/<name>.npz``, real-looking inputs of the model's
domain) where the corpus has them, else on onnxkit's probed synthetic inputs. The JSON holds one record per
model and target: operator support (unsupported ops and counts), whether it ran, and the parity figures
against ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.real.calibration import calibration_path
from benchmarks.real.corpus import cache_dir, load_manifest

DEFAULT_JSON = Path(__file__).with_name("results-deploy.json")


def models(only: list[str] | None) -> list[tuple[str, Path]]:
    """Every corpus model in the cache (manifest order), then our own exports; ``only`` names some."""
    public = [(m.name, m.path()) for m in load_manifest() if m.path().is_file()]
    own = [(p.stem, p) for p in sorted((cache_dir() / "own").glob("*.onnx"))]
    return [(name, path) for name, path in public + own if not only or name in only]


def check(name: str, path: Path, target: str, samples: int, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "onnxkit", "deploy-check", str(path), "--target", target, "--json",
               "--samples", str(samples)]
    data = calibration_path(name)
    if data.is_file():
        command += ["--data", str(data)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "target": target, "error": f"timed out after {timeout:.0f} s"}
    record: dict[str, Any] = {"model": name, "target": target, "exit_code": done.returncode,
                              "seconds": round(time.perf_counter() - started, 1),
                              "data": "calibration samples" if data.is_file() else "probed synthetic"}
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        record["error"] = lines[-1] if lines else f"exit code {done.returncode}, no output"
        return record
    support, parity = report["support"], report["parity"]
    record.update(passed=report["passed"], supported=support["supported"], nodes=support["nodes"],
                  unsupported_ops=support["unsupported_ops"], model_problems=support["model_problems"],
                  ran_on=report["runtime"], skipped_run=report["skipped_run"])
    if parity is not None:
        record.update(parity_passed=parity["passed"], min_cosine=parity["min_cosine"],
                      max_abs_error=parity["max_abs_error"], samples=parity["samples"], parity=parity["summary"])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Comma-separated model names.")
    parser.add_argument("--targets", default="openvino,ort-mobile")
    parser.add_argument("--samples", type=int, default=8, help="Samples compared per model.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds per model and target.")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--resume", action="store_true", help="Keep the records already in --json; run the rest.")
    args = parser.parse_args()
    records = json.loads(args.json.read_text()) if args.resume and args.json.is_file() else []
    done = {(r["model"], r["target"]) for r in records}
    for name, path in models(args.only.split(",") if args.only else None):
        for target in args.targets.split(","):
            if (name, target) in done:
                continue
            record = check(name, path, target, args.samples, args.timeout)
            records.append(record)
            verdict = record.get("error") or ("PASSED" if record.get("passed") else "FAILED")
            print(f"{name:40} {target:11} {verdict} {record.get('parity', '')[:90]}", flush=True)
            args.json.write_text(json.dumps(records, indent=1) + "\n")  # a run cut short keeps what it did
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
