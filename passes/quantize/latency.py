"""The latency gate: is the INT8 model really faster than the float one, on this CPU, in ONNX Runtime?

Both models run on the same inputs, interleaved round by round (so a burst of load on a shared machine hits
both), and each is summarised by its fastest runs (see ``time_models``). INT8 can be slower: ConvInteger has
no fast kernel, and QDQ pairs around operators without INT8 kernels add work without removing any.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

from onnxkit.passes.quantize.runtime import make_session

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
# A comparison also stops once INT8 within the allowed ratio has settled there: over the last SETTLED_ROUNDS rounds
# the ratio of the fastest runs moved by at most SETTLED_CHANGE of the allowed ratio, and it lies below the allowed
# ratio by more than SETTLED_MARGIN. The fastest runs then no longer improve, and more rounds would not move the
# ratio across. lstm, INT8 as fast as float (1.005x): 200 rounds and 0.44 s of timing, where the ratio settles in
# about 30. Only that way, for the reason CLEAR_MARGIN gives.
SETTLED_ROUNDS = 16
SETTLED_CHANGE = 0.004
SETTLED_MARGIN = 0.01


@dataclasses.dataclass(frozen=True)
class Timing:
    float_ms: float
    quantized_ms: float

    @property
    def ratio(self) -> float:
        """INT8 time over float time: below 1 is a speed-up."""
        return self.quantized_ms / self.float_ms if self.float_ms > 0 else float("inf")

    def within(self, max_slowdown: float) -> bool:
        """Whether INT8 takes at most ``max_slowdown`` times float's latency, as far as timing can tell."""
        return self.ratio <= max_slowdown * (1 + TIMING_RESOLUTION)

    def describe(self) -> str:
        return f"INT8/FP32 latency {self.ratio:.2f}× ({self.quantized_ms:.2f} ms vs {self.float_ms:.2f} ms)"

    def to_dict(self) -> dict[str, float]:
        return {
            "float_ms": round(self.float_ms, 6),
            "quantized_ms": round(self.quantized_ms, 6),
            "ratio": round(self.ratio, 4),
        }


def time_models(
    models: Sequence[onnx.ModelProto], samples: Sequence[Mapping[str, Any]], max_slowdown: float | None = None
) -> list[float]:
    """Milliseconds per run for each model: the fastest of its runs on each sample, averaged over the samples.

    Each round takes the next sample and runs every model on it, in turn, the order alternating from round to
    round. A model's run is timed right after an untimed run on the same sample: the first run after another
    session's ran 2-15 times slower on a busy machine. Noise on a shared machine only ever adds time, so the
    fastest of several runs is the steadiest figure (a model timed against itself comes out within a few
    percent, where medians of single runs swung from 0.1x to 3x). A slow model stops after
    ``SLOW_MODEL_BUDGET_S`` (and two rounds), each model summarised over the samples it reached. With
    ``max_slowdown`` (two models: float, then INT8), timing stops after the minimum rounds once INT8 is
    faster than allowed by ``CLEAR_MARGIN``, or has settled within the allowed ratio (``SETTLED_ROUNDS``).
    """
    sessions = [make_session(m) for m in models]
    feeds = [[{i.name: s[i.name] for i in session.get_inputs()} for s in samples] for session in sessions]
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
            sessions[model].run(None, feeds[model][sample])
            fastest[model][sample] = min(fastest[model][sample], time.perf_counter() - run_started)
        rounds += 1
        if max_slowdown is not None and len(sessions) == 2 and rounds >= len(samples):
            float_ms, quantized_ms = _milliseconds(fastest)
            ratios.append(quantized_ms / float_ms if float_ms > 0 else math.inf)
    # The samples timed (a slow model may stop before it reaches all of them).
    return _milliseconds(fastest)


def _milliseconds(fastest: Sequence[Sequence[float]]) -> list[float]:
    # The samples timed (a slow model may stop before it reaches all of them).
    timed = [[t for t in times if math.isfinite(t)] for times in fastest]
    return [sum(times) / len(times) * 1000.0 if times else math.inf for times in timed]


def _clear(fastest: Sequence[Sequence[float]], max_slowdown: float | None) -> bool:
    """Whether INT8 so far takes at most ``1 - CLEAR_MARGIN`` of the time ``max_slowdown`` allows."""
    if max_slowdown is None or len(fastest) != 2 or not all(math.isfinite(t) for times in fastest for t in times):
        return False
    float_ms, quantized_ms = _milliseconds(fastest)
    return float_ms > 0 and quantized_ms / float_ms <= max_slowdown * (1 - CLEAR_MARGIN)


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
    float_ms, quantized_ms = time_models([float_model, quantized], samples, max_slowdown)
    return Timing(float_ms, quantized_ms)


@dataclasses.dataclass
class GateResult:
    model: onnx.ModelProto | None  # None: no INT8 variant was fast enough
    timing: Timing
    float_op_types: list[str]  # op types the gate took out of quantization
    tried: list[tuple[str, float]]  # (op types kept float, ratio) for each attempt


def latency_gate(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    op_types: Sequence[str],
    requantize: Callable[[Sequence[str]], onnx.ModelProto],
    samples: Sequence[Mapping[str, Any]],
    max_slowdown: float,
) -> GateResult:
    """Keep ``quantized`` if it is at most ``max_slowdown`` times the float latency; otherwise greedily
    take out of quantization the op type whose removal helps most (``requantize(op_types_to_keep)``),
    until it is fast enough or nothing is left."""
    timing = compare(float_model, quantized, samples, max_slowdown)
    remaining = list(op_types)
    taken_out: list[str] = []
    tried: list[tuple[str, float]] = []
    while not timing.within(max_slowdown) and len(remaining) > 1:
        best: tuple[Timing, str, onnx.ModelProto] | None = None
        for op_type in remaining:
            candidate = requantize([t for t in remaining if t != op_type])
            candidate_timing = compare(float_model, candidate, samples, max_slowdown)
            tried.append(("+".join([*taken_out, op_type]), round(candidate_timing.ratio, 4)))
            if best is None or candidate_timing.ratio < best[0].ratio:
                best = (candidate_timing, op_type, candidate)
        assert best is not None
        if best[0].ratio >= timing.ratio:
            break  # no single op type helps: taking more out cannot be judged by this greedy step
        timing, chosen, quantized = best
        remaining.remove(chosen)
        taken_out.append(chosen)
    return GateResult(quantized if timing.within(max_slowdown) else None, timing, taken_out, tried)
