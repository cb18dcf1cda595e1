"""Rules that merge a node into the one feeding it: two Transposes, two Reshapes, a Concat of a Concat.

Each fires only where the result is exactly what the pair computed, and where the inner node's output is
read by nothing else (so the inner node goes, and nothing is computed twice).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from onnxkit.passes.simplify.no_op import bypass
from onnxkit.passes.simplify.rewrites import Rewrites, site_name


def _sole_producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The standard-domain ``op_type`` node producing ``value``, when ``value`` has no other reader."""
    if value is None or value.is_graph_output() or len(value.uses()) != 1:
        return None
    producer = value.producer()
    if producer is None or producer.op_type != op_type or producer.domain not in ("", "ai.onnx"):
        return None
    return producer


def _perm(node: ir.Node) -> list[int] | None:
    perm = node.attributes.get("perm")
    return None if perm is None or perm.is_ref() else list(perm.as_ints())


def _merge_transposes(node: ir.Node) -> bool:
    """Transpose(Transpose(x, p1), p2) = Transpose(x, p1[p2]); nothing at all when that is the identity."""
    inner = node.inputs[0].producer() if node.inputs[0] is not None else None
    if inner is None or inner.op_type != "Transpose" or inner.domain not in ("", "ai.onnx"):
        return False
    first, second = _perm(inner), _perm(node)
    if first is None or second is None or len(first) != len(second):
        return False
    composed = [first[axis] for axis in second]
    if composed == list(range(len(composed))):
        bypass(node, inner.inputs[0])
        return True
    if _sole_producer(node.inputs[0], "Transpose") is None:
        return False  # the inner Transpose stays for its other readers: merging would save nothing
    node.replace_input_with(0, inner.inputs[0])
    node.attributes["perm"] = ir.AttrInt64s("perm", composed)
    return True


def _merge_reshapes(node: ir.Node) -> bool:
    """Reshape(Reshape(x, s1), s2) = Reshape(x, s2) when s2 is constant and copies no dim (no 0 entry)."""
    inner = _sole_producer(node.inputs[0], "Reshape")
    target = node.inputs[1] if len(node.inputs) > 1 else None
    if inner is None or target is None or target.const_value is None:
        return False
    if node.attributes.get_int("allowzero", 0) == 0 and 0 in target.const_value.numpy().tolist():
        return False
    node.replace_input_with(0, inner.inputs[0])
    return True


def _flatten_concats(node: ir.Node) -> bool:
    """Concat(a, Concat(b, c), d) on one axis = Concat(a, b, c, d)."""
    axis = node.attributes.get_int("axis")
    inputs: list[ir.Value | None] = []
    merged = False
    for value in node.inputs:
        inner = _sole_producer(value, "Concat")
        if inner is not None and inner.attributes.get_int("axis") == axis and axis is not None:
            inputs.extend(inner.inputs)
            merged = True
        else:
            inputs.append(value)
    if not merged:
        return False
    concat = ir.node("Concat", inputs=inputs, attributes={"axis": axis}, name=node.name)
    ir.convenience.replace_nodes_and_values(node.graph, node, [node], [concat], node.outputs, concat.outputs)
    return True


# op type → (rule name, statistic, rewrite that returns whether it fired)
_RULES = {
    "Transpose": ("merge-transposes", "Transpose pairs", _merge_transposes),
    "Reshape": ("merge-reshapes", "Reshape pairs", _merge_reshapes),
    "Concat": ("flatten-concats", "nested Concats", _flatten_concats),
}


def merge_consecutive(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
    for node in [node for graph in graphs for node in graph]:
        if node.graph is None or node.domain not in ("", "ai.onnx") or node.op_type not in _RULES:
            continue
        rule, what, rewrite = _RULES[node.op_type]
        site = site_name(node)
        if rewrites.allows(rule, site) and rewrite(node):
            rewrites.record(rule, site, "merged", what)
