"""A run's parity checks (``RunParity``): the parity inputs chosen once, the chain that compares each pass's
output on them, the checks that cannot fail and are not run (``SameComputation``), and a lossy pass's own
check taken in place of this one. ``pipeline_run.PipelineRun`` asks it for each comparison it makes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal

import onnx_ir as ir

from onnxkit import graph, runtime
from onnxkit.pass_base import Pass, PassContext, PassResult
from onnxkit.report import PipelineReport
from onnxkit.snapshot import Clock, Snapshot

CheckMode = Literal["each", "end", "off"]

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


class RunParity:
    """The parity side of one run: which inputs, which tolerance, how many samples, and each comparison."""

    def __init__(
        self,
        context: PassContext,
        report: PipelineReport,
        *,
        check: CheckMode,
        tolerance: Any,
        data: Any,
        calibration_data: Any,
    ) -> None:
        self.context = context
        self.report = report
        self.check = check
        self.tolerance = tolerance
        self.data = data
        self.calibration_data = calibration_data
        self._chain: Any = None  # parity.ParityChain, once the inputs are chosen
        self._probed: Any = None  # the probe's session and first outputs (data.probe.ProbeRun), until taken
        self._probe: Any = None  # a probe for the background run to make (data.probe.Probe), until taken
        # A snapshot's id -> (that snapshot, the earliest one computing the same: ``graph.computation``).
        self._computes_as: dict[int, tuple[Snapshot, Snapshot]] = {}

    # -- the inputs, chosen once ------------------------------------------------------------------------

    def start(self, model: ir.Model, original: Snapshot, passes: list[Pass]) -> None:
        """Choose the parity inputs and start running the pipeline's input on them in the background."""
        # Data problems surface before the first pass runs, or at the first comparison, which waits for a
        # probe running in the background.
        self._start_chain(model, original.model if isinstance(original.model, bytes) else None)
        probed, self._probed = self._probed, None  # dropped here unless the background run takes it
        probe, self._probe = self._probe, None
        # Not for a proto past the in-memory limit: its weights would be held twice. A model whose weights
        # stay in external data files is bytes of its graph, and its sessions map the weights.
        if isinstance(original.model, bytes):
            limit = self.sample_limit(self._first_comparison_kind(passes))
            self._chain.prefetch(original.model, limit=limit, probed=probed, probe=probe)

    def close(self) -> None:
        """Stop the background run; a run that compared nothing says its inputs were not probed."""
        if self._chain is None:
            return
        self._chain.close()
        if self._chain.dataset is None:
            self.report.parity_inputs = NOT_PROBED  # no comparison needed them

    def _start_chain(self, model: ir.Model, serialized: bytes | None) -> None:
        """The parity inputs, chosen once per run, and the chain that compares each pass's output on them;
        ``serialized``, the model's bytes, are what a probe for synthetic inputs makes its session from."""
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
        self._chain = parity.ParityChain(
            dataset,
            input_specs(model),
            description,
            data_given=self.data is not None or self.calibration_data is not None,
            model_dir=self.context.model_dir,
            prepack=prepack,
        )

    # -- the comparisons --------------------------------------------------------------------------------

    def check_pair(self, reference: Snapshot, candidate: Snapshot, kind: str, timings: dict[str, Any]) -> Any:
        """Compare ``candidate`` with ``reference``, unless both compute the same (``SameComputation``: the
        candidate is only made a session of, since ONNX Runtime also reads the annotations, and could refuse
        them). The reference compared is the earliest model computing what it computes: the one whose outputs
        the chain has recorded, or is running in the background."""
        reference = self._anchor(reference)
        if self._anchor(candidate) is reference and self._chain.loads(candidate.model, timings):
            return SameComputation()
        report = self._chain.compare(
            reference.model, candidate.model, self._tolerance(kind), timings, limit=self.sample_limit(kind)
        )
        self.report.parity_inputs = self._chain.description  # it says when a slow model took one sample
        return report

    def reference_for(self, before: Snapshot) -> Any:
        """The parity samples and the recorded outputs of a lossy pass's input on them
        (``parity.judgement.ParityReference``): with them the pass judges its output as this check will, and
        its input need not run on them again."""
        from onnxkit.parity.judgement import reference_for

        return reference_for(self._chain, before.model)

    def adopted(self, result: PassResult, before: Snapshot, kind: str, timings: dict[str, Any]) -> Any:
        """The pass's own check of the model it returned (quantize's final confirmation), where it compared exactly
        what this check would: the same samples, reference outputs, model, tolerance and session settings
        (``parity.judgement.adopt``); else None."""
        if not isinstance(result, PassResult) or result.judgement is None:
            return None
        from onnxkit.parity.judgement import adopt

        with Clock(timings)("judgement_digests"):
            return adopt(
                result.judgement,
                self._chain,
                before.model,
                result.model,
                self._tolerance(kind),
                limit=self.sample_limit(kind),
            )

    # -- what computes the same -------------------------------------------------------------------------

    def note_same_computation(
        self, snapshot: Snapshot, before: Snapshot, output: ir.Model, input_fingerprint: tuple
    ) -> None:
        """Remember ``snapshot`` (of ``output``) as computing what ``before`` (fingerprinted ``input_fingerprint``)
        computes when ``graph.computation`` says so; later checks then compare with the earliest such model."""
        if graph.computation(graph.fingerprint(output)) == graph.computation(input_fingerprint):
            self._computes_as[id(snapshot)] = (snapshot, self._anchor(before))

    def _anchor(self, snapshot: Snapshot) -> Snapshot:
        """The earliest snapshot known to compute what ``snapshot`` computes: itself, unless passes since that one
        changed only what ``graph.computation`` leaves out."""
        kept = self._computes_as.get(id(snapshot))
        return kept[1] if kept is not None and kept[0] is snapshot else snapshot

    # -- tolerance and samples --------------------------------------------------------------------------

    def sample_limit(self, kind: str) -> int | None:
        synthetic = self.data is None and self.calibration_data is None
        return EXACT_SYNTHETIC_SAMPLES if synthetic and kind == "exact" else None

    def _first_comparison_kind(self, passes: list[Pass]) -> str:
        """The kind of the comparison most likely to be made against the pipeline's input: the first pass's
        (its segment's, for exact passes), or with ``check=end`` the whole run's."""
        if self.check == "end":
            return loosest_kind(passes)
        return passes[0].kind if passes else "exact"

    def _tolerance(self, kind: str) -> Any:
        from onnxkit import parity

        if isinstance(self.tolerance, parity.Tolerance):
            return self.tolerance
        return dataclasses.replace(parity.Tolerance.for_kind(kind), **(self.tolerance or {}))


def loosest_kind(passes: list[Pass]) -> str:
    """The kind whose tolerance a comparison across all of ``passes`` is held to: lossy if any pass is."""
    return "lossy" if any(p.kind == "lossy" for p in passes) else "exact"


def parity_brief(parity: Any) -> str:
    """The failure in a few words, e.g. ``parity: output 'y' max abs 0.52`` (cosine for a lossy budget)."""
    worst = parity.worst()
    if worst is None or worst.errors or not worst.failures:
        return f"parity: {parity.errors[0] if parity.errors else 'failed'}"
    return f"parity: output '{worst.name}': {worst.failures[0]}"
