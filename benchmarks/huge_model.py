"""Every command on a model past protobuf's 2 GB limit (issue 12): time, peak memory, output size.

``python -m benchmarks.huge_model [--gb 2.3] [--folder DIR]`` generates the suite's scale model (MatMul blocks,
weights in external data; ``benchmarks.measure.generate_large_model``), then runs, each in its own process
and from a folder other than the model's: ``optimize`` with ``cleanup``, ``simplify,fuse`` and
``quantize{mode=dynamic}`` (parity checks on, as a user runs them), ``simplify,fuse`` with ``--check off`` (the
pass work alone: load, passes, verification, save), ``inspect``, and ``check`` of the original against the
cleaned-up output. Each output is then loaded in ONNX Runtime, in a process of its own.

Two peaks per child, read by the child itself (``ru_maxrss`` would carry the parent's high-water mark across
``exec``): ``VmHWM``, the most resident memory, which counts the pages of a mapped weight file (ONNX Runtime and
onnx_ir map external data) once per mapping, though they are the page cache's, shared and reclaimable; and the
most private memory (``RssAnon``, sampled every 20 ms), what the process alone holds. Sizes count the model
file and its external data. Results go to ``benchmarks/results-huge.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "results-huge.json"

# Runs the onnxkit CLI (or an ORT load) and writes its peaks to $ONNXKIT_PEAK_FILE at exit: VmHWM, and the
# most RssAnon seen by a thread sampling every 20 ms (the kernel keeps no high-water mark of private memory).
_CHILD = """
import atexit, json, os, sys, threading, time
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
peak_anon = [0]
def _sample():
    while True:
        peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
        time.sleep(0.02)
threading.Thread(target=_sample, daemon=True).start()
def _peak():
    peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
    json.dump({"hwm": _status("VmHWM"), "anon": peak_anon[0]}, open(os.environ["ONNXKIT_PEAK_FILE"], "w"))
atexit.register(_peak)
if sys.argv[1] == "ort-load":
    import onnxruntime as ort
    ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
else:
    from onnxkit.cli import main
    main(sys.argv[1:])
"""


def run_measured(args: list[str], cwd: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one command in a child; its exit code, wall time, peak memory and the last line of its stderr."""
    with tempfile.NamedTemporaryFile(suffix=".peak", delete=False) as peak_file:
        peak_path = Path(peak_file.name)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ONNXKIT_PEAK_FILE": str(peak_path)},
        check=False,
    )
    seconds = time.perf_counter() - started
    peaks = json.loads(peak_path.read_text()) if peak_path.read_text().strip() else {}
    peak_path.unlink()
    stderr = done.stderr.strip().splitlines()
    return {
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peaks.get("hwm"),
        "peak_anon_bytes": peaks.get("anon"),
        "error": stderr[0] if done.returncode and stderr else None,
    }


def size_with_external_data(path: Path) -> int | None:
    """The model file plus the external data files it names."""
    if not path.exists():
        return None
    import onnx

    from onnxkit.modelio import iter_all_tensors

    proto = onnx.load(str(path), load_external_data=False)
    files = {
        entry.value
        for tensor in iter_all_tensors(proto.graph)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return path.stat().st_size + sum((path.parent / name).stat().st_size for name in files)


def run_all(folder: Path, gigabytes: float) -> dict[str, Any]:
    from benchmarks.measure import generate_large_model

    models, elsewhere = folder / "models", folder / "elsewhere"
    models.mkdir(parents=True, exist_ok=True)
    elsewhere.mkdir(exist_ok=True)
    source = models / "huge.onnx"
    started = time.perf_counter()
    shape = generate_large_model(source, int(gigabytes * 2**30))
    result: dict[str, Any] = {
        "model": {
            **shape,
            "bytes": size_with_external_data(source),
            "generate_seconds": round(time.perf_counter() - started, 1),
        },
        "runs": [],
    }
    cleaned = models / "cleanup.onnx"
    commands = [
        ("optimize cleanup", ["optimize", str(source), "--passes", "cleanup", "-o", str(cleaned)], cleaned),
        (
            "optimize simplify,fuse",
            ["optimize", str(source), "--passes", "simplify,fuse", "-o", str(models / "simplified.onnx")],
            models / "simplified.onnx",
        ),
        (
            "optimize simplify,fuse --check off",
            [
                "optimize",
                str(source),
                "--passes",
                "simplify,fuse",
                "--check",
                "off",
                "-o",
                str(models / "unchecked.onnx"),
            ],
            models / "unchecked.onnx",
        ),
        (
            "optimize quantize{mode=dynamic}",
            ["optimize", str(source), "--passes", "quantize{mode=dynamic}", "-o", str(models / "int8.onnx")],
            models / "int8.onnx",
        ),
        ("inspect", ["inspect", str(source)], None),
        ("check original vs cleanup", ["check", str(source), str(cleaned)], None),
    ]
    for label, args, output in commands:
        print(f"huge model: {label}", file=sys.stderr, flush=True)
        record: dict[str, Any] = {"command": label, **run_measured(args, elsewhere)}
        if output is not None and output.exists():
            record["output_bytes"] = size_with_external_data(output)
            record["output_external_data"] = any(output.parent.glob(f"{output.name}*.data"))
            loaded = run_measured(["ort-load", str(output)], elsewhere)
            record["ort_loads"] = loaded["exit_code"] == 0
            record["ort_load_peak_rss_bytes"] = loaded["peak_rss_bytes"]
            record["ort_load_peak_anon_bytes"] = loaded["peak_anon_bytes"]
        result["runs"].append(record)
    return result


def markdown(result: dict[str, Any]) -> str:
    def gb(value: int | None) -> str:
        return "—" if value is None else f"{value / 2**30:.2f} GB"

    model = result["model"]
    lines = [
        (
            f"{model['blocks']} blocks of MatMul {model['hidden']}×{model['hidden']} + Add + Relu + Identity, "
            f"{gb(model['bytes'])} with external data, {model['nodes']} nodes; each command in its own process, "
            "run from another folder, parity checks on unless said. Peak resident memory (VmHWM) counts the pages of "
            "a mapped weight file once per mapping, though they are the page cache's (shared, reclaimable); peak "
            "private memory (RssAnon, sampled every 20 ms) is what the process alone holds."
        ),
        "",
        (
            "| command | exit | wall | peak resident | peak private | output size (with external data) "
            "| external data | loads in ORT (peak private) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        ort_load = {True: "yes", False: "no", None: "—"}[run.get("ort_loads")]
        if run.get("ort_loads") and run.get("ort_load_peak_anon_bytes") is not None:
            ort_load += f" ({gb(run['ort_load_peak_anon_bytes'])})"
        external = {True: "yes", False: "no", None: "—"}[run.get("output_external_data")]
        wall = "—" if run.get("seconds") is None else f"{run['seconds']} s"
        lines.append(
            f"| {run['command']} | {run['exit_code']} | {wall} | {gb(run['peak_rss_bytes'])} | "
            f"{gb(run.get('peak_anon_bytes'))} | {gb(run.get('output_bytes'))} | {external} | {ort_load} |"
        )
    lines += [""] + [f"- note: {note}" for note in result.get("notes", [])] if result.get("notes") else []
    return "\n".join(lines)


@click.command()
@click.option("--gb", "gigabytes", default=2.3, show_default=True, help="Size of the generated weights.")
@click.option("--folder", type=click.Path(path_type=Path), help="Where to generate (default: a temporary folder).")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True)
def main(gigabytes: float, folder: Path | None, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="onnxkit-huge-") as scratch:
        result = run_all(folder or Path(scratch), gigabytes)
    out.write_text(json.dumps(result, indent=2) + "\n")
    click.echo(markdown(result))


if __name__ == "__main__":
    main()
