"""``ParityChain``: the pipeline's comparisons, each pass's output against its input, on one dataset, running each
model once: the outputs of the last models compared are recorded and replayed, and the pipeline's input runs in
a background thread while the first passes work.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import time
from typing import Any

from onnxkit import runtime
from onnxkit.data import describe_data, validate_sample
from onnxkit.data.probe import Probe, ProbeCancelled, ProbeRun
from onnxkit.errors import ModelLoadError
from onnxkit.parity.report import ParityReport
from onnxkit.parity.runs import Ahead, Compared, Live, Recording, Replay, add_time, compare_runs, make_report
from onnxkit.parity.tolerance import Tolerance

# The most bytes of outputs kept per model for the next comparison; past it that model is run again.
RECORDING_BUDGET = 256 * 2**20
# A comparison limited to a few samples (exact passes on synthetic inputs, where any input shows a change)
# takes one sample when a run of the pipeline's input takes this long. Each further sample costs a run of
# both models, and past a tenth of a second that is more than the passes and every other check of the run
# together (dnsmos_sig_bak_ovr runs 0.2 s a sample: its simplify,fuse took 2.2 s, 0.05 s of it the passes;
# rapid_table_det_edge_int8 runs 6 s). A second synthetic sample, drawn from the same distribution as the
# first, rarely shows what the first did not; what it costs, every user of a slow model pays on every run.
SLOW_RUN_SECONDS = 0.1


class ParityChain:
    """Comparisons along a chain of models on one fixed dataset, running each model once.

    The pipeline compares each pass's output with its input. The candidate of one comparison is the
    reference of the next (or, after a rollback, the same reference comes back), so the outputs of the last
    models compared are kept, up to ``RECORDING_BUDGET`` bytes each, and replayed instead of run again.
    ``compare`` adds to ``timings`` the seconds spent making sessions, running each side, and comparing.
    """

    def __init__(
        self,
        dataset: Any,
        specs: Any,
        description: str,
        *,
        data_given: bool,
        model_dir: str | os.PathLike[str] | None = None,
        threads: int = 1,
        ort_optimizations: bool = False,
        prepack: bool = True,
    ) -> None:
        self.dataset = dataset
        self.specs = specs
        self.description = description
        self.data_given = data_given
        self.model_dir = model_dir
        self.threads = threads
        self.ort_optimizations = ort_optimizations
        self.prepack = prepack  # False for a chain on a model whose weights stay in files: runtime.packs_weights
        self._recordings: list[tuple[Any, Recording]] = []  # (model source, its outputs), by identity
        self._prefetch: _Prefetch | None = None
        self.slow_run_seconds: float | None = None  # set when limited comparisons take one sample
        self.probe_error: Exception | None = None  # what a probe in the background raised (``prefetch``)

    def recorded(self, model: Any) -> Recording | None:
        return next((recording for source, recording in self._recordings if source is model), None)

    def prefetch(
        self, reference: Any, *, limit: int | None = None, probed: ProbeRun | None = None, probe: Probe | None = None
    ) -> None:
        """Start running ``reference`` on the first ``limit`` samples in a background thread, so that the
        next comparison against it replays its outputs instead of waiting for them: the pipeline starts the
        original model here before its first pass, and ONNX Runtime runs it on a spare core while the passes
        work (``Session.run`` lets go of the GIL). Only on synthetic inputs, which onnxkit makes itself: a
        dataset the caller gave may not be safe to read from two threads (quantize calibrates on it).

        ``probed`` is the run that probed the dataset's sizes, on this very model: its session is used and its
        outputs on the first sample are kept rather than made again.

        ``probe`` is the chain's dataset still to find (``dataset`` is None until then), on this very model: the
        background run probes first, while the passes work, and the first comparison waits for its dataset and
        description (and raises what the probe raised). A run that needs no comparison never waits for it.

        Should the background run fail, the comparison runs the reference itself, and reports what fails
        exactly as it would have. A limited run whose first sample takes ``SLOW_RUN_SECONDS`` or more stops
        there: every limited comparison of the chain then takes that one sample, and ``description`` says so."""
        self.close()
        if not self.data_given:
            self._prefetch = _Prefetch(self, reference, limit, probed, probe)

    def close(self) -> None:
        """Stop a background run that is no longer wanted, and wait for it: a sample running is terminated
        (``RunOptions.terminate``), a session being made finishes first. Never left running: a process that
        exits while ONNX Runtime works in another thread aborts (the thread is torn down inside C++)."""
        if self._prefetch is not None:
            self._prefetch.cancel()
            self._prefetch.result()
            self._prefetch = None

    def _probed(self) -> None:
        """Wait for a probe running in the background, if the dataset is still to come; raise what it raised."""
        if self.dataset is None and self._prefetch is not None:
            self._prefetch.probed.wait()
        if self.probe_error is not None:
            raise self.probe_error
        if self.dataset is None:
            raise RuntimeError("the parity inputs were never probed: the probe was cancelled")

    def _take_prefetched(self, reference: Any, timings: dict[str, float] | None) -> None:
        """Wait for the background run of ``reference``, if one was started, and keep what it recorded."""
        started = time.perf_counter()
        self._probed()
        prefetch = self._prefetch
        if prefetch is None or prefetch.reference is not reference:
            return
        self._prefetch = None
        recording = prefetch.result()
        add_time(timings, "reference_wait", started)
        if prefetch.slow_run_seconds is not None:
            self.slow_run_seconds = prefetch.slow_run_seconds
            self.description += f"; 1 sample for exact passes: a run takes {prefetch.slow_run_seconds:.1f} s"
        if recording is not None and self.recorded(reference) is None:
            self._recordings.append((reference, recording))

    def loads(self, model: Any, timings: dict[str, float] | None = None) -> bool:
        """Whether ONNX Runtime makes a session of ``model``, as a comparison would (timed as ``sessions``)."""
        started = time.perf_counter()
        try:
            self._session(model)
        except Exception:  # ORT raises its own exception types; a comparison reports what it says
            return False
        finally:
            add_time(timings, "sessions", started)
        return True

    def _session(self, model: Any) -> Any:
        # Packed as users' sessions are, unless the chain's weights stay in their files: then the external data
        # stays mapped, shared by both sides' sessions, unless this model has an op packing changes.
        prepack = self.prepack or runtime.packs_weights(model)
        return runtime.make_session(
            model, optimize=self.ort_optimizations, threads=self.threads, prepack=prepack, model_dir=self.model_dir
        )

    def compare(
        self,
        reference: Any,
        candidate: Any,
        tolerance: Tolerance,
        timings: dict[str, float] | None = None,
        *,
        limit: int | None = None,
    ) -> ParityReport:
        """Compare ``candidate`` with ``reference`` (bytes, ``ModelProto`` or ``ir.Model``; recordings are
        found by object identity, so pass the very object compared before), on the first ``limit`` samples
        if given.

        When ``reference`` is still running in the background (``prefetch``), the candidate's session is made
        and its samples run meanwhile (``_run_ahead``), then its outputs are compared with the recording. In
        ``timings`` those runs are ``candidate_runs`` and ``sessions`` as ever, and ``reference_wait`` is only
        what was left to wait for after them: the parts add up to the time spent, and the reference's own run
        time, which overlapped them, is in no part."""
        self._probed()
        ahead = self._run_ahead(reference, candidate, timings, limit)
        self._take_prefetched(reference, timings)
        if limit is not None and self.slow_run_seconds is not None:
            limit = 1
        started = time.perf_counter()
        recorded = self.recorded(reference)
        if recorded is not None and not recorded.covers(limit):
            recorded = None
        if recorded is not None:
            ref_side: Live | Replay = Replay(recorded)
        else:
            try:
                ref_side = Live(self._session(reference))
            except Exception as e:  # ORT raises its own exception types for invalid graphs and unsupported ops
                raise ModelLoadError(
                    f"ONNX Runtime cannot load the model: {runtime.error_line(e)}",
                    hint="parity checks run the model in ONNX Runtime; --check off skips them",
                ) from e
        try:
            if isinstance(ahead, Exception):
                raise ahead
            cand_side = ahead if ahead is not None else Live(self._session(candidate))
        except Exception as e:
            add_time(timings, "sessions", started)
            failed = Compared(
                [], [f"ONNX Runtime cannot load the candidate model: {runtime.error_line(e)}"], 0, None, None
            )
            return make_report(failed, tolerance, self.description, self.ort_optimizations)
        add_time(timings, "sessions", started)
        compared = compare_runs(
            ref_side,
            cand_side,
            self.dataset,
            self.specs,
            tolerance,
            data_given=self.data_given,
            timings=timings,
            record_budget=RECORDING_BUDGET,
            limit=limit,
        )
        kept = [(reference, recorded or compared.reference)]
        if compared.candidate is not None:
            kept.append((candidate, compared.candidate))
        self._recordings = [(source, recording) for source, recording in kept if recording is not None]
        return make_report(compared, tolerance, self.description, self.ort_optimizations)

    def _run_ahead(
        self, reference: Any, candidate: Any, timings: dict[str, float] | None, limit: int | None
    ) -> Ahead | Exception | None:
        """While ``reference`` runs in the background, make ``candidate``'s session and run it on the samples
        the comparison takes, one by one, as long as the background run goes on: the two models then run side
        by side (ONNX Runtime lets go of the GIL), instead of the candidate starting only once the reference is
        done. A limited comparison may be cut to one sample by the reference's first run (``SLOW_RUN_SECONDS``),
        so a second sample runs only once that run has decided. Runs ahead stop at what the comparison would
        report in its turn (a sample that does not fit, an input the reference lacks, the candidate failing)
        and at ``RECORDING_BUDGET`` bytes of outputs. Returns the candidate's ``Ahead``, the exception its
        session raised (reported after the reference's own errors, as without it), or None when the reference
        is not running in the background."""
        prefetch = self._prefetch
        if prefetch is None or prefetch.reference is not reference or prefetch.done():
            return None
        if limit is not None and self.slow_run_seconds is not None:
            limit = 1
        started = time.perf_counter()
        try:
            ahead = Ahead(self._session(candidate))
        except Exception as e:  # ORT raises its own exception types; the comparison reports it
            return e
        finally:
            started = add_time(timings, "sessions", started)
        for index, sample in enumerate(itertools.islice(self.dataset, limit)):
            if index > 0 and limit is not None and not prefetch.first_run_decided.is_set():
                add_time(timings, "candidate_runs", started)
                started = time.perf_counter()
                prefetch.first_run_decided.wait()
                started = add_time(timings, "reference_wait", started)
            if prefetch.done() or (index > 0 and limit is not None and prefetch.slow_run_seconds is not None):
                break
            try:
                sample = validate_sample(sample, self.specs, index=index)
            except Exception:  # the comparison raises it in its turn
                break
            if any(name not in sample for name in ahead.inputs):
                break
            ahead.run_ahead(sample)
            if ahead.failure is not None or ahead.nbytes > RECORDING_BUDGET:
                break
        add_time(timings, "candidate_runs", started)
        return ahead


class _Prefetch:
    """A chain's reference run on its samples in a thread of its own, two samples side by side (ONNX Runtime
    lets one session run in several threads); ``result`` waits for its ``Recording`` (None when it failed, was
    cancelled, or outgrew ``RECORDING_BUDGET``)."""

    def __init__(
        self,
        chain: ParityChain,
        reference: Any,
        limit: int | None,
        probed: ProbeRun | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.reference = reference
        self._chain, self._limit, self._probed, self._probe = chain, limit, probed, probe
        self.probed = threading.Event()  # set once the chain's dataset is known (or the probe failed)
        if probe is None:
            self.probed.set()
        self._cancelled = threading.Event()
        self._run_options = runtime.run_options()  # its ``terminate`` stops the sample running
        self._recording: Recording | None = None
        self.slow_run_seconds: float | None = None  # the first run's, when it stopped the run there
        # Set once the run goes on past its first sample or stops there (then ``slow_run_seconds`` says why).
        self.first_run_decided = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onnxkit-parity-reference")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._record()
        finally:
            self.first_run_decided.set()

    def _record(self) -> None:
        chain, probed, probe = self._chain, self._probed, self._probe
        self._probed = self._probe = None  # the session goes with this run, not with the prefetch object
        if probe is not None:
            try:
                dataset = probe.run(keep_run=True, cancelled=self._cancelled, run_options=self._run_options)
                chain.dataset, chain.description = dataset, describe_data(dataset)
            except ProbeCancelled:
                return
            except Exception as error:  # DataError, ModelLoadError: the first comparison raises it
                chain.probe_error = error
                return
            finally:
                self.probed.set()  # once the dataset is the chain's, or the error recorded
            probed, dataset.probe_run = dataset.probe_run, None
        try:
            live = Live(probed.session if probed is not None else chain._session(self.reference), self._run_options)
            recording = Recording(live.outputs)
            samples = enumerate(itertools.islice(chain.dataset, self._limit))
            first_seconds = None
            if probed is not None:
                for index, sample in itertools.islice(samples, 1):  # the probe ran this sample already
                    validate_sample(sample, chain.specs, index=index)
                    recording.add(list(probed.first_outputs))
                    first_seconds = probed.seconds
            elif self._limit is not None:  # a limited comparison: the first run alone says whether to stop there
                for index, sample in itertools.islice(samples, 1):
                    started = time.perf_counter()
                    recording.add(live.run(live.outputs, validate_sample(sample, chain.specs, index=index), index))
                    first_seconds = time.perf_counter() - started
            if self._limit is not None and first_seconds is not None and first_seconds >= SLOW_RUN_SECONDS:
                self.slow_run_seconds = first_seconds
                self._recording = recording  # incomplete: it covers the one sample compared
                return
            self.first_run_decided.set()
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as side_by_side:
                while pair := list(itertools.islice(samples, 2)):
                    if self._cancelled.is_set():
                        return
                    runs = [
                        side_by_side.submit(
                            live.run, live.outputs, validate_sample(sample, chain.specs, index=index), index
                        )
                        for index, sample in pair
                    ]
                    for run in runs:
                        recording.add(run.result())
                    if recording.nbytes > RECORDING_BUDGET:
                        return
        except Exception:  # the comparison runs the reference again and reports the failure
            return
        recording.complete = self._limit is None or len(recording.values) < self._limit
        self._recording = recording

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Recording | None:
        self._thread.join()
        return self._recording

    def cancel(self) -> None:
        self._cancelled.set()
        self._run_options.terminate = True
