"""Measuring, inside one child: every result and the original loaded into ONNX Runtime side by side; parity and
accuracy on the same inputs, and latency in interleaved rounds (each round runs every tool once, in rotating
order), so the noise of a shared machine falls on all tools alike. Report medians and ratios, never lone times.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from onnxkit import runtime
from onnxkit.bench.child import first_error_line
from onnxkit.bench.inputs import BenchInputs


def _session(path: str, threads: int) -> Any:
    # ORT's graph optimizations on, as a deployed model runs.
    return runtime.make_session(path, optimize=True, threads=threads)


def _fixed_batch(session: Any) -> int | None:
    """The static batch size of the model's first input, or None when axis 0 is dynamic."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def _percentiles(times: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p90_ms": float(np.percentile(times, 90) * 1e3),
        "runs": len(times),
    }


def measure_job(job: dict[str, Any]) -> dict[str, Any]:
    """Load every model, then measure parity, accuracy and latency; per-tool failures stay per tool."""
    archive = np.load(job["inputs"], allow_pickle=False)
    labels = archive["labels"] if "labels" in archive.files else None
    inputs = BenchInputs({k: archive[k] for k in archive.files if k != "labels"}, labels)
    models: dict[str, str] = job["models"]
    results: dict[str, dict[str, Any]] = {label: {"latency": {}} for label in models}

    for threads in job["threads"]:
        sessions: dict[str, Any] = {}
        for label, path in models.items():
            if "error" in results[label]:
                continue
            try:
                sessions[label] = _session(path, threads)
            except Exception as e:
                results[label]["error"] = f"ONNX Runtime cannot load it: {first_error_line(e)}"
        if threads == job["threads"][0]:
            _parity_and_accuracy(sessions, inputs, results, job)
        for batch in job["batch_sizes"]:
            _interleaved_latency(sessions, inputs, batch, threads, job, results)
    return {"tools": results}


def _predictions(session: Any, inputs: BenchInputs) -> np.ndarray:
    """The first output on every sample, run in batches the model accepts (for accuracy)."""
    step = _fixed_batch(session) or 8
    outputs = [session.run(None, inputs.batch(start, step))[0] for start in range(0, inputs.count, step)]
    return np.concatenate(outputs)[: inputs.count]  # the last batch wraps around to fill itself


def _parity_and_accuracy(
    sessions: dict[str, Any], inputs: BenchInputs, results: dict[str, dict[str, Any]], job: dict[str, Any]
) -> None:
    """Parity of each tool's model against the original (onnxkit.parity, ORT optimizations off, on the same
    samples, within the tolerance of the tool's kind), and accuracy when labels are given."""
    from onnxkit.parity import Tolerance, compare_models

    reference = job["reference"]
    count = min(job["parity_samples"], inputs.count)
    for label in list(sessions):
        try:
            if label != reference:
                step = _fixed_batch(sessions[label]) or min(count, 8)
                batches = [inputs.batch(start, step) for start in range(0, count, step)]
                parity = compare_models(
                    job["models"][reference],
                    job["models"][label],
                    batches,
                    tolerance=Tolerance.for_kind(job["kinds"][label]),
                ).to_dict()
                results[label]["parity"] = {
                    key: parity[key] for key in ("passed", "max_abs_error", "min_cosine", "summary")
                }
            if inputs.labels is not None:
                predictions = _predictions(sessions[label], inputs)
                correct = np.argmax(predictions.reshape(len(predictions), -1), axis=-1) == inputs.labels
                results[label]["accuracy"] = float(np.mean(correct))
        except Exception as e:
            results[label]["error"] = f"ONNX Runtime failed to run it: {first_error_line(e)}"
            del sessions[label]


def _interleaved_latency(
    sessions: dict[str, Any],
    inputs: BenchInputs,
    batch: int,
    threads: int,
    job: dict[str, Any],
    results: dict[str, dict[str, Any]],
) -> None:
    key = f"b{batch}-t{threads}"
    runnable = {}
    for label, session in sessions.items():
        fixed = _fixed_batch(session)
        if fixed is not None and fixed != batch:
            results[label]["latency"][key] = {"skipped": f"the model's batch is fixed at {fixed}"}
            continue
        runnable[label] = (session, inputs.batch(0, batch))
    times: dict[str, list[float]] = {label: [] for label in runnable}
    labels = list(runnable)

    def run_round(index: int, timed: bool) -> None:
        shift = index % len(labels)  # rotate the order so no tool always runs right after another
        for label in labels[shift:] + labels[:shift]:
            session, feeds = runnable[label]
            try:
                started = time.perf_counter()
                session.run(None, feeds)
                elapsed = time.perf_counter() - started
            except Exception as e:
                results[label]["latency"][key] = {"error": first_error_line(e)}
                labels.remove(label)
                continue
            if timed:
                times[label].append(elapsed)

    for index in range(job["warmup"]):
        if labels:
            run_round(index, timed=False)
    # At least ``repeats`` rounds; fast models get more, up to ``min_seconds`` of timing or 10× the rounds,
    # since a median of 20 sub-millisecond runs on a shared machine is mostly noise.
    rounds, timing_started = 0, time.perf_counter()
    while labels and (
        rounds < job["repeats"]
        or (time.perf_counter() - timing_started < job["min_seconds"] and rounds < 10 * job["repeats"])
    ):
        run_round(job["warmup"] + rounds, timed=True)
        rounds += 1
    for label in labels:
        results[label]["latency"][key] = _percentiles(times[label])
