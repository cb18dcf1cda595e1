"""The latency gate: is the INT8 model really faster than the float one, on this CPU, in ONNX Runtime?

Both models run on the same inputs, interleaved round by round (so a burst of load on a shared machine hits
both), in batches of runs long enough to time (``BATCH_FLOOR_S``), and each is summarised by its fastest batches
(see ``time_models``). INT8 can be slower: ConvInteger has no fast kernel, and QDQ pairs around operators
without INT8 kernels add work without removing any.

Timing costs transform time, so the gate first asks this CPU's op speed table (``op_speed``) and times end to
end only the close calls (``assess``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxkit.passes.quantize.runtime import make_session

if TYPE_CHECKING:
    from onnxkit.passes.quantize import op_speed

# Each timed figure is a batch of runs lasting at least this long: a single run of a tiny model (13 us for
# digits-cnn) is shorter than the clock's and the scheduler's noise, and its INT8 twin was called as fast as
# float where the benchmark times it 1.29x slower.
BATCH_FLOOR_S = 0.001
MAX_BATCH = 2000
MIN_ROUNDS = 8
MAX_ROUNDS = 200
# Enough rounds to see through noise, without spending more than this much on one comparison.
ROUND_BUDGET_S = 3.0
# A model slow enough to take this long over its first rounds is timed on fewer of them (at least two, so
# each model's order alternates once): its runs are long against the noise, and MIN_ROUNDS took 30 s on a VGG.
SLOW_MODEL_BUDGET_S = 8.0
# Two timings of one model against itself still differ by about this much on a shared machine; INT8 within
# it of the allowed latency is not called slower (it is still the smaller model).
TIMING_RESOLUTION = 0.02
# A gate's comparison stops after its minimum rounds, before ROUND_BUDGET_S, once INT8 is faster by this
# fraction of the allowed ratio: more rounds would refine the figure, not the answer (resnet18 at 0.69x: 1.5 s
# of timing instead of 4.5 s). Only that way: on a loaded machine a few rounds can make INT8 look slower (a
# noisy float run is the fastest seen), and an early "slower" would keep nodes float for nothing.
CLEAR_MARGIN = 0.15
# "Slower" is called early only when every one of at least this many samples, each on its fastest batch (of
# at least two), has INT8 slower than allowed by CLEAR_MARGIN: a burst of load lands on one batch, not on all of
# one model's batches across the samples. digits-cnn, INT8 1.33x slower: 3-4 s of timing per candidate without.
SLOWER_ON_EVERY_SAMPLE = 3
# A comparison also stops once INT8 within the allowed ratio has settled there: over the last SETTLED_ROUNDS rounds
# the ratio of the fastest runs moved by at most SETTLED_CHANGE of the allowed ratio, and it lies below the allowed
# ratio by more than SETTLED_MARGIN. The fastest runs then no longer improve, and more rounds would not move the
# ratio across. lstm, INT8 as fast as float (1.005x): 200 rounds and 0.44 s of timing, where the ratio settles in
# about 30. Only that way, for the reason CLEAR_MARGIN gives.
SETTLED_ROUNDS = 16
SETTLED_CHANGE = 0.004
SETTLED_MARGIN = 0.01
# The op speed table's prediction (INT8 nodes' time over their float time) is trusted without timing when it
# lies below CLEARLY_FASTER or above CLEARLY_SLOWER times the allowed ratio: the margin covers the table's
# error on shapes it did not measure. Only on the side where it is sound (see ``assess``).
CLEARLY_FASTER = 0.7
CLEARLY_SLOWER = 1.3
# "Clearly faster" is trusted only where the INT8 nodes take at least this long in float: the table does not price
# the QuantizeLinear / DequantizeLinear left at the edges of the INT8 regions, which outweigh the gain on a tiny
# model (digits-cnn: INT8 nodes predicted 0.72x, the model timed 1.33x). They only add to INT8, so "clearly
# slower" needs no such floor.
TRUSTED_FLOAT_MS = 0.5


@dataclasses.dataclass(frozen=True)
class Timing:
    """INT8 against float: timed end to end, or (``timed`` False) the op speed table's figures for the INT8
    nodes alone, when its prediction was clear enough not to time."""

    float_ms: float
    quantized_ms: float
    predicted: float | None = None  # the table's ratio, where it could price the candidate
    timed: bool = True
    noise: float | None = None  # half the spread of the ratio from sample to sample, relative to it (``_noise``)

    @property
    def ratio(self) -> float:
        """INT8 time over float time: below 1 is a speed-up."""
        return self.quantized_ms / self.float_ms if self.float_ms > 0 else float("inf")

    def within(self, max_slowdown: float) -> bool:
        """Whether INT8 takes at most ``max_slowdown`` times float's latency, as far as timing can tell."""
        return self.ratio <= max_slowdown * (1 + TIMING_RESOLUTION)

    def describe(self) -> str:
        if not self.timed:
            return (
                f"INT8/FP32 latency predicted {self.ratio:.2f}× by this CPU's op speed table (INT8 nodes "
                f"{self.quantized_ms:.2f} ms vs {self.float_ms:.2f} ms in float), clear enough not to time"
            )
        noise = f" ±{self.noise:.0%}" if self.noise is not None else ""
        predicted = f"; predicted {self.predicted:.2f}×" if self.predicted is not None else ""
        return f"INT8/FP32 latency {self.ratio:.2f}×{noise} ({self.quantized_ms:.3g} ms vs {self.float_ms:.3g} ms){predicted}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_ms": round(self.float_ms, 6),
            "quantized_ms": round(self.quantized_ms, 6),
            "ratio": round(self.ratio, 4),
            "timed": self.timed,
            "predicted_ratio": round(self.predicted, 4) if self.predicted is not None else None,
            "noise": round(self.noise, 4) if self.noise is not None else None,
        }


def time_models(
    models: Sequence[onnx.ModelProto], samples: Sequence[Mapping[str, Any]], max_slowdown: float | None = None
) -> list[float]:
    """Milliseconds per run for each model: the fastest of its batches on each sample, its median over the samples."""
    return time_models_with_noise(models, samples, max_slowdown)[0]


def time_models_with_noise(
    models: Sequence[onnx.ModelProto], samples: Sequence[Mapping[str, Any]], max_slowdown: float | None = None
) -> tuple[list[float], float | None]:
    """``time_models``, and for two models the noise of their ratio (``Timing.noise``).

    Each round takes the next sample and runs every model on it, in turn, the order alternating from round to
    round. A model's batch of runs (``_batch_size``: at least ``BATCH_FLOOR_S`` long) is timed right after an
    untimed run on the same sample: the first run after another session's ran 2-15 times slower on a busy
    machine. Noise on a shared machine only ever adds time, so the fastest of several batches is the steadiest
    figure (a model timed against itself comes out within a few percent, where medians of single runs swung
    from 0.1x to 3x). A slow model stops after ``SLOW_MODEL_BUDGET_S`` (and two rounds), each model summarised
    over the samples it reached. With ``max_slowdown`` (two models: float, then INT8), timing stops after the
    minimum rounds once INT8 is faster than allowed by ``CLEAR_MARGIN``, slower than allowed by it on every
    sample (``SLOWER_ON_EVERY_SAMPLE``), or has settled within the allowed ratio (``SETTLED_ROUNDS``).
    """
    sessions = [make_session(m) for m in models]
    feeds = [[{i.name: s[i.name] for i in session.get_inputs()} for s in samples] for session in sessions]
    batches = [_batch_size(session, feed[0]) for session, feed in zip(sessions, feeds)]
    fastest = [[math.inf] * len(samples) for _ in sessions]
    ratios: list[float] = []  # INT8 over float after each round, with ``max_slowdown``
    rounds, started = 0, time.perf_counter()
    while not _enough(
        rounds,
        time.perf_counter() - started,
        len(samples),
        _clear(fastest, max_slowdown) or _settled(ratios, max_slowdown),
    ):
        sample = rounds % len(samples)
        order = range(len(sessions)) if rounds % 2 == 0 else reversed(range(len(sessions)))
        for model in order:
            sessions[model].run(None, feeds[model][sample])
            run_started = time.perf_counter()
            for _ in range(batches[model]):
                sessions[model].run(None, feeds[model][sample])
            batch_s = (time.perf_counter() - run_started) / batches[model]
            fastest[model][sample] = min(fastest[model][sample], batch_s)
        rounds += 1
        if max_slowdown is not None and len(sessions) == 2 and rounds >= len(samples):
            float_ms, quantized_ms = _milliseconds(fastest)
            ratios.append(quantized_ms / float_ms if float_ms > 0 else math.inf)
    return _milliseconds(fastest), _noise(fastest)


def time_batches(models: Sequence[onnx.ModelProto], feed: Mapping[str, Any], rounds: int) -> list[float]:
    """Seconds per run of each model on one input: the fastest of ``rounds`` interleaved batches (the op
    speed table's measurement, where the time budget is the table's, not the gate's)."""
    sessions = [make_session(m) for m in models]
    batches = [_batch_size(session, feed) for session in sessions]
    fastest = [math.inf] * len(sessions)
    for index in range(rounds):
        for model in range(len(sessions)) if index % 2 == 0 else reversed(range(len(sessions))):
            started = time.perf_counter()
            for _ in range(batches[model]):
                sessions[model].run(None, feed)
            fastest[model] = min(fastest[model], (time.perf_counter() - started) / batches[model])
    return fastest


def _batch_size(session: Any, feed: Mapping[str, Any]) -> int:
    """Runs per timed batch so that a batch lasts about ``BATCH_FLOOR_S`` (one run for any model slower)."""
    once = math.inf
    for _ in range(2):  # the first run after loading is the slow one
        started = time.perf_counter()
        session.run(None, feed)
        once = min(once, time.perf_counter() - started)
    return max(1, min(MAX_BATCH, math.ceil(BATCH_FLOOR_S / max(once, 1e-7))))


def _noise(fastest: Sequence[Sequence[float]]) -> float | None:
    """How far the INT8/float ratio of the fastest batches differs from sample to sample: half its range over
    its median (None without two models and two samples timed): how repeatable the figure is, as far as the
    samples are alike. (The ratio of batches in one round is not: a burst of load on the
    shared machine put one round at 40x.)"""
    if len(fastest) != 2:
        return None
    ratios = [q / f for f, q in zip(*fastest) if math.isfinite(f) and math.isfinite(q) and f > 0]
    if len(ratios) < 2:
        return None
    median = float(np.median(ratios))
    return (max(ratios) - min(ratios)) / 2 / median if median > 0 else None


def _milliseconds(fastest: Sequence[Sequence[float]]) -> list[float]:
    """Each model's median over the samples timed (a slow model may stop before it reaches all of them) of its
    fastest batch: the median, since a burst of load can hit every batch of one sample in a short comparison
    (float's 20 ms on one sample, 0.27 ms on the other three, made INT8 look 30x faster with the mean)."""
    timed = [[t for t in times if math.isfinite(t)] for times in fastest]
    return [float(np.median(times)) * 1000.0 if times else math.inf for times in timed]


def _clear(fastest: Sequence[Sequence[float]], max_slowdown: float | None) -> bool:
    """Whether INT8 so far takes at most ``1 - CLEAR_MARGIN`` of the time ``max_slowdown`` allows, or is slower
    than allowed by ``CLEAR_MARGIN`` on every sample (``SLOWER_ON_EVERY_SAMPLE``)."""
    if max_slowdown is None or len(fastest) != 2 or not all(math.isfinite(t) for times in fastest for t in times):
        return False
    float_ms, quantized_ms = _milliseconds(fastest)
    if float_ms > 0 and quantized_ms / float_ms <= max_slowdown * (1 - CLEAR_MARGIN):
        return True
    limit = max_slowdown * (1 + CLEAR_MARGIN)
    return len(fastest[0]) >= SLOWER_ON_EVERY_SAMPLE and all(q > f * limit for f, q in zip(*fastest))


def _settled(ratios: Sequence[float], max_slowdown: float | None) -> bool:
    """Whether INT8's ratio to float has settled below the allowed one (``SETTLED_ROUNDS``)."""
    if max_slowdown is None or len(ratios) < SETTLED_ROUNDS:
        return False
    recent = ratios[-SETTLED_ROUNDS:]
    allowed = max_slowdown * (1 + TIMING_RESOLUTION)
    return max(recent) - min(recent) <= SETTLED_CHANGE * allowed and recent[-1] <= allowed * (1 - SETTLED_MARGIN)


def _enough(rounds: int, elapsed: float, samples: int, clear: bool = False) -> bool:
    if rounds >= MAX_ROUNDS:
        return True
    if rounds >= 2 and elapsed >= SLOW_MODEL_BUDGET_S:
        return True
    if rounds < samples:  # every sample timed at least once
        return False
    return rounds >= max(MIN_ROUNDS, 2 * samples) and (elapsed >= ROUND_BUDGET_S or clear)


def compare(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    samples: Sequence[Mapping[str, Any]],
    max_slowdown: float | None = None,
) -> Timing:
    """Both models timed (``time_models``); with ``max_slowdown``, only until the answer is clear."""
    (float_ms, quantized_ms), noise = time_models_with_noise([float_model, quantized], samples, max_slowdown)
    return Timing(float_ms, quantized_ms, noise=noise)


Predictor = Callable[[onnx.ModelProto], "op_speed.Prediction | None"]


def assess(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    samples: Sequence[Mapping[str, Any]],
    max_slowdown: float,
    predictor: Predictor | None = None,
) -> Timing:
    """The table's prediction where it is clear, else both models timed (``compare``) with the prediction beside.

    The prediction prices the INT8 nodes alone; the float rest of the model only draws the whole model's ratio
    towards 1. So "clearly faster" is trusted only where ``max_slowdown`` is at least 1 (the whole model then
    lies between the prediction and 1, within the allowed ratio), and "clearly slower" only where it is at most 1.
    """
    prediction = predictor(quantized) if predictor is not None else None
    if prediction is not None:
        faster = prediction.ratio <= CLEARLY_FASTER * max_slowdown and prediction.float_ms >= TRUSTED_FLOAT_MS
        if max_slowdown >= 1 and faster:
            return Timing(prediction.float_ms, prediction.int8_ms, prediction.ratio, timed=False)
        if max_slowdown <= 1 and prediction.ratio >= CLEARLY_SLOWER * max_slowdown:
            return Timing(prediction.float_ms, prediction.int8_ms, prediction.ratio, timed=False)
    timing = compare(float_model, quantized, samples, max_slowdown)
    if prediction is None:
        return timing
    return dataclasses.replace(timing, predicted=prediction.ratio)


def confirmed(timing: Timing, max_slowdown: float) -> bool | None:
    """Whether timing end to end agreed with the table's prediction on which side of ``max_slowdown`` INT8 lies
    (None: nothing to confirm)."""
    if timing.predicted is None or not timing.timed:
        return None
    return timing.within(max_slowdown) == (timing.predicted <= max_slowdown * (1 + TIMING_RESOLUTION))


@dataclasses.dataclass
class GateResult:
    model: onnx.ModelProto | None  # None: no INT8 variant was fast enough
    timing: Timing
    float_op_types: list[str]  # op types the gate took out of quantization
    tried: list[tuple[str, float]]  # (op types kept float, ratio) for each attempt
    seconds: float = 0.0  # the gate's own time: predictions, timings, re-quantizations
    timed: int = 0  # candidates timed end to end
    predicted_only: int = 0  # candidates decided by the table alone


def latency_gate(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    op_types: Sequence[str],
    requantize: Callable[[Sequence[str]], onnx.ModelProto],
    samples: Sequence[Mapping[str, Any]],
    max_slowdown: float,
    predictor: Predictor | None = None,
) -> GateResult:
    """Keep ``quantized`` if it is at most ``max_slowdown`` times the float latency; otherwise greedily
    take out of quantization the op type whose removal helps most (``requantize(op_types_to_keep)``),
    until it is fast enough or nothing is left. Each candidate is judged by ``assess`` (the op speed table
    through ``predictor``, timing for the close calls)."""
    started = time.perf_counter()
    judged: list[Timing] = []

    def judge(candidate: onnx.ModelProto) -> Timing:
        judged.append(assess(float_model, candidate, samples, max_slowdown, predictor))
        return judged[-1]

    timing = judge(quantized)
    remaining = list(op_types)
    taken_out: list[str] = []
    tried: list[tuple[str, float]] = []
    while not timing.within(max_slowdown) and len(remaining) > 1:
        best: tuple[Timing, str, onnx.ModelProto] | None = None
        for op_type in remaining:
            candidate = requantize([t for t in remaining if t != op_type])
            candidate_timing = judge(candidate)
            tried.append(("+".join([*taken_out, op_type]), round(candidate_timing.ratio, 4)))
            if best is None or candidate_timing.ratio < best[0].ratio:
                best = (candidate_timing, op_type, candidate)
        assert best is not None
        if best[0].ratio >= timing.ratio:
            break  # no single op type helps: taking more out cannot be judged by this greedy step
        timing, chosen, quantized = best
        remaining.remove(chosen)
        taken_out.append(chosen)
    timed = sum(t.timed for t in judged)
    return GateResult(
        quantized if timing.within(max_slowdown) else None,
        timing,
        taken_out,
        tried,
        seconds=time.perf_counter() - started,
        timed=timed,
        predicted_only=len(judged) - timed,
    )


def summary(gate: GateResult, max_slowdown: float, predictor: Any = None) -> dict[str, Any]:
    """The gate's cost and how it decided, for the pass's report: its seconds, how many candidates were timed
    and how many the op speed table decided alone, whether timing confirmed the table on the model kept, and
    the table (its CPU key, whether it came from the cache, its measuring time)."""
    return {
        "seconds": round(gate.seconds, 3),
        "timed": gate.timed,
        "predicted_only": gate.predicted_only,
        "prediction_confirmed": confirmed(gate.timing, max_slowdown),
        "op_speed_table": predictor.describe() if predictor is not None else None,
    }
