"""The tools as their users run them, each a function ``(source, output, tool, job) -> notes``, called inside
a child process (``onnxkit.bench.child``): default settings, public entry points, files in and out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxkit import runtime
from onnxkit.modelio import EXTERNAL_DATA_THRESHOLD, iter_all_tensors


def _save_proto(model: onnx.ModelProto, output: Path) -> None:
    """Save as a user of the peer would: in one file, or with external data when protobuf cannot hold it."""
    large = sum(t.ByteSize() for t in model.graph.initializer) >= EXTERNAL_DATA_THRESHOLD
    onnx.save(model, str(output), save_as_external_data=large, location=output.name + ".data" if large else None)


def _has_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_all_tensors(proto.graph))


def _run_onnxkit(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    from onnxkit.pipeline import Pipeline

    data = None
    if job.get("calibration_dir"):
        from onnxkit.data import load_dataset

        data = load_dataset(job["calibration_dir"])
    result = Pipeline.parse(tool["spec"]).run(source, data=data, dims=job.get("dims") or {}, check=job["check"])
    result.save(output)
    return [f"{p.name}: {'; '.join(p.stats)}" for p in result.report.passes if p.stats]


def _run_onnxsim(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    import onnxsim

    model, check_ok = onnxsim.simplify(str(source), output_path=str(output))
    if not output.exists():
        _save_proto(model, output)
    return [] if check_ok else ["onnxsim's own output check failed"]


def _run_onnxslim(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    import onnxslim

    onnxslim.slim(str(source), str(output))
    return []


def _run_onnxoptimizer(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    import onnxoptimizer

    _save_proto(onnxoptimizer.optimize(onnx.load(str(source))), output)
    return []


def _run_ort_optimizer(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    # ort-basic, ort-extended; external data as the source has it, like a user saving the optimized model
    level = tool["runner"].removeprefix("ort-")
    runtime.optimize_offline(source, output, level, external_data=_has_external_data(source))
    return []


def _run_ort_quantize(source: Path, output: Path, tool: dict[str, Any], job: dict[str, Any]) -> list[str]:
    from onnxruntime import quantization

    large = _has_external_data(source)
    if tool["klass"] == "dynamic":
        quantization.quantize_dynamic(source, output, use_external_data_format=large)
        return []
    samples = [dict(np.load(path, allow_pickle=False)) for path in sorted(Path(job["calibration_dir"]).glob("*.npz"))]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.remaining, None)

    method = job.get("calibrate_method") or "minmax"
    calibrate_method = {"minmax": quantization.CalibrationMethod.MinMax,
                        "entropy": quantization.CalibrationMethod.Entropy,
                        "percentile": quantization.CalibrationMethod.Percentile}[method]
    quantization.quantize_static(source, output, Reader(), use_external_data_format=large,
                                 calibrate_method=calibrate_method)
    return [f"calibrated ({method}) on {len(samples)} samples"]


RUNNERS: dict[str, Callable[[Path, Path, dict[str, Any], dict[str, Any]], list[str]]] = {
    "onnxkit": _run_onnxkit,
    "onnxsim": _run_onnxsim,
    "onnxslim": _run_onnxslim,
    "onnxoptimizer": _run_onnxoptimizer,
    "ort-basic": _run_ort_optimizer,
    "ort-extended": _run_ort_optimizer,
    "ort-quantize": _run_ort_quantize,
}
# Imported before the clock starts: import time is the same for every model and is not transform time.
RUNNER_IMPORTS = {
    "onnxkit": ["onnxkit.pipeline"],
    "onnxsim": ["onnxsim"],
    "onnxslim": ["onnxslim"],
    "onnxoptimizer": ["onnxoptimizer"],
    "ort-basic": ["onnxruntime"],
    "ort-extended": ["onnxruntime"],
    "ort-quantize": ["onnxruntime.quantization"],
}

