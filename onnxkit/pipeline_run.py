"""One run of a pipeline: the straight line each pass goes through (``PipelineRun``), the segments of exact
passes that share one parity check, and the progress bar. ``onnxkit.pipeline`` builds the run and hands it the
starting model; this module is its loop."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import onnx_ir as ir

from onnxkit import graph, modelio, narrowing, runtime
from onnxkit.errors import OnnxkitError, ParityError, PassFailedError
from onnxkit.graph import count_nodes, op_histogram
from onnxkit.model_bytes import TensorEncodings
from onnxkit.narrowing import Attempt, Failure
from onnxkit.pass_base import Pass, PassContext, PassResult, Site
from onnxkit.report import PassReport, PipelineReport
from onnxkit.snapshot import Baseline, Clock, Snapshot, histogram_delta, undeclared_domains

CheckMode = Literal["each", "end", "off"]
OnFail = Literal["stop", "rollback", "warn"]

# An exact pass must give the same outputs on every input, so on synthetic inputs (no data to cover) it is
# compared on this many samples; a lossy pass's budgets (cosine, SQNR) are statistics over all of them.
EXACT_SYNTHETIC_SAMPLES = 2

# Why a check is not run between two models of which ``graph.computation`` is the same.
SAME_COMPUTATION = (
    "not run: the same nodes, attributes, initializers and graph signature as the model it would compare with "
    "(only shape annotations, node names or metadata differ), so the outputs cannot differ; the model loads in "
    "ONNX Runtime"
)


# The parity inputs of a run whose probe was still running when it ended: no comparison needed them.
NOT_PROBED = "synthetic, not probed: no comparison needed inputs (no pass changed what the model computes)"


@dataclasses.dataclass
class SameComputation:
    """In place of a ``ParityReport``: the check that could not fail, not run (``SAME_COMPUTATION``)."""

    passed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"passed": True, "skipped": SAME_COMPUTATION, "samples": 0, "summary": SAME_COMPUTATION}


class PipelineRun:
    """One run of a pipeline: what passes hand on to each other, and the straight line each pass goes through.

    For each pass:
    1. fingerprint its input (an in-place pass edits the very model it is given);
    2. run it, timed; an exception is an internal error of that pass, unless it is the user's (bad data);
    3. a pass that says it changed nothing must not have: the fingerprint after must be the same;
    4. verify the output: onnx.checker, the graph signature, shape inference (each only if the pipeline's
       input passed it), no operator domain the pass does not declare;
    5. compare outputs with the pass's input (``check=each``), within the tolerance of the pass's kind;
    6. an exact pass that reported its sites and failed 4 or 5 is narrowed: rerun with rules, then single
       sites, disabled until its output passes (``_narrow``);
    7. what still fails is handled as ``on_fail`` says: stop, roll back, or keep with a warning.
    """

    def __init__(
        self,
        context: PassContext,
        report: PipelineReport,
        *,
        check: CheckMode,
        on_fail: OnFail,
        tolerance: Any,
        verify: bool,
        data: Any,
        calibration_data: Any,
    ) -> None:
        self.context = context
        self.report = report
        self.check = check
        self.on_fail = on_fail
        self.tolerance = tolerance
        self.verify = verify
        self.data = data
        self.calibration_data = calibration_data
        self.baseline: Baseline | None = None
        self.last_snapshot: Snapshot | None = None  # the serialized form of the model ``all`` returned
        self.encodings = TensorEncodings()  # each tensor's bytes, reused by every snapshot that holds it
        self._parity: Any = None
        self._probed: Any = None  # the probe's session and first outputs (data.probe.ProbeRun), until taken
        self._probe: Any = None  # a probe for the background run to make (data.probe.Probe), until taken
        self.deferring = False  # parity waits for the end of a segment of exact passes
        # A snapshot's id -> (that snapshot, the earliest one computing the same: ``graph.computation``).
        self._computes_as: dict[int, tuple[Snapshot, Snapshot]] = {}

    # -- the run ----------------------------------------------------------------------------------------

    def all(
        self, current: ir.Model, passes: list[Pass], *, progress: bool, loaded: modelio.LoadedModel | None = None
    ) -> ir.Model:
        """Run ``passes`` from ``current``; ``loaded`` is ``current`` as read from its file, unedited since."""
        setup = self.report.timings
        clock = Clock(setup)
        with clock("serialize"):
            original = Snapshot.of_input(current, loaded, self.context.model_dir, self.encodings)
        self.report.input_summary = {"nodes": count_nodes(current), "bytes": original.size}
        if self.check != "off":
            with clock("parity_inputs"):
                # Data problems surface before the first pass runs, or at the first comparison, which waits for a
                # probe running in the background.
                self._parity_chain(current, original.model if isinstance(original.model, bytes) else None)
            probed, self._probed = self._probed, None  # dropped here unless the background run takes it
            probe, self._probe = self._probe, None
            # Not for a proto past the in-memory limit: its weights would be held twice. A model whose weights
            # stay in external data files is bytes of its graph, and its sessions map the weights.
            if isinstance(original.model, bytes):
                limit = self._sample_limit(self._first_comparison_kind(passes))
                self._parity.prefetch(original.model, limit=limit, probed=probed, probe=probe)
        if self.verify:  # while the reference runs in the background
            with clock("baseline_checks"):
                self.baseline = Baseline.of(original, as_read=loaded is not None and original.content is loaded.content)
        before = original
        try:
            with _progress(len(passes), enabled=progress) as show:
                for segment in _segments(passes, check=self.check):
                    current, before = self.segment(segment, current, before, show)
            if self.check == "end" and before is not original:
                self._final_check(original, before, passes)
        finally:
            if self._parity is not None:
                self._parity.close()
                if self._parity.dataset is None:
                    self.report.parity_inputs = NOT_PROBED  # no comparison needed them
        self.last_snapshot = before
        return current

    def _final_check(self, original: Snapshot, final: Snapshot, passes: list[Pass]) -> None:
        """``check=end``: the run's output compared with its input, within the loosest kind of its passes."""
        kind = "lossy" if any(p.kind == "lossy" for p in passes) else "exact"
        parity = self._check(original, final, kind, self.report.timings.setdefault("final_parity", {}))
        self.report.final_parity = parity.to_dict()
        if not parity.passed:
            self.report.parity_failed = True
            if self.on_fail != "warn":
                self.report.failed = True
                raise ParityError(
                    f"the optimized model's outputs drifted beyond {kind} tolerance: {parity.summary()}",
                    hint="run with --check each to find the pass responsible",
                )

    def segment(
        self, passes: list[Pass], current: ir.Model, before: Snapshot, show: Callable[[Pass], None]
    ) -> tuple[ir.Model, Snapshot]:
        """Run consecutive exact passes with one parity check for them all, from the first one's input to the
        last one's output: each model then runs once instead of once per pass around it. Each pass is still
        verified on its own. Should the outputs drift, the passes run again, each checked on its own, to find
        the one responsible: the price of a failure, paid only then."""
        if len(passes) == 1:
            show(passes[0])
            return self.one(passes[0], current, before)
        start, entries, rolled_back = before, len(self.report.passes), len(self.report.rolled_back)
        self.deferring = True
        try:
            for pass_ in passes:
                show(pass_)
                current, before = self.one(pass_, current, before)
        finally:
            self.deferring = False
        if before is start:
            return current, before  # nothing changed, so there is nothing to compare
        segment_entries = self.report.passes[entries:]
        covered = [e for e in segment_entries if e.modified and e.status in ("ok", "narrowed")]
        parity = self._check(start, before, "exact", (covered or segment_entries)[-1].timings.setdefault("parity", {}))
        if parity.passed:
            for entry in covered:
                entry.parity = {**parity.to_dict(), "passes": [e.name for e in covered]}
            return current, before
        # Check the passes one by one from the segment's input; what the first try cost stays on the record.
        self.report.timings["segment_retries"] = self.report.timings.get("segment_retries", 0.0) + sum(
            e.total_seconds() for e in segment_entries
        )
        del self.report.passes[entries:]
        del self.report.rolled_back[rolled_back:]
        current, before = start.restore(), start
        for pass_ in passes:
            current, before = self.one(pass_, current, before)
        return current, before

    def one(self, pass_: Pass, current: ir.Model, before: Snapshot) -> tuple[ir.Model, Snapshot]:
        """Run one pass; returns the model the next pass starts from, and its snapshot."""
        entry = PassReport(name=pass_.name, spec=pass_.spec(), kind=pass_.kind, bytes_before=before.size)
        self.report.passes.append(entry)
        clock = Clock(entry.timings)
        with clock("instrument"):
            fingerprint_before = graph.fingerprint(current)
            histogram_before = op_histogram(current)
        entry.nodes_before = sum(histogram_before.values())  # every node of every graph, as count_nodes
        attempt = self._attempt(pass_, current, before, histogram_before, fingerprint_before, entry.timings)
        entry.seconds = entry.timings.get("transform", 0.0)
        if attempt.result is not None:
            self._record_result(entry, attempt.result)
        if attempt.result is not None and attempt.snapshot is None and attempt.failure is None:
            entry.nodes_after, entry.bytes_after = entry.nodes_before, entry.bytes_before  # unchanged, as claimed
            return current, before
        if (
            attempt.failure is not None
            and attempt.result is not None
            and attempt.result.sites
            and pass_.kind == "exact"
        ):
            with clock("narrowing"):
                narrowed = self._narrow(pass_, before, histogram_before, attempt, entry)
            if narrowed is not None:
                attempt = narrowed
                assert attempt.result is not None  # narrowing returns a passing attempt, and only a raise has none
                self._record_result(entry, attempt.result)
                entry.status = "narrowed"
        entry.verification = attempt.verification
        if attempt.parity is not None:
            entry.parity = attempt.parity.to_dict()
        if attempt.snapshot is not None and attempt.result is not None:
            entry.bytes_after = attempt.snapshot.size
            histogram_after = attempt.histogram or op_histogram(attempt.result.model)
            entry.nodes_after = sum(histogram_after.values())
            entry.op_delta = histogram_delta(histogram_before, histogram_after)
        else:
            entry.nodes_after, entry.bytes_after = entry.nodes_before, entry.bytes_before
        if attempt.failure is None:
            assert attempt.result is not None
            # A narrowed pass may end up changing nothing: its input goes on, as it was.
            return attempt.result.model, attempt.snapshot or before
        return self._fail(pass_, entry, attempt, before)

    def _attempt(
        self,
        pass_: Pass,
        model: ir.Model,
        before: Snapshot,
        histogram_before: collections.Counter[str],
        fingerprint_before: tuple,
        timings: dict[str, Any],
    ) -> Attempt:
        """Run ``pass_`` on ``model`` and check its output. ``snapshot`` is None when the pass changed nothing."""
        clock = Clock(timings)
        pass_.context = self.context
        self.context.parity_reference = self._parity_reference(pass_, before)
        try:
            with clock("transform"):
                result = pass_(model)
        except OnnxkitError as e:
            if e.exit_code == 2:
                raise  # the user's to fix (data that does not fit, a bad option): not a failure of the pass
            return Attempt(None, None, Failure("error", f"pass '{pass_.name}' failed: {e.message}", e.message, e))
        except Exception as e:  # any other exception is a bug in the pass: it costs that pass, not the run
            failure = f"{type(e).__name__}: {runtime.error_line(e)}"
            self.report.passes[-1].traceback = traceback.format_exc()
            return Attempt(
                None,
                None,
                Failure(
                    "error", f"pass '{pass_.name}' hit an internal error: {failure}", f"internal error: {failure}", e
                ),
            )
        if not result.modified:
            with clock("instrument"):
                unchanged = graph.fingerprint(result.model) == fingerprint_before
            if unchanged:
                return Attempt(result, None, None)
            problem = "it changed the model but reported modified=False"
            return Attempt(
                result,
                None,
                Failure("verification", f"pass '{pass_.name}' broke its contract: {problem}", problem),
                verification=[problem],
            )
        with clock("serialize"):
            snapshot = Snapshot.of(result.model, self.context.model_dir, self.encodings)
        problems = self.baseline.problems(snapshot, clock) if self.baseline else []
        with clock("instrument"):
            histogram = op_histogram(result.model)
            problems += undeclared_domains(pass_, histogram_before, histogram)
            # Only a pass that left every op in place can compute what its input did: then look closer.
            if self.check != "off" and histogram == histogram_before:
                if graph.computation(graph.fingerprint(result.model)) == graph.computation(fingerprint_before):
                    self._computes_as[id(snapshot)] = (snapshot, self._anchor(before))
        if problems:
            return Attempt(
                result,
                snapshot,
                Failure("verification", f"pass '{pass_.name}' broke the model: {problems[0]}", problems[0]),
                verification=problems,
                histogram=histogram,
            )
        if self.check != "each" or self.deferring:
            return Attempt(result, snapshot, None, histogram=histogram)
        parity = self._adopted(result, before, pass_.kind, timings.setdefault("parity", {})) or self._check(
            before, snapshot, pass_.kind, timings.setdefault("parity", {})
        )
        if parity.passed:
            return Attempt(result, snapshot, None, parity, histogram=histogram)
        message = f"pass '{pass_.name}' changed the model's outputs beyond {pass_.kind} tolerance: {parity.summary()}"
        return Attempt(result, snapshot, Failure("parity", message, _parity_brief(parity)), parity, histogram=histogram)

    @staticmethod
    def _record_result(entry: PassReport, result: PassResult) -> None:
        entry.modified = bool(result.modified)
        entry.stats = list(result.stats) if isinstance(result, PassResult) else []
        entry.details = dict(result.details) if isinstance(result, PassResult) else {}

    def _fail(self, pass_: Pass, entry: PassReport, attempt: Attempt, before: Snapshot) -> tuple[ir.Model, Snapshot]:
        """Handle a pass whose output cannot be kept as it is, as ``on_fail`` says."""
        failure = attempt.failure
        assert failure is not None
        entry.error = failure.message
        if self.on_fail == "stop":
            entry.status = "parity-failed" if failure.kind == "parity" else "failed"
            self.report.failed = True
            if failure.kind == "parity":
                raise ParityError(
                    failure.message, hint="use --on-fail rollback to skip this pass, or loosen the tolerance"
                )
            raise PassFailedError(failure.message, hint="use --on-fail rollback to skip this pass") from failure.cause
        if self.on_fail == "warn" and failure.kind == "parity":
            entry.status = "parity-warning"
            self.report.parity_failed = True
            assert attempt.result is not None and attempt.snapshot is not None
            return attempt.result.model, attempt.snapshot
        # Rolled back: a pass that raised or broke the model is never kept, whatever on_fail says. Its input
        # comes back from the snapshot, since an in-place pass may have edited it before it failed.
        entry.status = "rolled-back"
        self.report.rolled_back.append(pass_.name)
        return before.restore(), before

    # -- narrowing --------------------------------------------------------------------------------------

    def _narrow(
        self,
        pass_: Pass,
        before: Snapshot,
        histogram_before: collections.Counter[str],
        failed: Attempt,
        entry: PassReport,
    ) -> Attempt | None:
        """``narrowing.narrow`` over reruns of ``pass_`` on its input, timed as narrowing whatever step they spend."""

        def rerun(disabled: frozenset[str | Site]) -> Attempt:
            self.context.disabled = disabled
            try:
                model = before.restore()
                return self._attempt(pass_, model, before, histogram_before, graph.fingerprint(model), {})
            finally:
                self.context.disabled = frozenset()

        return narrowing.narrow(rerun, failed, entry)

    # -- parity -----------------------------------------------------------------------------------------

    def _parity_reference(self, pass_: Pass, before: Snapshot) -> Any:
        """For a lossy pass checked on its own, the parity samples and the recorded outputs of its input on them
        (``parity.judgement.ParityReference``): with them it judges its output as this check will, and its input
        need not run on them again."""
        if pass_.kind != "lossy" or self.check != "each" or self.deferring:
            return None
        from onnxkit.parity.judgement import reference_for

        return reference_for(self._parity, before.model)

    def _adopted(self, result: PassResult, before: Snapshot, kind: str, timings: dict[str, Any]) -> Any:
        """The pass's own check of the model it returned (quantize's final confirmation), where it compared exactly
        what this check would: the same samples, reference outputs, model, tolerance and session settings
        (``parity.judgement.adopt``); else None."""
        if not isinstance(result, PassResult) or result.judgement is None:
            return None
        from onnxkit.parity.judgement import adopt

        with Clock(timings)("judgement_digests"):
            return adopt(
                result.judgement,
                self._parity,
                before.model,
                result.model,
                self._tolerance(kind),
                limit=self._sample_limit(kind),
            )

    def _anchor(self, snapshot: Snapshot) -> Snapshot:
        """The earliest snapshot known to compute what ``snapshot`` computes: itself, unless passes since that one
        changed only what ``graph.computation`` leaves out."""
        kept = self._computes_as.get(id(snapshot))
        return kept[1] if kept is not None and kept[0] is snapshot else snapshot

    def _check(self, reference: Snapshot, candidate: Snapshot, kind: str, timings: dict[str, Any]) -> Any:
        """Compare ``candidate`` with ``reference``, unless both compute the same (``SameComputation``: the
        candidate is only made a session of, since ONNX Runtime also reads the annotations, and could refuse
        them). The reference compared is the earliest model computing what it computes: the one whose outputs
        the chain has recorded, or is running in the background."""
        reference = self._anchor(reference)
        if self._anchor(candidate) is reference and self._parity.loads(candidate.model, timings):
            return SameComputation()
        report = self._parity.compare(
            reference.model, candidate.model, self._tolerance(kind), timings, limit=self._sample_limit(kind)
        )
        self.report.parity_inputs = self._parity.description  # it says when a slow model took one sample
        return report

    def _sample_limit(self, kind: str) -> int | None:
        synthetic = self.data is None and self.calibration_data is None
        return EXACT_SYNTHETIC_SAMPLES if synthetic and kind == "exact" else None

    def _first_comparison_kind(self, passes: list[Pass]) -> str:
        """The kind of the comparison most likely to be made against the pipeline's input: the first pass's
        (its segment's, for exact passes), or with ``check=end`` the whole run's."""
        if self.check == "end":
            return "lossy" if any(p.kind == "lossy" for p in passes) else "exact"
        return passes[0].kind if passes else "exact"

    def _tolerance(self, kind: str) -> Any:
        from onnxkit import parity

        if isinstance(self.tolerance, parity.Tolerance):
            return self.tolerance
        return dataclasses.replace(parity.Tolerance.for_kind(kind), **(self.tolerance or {}))

    def _parity_chain(self, model: ir.Model, serialized: bytes | None = None) -> Any:
        """The parity inputs, chosen once per run, and the chain that compares each pass's output on them;
        ``serialized``, the model's bytes, are what a probe for synthetic inputs makes its session from."""
        if self._parity is not None:
            return self._parity
        from onnxkit import parity
        from onnxkit.data import (
            DEFAULT_CALIBRATION_SAMPLES,
            CalibrationSplit,
            as_dataset,
            describe_data,
            input_specs,
        )
        from onnxkit.data.probe import Probe

        dataset: Iterable[dict[str, Any]] | None  # a Dataset, or a view of the calibration data's held-out samples
        prepack = runtime.packs_weights(model)  # for every session of the chain's, the probe's too
        if self.data is not None:
            dataset = as_dataset(self.data, model)
            description = f"--data {describe_data(self.data)}"
        elif self.calibration_data is not None:
            # The split quantize makes with its default ``samples``: the held-out samples are the very ones it
            # judged its target on (a larger ``samples`` only makes them a subset).
            dataset = CalibrationSplit(as_dataset(self.calibration_data, model), DEFAULT_CALIBRATION_SAMPLES).held_out
            description = f"held-out samples of the calibration data ({describe_data(self.calibration_data)})"
        else:
            # The probe runs the model on the first sample: that session and run start the reference's. It reads
            # the graph here; its runs go to the background run of the reference, which starts with them (from
            # the model's bytes, while the passes edit the model), unless there are no bytes to run.
            probe = Probe(
                model, dims=self.context.dims, model_dir=self.context.model_dir, serialized=serialized, prepack=prepack
            )
            if probe.needed and probe.background:
                self._probe, dataset, description = probe, None, NOT_PROBED
            else:
                dataset = probe.run(keep_run=True) if probe.needed else probe.dataset({})
                self._probed, dataset.probe_run = dataset.probe_run, None
                description = describe_data(dataset)
        self.report.parity_inputs = description
        self._parity = parity.ParityChain(
            dataset,
            input_specs(model),
            description,
            data_given=self.data is not None or self.calibration_data is not None,
            model_dir=self.context.model_dir,
            prepack=prepack,
        )
        return self._parity


def _parity_brief(parity: Any) -> str:
    """The failure in a few words, e.g. ``parity: output 'y' max abs 0.52`` (cosine for a lossy budget)."""
    worst = parity.worst()
    if worst is None or worst.errors or not worst.failures:
        return f"parity: {parity.errors[0] if parity.errors else 'failed'}"
    return f"parity: output '{worst.name}': {worst.failures[0]}"


def _segments(passes: list[Pass], *, check: CheckMode) -> list[list[Pass]]:
    """Runs of consecutive exact passes, and each other pass alone; with ``check=each`` only (otherwise
    there is no per-pass parity to share)."""
    segments: list[list[Pass]] = []
    for pass_ in passes:
        if check == "each" and pass_.kind == "exact" and segments and segments[-1][-1].kind == "exact":
            segments[-1].append(pass_)
        else:
            segments.append([pass_])
    return segments


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[Pass], None]]:
    """A function to call as each pass starts; with ``enabled``, a progress bar on stderr names it."""
    if not enabled:
        yield lambda pass_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("passes", total=total)
        started = 0

        def show(pass_: Pass) -> None:
            nonlocal started
            progress.update(task, description=f"running {pass_.name}", completed=min(started, total))
            started += 1

        yield show
