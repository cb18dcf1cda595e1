"""Running one job in a child process (``python -m onnxkit.bench job.json``), under a timeout.

Each tool transforms the model in its own subprocess, so one tool's crash, leak or hang costs only its own row.
Its peak memory is the child's ``VmHWM`` (peak resident set): the child's ``ru_maxrss`` is not usable, since
Linux carries the parent's high-water mark across ``vfork``+``exec``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from onnxkit import runtime
from onnxkit.errors import OnnxkitError


def first_error_line(error: BaseException) -> str:
    """One line that says what went wrong: the message of a user error, else the type and first line."""
    if isinstance(error, OnnxkitError):
        return error.message.strip().splitlines()[0] if error.message.strip() else type(error).__name__
    return f"{type(error).__name__}: {runtime.error_line(error)}" if str(error).strip() else type(error).__name__


def peak_rss_bytes(pid: int | str = "self") -> int | None:
    """Peak resident set (``VmHWM``) of a live process, in bytes; None when it cannot be read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _transform_job(job: dict[str, Any]) -> dict[str, Any]:
    from onnxkit.bench.peers import RUNNERS, import_before_timing

    tool = job["tool"]
    import_before_timing(tool)
    started = time.perf_counter()
    notes = RUNNERS[tool["runner"]](Path(job["source"]), Path(job["output"]), tool, job)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "notes": notes, "peak_rss_bytes": peak_rss_bytes()}


# ---------------------------------------------------------------------------------------------------------
# Running children


@dataclasses.dataclass
class ChildOutcome:
    result: dict[str, Any] | None
    error: str | None
    wall_seconds: float
    peak_rss_bytes: int | None


def run_child(job: dict[str, Any], workdir: Path, name: str, timeout: float) -> ChildOutcome:
    """Run ``job`` in ``python -m onnxkit.bench`` with a timeout, polling the child's peak memory."""
    job_path, result_path = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    log_path = workdir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps({**job, "result": str(result_path)}))
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "onnxkit.bench", str(job_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        polled_peak = None
        timed_out = False
        while child.poll() is None:
            polled_peak = peak_rss_bytes(child.pid) or polled_peak
            if time.perf_counter() - started > timeout:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                timed_out = True
                break
            time.sleep(0.05)
    wall = time.perf_counter() - started
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if timed_out:
        return ChildOutcome(None, f"timed out after {timeout:.0f} s", wall, polled_peak)
    if result is not None and "error" not in result:
        return ChildOutcome(result, None, wall, result.get("peak_rss_bytes") or polled_peak)
    if result is not None:
        return ChildOutcome(None, result["error"], wall, result.get("peak_rss_bytes") or polled_peak)
    tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    code = child.returncode
    cause = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return ChildOutcome(None, f"{cause}" + (f": {tail[-1].strip()}" if tail else ""), wall, polled_peak)


def worker(job_path: str) -> int:
    """The child's side: run the job in ``job_path``, write its result (or its one-line error) where it says."""
    from onnxkit.bench.measure import measure_job

    job = json.loads(Path(job_path).read_text())
    actions = {"transform": _transform_job, "measure": measure_job}
    try:
        result = actions[job["action"]](job)
    except Exception as e:  # any failure of a tool is a row in the table, not a crash of the benchmark
        traceback.print_exc()
        Path(job["result"]).write_text(json.dumps({"error": first_error_line(e), "peak_rss_bytes": peak_rss_bytes()}))
        return 1
    Path(job["result"]).write_text(json.dumps(result))
    return 0
