"""The tools as their users run them, each a function ``(source, output, tool, job) -> notes``, called inside
a child process (``onnxkit.bench.child``): default settings, public entry points, files in and out, through
the runners the passes use too (``onnxkit.external_tools``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit import external_tools, runtime


def _run_onnxkit(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    from onnxkit.pipeline import Pipeline

    data = None
    if job.get("calibration_dir"):
        from onnxkit.data import load_dataset

        data = load_dataset(job["calibration_dir"])
    result = Pipeline.parse(tool["spec"]).run(source, data=data, dims=job.get("dims") or {}, check=job["check"])
    result.save(output)
    return [f"{p.name}: {'; '.join(p.stats)}" for p in result.report.passes if p.stats]


def _simplifier(name: str) -> Callable[[Path, Path, dict[str, Any], dict[str, Any]], list[str]]:
    def run(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
        return list(external_tools.SIMPLIFIERS[name](source, output).notes)

    return run


def _run_ort_optimizer(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    # ort-basic, ort-extended; external data as the source has it, like a user saving the optimized model
    level = tool["runner"].removeprefix("ort-")
    runtime.optimize_offline(source, output, level, external_data=external_tools.needs_external_data(source))
    return []


def _run_ort_quantize(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    if tool["klass"] == "dynamic":
        external_tools.run_ort_quantize(source, output, "dynamic")
        return []
    samples = [dict(np.load(path, allow_pickle=False)) for path in sorted(Path(job["calibration_dir"]).glob("*.npz"))]
    from onnxruntime.quantization import CalibrationMethod

    method = job.get("calibrate_method") or "minmax"
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    external_tools.run_ort_quantize(source, output, "static", samples=samples, calibrate_method=calibrate_method)
    return [f"calibrated ({method}) on {len(samples)} samples"]


RUNNERS: dict[str, Callable[[Path, Path, dict[str, Any], dict[str, Any]], list[str]]] = {
    "onnxkit": _run_onnxkit,
    **{name: _simplifier(name) for name in external_tools.SIMPLIFIERS},
    "ort-basic": _run_ort_optimizer,
    "ort-extended": _run_ort_optimizer,
    "ort-quantize": _run_ort_quantize,
}
# Imported before the clock starts: import time is the same for every model and is not transform time.
RUNNER_IMPORTS = {
    "onnxkit": ["onnxkit.pipeline", "onnxkit.parity", "onnxkit.data", "onnxruntime"],
    **external_tools.TOOL_IMPORTS,
    "ort-basic": ["onnxruntime"],
    "ort-extended": ["onnxruntime"],
}


def import_before_timing(tool: dict[str, Any]) -> None:
    """Import what ``tool`` will import anyway, before its clock starts: ``RUNNER_IMPORTS``, and for onnxkit the
    classes of the passes in its spec (parsing it imports them), as the real-corpus sweep does
    (``benchmarks/real/timed_cli.py``). Without them onnxkit's time held imports the peers' does not: the quantize
    pass's import of ``onnxruntime.quantization``, done before the clock for ORT's quantizer, counted against
    onnxkit (digits-cnn static: 0.87 s against ORT's 0.07 s, most of it imports). A spec that does not parse is
    left for the run to report, inside the clock."""
    for module in RUNNER_IMPORTS[tool["runner"]]:
        __import__(module)
    if tool["runner"] == "onnxkit":
        from onnxkit.errors import OnnxkitError
        from onnxkit.pipeline import Pipeline

        try:
            Pipeline.parse(tool["spec"])
        except OnnxkitError:
            pass
