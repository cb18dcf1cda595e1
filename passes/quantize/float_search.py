"""The parity target: keep the nodes quantization hurts most in float until the quantized model's outputs
meet the target on held-out samples.

The search ranks once (``sensitivity.measure_sensitivity``: the float and the fully quantized model run side by
side on a few samples, which gives every candidate node's own effect). It then judges a few prefixes of that
ranking (the first sized by how far the outputs are from the target, then grown or bisected) and keeps the
shortest that passes float. Only when the ranked nodes run out without a pass is the model ranked again, since
keeping nodes float moves where the noise comes from. ``precision``'s fp16 search uses it too, with its own
ranking and judge.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx

from onnxkit.passes.quantize.sensitivity import NodeSensitivity

logger = logging.getLogger(__name__)


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
    out_of_time: bool = False  # stopped at its deadline without a pass
    confirmed: bool = False  # ``verdict`` is the search's full judgement (``confirm``), not only its check
    understated: float = 1.0  # how many times more noise ``confirm`` measured than the check, where they disagreed


Quantizer = Callable[[Sequence[str]], onnx.ModelProto]
Ranker = Callable[[onnx.ModelProto, Sequence[str]], list[NodeSensitivity]]
Judge = Callable[[onnx.ModelProto], Verdict]

# Output noise does not shrink exactly in proportion to the noise taken out; aim this much below the target.
NOISE_MARGIN = 1.5
# Candidates judged in one search (each is a quantization and a run over the held-out samples), and rankings
# measured (each runs the float and the quantized model with every candidate's tensors as outputs).
MAX_VERIFICATIONS = 6
MAX_RANKINGS = 2
# Bisecting stops once the shortest passing prefix is within this fraction of the longest failing one: each
# step costs a quantization and a judgement (20 s on a 700-node detector), to save a node or two of float.
BISECT_TOLERANCE = 0.2


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


def why_float(ranking: Sequence[NodeSensitivity], position: int, ranking_number: int = 1) -> str:
    """Why the node at ``position`` of ``ranking`` stays float: its rank, its measured effect, its share."""
    node = ranking[position]
    total = sum(s.added_nsr for s in ranking if math.isfinite(s.added_nsr) and s.added_nsr > 0)
    share = (
        f", {node.added_nsr / total:.1%} of the noise all {len(ranking)} ranked nodes add"
        if total > 0 and math.isfinite(node.added_nsr) and node.added_nsr > 0
        else ""
    )
    again = f" (ranking {ranking_number})" if ranking_number > 1 else ""
    return f"rank {position + 1} of {len(ranking)}{again}: {node.describe()}{share}"


def keep_sensitive_in_float(
    quantize: Quantizer,
    rank: Ranker,
    judge: Judge,
    *,
    max_rankings: int = MAX_RANKINGS,
    max_verifications: int = MAX_VERIFICATIONS,
    keep_float: Mapping[str, str] | None = None,
    deadline: float | None = None,
    confirm: Judge | None = None,
) -> SearchResult:
    """Keep the most sensitive nodes in float until ``judge`` accepts, from one measured ranking.

    The search starts with the nodes of ``keep_float`` (name -> why) already float and judges that model. If
    it fails, one ranking (``rank``: each node's own added noise, float against quantized tensors) orders the
    remaining nodes, and the search looks for the shortest prefix of that order that passes: the first guess
    covers as much of the added noise as the judge's excess calls for (``nodes_to_take_out``), a failing
    guess grows the prefix by the new excess, and once a prefix passes it is bisected against the longest one
    known to fail, to within ``BISECT_TOLERANCE``. Each guess is one verification; at most
    ``max_verifications`` are judged. A guess that fails without halving the output noise, or growth that runs
    out of ranked nodes, has the model ranked again from there (at most ``max_rankings`` rankings), since
    keeping nodes float moves where the noise comes from. No ranking or guess starts after ``deadline`` (a
    ``time.perf_counter()`` value); ``SearchResult.out_of_time`` then says the search stopped there.

    With ``confirm``, ``judge`` is a cheaper check that steers the search and ``confirm`` the full judgement,
    made only on a model the search would hand on (the first one, and the shortest passing prefix once
    bisected): a prefix it fails counts as failing. The quantize pass's full judgement adds the pipeline's own
    parity check, ORT's unoptimized run of every parity sample (resnet18: 7 s a candidate, against 1 s for the
    check), so confirming only where the search ends instead of at each passing bisection step saves most of it.
    """
    keep: dict[str, str] = dict(keep_float or {})
    model = quantize(list(keep))
    verdict = judge(model)
    if verdict.passed and confirm is not None:
        verdict = confirm(model)
    verifications, rankings = 1, 0
    logger.debug("%d nodes float at the start: passed %s, excess %s", len(keep), verdict.passed, verdict.excess)
    ranking: list[NodeSensitivity] = []
    out_of_time = False
    understated = 1.0
    while not verdict.passed and rankings < max_rankings and verifications < max_verifications:
        if deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            break
        ranking = [s for s in rank(model, list(keep)) if s.node not in keep]
        rankings += 1
        if not ranking:
            break
        found = _shortest_passing_prefix(
            quantize,
            judge,
            keep,
            ranking,
            verdict,
            max_verifications - verifications,
            stop_when_stuck=rankings < max_rankings,
            ranking_number=rankings,
            deadline=deadline,
            confirm=confirm,
            understated=understated,
        )
        understated = found.understated
        verifications += found.verifications
        out_of_time = found.out_of_time
        model, keep, verdict = found.model, found.keep_float, found.verdict
    return SearchResult(model, keep, verdict, rankings, verifications, ranking, out_of_time and not verdict.passed)


def _progressed(before: float | None, after: float | None) -> bool:
    """Whether keeping nodes float cut the output noise at least by half (unknown excess: assume so)."""
    if before is None or after is None:
        return True
    return after < before / 2 if math.isfinite(before) else math.isfinite(after)


def _shortest_passing_prefix(
    quantize: Quantizer,
    judge: Judge,
    base: dict[str, str],
    ranking: list[NodeSensitivity],
    failing: Verdict,
    budget: int,
    *,
    stop_when_stuck: bool,
    ranking_number: int = 1,
    deadline: float | None = None,
    confirm: Judge | None = None,
    understated: float = 1.0,
) -> SearchResult:
    """The shortest prefix of ``ranking`` that, kept float with ``base``, passes, within ``budget`` judgements;
    else the longest prefix tried, which failed. ``failing`` is the verdict with none of ``ranking`` float.

    With ``confirm`` (not counted against ``budget``), the first prefix ``judge`` passes is confirmed at once.
    Where the two agree, the bisection goes on with ``judge`` alone and the prefix it settles on is confirmed
    before it is returned; where that confirmation fails, the longer prefixes ``judge`` passed are confirmed in
    turn, shortest first. Where they disagree, a prefix that fails the confirmation fails (MiniLM on padded
    batches: held-out cosine 0.994, every sample unoptimized 0.988, so a bisection steered by ``judge`` alone
    settles on prefixes that fail), and the check is taken to understate the noise by the ratio the two measured:
    a later step passes only where its excess, scaled by that ratio, still meets the target, and the bisection
    again confirms only where it settles (MiniLM: 2 confirmations instead of 4). Where no ratio can be had (a
    top-1 target, a user metric), or a settled prefix still fails its confirmation, every step from there on is
    judged in full, as without ``confirm``.

    With ``stop_when_stuck``, a failing prefix that did not even halve the output noise ends the search here:
    the ranking missed what matters (an input ruined upstream hides what a node would ruin itself), and the
    caller ranks again from that prefix rather than growing it blindly."""
    low, high = 0, None  # the longest prefix known to fail, the shortest known to pass
    best: SearchResult | None = None
    last: SearchResult | None = None
    passed: dict[int, SearchResult] = {}  # prefixes ``judge`` passed, by length, confirmed or not
    # "first": confirm the first pass; "deferred": confirm where the bisection settles; "full": every pass
    # ``understated``: where a confirmation failed a prefix the check passed, how many times more noise it
    # measured (1: none did); the check's later passes count only with that much headroom.
    mode = "full" if confirm is None else "deferred" if understated > 1.0 else "first"
    measured = failing.excess  # the check's excess of the last failing prefix, to tell progress on one scale
    count = nodes_to_take_out(ranking, failing.excess, len(base))
    used = 0
    out_of_time = False
    while used < budget:
        if used and deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            break
        keep = {**base, **{s.node: why_float(ranking, i, ranking_number) for i, s in enumerate(ranking[:count])}}
        model = quantize(list(keep))
        verdict = judge(model)
        used += 1
        logger.debug("prefix %d of %d: passed %s, excess %s", count, len(ranking), verdict.passed, verdict.excess)
        confirmed = confirm is None
        checked = verdict
        if verdict.passed and mode == "deferred" and understated > 1.0:
            verdict = _with_headroom(verdict, understated)
        if verdict.passed and confirm is not None and mode != "deferred":
            verdict, confirmed = confirm(model), True
            if mode == "first" and not verdict.passed:
                ratio = _understatement(checked, verdict)
                understated, mode = (ratio, "deferred") if ratio is not None else (understated, "full")
            else:
                mode = "deferred" if mode == "first" else "full"
        if verdict.passed:
            high, best = count, SearchResult(model, keep, verdict, 0, confirmed=confirmed)
            passed[count] = best
        else:
            stuck = stop_when_stuck and not _progressed(measured, checked.excess)
            measured = checked.excess
            low, last = count, SearchResult(model, keep, verdict, 0)
            if stuck and high is None:
                break
        settled = high is not None and (high - low <= max(1, int(high * BISECT_TOLERANCE)) or used >= budget)
        if settled and mode == "deferred":
            mode = "full"
            high, best, failed = _confirm_shortest(passed, confirm)
            if failed is not None:
                low, last = max(low, len(failed.keep_float) - len(base)), failed
                verdict = failed.verdict
            settled = high is not None and (high - low <= max(1, int(high * BISECT_TOLERANCE)) or used >= budget)
            count = low
        if settled:
            break
        if high is not None:
            count = (low + high) // 2
        elif count == len(ranking):
            break
        else:
            # Noise compounds (a transformer's residual stream), so the estimate falls short: at least double.
            count = min(len(ranking), count + max(count, nodes_to_take_out(ranking[count:], verdict.excess, count)))
    if best is not None and mode == "deferred":  # out of time mid-bisection: still confirmed
        _, best, failed = _confirm_shortest(passed, confirm)
        last = failed or last
    found = best or last
    assert found is not None, "a search is given a budget of at least one judgement"
    found.verifications = used
    found.out_of_time = out_of_time
    found.understated = understated
    return found


def _understatement(checked: Verdict, confirmed: Verdict) -> float | None:
    """How many times more output noise ``confirmed`` measured than ``checked`` on the same model (above 1 where
    the confirmation failed what the check passed); None where either cannot say (top-1, a user metric)."""
    if checked.excess is None or confirmed.excess is None or not checked.excess > 0:
        return None
    ratio = confirmed.excess / checked.excess
    return ratio if math.isfinite(ratio) and ratio > 1.0 else None


def _with_headroom(verdict: Verdict, understated: float) -> Verdict:
    """A passing check as the confirmation is expected to see it: its excess scaled up by ``understated``, a
    fail where that crosses the target (the prefix is then grown, never handed on unconfirmed)."""
    assert verdict.excess is not None  # ``understated`` is above 1 only where the check measures an excess
    excess = verdict.excess * understated
    return dataclasses.replace(verdict, passed=excess <= 1.0, excess=excess)


def _confirm_shortest(
    passed: Mapping[int, SearchResult], confirm: Judge | None
) -> tuple[int | None, SearchResult | None, SearchResult | None]:
    """The shortest of the prefixes ``passed`` (by length) that ``confirm`` passes too, confirming them shortest
    first: its length and result (None, None when none does), and the longest that failed (None: none)."""
    failed = None
    for length in sorted(passed):
        result = _confirmed(passed[length], confirm)
        if result.verdict.passed:
            return length, result, failed
        failed = result
    return None, None, failed


def _confirmed(found: SearchResult, confirm: Judge | None) -> SearchResult:
    """``found`` with ``confirm``'s verdict on its model (once: a confirmed result is returned as it is)."""
    if confirm is None or found.confirmed:
        return found
    return dataclasses.replace(found, verdict=confirm(found.model), confirmed=True)
