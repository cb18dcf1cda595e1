"""Benchmark onnxkit's pipeline against the tools users would otherwise pick: same model, same run, same machine.

    report = run_bench("model.onnx", "simplify,fuse", peers=["onnxsim", "ort-extended"])
    report.render(Console()); Path("bench.json").write_text(report.to_json())

Each tool transforms the model in its own subprocess, under a timeout, so one tool's crash, leak or hang
costs only its own row. Its peak memory is the child's ``VmHWM`` (peak resident set): the child's
``ru_maxrss`` is not usable, since Linux carries the parent's high-water mark across ``vfork``+``exec``.
Then one more subprocess loads every result and the original into ONNX Runtime and measures them side by
side: parity and accuracy on the same inputs, and latency in interleaved rounds (each round runs every
tool once, in rotating order), so the noise of a shared machine falls on all tools alike. Report medians
and ratios, never lone absolute times.

Peers are compared within their class: exact simplifiers against ``simplify,fuse``-like pipelines, and
ORT's plain ``quantize_dynamic``/``quantize_static`` against the pipeline that quantizes the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxkit import runtime
from onnxkit.errors import DataError, OnnxkitError, SpecError
from onnxkit.modelio import EXTERNAL_DATA_THRESHOLD, iter_all_tensors

EXACT_PEERS = ("onnxsim", "onnxslim", "onnxoptimizer", "ort-basic", "ort-extended")
PEERS = (*EXACT_PEERS, "ort-quantize")
QUANTIZE_PEERS = ("ort-quantize-dynamic", "ort-quantize-static")
# A peer that is a separate package; the ORT peers need only onnxruntime, a core dependency.
_PEER_PACKAGES = {"onnxsim": "onnxsim", "onnxslim": "onnxslim", "onnxoptimizer": "onnxoptimizer"}
# Samples written for calibration (onnxkit's static quantize and ORT's quantize_static read the same ones).
CALIBRATION_SAMPLES = 64
PARITY_SAMPLES = 16
SYNTHETIC_SAMPLES = 64


def installed_peers() -> list[str]:
    """The peers whose packages are importable here, in the order of ``PEERS``."""
    return [p for p in PEERS if p not in _PEER_PACKAGES or importlib.util.find_spec(_PEER_PACKAGES[p]) is not None]


# ---------------------------------------------------------------------------------------------------------
# What runs: tools


@dataclasses.dataclass(frozen=True)
class Tool:
    """One column of the comparison: onnxkit with a spec, or a peer.

    ``klass`` groups what may fairly be compared: ``exact`` (float simplifiers and fusers), or the
    quantization mode (``dynamic``/``static``, or ``auto`` for onnxkit choosing) of a pipeline or peer.
    """

    label: str
    runner: str
    klass: str
    spec: str | None = None


def spec_quantize_mode(spec: str) -> str | None:
    """The quantization mode a spec asks for, or None when it does not quantize."""
    from onnxkit.pipeline import parse_pass_text, split_top_level

    for piece in split_top_level(spec):
        name, options = parse_pass_text(piece)
        if name == "quantize":
            return options.get("mode") or _quantize_default_mode()
    return None


def _quantize_default_mode() -> str:
    try:
        from onnxkit.registry import get_pass_class

        return str(get_pass_class("quantize").Options().mode)
    except (OnnxkitError, AttributeError, TypeError):  # no quantize pass to ask: compare with both modes
        return "auto"


def plan_tools(specs: Sequence[str], peers: Sequence[str] | None) -> tuple[list[Tool], list[str]]:
    """The tools to run for these specs and peers, and notes on peers left out (not installed, no class)."""
    if not specs:
        raise SpecError("no pipeline spec to benchmark", hint="give --passes, e.g. --passes simplify,fuse")
    modes = {spec: spec_quantize_mode(spec) for spec in specs}
    tools = [Tool("onnxkit" if len(specs) == 1 else f"onnxkit[{spec}]", "onnxkit", modes[spec] or "exact", spec)
             for spec in specs]
    installed = set(installed_peers())
    notes: list[str] = []
    requested = list(PEERS if peers is None else peers)
    for peer in requested:
        if peer not in (*PEERS, *QUANTIZE_PEERS):
            raise SpecError(f"unknown peer {peer!r}", hint="peers: " + ", ".join((*PEERS, *QUANTIZE_PEERS)))
        if peer in _PEER_PACKAGES and peer not in installed:
            notes.append(f"{peer}: not installed (pip install {_PEER_PACKAGES[peer]})")
            continue
        if peer in EXACT_PEERS:
            tools.append(Tool(peer, peer, "exact"))
            continue
        # A pipeline that lets onnxkit choose the mode ("auto") is compared with ORT's quantizer in both.
        wanted = {m for mode in modes.values() if mode for m in (("dynamic", "static") if mode == "auto" else (mode,))}
        wanted_modes = sorted(wanted) if peer == "ort-quantize" else [peer.rsplit("-", 1)[1]]
        if not wanted_modes:
            if peers is not None:  # asked for by name: quantize the way ORT does by default
                wanted_modes = ["dynamic"]
            else:
                notes.append("ort-quantize: left out, no pipeline quantizes (name it in --peers to include it)")
        for mode in wanted_modes:
            if all(t.label != f"ort-quantize-{mode}" for t in tools):
                tools.append(Tool(f"ort-quantize-{mode}", "ort-quantize", mode))
    return tools, notes


# ---------------------------------------------------------------------------------------------------------
# Transforms, each run inside a child process by ``_worker``


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
    import onnxruntime as ort

    options = runtime.session_options()
    options.graph_optimization_level = {
        "ort-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "ort-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[tool["runner"]]
    options.optimized_model_filepath = str(output)
    if _has_external_data(source):
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         output.name + ".data")
    runtime.make_session(source, options=options)
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


_RUNNERS: dict[str, Callable[[Path, Path, dict[str, Any], dict[str, Any]], list[str]]] = {
    "onnxkit": _run_onnxkit,
    "onnxsim": _run_onnxsim,
    "onnxslim": _run_onnxslim,
    "onnxoptimizer": _run_onnxoptimizer,
    "ort-basic": _run_ort_optimizer,
    "ort-extended": _run_ort_optimizer,
    "ort-quantize": _run_ort_quantize,
}
# Imported before the clock starts: import time is the same for every model and is not transform time.
_RUNNER_IMPORTS = {
    "onnxkit": ["onnxkit.pipeline"],
    "onnxsim": ["onnxsim"],
    "onnxslim": ["onnxslim"],
    "onnxoptimizer": ["onnxoptimizer"],
    "ort-basic": ["onnxruntime"],
    "ort-extended": ["onnxruntime"],
    "ort-quantize": ["onnxruntime.quantization"],
}


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
    tool = job["tool"]
    for module in _RUNNER_IMPORTS[tool["runner"]]:
        __import__(module)
    started = time.perf_counter()
    notes = _RUNNERS[tool["runner"]](Path(job["source"]), Path(job["output"]), tool, job)
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
        child = subprocess.Popen([sys.executable, "-m", "onnxkit.bench", str(job_path)], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
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


def _worker(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    actions = {"transform": _transform_job, "measure": _measure_job}
    try:
        result = actions[job["action"]](job)
    except Exception as e:  # any failure of a tool is a row in the table, not a crash of the benchmark
        traceback.print_exc()
        Path(job["result"]).write_text(json.dumps({"error": first_error_line(e), "peak_rss_bytes": peak_rss_bytes()}))
        return 1
    Path(job["result"]).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class BenchInputs:
    """Samples stacked along axis 0 (the batch axis), one array per model input, and labels if known."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """``size`` samples from ``start``, wrapping around when there are fewer."""
        rows = np.arange(start, start + size) % self.count
        return {name: array[rows] for name, array in self.arrays.items()}

    def save(self, path: Path) -> None:
        extra = {} if self.labels is None else {"labels": self.labels}
        np.savez(path, **self.arrays, **extra)

    def write_samples(self, folder: Path, count: int) -> None:
        """One ``.npz`` per sample, batch of one, for calibration by onnxkit and by ORT alike."""
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(count, self.count)):
            np.savez(folder / f"sample_{i:05d}.npz", **self.batch(i, 1))


_LABEL_KEYS = ("labels", "label")


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def load_inputs(path: str | os.PathLike[str], proto: onnx.ModelProto) -> BenchInputs:
    """Read an ``.npz`` of arrays named after the model's inputs, samples along axis 0, and ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read bench data {path}: {e}", hint="give an .npz with one array per model input "
                        "(samples along axis 0) and optionally 'labels'") from e
    labels = next((arrays.pop(key) for key in _LABEL_KEYS if key in arrays), None)
    names = [v.name for v in graph_inputs(proto)]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"bench data {path} lacks model inputs {missing}", hint=f"the model's inputs are {names}")
    counts = {len(arrays[n]) for n in names}
    if len(counts) != 1 or (labels is not None and len(labels) not in counts):
        raise DataError(f"bench data {path}: inputs and labels must have the same number of samples along axis 0")
    return BenchInputs({n: arrays[n] for n in names}, labels)


def synthetic_inputs(model: str | os.PathLike[str], dims: dict[str, int], count: int = SYNTHETIC_SAMPLES) -> BenchInputs:
    """Seeded inputs that ``model`` runs on, from the one synthetic-input module (``onnxkit.data.probe``):
    ``count`` samples of batch one, stacked along axis 0; ``dims`` binds the other dynamic dims."""
    from onnxkit.data import as_dataset

    samples = list(as_dataset(None, str(model), dims={**dims, "batch": 1}, num_samples=count))
    return BenchInputs({name: np.concatenate([s[name] for s in samples]) for name in samples[0]}, synthetic=True)


# ---------------------------------------------------------------------------------------------------------
# Measuring, inside one child: parity, accuracy, interleaved latency


def _session(path: str, threads: int) -> Any:
    # ORT's graph optimizations on, as a deployed model runs.
    return runtime.make_session(path, optimize=True, threads=threads)


def _fixed_batch(session: Any) -> int | None:
    """The static batch size of the model's first input, or None when axis 0 is dynamic."""
    shape = session.get_inputs()[0].shape
    return shape[0] if shape and isinstance(shape[0], int) else None


def _percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(times, 50) * 1e3), "p90_ms": float(np.percentile(times, 90) * 1e3),
            "runs": len(times)}


def _measure_job(job: dict[str, Any]) -> dict[str, Any]:
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
    return np.concatenate(outputs)[:inputs.count]  # the last batch wraps around to fill itself


def _parity_and_accuracy(sessions: dict[str, Any], inputs: BenchInputs, results: dict[str, dict[str, Any]],
                         job: dict[str, Any]) -> None:
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
                parity = compare_models(job["models"][reference], job["models"][label], batches,
                                        tolerance=Tolerance.for_kind(job["kinds"][label])).to_dict()
                results[label]["parity"] = {key: parity[key]
                                            for key in ("passed", "max_abs_error", "min_cosine", "summary")}
            if inputs.labels is not None:
                predictions = _predictions(sessions[label], inputs)
                correct = np.argmax(predictions.reshape(len(predictions), -1), axis=-1) == inputs.labels
                results[label]["accuracy"] = float(np.mean(correct))
        except Exception as e:
            results[label]["error"] = f"ONNX Runtime failed to run it: {first_error_line(e)}"
            del sessions[label]


def _interleaved_latency(sessions: dict[str, Any], inputs: BenchInputs, batch: int, threads: int,
                         job: dict[str, Any], results: dict[str, dict[str, Any]]) -> None:
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
    while labels and (rounds < job["repeats"] or (time.perf_counter() - timing_started < job["min_seconds"]
                                                  and rounds < 10 * job["repeats"])):
        run_round(job["warmup"] + rounds, timed=True)
        rounds += 1
    for label in labels:
        results[label]["latency"][key] = _percentiles(times[label])


# ---------------------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class ToolRecord:
    """Everything measured for one tool on one model. Times are seconds, sizes bytes, latency milliseconds."""

    label: str
    runner: str
    klass: str
    spec: str | None = None
    ok: bool = True
    error: str | None = None
    nodes: int | None = None
    op_histogram: dict[str, int] = dataclasses.field(default_factory=dict)
    file_bytes: int | None = None
    transform_seconds: float | None = None
    process_seconds: float | None = None
    peak_rss_bytes: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    latency: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    parity: dict[str, Any] | None = None
    accuracy: float | None = None
    ratios: dict[str, Any] = dataclasses.field(default_factory=dict)

    def p50(self, key: str) -> float | None:
        value = self.latency.get(key, {}).get("p50_ms")
        return float(value) if value is not None else None


@dataclasses.dataclass
class BenchReport:
    model: str
    specs: list[str]
    settings: dict[str, Any]
    machine: dict[str, Any]
    tools: list[ToolRecord]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def latency_keys(self) -> list[str]:
        return [f"b{b}-t{t}" for t in self.settings["threads"] for b in self.settings["batch_sizes"]]

    def tool(self, label: str) -> ToolRecord:
        return next(t for t in self.tools if t.label == label)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchReport:
        return cls(**{**data, "tools": [ToolRecord(**t) for t in data["tools"]]})

    def render(self, console: Any) -> None:
        """The comparison as a rich table, one row per tool; failures are spelled out under it."""
        from rich.table import Table

        keys = self.latency_keys
        table = Table(title=f"onnxkit bench: {Path(self.model).name}", title_justify="left")
        for header in summary_headers(keys):
            table.add_column(header, overflow="fold")
        for record in self.tools:
            table.add_row(*summary_cells(record, keys))
        console.print(table)
        for record in self.tools:
            if not record.ok:
                console.print(f"[red]{record.label} failed:[/] {record.error}")
        for note in self.notes:
            console.print(f"[dim]note: {note}[/]")


def summary_headers(keys: Sequence[str]) -> list[str]:
    return ["tool", "result", "nodes", "size", "transform", "peak mem", *(f"p50 {k} ms" for k in keys),
            f"× orig {keys[0]}", f"× best peer {keys[0]}", "max abs err", "cosine", "accuracy"]


def summary_cells(record: ToolRecord, keys: Sequence[str]) -> list[str]:
    """One row of text cells, shared by the terminal table and RESULTS.md."""
    vs_original = record.ratios.get("vs_original", {}).get("latency", {}).get(keys[0])
    vs_peer = record.ratios.get("vs_best_peer", {}).get("latency", {}).get(keys[0])
    parity_failed = record.parity is not None and not record.parity.get("passed", True)
    result = "FAILED" if not record.ok else "parity FAILED" if parity_failed else "ok"
    latency_cells = []
    for key in keys:
        entry = record.latency.get(key, {})
        latency_cells.append(f"{entry['p50_ms']:.3g}" if "p50_ms" in entry else ("n/a" if entry else "—"))
    parity = record.parity or {}
    return [
        record.label,
        result,
        _fmt(record.nodes, "{:d}"),
        format_bytes(record.file_bytes),
        _fmt(record.transform_seconds, "{:.2f} s"),
        format_bytes(record.peak_rss_bytes),
        *latency_cells,
        _fmt(vs_original, "{:.2f}×"),
        _fmt(vs_peer, "{:.2f}×"),
        _fmt(parity.get("max_abs_error"), "{:.1e}"),
        _fmt(parity.get("min_cosine"), "{:.6f}"),
        _fmt(record.accuracy, "{:.2%}"),
    ]


def _fmt(value: Any, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def format_bytes(size: int | None) -> str:
    if size is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


def model_file_bytes(path: Path) -> int:
    """The model file plus every external-data file it names."""
    proto = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for t in iter_all_tensors(proto.graph) for entry in t.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in locations
                                     if (path.parent / loc).is_file())


def model_op_histogram(path: Path) -> dict[str, int]:
    """Op counts as the pipeline reports them; ``ir.load`` leaves external weights on disk."""
    import onnx_ir as ir

    from onnxkit.pipeline import op_histogram

    return dict(sorted(op_histogram(ir.load(path)).items()))


def machine_description() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, and the versions of every tool."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        pass
    # INT8 speed and accuracy depend on these: without VNNI, ORT's u8s8 kernels can saturate.
    int8 = ", ".join(name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f")) if flag in flags) or "no AVX2"
    int8 += ", VNNI" if flags & {"avx512_vnni", "avx_vnni"} else ", no VNNI"
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for package in ("onnxkit", "onnx", "onnxruntime", "onnx-ir", "onnxscript", "onnxsim", "onnxslim",
                    "onnxoptimizer", "torch", "transformers", "numpy"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {"cpu": cpu, "int8": int8, "cores": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _compute_ratios(records: list[ToolRecord], reference: ToolRecord, keys: Sequence[str]) -> None:
    """Each tool against the original, and each onnxkit pipeline against the best peer of its class."""
    def ratio(mine: float | None, theirs: float | None) -> float | None:
        return mine / theirs if mine is not None and theirs else None

    def metrics(record: ToolRecord) -> dict[str, Any]:
        return {"nodes": record.nodes, "file_bytes": record.file_bytes,
                "latency": {key: record.p50(key) for key in keys}}

    def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
        return {"nodes": ratio(mine["nodes"], theirs["nodes"]),
                "file_bytes": ratio(mine["file_bytes"], theirs["file_bytes"]),
                "latency": {key: ratio(mine["latency"][key], theirs["latency"][key]) for key in keys}}

    for record in records:
        if record.ok:
            record.ratios["vs_original"] = compare(metrics(record), metrics(reference))
    for record in records:
        if record.runner != "onnxkit" or not record.ok:
            continue
        # A peer whose output fails parity is no standard to meet: it is left out of "best".
        classes = ("dynamic", "static") if record.klass == "auto" else (record.klass,)
        peers = [p for p in records if p.runner not in ("onnxkit", "original") and p.ok and p.klass in classes
                 and (p.parity or {}).get("passed", True)]
        if not peers:
            continue
        best = {
            "nodes": min((p.nodes for p in peers if p.nodes is not None), default=None),
            "file_bytes": min((p.file_bytes for p in peers if p.file_bytes is not None), default=None),
            "latency": {key: min((v for p in peers if (v := p.p50(key)) is not None), default=None) for key in keys},
        }
        record.ratios["vs_best_peer"] = compare(metrics(record), best)
        record.ratios["best_peer"] = {
            "nodes": next((p.label for p in peers if p.nodes == best["nodes"]), None),
            "latency": {key: next((p.label for p in peers if p.p50(key) == best["latency"][key]), None) for key in keys},
        }


# ---------------------------------------------------------------------------------------------------------
# The entry points


def run_transform(tool: Tool, source: Path, output: Path, *, timeout: float, check: str = "each",
                  dims: dict[str, int] | None = None, calibration_dir: Path | None = None,
                  calibrate_method: str | None = None) -> ToolRecord:
    """Run one tool on ``source`` in a child process, writing ``output``; node count and size are filled in.

    ``calibrate_method`` (minmax, entropy, percentile) overrides ORT's default for ``ort-quantize-static``.
    """
    record = ToolRecord(tool.label, tool.runner, tool.klass, tool.spec)
    job = {"action": "transform", "tool": dataclasses.asdict(tool), "source": str(source.resolve()),
           "output": str(output), "check": check, "dims": dims or {}, "calibrate_method": calibrate_method,
           "calibration_dir": str(calibration_dir) if calibration_dir is not None else None}
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
    if not source.is_file():
        raise SpecError(f"no such model: {source}", hint="give the path of an .onnx file")
    specs = [passes] if isinstance(passes, str) else list(passes)
    tools, notes = plan_tools(specs, peers)
    threads = list(threads) if threads else sorted({1, os.cpu_count() or 1})
    if repeats < 1 or warmup < 0:
        raise SpecError("repeats must be at least 1 and warmup at least 0")
    say = progress or (lambda line: None)
    proto = onnx.load(str(source), load_external_data=False)
    inputs = load_inputs(data, proto) if data is not None else synthetic_inputs(source, dims or {})

    owned_tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="onnxkit-bench-")
    work = Path(workdir if workdir is not None else owned_tmp.name)  # type: ignore[union-attr]
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
            records.append(run_transform(tool, source, output, timeout=timeout, check=check, dims=dims,
                                         calibration_dir=calibration_dir if tool.klass == "static" else None))
            if records[-1].ok:
                outputs[tool.label] = str(output)

        reference.op_histogram = model_op_histogram(source)
        reference.nodes = sum(reference.op_histogram.values())
        reference.file_bytes = model_file_bytes(source)

        if measure:
            say(f"{source.name}: measuring {len(outputs)} models")
            kinds = {r.label: "exact" if r.klass in ("exact", "reference") else "lossy" for r in records}
            job = {"action": "measure", "models": outputs, "reference": "original", "inputs": str(inputs_path),
                   "kinds": kinds,
                   "threads": threads, "batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": warmup,
                   "min_seconds": min_seconds,
                   "parity_samples": PARITY_SAMPLES}
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

    settings = {"batch_sizes": list(batch_sizes), "threads": threads, "repeats": repeats, "warmup": warmup,
                "min_seconds": min_seconds,
                "timeout_s": timeout, "check": check, "synthetic_inputs": inputs.synthetic, "samples": inputs.count,
                "ort_session": "default (ORT_ENABLE_ALL), CPUExecutionProvider, inter_op_num_threads=1"}
    report = BenchReport(str(source), specs, settings, machine_description(), records, notes)
    _compute_ratios(records, reference, report.latency_keys)
    return report


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
