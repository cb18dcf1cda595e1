"""The entry points: ``run_transform`` (one tool, one child) and ``run_bench`` (every tool, then one measuring
child)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from onnxkit import modelio
from onnxkit.bench.child import run_child
from onnxkit.bench.facts import machine_description, model_file_bytes, model_op_histogram
from onnxkit.bench.inputs import load_inputs, synthetic_inputs
from onnxkit.bench.plan import CALIBRATION_SAMPLES, PARITY_SAMPLES, Tool, plan_tools
from onnxkit.bench.report import BenchReport, ToolRecord, compute_ratios
from onnxkit.errors import SpecError


def run_transform(
    tool: Tool,
    source: Path,
    output: Path,
    *,
    timeout: float,
    check: str = "each",
    dims: dict[str, int] | None = None,
    calibration_dir: Path | None = None,
    calibrate_method: str | None = None,
) -> ToolRecord:
    """Run one tool on ``source`` in a child process, writing ``output``; node count and size are filled in.

    ``calibrate_method`` (minmax, entropy, percentile) overrides ORT's default for ``ort-quantize-static``.
    """
    record = ToolRecord(tool.label, tool.runner, tool.klass, tool.spec)
    job = {
        "action": "transform",
        "tool": dataclasses.asdict(tool),
        "source": str(source.resolve()),
        "output": str(output),
        "check": check,
        "dims": dims or {},
        "calibrate_method": calibrate_method,
        "calibration_dir": str(calibration_dir) if calibration_dir is not None else None,
    }
    outcome = run_child(job, output.parent, output.stem, timeout)
    record.process_seconds = outcome.wall_seconds
    record.peak_rss_bytes = outcome.peak_rss_bytes
    if outcome.error is not None or not output.exists():
        record.ok, record.error = False, outcome.error or "the tool wrote no model"
        return record
    assert outcome.result is not None
    record.transform_seconds = outcome.result["seconds"]
    record.notes = outcome.result["notes"]
    record.op_histogram = model_op_histogram(output)
    record.nodes = sum(record.op_histogram.values())
    record.file_bytes = model_file_bytes(output)
    return record


def run_bench(
    model: str | os.PathLike[str],
    passes: str | Sequence[str],
    *,
    data: str | os.PathLike[str] | None = None,
    peers: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    threads: Sequence[int] | None = None,
    repeats: int = 20,
    warmup: int = 3,
    min_seconds: float = 1.0,
    timeout: float = 600.0,
    dims: dict[str, int] | None = None,
    check: str = "each",
    measure: bool = True,
    workdir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run onnxkit (one or more pipeline specs) and the peers on ``model``; measure each result.

    ``data`` is an ``.npz`` with one array per model input (samples along axis 0) and optionally
    ``labels``, which turns on accuracy; without it, seeded synthetic inputs are used. ``threads``
    defaults to ``(1, all cores)``. Latency takes at least ``repeats`` interleaved rounds, more for fast
    models until ``min_seconds`` of timing (at most 10× ``repeats``). ``measure=False`` stops after the
    transforms (for models too large to time). ``progress`` is called with a line before each step.
    """
    source = Path(model)
    proto = modelio.read_model_proto(source)  # a missing, unreadable or broken file: one line, before any work
    specs = [passes] if isinstance(passes, str) else list(passes)
    tools, notes = plan_tools(specs, peers)
    threads = list(threads) if threads else sorted({1, os.cpu_count() or 1})
    if repeats < 1 or warmup < 0:
        raise SpecError("repeats must be at least 1 and warmup at least 0")
    say = progress or (lambda line: None)
    inputs = load_inputs(data, proto) if data is not None else synthetic_inputs(source, dims or {})

    owned_tmp = None
    if workdir is None:
        owned_tmp = tempfile.TemporaryDirectory(prefix="onnxkit-bench-")
        workdir = owned_tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        calibration_dir = None
        if any(t.klass == "static" for t in tools):
            calibration_dir = work / "calibration"
            inputs.write_samples(calibration_dir, CALIBRATION_SAMPLES)
        inputs_path = work / "inputs.npz"
        inputs.save(inputs_path)

        reference = ToolRecord("original", "original", "reference")
        records = [reference]
        outputs: dict[str, str] = {"original": str(source)}
        for index, tool in enumerate(tools):
            say(f"{source.name}: {tool.label}")
            output = work / f"{index:02d}-{tool.runner}.onnx"
            records.append(
                run_transform(
                    tool,
                    source,
                    output,
                    timeout=timeout,
                    check=check,
                    dims=dims,
                    calibration_dir=calibration_dir if tool.klass == "static" else None,
                )
            )
            if records[-1].ok:
                outputs[tool.label] = str(output)

        reference.op_histogram = model_op_histogram(source)
        reference.nodes = sum(reference.op_histogram.values())
        reference.file_bytes = model_file_bytes(source)

        if measure:
            say(f"{source.name}: measuring {len(outputs)} models")
            kinds = {r.label: "exact" if r.klass in ("exact", "reference") else "lossy" for r in records}
            job = {
                "action": "measure",
                "models": outputs,
                "reference": "original",
                "inputs": str(inputs_path),
                "kinds": kinds,
                "threads": threads,
                "batch_sizes": list(batch_sizes),
                "repeats": repeats,
                "warmup": warmup,
                "min_seconds": min_seconds,
                "parity_samples": PARITY_SAMPLES,
            }
            outcome = run_child(job, work, "measure", timeout * 2)
            if outcome.result is None:
                notes.append(f"measuring failed: {outcome.error}")
            else:
                for record in records:
                    measured = outcome.result["tools"].get(record.label, {})
                    record.latency = measured.get("latency", {})
                    record.parity = measured.get("parity")
                    record.accuracy = measured.get("accuracy")
                    if "error" in measured:
                        record.ok, record.error = False, measured["error"]
    finally:
        if owned_tmp is not None:
            owned_tmp.cleanup()

    settings = {
        "batch_sizes": list(batch_sizes),
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "min_seconds": min_seconds,
        "timeout_s": timeout,
        "check": check,
        "synthetic_inputs": inputs.synthetic,
        "samples": inputs.count,
        "ort_session": "default (ORT_ENABLE_ALL), CPUExecutionProvider, inter_op_num_threads=1",
    }
    report = BenchReport(str(source), specs, settings, machine_description(), records, notes)
    compute_ratios(records, reference, report.latency_keys)
    return report
