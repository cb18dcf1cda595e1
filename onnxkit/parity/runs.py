"""Running two models (or replaying one's recorded outputs) on the same samples, side by side in threads, and
comparing each output as soon as both sides have it.

``Live`` is a model loaded in ONNX Runtime, ``Replay`` a model's outputs recorded by an earlier comparison
(``Recording``). ``compare_runs`` is the one loop every comparison goes through: ``compare_models`` and the
pipeline's ``ParityChain``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from onnxkit import runtime
from onnxkit.data import validate_sample
from onnxkit.errors import DataError
from onnxkit.parity.report import OutputComparison, OutputReport, ParityReport
from onnxkit.parity.tolerance import Tolerance


@dataclasses.dataclass
class Recording:
    """A model's values of ``outputs`` on each sample of a comparison, in order, and what they weigh.
    ``complete`` when the samples ran out before any limit on them did."""

    outputs: list[str]
    values: list[list[Any]] = dataclasses.field(default_factory=list)
    nbytes: int = 0
    complete: bool = False

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.values) >= limit)

    def add(self, values: list[Any]) -> None:
        self.values.append(values)
        self.nbytes += sum(_nbytes(v) for v in values)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, list):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values()) + 64 * len(value)
    return 64


class Live:
    """A model loaded once in ONNX Runtime, run sample by sample (with ``run_options``, when given: setting
    their ``terminate`` stops the runs in flight)."""

    def __init__(self, session: Any, run_options: Any = None) -> None:
        self.session = session
        self.run_options = run_options
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]

    def run(self, names: list[str], sample: Mapping[str, Any], index: int) -> list[Any]:
        feed = {name: sample[name] for name in self.inputs}
        # Sessions other than ONNX Runtime's (OpenVINO's, behind the same interface) take no run options.
        if self.run_options is None:
            return self.session.run(names, feed)
        return self.session.run(names, feed, self.run_options)


class Ahead(Live):
    """A candidate whose first samples already ran, while its reference still ran in another thread
    (``ParityChain``): their outputs are handed back, or the error its run raised (``failure``), at their turn;
    later samples run live. Outputs are held in session order, as ``Live.run(self.outputs, ...)`` gives them."""

    def __init__(self, session: Any, run_options: Any = None) -> None:
        super().__init__(session, run_options)
        self.values: list[list[Any]] = []
        self.nbytes = 0
        self.failure: Exception | None = None  # what the run of sample ``len(values)`` raised

    def run_ahead(self, sample: Mapping[str, Any]) -> None:
        try:
            values = super().run(self.outputs, sample, len(self.values))
        except Exception as e:  # ORT raises its own exception types; compare_runs reports it at its turn
            self.failure = e
            return
        self.values.append(values)
        self.nbytes += sum(_nbytes(v) for v in values)

    def run(self, names: list[str], sample: Mapping[str, Any], index: int) -> list[Any]:
        if index < len(self.values):
            return [self.values[index][self.outputs.index(name)] for name in names]
        if index == len(self.values) and self.failure is not None:
            raise self.failure
        return super().run(names, sample, index)


class Replay:
    """A model's recorded outputs, handed back sample by sample instead of running the model again."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.outputs = recording.outputs

    def run(self, names: list[str], sample: Mapping[str, Any], index: int) -> list[Any]:
        values = self.recording.values[index]
        return [values[self.outputs.index(name)] for name in names]


def _reference_failure(index: int, error: Exception, data_given: bool) -> DataError:
    return DataError(
        f"the reference model fails on sample {index}: {runtime.error_line(error)}",
        hint="check the data" if data_given else "give real inputs with --data",
    )


def add_time(timings: dict[str, float] | None, key: str, started: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - started
    return now


@dataclasses.dataclass
class Compared:
    outputs: list[OutputReport]
    errors: list[str]
    samples: int
    reference: Recording | None  # each side's values, when asked for, complete and within the budget
    candidate: Recording | None


def _timed(run: Any, *args: Any) -> tuple[list[Any], float]:
    started = time.perf_counter()
    return run(*args), time.perf_counter() - started


def compare_runs(
    reference: Live | Replay,
    candidate: Live,
    dataset: Any,
    specs: Any,
    tolerance: Tolerance,
    *,
    data_given: bool,
    timings: dict[str, float] | None = None,
    record_budget: int = 0,
    limit: int | None = None,
) -> Compared:
    """Run (or replay) both sides sample by sample, on the first ``limit`` samples if given, and compare each
    output as soon as both have it.

    Two runs go side by side in threads (ONNX Runtime lets go of the GIL), so a comparison takes about half
    the time on a machine with a core to spare: the reference's and the candidate's run of a sample, or, when
    the reference is replayed, the candidate's runs of two samples (the chain's candidates are ORT sessions,
    whose ``run`` may be called from several threads). ``timings`` gets the reference's own seconds as
    ``reference_runs`` (``replayed``) and what the candidate added beyond them as ``candidate_runs``, so that
    the parts add up to the time spent. With ``record_budget`` each live side's values are also kept, while
    they weigh at most that many bytes."""
    errors = [
        f"output '{name}' is missing from the candidate" for name in reference.outputs if name not in candidate.outputs
    ]
    errors += [
        f"the candidate has output '{name}' that the reference lacks"
        for name in candidate.outputs
        if name not in reference.outputs
    ]
    shared = [name for name in reference.outputs if name in candidate.outputs]
    comparisons = {name: OutputComparison(name, tolerance.for_output(name)) for name in shared}
    live_reference = isinstance(reference, Live)
    recordings: dict[str, Recording | None] = {
        "reference": Recording(shared) if record_budget and live_reference else None,
        "candidate": Recording(shared) if record_budget else None,
    }
    samples = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as side_by_side:
        runs = _SampleRuns(reference, candidate, shared, dataset, specs, limit, side_by_side)
        for index, started, ref_run, cand_run in runs:
            candidate_error = None
            try:
                cand_values, _ = cand_run.result()
            except Exception as e:  # ORT raises its own exception types
                candidate_error = e
            try:  # a reference that fails is the data's fault, whatever the candidate did
                ref_values, ref_seconds = ref_run.result()
            except Exception as e:
                raise _reference_failure(index, e, data_given) from e
            if timings is not None:
                spent = time.perf_counter() - started
                side = "reference_runs" if live_reference else "replayed"
                timings[side] = timings.get(side, 0.0) + ref_seconds
                timings["candidate_runs"] = timings.get("candidate_runs", 0.0) + max(spent - ref_seconds, 0.0)
            if candidate_error is not None:
                errors.append(f"the candidate model fails on sample {index}: {runtime.error_line(candidate_error)}")
                break
            started = time.perf_counter()
            for name, ref_value, cand_value in zip(shared, ref_values, cand_values):
                comparisons[name].add(ref_value, cand_value, index)
            add_time(timings, "comparison", started)
            for side, values in (("reference", ref_values), ("candidate", cand_values)):
                recording = recordings[side]
                if recording is not None:
                    recording.add(values)
                    if recording.nbytes > record_budget:
                        recordings[side] = None
            samples += 1
        errors += runs.errors
    if samples == 0 and not errors:
        raise DataError(
            "the data holds no samples", hint="give at least one sample, or drop --data for synthetic inputs"
        )
    if errors:
        recordings = {"reference": None, "candidate": None}
    for recording in recordings.values():
        if recording is not None:
            recording.complete = limit is None or samples < limit
    return Compared(
        [c.finish() for c in comparisons.values()], errors, samples, recordings["reference"], recordings["candidate"]
    )


class _SampleRuns:
    """The runs of both sides, sample by sample and in order: ``(index, started, reference run, candidate
    run)``, each run a future of ``(values, seconds)``; ``started`` is when the caller began waiting for it.

    Two runs are in flight at a time: both sides of one sample, or, with a replayed reference, the candidate's
    runs of this sample and the next. What goes wrong with a sample (it does not fit the specs, it lacks an
    input the candidate takes) is raised or recorded in ``errors`` only when that sample's turn comes, so the
    samples before it are compared first, as one at a time would."""

    def __init__(
        self,
        reference: Live | Replay,
        candidate: Live,
        names: list[str],
        dataset: Any,
        specs: Any,
        limit: int | None,
        executor: concurrent.futures.Executor,
    ) -> None:
        self.reference, self.candidate, self.names, self.specs = reference, candidate, names, specs
        self.samples = enumerate(itertools.islice(dataset, limit))
        self.executor = executor
        self.ahead = 1 if isinstance(reference, Live) else 2
        self.errors: list[str] = []

    def _start(self) -> Any:
        """The next sample's runs, started; an exception or an error text to report at its turn; None at the end."""
        item = next(self.samples, None)
        if item is None:
            return None
        index, sample = item
        try:
            sample = validate_sample(sample, self.specs, index=index)
        except Exception as e:  # raised at its turn
            return e
        missing = [name for name in self.candidate.inputs if name not in sample]
        if missing:
            return (
                f"the candidate takes input{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} that the reference does not"
            )
        if isinstance(self.reference, Live):
            ref_run = self.executor.submit(_timed, self.reference.run, self.names, sample, index)
        else:
            ref_run = concurrent.futures.Future()
            ref_run.set_result(_timed(self.reference.run, self.names, sample, index))
        return index, ref_run, self.executor.submit(_timed, self.candidate.run, self.names, sample, index)

    def __iter__(self) -> Iterator[tuple[int, float, Any, Any]]:
        in_flight: list[Any] = []
        while True:
            while len(in_flight) < self.ahead and (not in_flight or isinstance(in_flight[-1], tuple)):
                started = self._start()
                if started is None:
                    break
                in_flight.append(started)
            if not in_flight:
                return
            turn = in_flight.pop(0)
            if isinstance(turn, Exception):
                raise turn
            if isinstance(turn, str):
                self.errors.append(turn)
                return
            index, ref_run, cand_run = turn
            yield index, time.perf_counter(), ref_run, cand_run


def make_report(compared: Compared, tolerance: Tolerance, description: str, ort_optimizations: bool) -> ParityReport:
    errors = compared.errors + [e for o in compared.outputs for e in o.errors]
    passed = not errors and all(o.passed for o in compared.outputs)
    return ParityReport(passed, compared.outputs, errors, compared.samples, tolerance, description, ort_optimizations)
