"""What every simplify rule shares: asking whether it may fire at a node, and recording that it did.

Each rewrite has a rule name (``fold-constants``, ``materialize-reshape``, ``no-op-cast``, ``cse`` ...). Before
a rule changes the model at a node it asks ``allows``; after, it ``record``s the site and a statistic. The
pipeline narrows a failing run of simplify by disabling rules and sites (``PassContext.disabled``).
"""

from __future__ import annotations

import collections

import onnx_ir as ir

from onnxkit.pass_base import PassContext, Site

# Statistics are counted per (verb, what): "removed 3 no-op Cast". Lines are listed in this order of verbs.
VERB_ORDER = ("folded", "inlined", "removed", "merged", "lifted", "simplified", "trimmed", "kept")


def site_name(node: ir.Node) -> str:
    """The name a site is reported under: the node's name, else its first named output (exporters leave
    many nodes unnamed, and an empty name would match every unnamed node)."""
    if node.name:
        return node.name
    return next((value.name for value in node.outputs if value is not None and value.name), "")


class Rewrites:
    """The rules' shared ledger for one run: which rules and sites are allowed, which fired, and the tally."""

    def __init__(self, context: PassContext) -> None:
        self.context = context
        self.tally: collections.Counter[tuple[str, str]] = collections.Counter()
        self._sites: dict[Site, None] = {}  # ordered and without repeats across rounds

    def allows(self, rule: str, site: str) -> bool:
        return self.context.allows(rule, site)

    def record(self, rule: str, site: str, verb: str, what: str) -> None:
        self._sites[Site(rule, site)] = None
        self.tally[verb, what] += 1

    @property
    def sites(self) -> list[Site]:
        return list(self._sites)

    def stats(self) -> list[str]:
        counted = [(verb, what, n) for (verb, what), n in self.tally.items() if n]
        counted.sort(key=lambda item: (VERB_ORDER.index(item[0]), -item[2], item[1]))
        return [f"{verb} {n} {what}" for verb, what, n in counted]
