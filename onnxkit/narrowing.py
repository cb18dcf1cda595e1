"""Narrowing: an exact pass whose output fails is rerun with rules, then single sites, disabled, bisecting until
its output passes, so that the rest of its work is kept and what was skipped is reported with the reason."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from onnxkit.pass_base import PassResult, Site
from onnxkit.report import PassReport
from onnxkit.snapshot import Snapshot

# Reruns of one pass while narrowing it down to the rules and sites that break it.
MAX_NARROWING_RERUNS = 32


@dataclasses.dataclass
class Failure:
    """Why a pass's output cannot be kept as it is: ``kind`` is error (the pass raised), verification
    (checker, signature, shape inference, domains, a false claim) or parity."""

    kind: Literal["error", "verification", "parity"]
    message: str
    brief: str  # what narrowing reports beside a skipped rule or site
    cause: BaseException | None = None  # the exception a pass raised


@dataclasses.dataclass
class Attempt:
    """One run of a pass, with its output checked."""

    result: PassResult | None
    snapshot: Snapshot | None
    failure: Failure | None
    parity: Any = None
    verification: list[str] = dataclasses.field(default_factory=list)
    histogram: collections.Counter[str] | None = None  # of the pass's output, where it was measured


def narrow(rerun: Callable[[frozenset[str | Site]], Attempt], failed: Attempt, entry: PassReport) -> Attempt | None:
    """Rerun an exact pass on its input with rules, then single sites, disabled (``rerun(disabled)``) until
    its output passes.

    Rules are bisected in the order the pass reported them: the shortest prefix whose disabling makes the
    output pass ends in a culprit, which stays disabled; repeat until the output passes. Each culprit rule
    is then put back and bisected the same way over the sites where it fired (any further culprit site
    lies before the one found), so that only the sites that break the model are skipped (the whole rule
    stays skipped where that does not work out). At most ``MAX_NARROWING_RERUNS`` reruns. Returns the
    passing attempt, with ``entry.skipped`` saying what was skipped and why, or None when the output
    cannot be made to pass that way."""
    reruns = 0

    def attempt(disabled: set[str | Site]) -> Attempt | None:
        nonlocal reruns
        if reruns >= MAX_NARROWING_RERUNS:
            return None
        reruns += 1
        return rerun(frozenset(disabled))

    def bisect(
        base: set[str | Site], items: list[Any], failure: Failure, sites: list[Site]
    ) -> tuple[Any, Failure, list[Site]] | None:
        """The item that ends the shortest prefix of ``items`` whose disabling (with ``base``) makes the
        output pass, with the failure and the sites of the run just short of it; None when even disabling
        them all does not pass, or the reruns run out."""
        everything = attempt(base | set(items))
        if everything is None or everything.failure is not None:
            return None
        low, high = 0, len(items)
        while high - low > 1:
            middle = (low + high) // 2
            tried = attempt(base | set(items[:middle]))
            if tried is None:
                return None
            if tried.failure is None:
                high = middle
            else:
                low, failure = middle, tried.failure
                sites = tried.result.sites if tried.result is not None else []
        return items[high - 1], failure, sites

    assert failed.result is not None and failed.failure is not None
    disabled: set[str | Site] = set()
    culprits: list[tuple[str, Failure, list[Site]]] = []
    failure, sites = failed.failure, failed.result.sites
    while True:  # rules
        rules = [rule for rule in dict.fromkeys(site.rule for site in sites) if rule not in disabled]
        found = bisect(disabled, rules, failure, sites)
        if found is None:
            return None
        rule, failure_with_rule, sites_with_rule = found
        culprits.append((rule, failure_with_rule, [site for site in sites_with_rule if site.rule == rule]))
        disabled.add(rule)
        passing = attempt(disabled)
        if passing is None:
            return None
        if passing.failure is None:
            break
        failure, sites = passing.failure, passing.result.sites if passing.result is not None else []

    skipped: list[dict[str, Any]] = []
    for rule, failure_with_rule, rule_sites in culprits:  # sites of each culprit rule
        base = disabled - {rule}
        chosen: list[tuple[Site, Failure]] = []
        remaining, failure, sites = rule_sites, failure_with_rule, rule_sites
        narrowed = None
        while remaining and narrowed is None:
            found = bisect(base | {site for site, _ in chosen}, remaining, failure, sites)
            if found is None:
                break
            site, failure_at_site, _ = found
            chosen.append((site, failure_at_site))
            remaining = remaining[: remaining.index(site)]  # any other culprit comes before it
            tried = attempt(base | {site for site, _ in chosen})
            if tried is None:
                break
            if tried.failure is None:
                narrowed = tried
            failure = tried.failure or failure
        if narrowed is not None:
            disabled, passing = base | {site for site, _ in chosen}, narrowed
            chosen.sort(key=lambda found: rule_sites.index(found[0]))
            skipped += [{"rule": rule, "node": site.node, "failure": why.brief} for site, why in chosen]
        else:
            skipped.append({"rule": rule, "node": None, "failure": failure_with_rule.brief})
    entry.skipped = skipped
    entry.narrowing_reruns = reruns
    return passing
