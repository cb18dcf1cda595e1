"""The parity target: measure which nodes quantization hurts most, and keep those in float until the
quantized model's outputs meet the target on held-out samples.

Sensitivity is measured, not guessed: the float model and the quantized model run on the same samples,
every activation of the float model is matched by name to what the quantized model's consumers see
(``<name>_DequantizeLinear_Output`` in QDQ, else ``<name>``), and the noise power is summed per tensor.
A node's sensitivity is the relative noise it adds: the noise-to-signal ratio (NSR) of its output minus
the worst NSR of its inputs. Linear NSR rather than dB, so a node that takes a clean 60 dB tensor to 40 dB
ranks below one that takes 20 dB to 10 dB: the second adds ten times more noise.

The search re-measures after each step, since keeping one node in float moves where the noise comes from:
keep the 1, 2, 4, ... most sensitive remaining nodes in float until the target holds, then bisect the last
step to keep as few as needed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnxkit.passes.quantize.calibration import FLOAT_TYPES
from onnxkit.passes.quantize.runtime import TensorTap

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Per-node sensitivity


@dataclasses.dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    added_nsr: float  # noise-to-signal ratio the node adds to its inputs'
    output_sqnr_db: float

    def describe(self) -> str:
        return f"output SQNR {self.output_sqnr_db:.1f} dB, adds {self.added_nsr:.2%} relative noise power"


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _value_names(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        names.update(node.output)
    return names


def measure_sensitivity(float_proto: onnx.ModelProto, quantized: onnx.ModelProto, candidates: Sequence[onnx.NodeProto],
                        types: Mapping[str, int], samples: Iterable[Mapping[str, Any]]) -> list[NodeSensitivity]:
    """Each candidate node's added noise, most sensitive first, streamed over ``samples``.

    A node's inputs are measured as produced (``X``, before any QDQ pair in front of the node, so the
    node's own input quantization counts against it), its outputs as consumed (``Y_DequantizeLinear_Output``
    where the output is quantized, else ``Y``).
    """
    initializers = {i.name for i in float_proto.graph.initializer}
    present = _value_names(quantized)
    probes: dict[tuple[str, str], None] = {}  # (float name, quantized name), in order
    node_probes = []
    for node in candidates:
        def probe(name: str, consumed: bool) -> tuple[str, str] | None:
            if not name or name in initializers or types.get(name) not in FLOAT_TYPES:
                return None
            options = (f"{name}_DequantizeLinear_Output", name) if consumed else (name,)
            match = next((option for option in options if option in present), None)
            if match is None:
                return None
            probes[(name, match)] = None
            return name, match

        inputs = [p for p in (probe(n, consumed=False) for n in node.input) if p is not None]
        outputs = [p for p in (probe(n, consumed=True) for n in node.output) if p is not None]
        if outputs:
            node_probes.append((node, inputs, outputs))
    if not probes:
        return []
    float_names = list(dict.fromkeys(f for f, _ in probes))
    quantized_names = list(dict.fromkeys(q for _, q in probes))
    float_tap = TensorTap(float_proto, float_names, types)
    quantized_tap = TensorTap(quantized, quantized_names, {q: types[f] for f, q in probes})
    signal = dict.fromkeys(probes, 0.0)
    noise = dict.fromkeys(probes, 0.0)
    for sample in samples:
        float_values = float_tap.run(sample)
        quantized_values = quantized_tap.run(sample)
        for key in probes:
            reference = float_values[key[0]].astype(np.float64)
            signal[key] += float(np.sum(reference**2))
            noise[key] += float(np.sum((reference - quantized_values[key[1]].astype(np.float64)) ** 2))

    def nsr(key: tuple[str, str]) -> float:
        return noise[key] / signal[key] if signal[key] > 0 else (math.inf if noise[key] > 0 else 0.0)

    ranked = []
    for node, inputs, outputs in node_probes:
        worst = max(outputs, key=nsr)
        input_nsr = max((nsr(key) for key in inputs), default=0.0)
        added = nsr(worst) - input_nsr if math.isfinite(nsr(worst)) else math.inf
        ranked.append(NodeSensitivity(node.name, node.op_type, added, sqnr_db(signal[worst], noise[worst])))
    ranked.sort(key=lambda s: s.added_nsr, reverse=True)
    return ranked


# ---------------------------------------------------------------------------------------------------------
# Keep-in-float search


@dataclasses.dataclass
class Verdict:
    """A judge's decision on a candidate model.

    ``excess`` is how many times more output noise power the model has than the target allows (above 1 when
    it fails), where the target can say so (cosine, SQNR); None where it cannot (top-1, a user metric).
    """

    passed: bool
    detail: Any = None
    excess: float | None = None


@dataclasses.dataclass
class SearchResult:
    model: onnx.ModelProto
    keep_float: dict[str, str]  # node name -> why it stayed float
    verdict: Verdict
    rounds: int


Quantizer = Callable[[Sequence[str]], onnx.ModelProto]
Ranker = Callable[[onnx.ModelProto, Sequence[str]], list[NodeSensitivity]]
Judge = Callable[[onnx.ModelProto], Verdict]

# Output noise does not shrink exactly in proportion to the noise taken out; aim this much below the target.
NOISE_MARGIN = 1.5


def nodes_to_take_out(ranking: Sequence[NodeSensitivity], excess: float | None, already_float: int) -> int:
    """How many of the most sensitive remaining nodes to keep in float this round.

    With a known ``excess``, output noise is taken as proportional to the noise the nodes add: keep float the
    fewest nodes whose added noise covers the fraction ``1 - 1 / (excess * NOISE_MARGIN)`` of the total.
    Noise compounds, so that estimate can fall short; each round also at least grows the float set by half.
    Without an estimate, the float set doubles.
    """
    if excess is None or not math.isfinite(excess):
        return min(len(ranking), max(1, already_float))
    unbounded = sum(1 for s in ranking if not math.isfinite(s.added_nsr))
    finite = [s.added_nsr for s in ranking if math.isfinite(s.added_nsr) and s.added_nsr > 0]
    goal = sum(finite) * (1.0 - 1.0 / (max(excess, 1.0) * NOISE_MARGIN))
    count, covered = 0, 0.0
    for added in finite:
        if covered >= goal:
            break
        covered += added
        count += 1
    return min(len(ranking), max(1, unbounded + count, math.ceil(already_float / 2)))


def keep_sensitive_in_float(quantize: Quantizer, rank: Ranker, judge: Judge, *, max_rounds: int = 12,
                            keep_float: Mapping[str, str] | None = None) -> SearchResult:
    """Keep the most sensitive nodes in float, re-measuring after each round, until ``judge`` accepts.

    The search starts with the nodes of ``keep_float`` (name -> why) already float. Each round takes out as
    many nodes as the judge's noise excess calls for (``nodes_to_take_out``); a round that passes is then
    bisected down to the fewest of its additions that still pass.
    """
    keep: dict[str, str] = dict(keep_float or {})
    model = quantize(list(keep))
    verdict = judge(model)
    logger.debug("%d nodes float at the start: passed %s, excess %s", len(keep), verdict.passed, verdict.excess)
    rounds = 0
    while not verdict.passed and rounds < max_rounds:
        ranking = [s for s in rank(model, list(keep)) if s.node not in keep]
        if not ranking:
            break
        rounds += 1
        added = {s.node: f"round {rounds}: {s.describe()}"
                 for s in ranking[:nodes_to_take_out(ranking, verdict.excess, len(keep))]}
        base = dict(keep)
        keep.update(added)
        model = quantize(list(keep))
        verdict = judge(model)
        logger.debug("round %d: %d nodes float, passed %s, excess %s", rounds, len(keep), verdict.passed,
                     verdict.excess)
        if verdict.passed and len(added) > 1:
            model, keep, verdict = _fewest_that_pass(quantize, judge, base, added, (model, keep, verdict))
    return SearchResult(model, keep, verdict, rounds)


def _fewest_that_pass(quantize: Quantizer, judge: Judge, base: dict[str, str], added: dict[str, str],
                      passing: tuple[onnx.ModelProto, dict[str, str], Verdict]
                      ) -> tuple[onnx.ModelProto, dict[str, str], Verdict]:
    """The shortest prefix of ``added`` (most sensitive first) that, kept float with ``base``, still passes;
    ``passing`` is the known result of keeping all of ``added``."""
    additions = list(added.items())
    low, high = 0, len(additions)  # a prefix of length `high` passes, one of length `low` fails
    while high - low > 1:
        middle = (low + high) // 2
        trial_keep = {**base, **dict(additions[:middle])}
        trial = quantize(list(trial_keep))
        verdict = judge(trial)
        logger.debug("bisect: %d nodes float, passed %s", len(trial_keep), verdict.passed)
        if verdict.passed:
            high, passing = middle, (trial, trial_keep, verdict)
        else:
            low = middle
    return passing
