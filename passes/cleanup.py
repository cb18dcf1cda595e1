"""``cleanup``: remove what does not contribute to the outputs, and put nodes in order."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import (
    all_nodes,
    eliminate_identities,
    remove_unused_nodes,
)


class CleanupPass(Pass):
    """Remove Identity nodes, unused nodes, initializers, functions and opsets; sort topologically.

    Reaches into If/Loop/Scan bodies and local functions. Graph input and output names are kept: an
    Identity that produces a graph output is kept when removing it would rename that output.
    """

    name = "cleanup"
    kind = "exact"

    def call(self, model: ir.Model) -> PassResult:
        nodes_before = _count_nodes(model)
        initializers_before = _count_initializers(model)
        opsets_before = len(model.opset_imports)
        functions_before = len(model.functions)
        # Not onnx_ir's IdentityEliminationPass: it renames values across subgraph boundaries (see
        # eliminate_identities), which the ONNX node-test sweep caught breaking Scan and If bodies.
        modified = eliminate_identities(model) > 0
        modified |= any(remove_unused_nodes(model))
        for step in (common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass()):
            modified |= step(model).modified
        # Sorting reorders without changing meaning; it only counts as a modification when it moved a node.
        order_before = [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]
        common.TopologicalSortPass()(model)
        modified |= order_before != [id(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)]

        stats = []
        if removed := nodes_before - _count_nodes(model):
            stats.append(f"removed {removed} nodes")
        if removed := initializers_before - _count_initializers(model):
            stats.append(f"removed {removed} unused initializers")
        if removed := functions_before - len(model.functions):
            stats.append(f"removed {removed} unused functions")
        if removed := opsets_before - len(model.opset_imports):
            stats.append(f"removed {removed} unused opset imports")
        if modified and not stats:
            stats.append("sorted nodes topologically")
        return PassResult(model, modified, stats)


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in all_nodes(model))


def _count_initializers(model: ir.Model) -> int:
    return len(model.graph.initializers) + sum(len(g.initializers) for g in model.graph.subgraphs())
