"""The parity target: measure which nodes quantization hurts most, and keep those in float until the
quantized model's outputs meet the target on held-out samples.

Sensitivity is measured, not guessed: the float model and the quantized model run on the same samples,
every activation of the float model is matched by name to what the quantized model's consumers see
(``<name>_DequantizeLinear_Output`` in QDQ, else ``<name>``), and the noise power is summed per tensor.
A node's sensitivity is the relative noise it adds: the noise-to-signal ratio (NSR) of its output minus
the worst NSR of its inputs. Linear NSR rather than dB, so a node that takes a clean 60 dB tensor to 40 dB
ranks below one that takes 20 dB to 10 dB: the second adds ten times more noise.

The search ranks once: the float and the fully quantized model run side by side on a few samples, which
gives every candidate node's own effect. It then judges a few prefixes of that ranking (the first sized by how
far the outputs are from the target, then grown or bisected) and keeps the shortest that passes float. Only
when the ranked nodes run out without a pass is the model ranked again, since keeping nodes float moves where
the noise comes from. Tensor names follow ONNX Runtime's QDQ naming (``quant_utils.DEQUANT_OUTPUT_SUFFIX``),
and SQNR is ``qdq_loss_debug``'s (signal power over noise power, over all samples); the powers are summed
sample by sample rather than collected whole as ``qdq_loss_debug.collect_activations`` does, so memory stays
one sample's tensors.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

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
            options = (f"{name}{DEQUANT_OUTPUT_SUFFIX}", name) if consumed else (name,)
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
    rounds: int  # sensitivity rankings measured
    verifications: int = 0  # candidates judged
    ranking: list[NodeSensitivity] = dataclasses.field(default_factory=list)  # the last ranking measured


Quantizer = Callable[[Sequence[str]], onnx.ModelProto]
Ranker = Callable[[onnx.ModelProto, Sequence[str]], list[NodeSensitivity]]
Judge = Callable[[onnx.ModelProto], Verdict]

# Output noise does not shrink exactly in proportion to the noise taken out; aim this much below the target.
NOISE_MARGIN = 1.5
# Candidates judged in one search (each is a quantization and a run over the held-out samples), and rankings
# measured (each runs the float and the quantized model with every candidate's tensors as outputs).
MAX_VERIFICATIONS = 7
MAX_RANKINGS = 2


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


def why_float(ranking: Sequence[NodeSensitivity], position: int) -> str:
    """Why the node at ``position`` of ``ranking`` stays float: its rank, its measured effect, its share."""
    node = ranking[position]
    total = sum(s.added_nsr for s in ranking if math.isfinite(s.added_nsr) and s.added_nsr > 0)
    share = (f", {node.added_nsr / total:.1%} of the noise all {len(ranking)} ranked nodes add"
             if total > 0 and math.isfinite(node.added_nsr) and node.added_nsr > 0 else "")
    return f"rank {position + 1} of {len(ranking)}: {node.describe()}{share}"


def keep_sensitive_in_float(quantize: Quantizer, rank: Ranker, judge: Judge, *, max_rankings: int = MAX_RANKINGS,
                            max_verifications: int = MAX_VERIFICATIONS,
                            keep_float: Mapping[str, str] | None = None) -> SearchResult:
    """Keep the most sensitive nodes in float until ``judge`` accepts, from one measured ranking.

    The search starts with the nodes of ``keep_float`` (name -> why) already float and judges that model. If
    it fails, one ranking (``rank``: each node's own added noise, float against quantized tensors) orders the
    remaining nodes, and the search looks for the shortest prefix of that order that passes: the first guess
    covers as much of the added noise as the judge's excess calls for (``nodes_to_take_out``), a failing
    guess grows the prefix by the new excess, and once a prefix passes it is bisected against the longest one
    known to fail. Each guess is one verification; at most ``max_verifications`` are judged. When growth
    runs out of ranked nodes the model is ranked again (at most ``max_rankings`` rankings), since keeping
    nodes float moves where the noise comes from.
    """
    keep: dict[str, str] = dict(keep_float or {})
    model = quantize(list(keep))
    verdict = judge(model)
    verifications, rankings = 1, 0
    logger.debug("%d nodes float at the start: passed %s, excess %s", len(keep), verdict.passed, verdict.excess)
    ranking: list[NodeSensitivity] = []
    while not verdict.passed and rankings < max_rankings and verifications < max_verifications:
        ranking = [s for s in rank(model, list(keep)) if s.node not in keep]
        rankings += 1
        if not ranking:
            break
        found = _shortest_passing_prefix(quantize, judge, keep, ranking, verdict,
                                         max_verifications - verifications)
        verifications += found.verifications
        model, keep, verdict = found.model, found.keep_float, found.verdict
    return SearchResult(model, keep, verdict, rankings, verifications, ranking)


def _shortest_passing_prefix(quantize: Quantizer, judge: Judge, base: dict[str, str],
                             ranking: list[NodeSensitivity], failing: Verdict, budget: int) -> SearchResult:
    """The shortest prefix of ``ranking`` that, kept float with ``base``, passes, within ``budget`` judgements;
    else the longest prefix tried, which failed. ``failing`` is the verdict with none of ``ranking`` float."""
    low, high = 0, None  # the longest prefix known to fail, the shortest known to pass
    best: SearchResult | None = None
    last: SearchResult | None = None
    count = nodes_to_take_out(ranking, failing.excess, len(base))
    used = 0
    while used < budget:
        keep = {**base, **{s.node: why_float(ranking, i) for i, s in enumerate(ranking[:count])}}
        model = quantize(list(keep))
        verdict = judge(model)
        used += 1
        logger.debug("prefix %d of %d: passed %s, excess %s", count, len(ranking), verdict.passed, verdict.excess)
        if verdict.passed:
            high, best = count, SearchResult(model, keep, verdict, 0)
        else:
            low, last = count, SearchResult(model, keep, verdict, 0)
        if high is not None:
            if high - low <= 1:
                break
            count = (low + high) // 2
        elif count == len(ranking):
            break
        else:
            count = min(len(ranking), count + nodes_to_take_out(ranking[count:], verdict.excess, count))
    found = best or last
    assert found is not None, "a search is given a budget of at least one judgement"
    found.verifications = used
    return found
