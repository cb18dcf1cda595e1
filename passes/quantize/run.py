"""One quantize run: the prepared float model, its settings, data, ranges and report, and the steps that use them.

``QuantizePass.call`` prepares the model and builds a ``QuantizeRun``; each step below reads what it needs from
the run instead of having it threaded through as positional values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization.calibrate import TensorsData

from onnxkit.data import CalibrationSplit
from onnxkit.errors import PassFailedError
from onnxkit.pass_base import PassContext
from onnxkit.passes.quantize import (
    calibration,
    float_search,
    judge,
    latency,
    op_speed,
    qdq_edit,
    runtime,
    sensitivity,
    smoothing,
)
from onnxkit.passes.quantize.judge import Judge  # the method QuantizeRun.judge hides the module in annotations
from onnxkit.passes.quantize.options import QuantizeOptions
from onnxkit.passes.quantize.report import Report, quantized_nodes
from onnxkit.passes.quantize.rewrite import FLOAT_OUTPUT_OP_TYPES, QuantizeSettings, quantize_model

# Per-node sensitivity and timing need far fewer samples than calibration.
SENSITIVITY_SAMPLES = 8
TIMING_SAMPLES = 4
SENSITIVITY_CACHE_FORMAT = 3  # 3: folded Relu/Clip nodes ranked with their producer
# The smoothed activations are kept in memory up to this size, to calibrate their scaled twins without a
# second pass over the model.
SMOOTHING_KEEP_BYTES = 512 * 2**20


@dataclasses.dataclass
class QuantizeRun:
    """Everything one call of the pass works on. ``ranges`` is filled by ``calibrate`` (static mode)."""

    options: QuantizeOptions
    context: PassContext
    float_proto: onnx.ModelProto
    settings: QuantizeSettings
    report: Report
    data: CalibrationSplit
    types: Mapping[str, int]
    candidates: list[onnx.NodeProto]
    excluded: frozenset[str]
    ranges: Any = None
    # The float model as it came, once ``smooth`` has replaced ``float_proto`` (what ORT quantizes) with its
    # smoothed twin: the target and the latency gate compare against this one.
    reference: onnx.ModelProto | None = None
    accept: Judge | None = None  # how candidates are accepted, once ``judge`` has said
    # ((float model, ranges, settings, exclusions), (its full INT8 model, the editor over it)), made by ``quantize``
    _full_models: list[tuple[tuple[Any, ...], tuple[onnx.ModelProto, qdq_edit.QdqEditor | None]]] = dataclasses.field(
        default_factory=list, init=False, repr=False
    )
    # The op speed table's predictions for the latency gate's candidates, made by ``gate``
    predictor: op_speed.Predictor | None = dataclasses.field(default=None, init=False, repr=False)
    # SmoothQuant's channel maxima, gathered by the calibration pass (None: not gathered there)
    _smoothing_seen: smoothing.ActivationObserver | None = dataclasses.field(default=None, init=False, repr=False)
    # calib=auto: minmax's ranges from the calibration pass, for ``choose_ranges`` (None: not measured, or used)
    _minmax_ranges: TensorsData | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def original(self) -> onnx.ModelProto:
        return self.float_proto if self.reference is None else self.reference

    # -- quantizing -------------------------------------------------------------------------------------

    def quantize(
        self, keep_float: Sequence[str] | Mapping[str, str], op_types: Sequence[str] | None = None
    ) -> onnx.ModelProto:
        """The INT8 model with ``keep_float`` (and the user's exclusions) in float, over ``op_types``.

        In static QDQ mode ORT quantizes the model once, every candidate node in INT8, and each later model is
        that one with more nodes float (``qdq_edit``: the graph ORT would write, in milliseconds instead of
        seconds); a node whose op type is left out of ``op_types`` is one more float node. Where the editor
        cannot say what ORT would write, ORT quantizes the model again."""
        full = self._fully_quantized()
        if full is not None:
            quantized, editor = full
            dropped = set(self.settings.op_types) - set(op_types or self.settings.op_types)
            float_nodes = set(keep_float) | {n.name for n in self.float_proto.graph.node if n.op_type in dropped}
            if not float_nodes - self.excluded:
                return quantized
            if editor is not None and (edited := editor.keep_float(float_nodes)) is not None:
                return edited
        settings = self.settings if op_types is None else dataclasses.replace(self.settings, op_types=tuple(op_types))
        return quantize_model(self.float_proto, settings, self.ranges, self.excluded | set(keep_float))

    def _fully_quantized(self) -> tuple[onnx.ModelProto, qdq_edit.QdqEditor | None] | None:
        """ORT's model with every candidate in INT8, and the editor over it where it can be used; None outside
        static QDQ. Made once per float model and ranges (SmoothQuant may swap both, and back)."""
        if self.settings.mode != "static" or self.settings.format != "qdq":
            return None
        key = (self.float_proto, self.ranges, self.settings, self.excluded)
        for made_for, made in self._full_models:
            if made_for[0] is key[0] and made_for[1] is key[1] and made_for[2:] == key[2:]:
                return made
        quantized = quantize_model(self.float_proto, self.settings, self.ranges, self.excluded)
        editor = qdq_edit.QdqEditor(
            self.float_proto,
            quantized,
            self.settings.op_types,
            self.excluded,
            self.types,
            [t for t in FLOAT_OUTPUT_OP_TYPES if t in self.settings.op_types],
        )
        made = (quantized, editor if editor.usable else None)
        self._full_models.append((key, made))
        return made

    def try_smoothing(self, accept: Judge | None) -> None:
        """SmoothQuant (``smoothing``), tried where every candidate in INT8 misses the target and kept only
        where it helps: with the nodes it smooths in INT8, the smoothed model's outputs must be closer to float's,
        as ``accept`` measures them, than the plain model's. It moves activation outliers into the weights, which
        transformers need and models without outliers can lose by (a small random MLP: held-out cosine 0.9996
        plain, 0.981 smoothed). Kept, the smoothed model (the same in float up to rounding) is what ORT
        quantizes from then on."""
        alpha = self.options.smooth_alpha
        # What calibration saw for the trial (up to SMOOTHING_KEEP_BYTES), released whatever happens here.
        observed, self._smoothing_seen = self._smoothing_seen, None
        if alpha is None or accept is None or self.settings.mode != "static":
            return
        sites = smoothing.find_sites(self.float_proto, [n.name for n in self.candidates], self.types)
        if not sites:
            return
        plain_verdict = accept.check(self.quantize([]))
        if plain_verdict.passed:
            # Every candidate is INT8 within the target already: smoothing could only cost time (a CNN's head).
            self.report.smoothing = "SmoothQuant not tried: every candidate node in INT8 meets the target without it"
            return
        # Judged with the nodes smoothing does not touch kept float, so that noise it cannot change (MiniLM's
        # attention-probability MatMuls on padded batches: all-INT8 cosine 0.857 plain, 0.848 smoothed) does
        # not hide what it does to the rest (0.985 plain, 0.997 smoothed).
        smoothable = {n.name for site in sites for n in site.nodes}
        untouched = [n.name for n in self.candidates if n.name not in smoothable]
        plain_verdict = accept.check(self.quantize(untouched))
        activations = [s.activation for s in sites]
        if observed is not None and set(activations) <= set(observed.maxima):
            seen = observed.stats()  # seen by the calibration pass: no pass over the model of its own
        else:
            seen = smoothing.observe(
                self.float_proto, activations, self.types, self.data.calibration, keep_bytes=SMOOTHING_KEEP_BYTES
            )
        smoothed = smoothing.smooth(self.float_proto, sites, seen.maxima, alpha)
        if smoothed is None:
            return
        plain = (self.float_proto, self.types, self.candidates, self.ranges)
        nodes = {n.name: n for n in smoothed.model.graph.node}
        self.reference, self.float_proto = self.float_proto, smoothed.model
        self.types = {**self.types, **smoothed.types}
        self.candidates = [nodes[n.name] for n in self.candidates]
        # Every other tensor is the same in float, so only the Mul outputs need ranges: from the activations
        # kept by the maxima pass where they fit (resnet18: one pass over the model instead of two), else by
        # running the smoothed model.
        options = self.options
        settings = calibration.CalibrationSettings(options.calib, options.num_bins, options.percentile)
        if seen.values is not None:
            added = calibration.calibrate(
                smoothed.scaling_model(), list(smoothed.types), smoothed.types, seen.values, settings
            )
        else:
            added = calibration.calibrate(
                self.float_proto, list(smoothed.types), self.types, self.data.calibration, settings
            )
        self.ranges = TensorsData(self.ranges.calibration_method, {**self.ranges.data, **added.data})
        smoothed_verdict = accept.check(self.quantize(untouched))
        kept = smoothing.noise(smoothed_verdict) < smoothing.noise(plain_verdict)
        self.report.smoothing = (
            f"{smoothed.describe()}; {'kept' if kept else 'not kept'}: with those "
            f"{len(smoothable)} nodes in INT8 and the other candidates float, "
            f"{smoothing.summary(smoothed_verdict)} smoothed against "
            f"{smoothing.summary(plain_verdict)} plain"
        )
        if not kept:
            self.float_proto, self.types, self.candidates, self.ranges = plain
            self.reference = None

    def calibrate(self) -> None:
        """Activation ranges over the calibration samples, from the cache when it has them; with calib=auto,
        minmax's too, from the same pass, for ``choose_ranges``."""
        options = self.options
        calib_settings = calibration.CalibrationSettings(options.calib, options.num_bins, options.percentile)
        methods = [calib_settings]
        if options.calib == "auto":
            methods.append(dataclasses.replace(calib_settings, method="minmax"))
        float_results = FLOAT_OUTPUT_OP_TYPES if self.settings.format == "qdq" else ()
        tensors = calibration.calibration_tensors(self.float_proto, self.settings.op_types, self.types, float_results)
        cache, keys = self._cache(), []
        if cache is not None:
            fingerprint = calibration.dataset_fingerprint(self.data.calibration)
            keys = [calibration.cache_key(self.float_proto, fingerprint, method, tensors) for method in methods]
        loaded = [cache.load(key) for key in keys] if cache is not None else []
        found = [ranges for ranges in loaded if ranges is not None]
        status = "hit" if cache is not None and len(found) == len(methods) else "stored" if cache is not None else "off"
        if status == "hit" or not tensors:
            runtime.check_loads(self.float_proto)  # no session of the model is made here: the first comes later
            if status != "hit":  # nothing to measure: every method's ranges are empty
                found = [calibration.to_tensors_data({}, calibration.histogram_method(m.method)) for m in methods]
        else:
            observer = self._smoothing_observer()
            # The pass's first session of the model: where it fails, whether ORT loads the model says why.
            with runtime.first_session_of(self.float_proto):
                with _progress(self.context.show_progress, "calibrating", self.data.calibration_count()) as advance:
                    measured = calibration.measure(
                        self.float_proto,
                        tensors,
                        self.types,
                        self.data.calibration,
                        calib_settings,
                        advance,
                        observe=None if observer is None else observer.add,
                    )
            self._smoothing_seen = observer
            found = [measured.ranges(method) for method in methods]
            if cache is not None:
                for key, ranges in zip(keys, found, strict=True):
                    cache.store(key, ranges)
        self.report.calibration = {
            "method": calib_settings.describe(),
            "samples": self.data.calibration_count(),
            "tensors": len(tensors),
            "cache": status,
        }
        self.ranges = found[0]
        self._minmax_ranges = found[1] if len(found) > 1 else None

    def choose_ranges(self, accept: Judge | None) -> None:
        """calib=auto: entropy's ranges, or minmax's where every candidate in INT8 misses the target with
        entropy's and comes out closer to float with minmax's.

        Entropy clips each tensor's tails, which helps where a few outliers would spread INT8's levels thin
        (MiniLM) and costs where the tails carry signal: resnet18's all-INT8 model missed cosine 0.99 with
        entropy's ranges (the search then kept 11 of its 22 candidates float, and most of the pass's time went
        to that search) and meets it at 0.9999 with minmax's, as ORT's default calibration does. Both come from
        the one calibration pass; trying minmax costs one more ORT quantization and one check, and only where
        entropy's all-INT8 model fails."""
        alternative, self._minmax_ranges = self._minmax_ranges, None
        if alternative is None or accept is None or self.settings.mode != "static":
            return
        entropy_verdict = accept.check(self.quantize([]))
        if entropy_verdict.passed:
            return
        entropy_ranges, self.ranges = self.ranges, alternative
        minmax_verdict = accept.check(self.quantize([]))
        use_minmax = smoothing.noise(minmax_verdict) < smoothing.noise(entropy_verdict)
        if not use_minmax:
            self.ranges = entropy_ranges
        assert self.report.calibration is not None
        self.report.calibration["chosen"] = (
            f"{'minmax' if use_minmax else 'entropy'}: with every candidate node in INT8, "
            f"{smoothing.summary(minmax_verdict)} with minmax's ranges against "
            f"{smoothing.summary(entropy_verdict)} with entropy's"
        )

    def _smoothing_observer(self) -> smoothing.ActivationObserver | None:
        """Where SmoothQuant may be tried, an observer of the activations it would scale, for the calibration
        pass to feed: they are inputs of candidate nodes, so calibration taps them anyway, and the trial then
        needs no pass over the model of its own (resnet18: 6 s of 11)."""
        if self.options.smooth_alpha is None or self.settings.mode != "static":
            return None
        sites = smoothing.find_sites(self.float_proto, [n.name for n in self.candidates], self.types)
        return smoothing.ActivationObserver([s.activation for s in sites], SMOOTHING_KEEP_BYTES) if sites else None

    def _cache(self) -> calibration.CalibrationCache | None:
        folder = self.context.calib_cache
        return calibration.CalibrationCache(folder) if folder else None

    # -- the parity target ------------------------------------------------------------------------------

    def judge(self) -> Judge | None:
        """How a candidate is accepted: the user's metric, else the parity target on held-out data; None: no
        target (every candidate node is quantized)."""
        options = self.options
        evaluate = self.context.metric
        if evaluate is not None:
            chosen = judge.by_metric(self.original, evaluate, options.max_metric_drop)
        elif options.target_cosine is None and options.target_sqnr is None and options.target_top1 is None:
            return None
        else:
            if self.data.reused_calibration_for_holdout:
                self.report.warnings.append(
                    "too few samples to hold any out: the target is judged on calibration samples"
                )
            chosen = judge.by_parity(
                self.original,
                self.data,
                min_cosine=options.target_cosine,
                min_sqnr=options.target_sqnr,
                min_top1=options.target_top1,
                pipeline_checks_held_out=self.context.parity_on_held_out,
                pipeline_reference=self.context.parity_reference,
                pipeline_checks=self.context.parity_checked,
            )
        chosen = _remembering_verdicts(chosen)
        self.report.target = chosen.target
        self.accept = chosen
        return chosen

    def meet_target(
        self, accept: Judge | None, op_types: Sequence[str] | None = None, keep_float: Mapping[str, str] | None = None
    ) -> tuple[onnx.ModelProto, dict[str, str]]:
        """Search which nodes stay float until ``accept`` passes, starting from ``keep_float`` already float, with
        ``op_types`` (default: the settings') quantized."""
        op_types = tuple(op_types or self.settings.op_types)
        if accept is None:
            return self.quantize(list(keep_float or ()), op_types), dict(keep_float or {})
        candidates = [n for n in self.candidates if n.op_type in op_types]
        samples = list(itertools.islice(self.data.calibration, SENSITIVITY_SAMPLES))
        cached = self._sensitivity_cache(samples, op_types, keep_float)

        def rank(quantized: onnx.ModelProto, keep: Sequence[str]) -> list[sensitivity.NodeSensitivity]:
            first = set(keep) == set(keep_float or ())
            if first and cached is not None and (hit := cached.load()) is not None:
                self.report.sensitivity_cache = "hit"
                return hit
            if self.settings.mode == "static" and self.settings.format == "qoperator":
                # QOperator renames every tensor; its QDQ twin keeps the float names to match.
                twin = dataclasses.replace(self.settings, format="qdq", op_types=op_types)
                quantized = quantize_model(self.float_proto, twin, self.ranges, self.excluded | set(keep))
            # Only nodes that really run in INT8 can be taken out (dynamic MatMul needs a constant B, say).
            in_int8 = {n.name for n in quantized_nodes(self.float_proto, quantized)}
            remaining = [n for n in candidates if n.name not in keep and n.name in in_int8]
            ranking = sensitivity.measure_sensitivity(self.float_proto, quantized, remaining, self.types, samples)
            if first and cached is not None:
                cached.store(ranking)
                self.report.sensitivity_cache = "stored"
            return ranking

        budget = self.options.search_budget
        search = float_search.keep_sensitive_in_float(
            lambda keep: self.quantize(keep, op_types),
            rank,
            accept.check,
            keep_float=keep_float,
            deadline=None if budget is None else time.perf_counter() + budget,
            # The full judgement (the pipeline's own check added) only where the search ends.
            confirm=None if accept.confirm is accept.check else accept.confirm,
        )
        report_out_of_time = search.out_of_time
        report = self.report
        report.target_met = search.verdict.passed
        report.verdict = search.verdict.detail
        report.search_rounds += search.rounds
        report.search_verifications += search.verifications
        report.ranking = search.ranking or report.ranking
        if report_out_of_time:
            report.search_out_of_time = f"the search stopped at its {budget:g} s budget (search_budget)"
        return search.model, search.keep_float

    def _sensitivity_cache(
        self, samples: Sequence[Mapping[str, Any]], op_types: Sequence[str], keep_float: Mapping[str, str] | None
    ) -> SensitivityCache | None:
        """The cached first ranking of this model, calibration and data, when a cache folder is given."""
        folder = self.context.calib_cache
        if not folder:
            return None
        digest = hashlib.sha256()
        digest.update(
            calibration.cache_key(
                self.float_proto,
                calibration.dataset_fingerprint(samples),
                calibration.CalibrationSettings(self.options.calib, self.options.num_bins, self.options.percentile),
                sorted(self.ranges.data) if self.ranges is not None else [],
            ).encode()
        )
        digest.update(
            json.dumps(
                {
                    "format": SENSITIVITY_CACHE_FORMAT,
                    "settings": dataclasses.asdict(self.settings),
                    "op_types": list(op_types),
                    "excluded": sorted(self.excluded),
                    "keep": sorted(keep_float or ()),
                },
                sort_keys=True,
            ).encode()
        )
        if self.ranges is not None:
            digest.update(
                json.dumps(
                    {name: [float(v) for v in data.range_value] for name, data in sorted(self.ranges.data.items())}
                ).encode()
            )
        return SensitivityCache(Path(folder) / "sensitivity" / f"{digest.hexdigest()[:32]}.json")

    # -- the latency gate -------------------------------------------------------------------------------

    def gate(self, quantized: onnx.ModelProto, keep_float: Mapping[str, str]) -> onnx.ModelProto | None:
        """``quantized`` if it is fast enough, else a variant with costly op types float, else None."""
        options = self.options
        assert options.max_slowdown is not None
        timing_samples = list(itertools.islice(self.data.calibration, TIMING_SAMPLES))
        present = {n.op_type for n in quantized_nodes(self.float_proto, quantized)}
        # Priced on the model ORT quantized (its nodes are the candidates' nodes), timed against the original.
        self.predictor = op_speed.Predictor(self.float_proto, timing_samples[0]) if timing_samples else None
        gate = latency.latency_gate(
            self.original,
            quantized,
            [t for t in self.settings.op_types if t in present],
            lambda op_types: self.quantize(keep_float, op_types),
            timing_samples,
            options.max_slowdown,
            self.predictor,
        )
        self.report.timing = gate.timing
        self.report.gate_float_op_types = gate.float_op_types
        self.report.gate_attempts = gate.tried
        self.report.gate_summary = latency.summary(gate, options.max_slowdown, self.predictor)
        if gate.model is not None:
            return gate.model
        self.too_slow(gate.timing, gate.float_op_types)
        return None

    def recheck_after_gate(
        self, accept: Judge, keep_float: Mapping[str, str]
    ) -> tuple[onnx.ModelProto | None, dict[str, str]]:
        """The parity target again, on the op types the latency gate left in INT8.

        Keeping an op type float can lower accuracy: with the Relu after an INT8 Conv float, the Conv's output
        is quantized over its whole range, negative values included, instead of the Relu's, from 0. The gate
        decides by timing, which varies from run to run, so without this check the model handed on was never
        judged against the target. The search resumes from the nodes already float and keeps more float until
        the target holds; since that changes the model again, it is timed again.
        """
        options = self.options
        assert options.max_slowdown is not None
        kept_op_types = tuple(t for t in self.settings.op_types if t not in self.report.gate_float_op_types)
        quantized, rechecked_keep = self.meet_target(accept, kept_op_types, keep_float)
        if set(rechecked_keep) == set(keep_float):
            return quantized, rechecked_keep
        timing = latency.assess(
            self.original,
            quantized,
            list(itertools.islice(self.data.calibration, TIMING_SAMPLES)),
            options.max_slowdown,
            self.predictor,
        )
        self.report.timing = timing
        if not timing.within(options.max_slowdown):
            self.too_slow(timing, self.report.gate_float_op_types)
            return None, rechecked_keep
        return quantized, rechecked_keep

    def too_slow(self, timing: latency.Timing, float_op_types: list[str]) -> None:
        """Refuse (on_slow=refuse) or record that the float model is kept."""
        options = self.options
        message = f"INT8 is slower than allowed: {timing.describe()}, above max_slowdown {options.max_slowdown}" + (
            f" even with {', '.join(float_op_types)} kept float" if float_op_types else ""
        )
        if options.on_slow == "refuse":
            raise PassFailedError(message, hint="raise max_slowdown, narrow op_types, or use on_slow=keep-float")
        self.report.kept_whole_model_float = message


# Candidates whose verdicts ``_remembering_verdicts`` keeps (with the models, which it holds alive).
VERDICTS_KEPT = 2


def _remembering_verdicts(chosen: Judge) -> Judge:
    """``chosen`` with its check remembering the last candidates' verdicts, by identity: the all-INT8 model is
    judged by ``choose_ranges``, then by ``try_smoothing``, then by the search's first step, and each would run
    the same sessions on the same samples again (resnet18: 2 s a check)."""
    kept: list[tuple[onnx.ModelProto, float_search.Verdict]] = []

    def check(candidate: onnx.ModelProto) -> float_search.Verdict:
        for model, verdict in kept:
            if model is candidate:
                return verdict
        verdict = chosen.check(candidate)
        kept[:] = [*kept[-(VERDICTS_KEPT - 1) :], (candidate, verdict)]
        return verdict

    confirm = check if chosen.confirm is chosen.check else chosen.confirm
    return dataclasses.replace(chosen, check=check, confirm=confirm)


class SensitivityCache:
    """One ranking as JSON: node, op type, added noise-to-signal ratio, output SQNR."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[sensitivity.NodeSensitivity] | None:
        try:
            rows = json.loads(self.path.read_text())
            return [
                sensitivity.NodeSensitivity(
                    str(r["node"]),
                    str(r["op_type"]),
                    float(r["added_nsr"]),
                    float(r["output_sqnr_db"]),
                    None if r["rounding_nsr"] is None else float(r["rounding_nsr"]),
                )
                for r in rows
            ]
        except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: measured again
            return None

    def store(self, ranking: Sequence[sensitivity.NodeSensitivity]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        # float("inf") is written as Infinity, which json reads back.
        temporary.write_text(json.dumps([dataclasses.asdict(s) for s in ranking]))
        temporary.replace(self.path)


@contextlib.contextmanager
def _progress(show: bool, description: str, total: int) -> Iterator[Callable[[int], None] | None]:
    if not show:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps: bar.advance(task, steps)
