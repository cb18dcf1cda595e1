"""One run of a pipeline: the straight line each pass goes through (``PipelineRun``), the segments of exact
passes that share one parity check, and the progress bar. ``onnxkit.pipeline`` builds the run and hands it the
starting model; this module is its loop, and ``pipeline_parity.RunParity`` makes its comparisons."""

from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Literal

import onnx_ir as ir

from onnxkit import graph, modelio, narrowing, runtime
from onnxkit.errors import OnnxkitError, ParityError, PassFailedError
from onnxkit.graph import count_nodes, op_histogram
from onnxkit.model_bytes import TensorEncodings
from onnxkit.narrowing import Attempt, Failure
from onnxkit.pass_base import Pass, PassContext, PassResult, Site
from onnxkit.pipeline_parity import CheckMode, RunParity, loosest_kind, parity_brief
from onnxkit.report import PassReport, PipelineReport
from onnxkit.snapshot import Baseline, Clock, Snapshot, histogram_delta, undeclared_domains

OnFail = Literal["stop", "rollback", "warn"]


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
        self.verify = verify
        self.parity = RunParity(
            context, report, check=check, tolerance=tolerance, data=data, calibration_data=calibration_data
        )
        self.baseline: Baseline | None = None
        self.last_snapshot: Snapshot | None = None  # the serialized form of the model ``all`` returned
        self.encodings = TensorEncodings()  # each tensor's bytes, reused by every snapshot that holds it
        self.deferring = False  # parity waits for the end of a segment of exact passes

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
                self.parity.start(current, original, passes)
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
            self.parity.close()
        self.last_snapshot = before
        return current

    def _final_check(self, original: Snapshot, final: Snapshot, passes: list[Pass]) -> None:
        """``check=end``: the run's output compared with its input, within the loosest kind of its passes."""
        kind = loosest_kind(passes)
        parity = self.parity.check_pair(original, final, kind, self.report.timings.setdefault("final_parity", {}))
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
        parity = self.parity.check_pair(
            start, before, "exact", (covered or segment_entries)[-1].timings.setdefault("parity", {})
        )
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
                self.parity.note_same_computation(snapshot, before, result.model, fingerprint_before)
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
        parity_timings = timings.setdefault("parity", {})
        parity = self.parity.adopted(result, before, pass_.kind, parity_timings)
        if parity is None:  # the pass did not check what this check would: run it
            parity = self.parity.check_pair(before, snapshot, pass_.kind, parity_timings)
        if parity.passed:
            return Attempt(result, snapshot, None, parity, histogram=histogram)
        message = f"pass '{pass_.name}' changed the model's outputs beyond {pass_.kind} tolerance: {parity.summary()}"
        return Attempt(result, snapshot, Failure("parity", message, parity_brief(parity)), parity, histogram=histogram)

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
        """For a lossy pass checked on its own, what it needs to judge its output as this check will
        (``RunParity.reference_for``); None for every other pass."""
        if pass_.kind != "lossy" or self.check != "each" or self.deferring:
            return None
        return self.parity.reference_for(before)


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
