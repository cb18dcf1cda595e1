"""Rules that merge a node into the one feeding it: two Transposes, two Reshapes, a Concat of a Concat, two
multiplications (or additions) by constants.

Each fires only where the result is exactly what the pair computed, and (but for a Transpose pair that
cancels) where the inner node's output is read by nothing else, so the inner node goes and nothing is
computed twice. A Transpose that only moves dims of size 1 after a Reshape joins that Reshape.
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


def _graph(node: ir.Node) -> ir.Graph:
    """The graph a rule rewrites in: merge_consecutive only tries the rules on nodes that are in one."""
    assert node.graph is not None, "the rules take nodes of a graph"
    return node.graph


def _perm(node: ir.Node) -> list[int] | None:
    perm = node.attributes.get("perm")
    return None if perm is None or perm.is_ref() else list(perm.as_ints())


def _merge_transposes(node: ir.Node) -> bool:
    """Transpose(Transpose(x, p1), p2) = Transpose(x, p1[p2]); nothing at all when that is the identity."""
    inner = node.inputs[0].producer() if node.inputs[0] is not None else None
    if inner is None or inner.op_type != "Transpose" or inner.domain not in ("", "ai.onnx"):
        return False
    source = inner.inputs[0]
    if source is None:
        return False  # not a valid Transpose: its input is required
    first, second = _perm(inner), _perm(node)
    if first is None or second is None or len(first) != len(second):
        return False
    composed = [first[axis] for axis in second]
    if composed == list(range(len(composed))):
        bypass(node, source)
        return True
    if _sole_producer(node.inputs[0], "Transpose") is None:
        return False  # the inner Transpose stays for its other readers: merging would save nothing
    node.replace_input_with(0, source)
    node.attributes["perm"] = ir.AttrInt64s("perm", composed)
    return True


def _transpose_into_reshape(node: ir.Node) -> bool:
    """Transpose(Reshape(x, s), perm) = Reshape(x, t) when the Transpose only moves dims of size 1 (the
    others keep their order): it relabels the Reshape's result. t is the Transpose's output shape, with -1 for
    its one unknown dim at most."""
    inner = _sole_producer(node.inputs[0], "Reshape")
    perm, shape = _perm(node), node.inputs[0].shape if node.inputs[0] is not None else None
    if inner is None or perm is None or shape is None or len(perm) != len(shape):
        return False
    moved = [axis for axis in perm if shape[axis] != 1]
    if moved != sorted(moved):
        return False
    target = [dim if isinstance(dim, int) else -1 for dim in (shape[axis] for axis in perm)]
    if target.count(-1) > 1 or 0 in target:
        return False
    # A Constant node, valid in graphs and functions alike; in graphs the next round lifts it.
    constant = ir.node("Constant", inputs=[], attributes={"value": ir.tensor(target, dtype=ir.DataType.INT64)})
    reshape = ir.node("Reshape", inputs=[inner.inputs[0], constant.outputs[0]], name=node.name)
    ir.convenience.replace_nodes_and_values(
        _graph(node), node, [node], [constant, reshape], node.outputs, reshape.outputs
    )
    return True


def _merge_reshapes(node: ir.Node) -> bool:
    """Reshape(Reshape(x, s1), s2) = Reshape(x, s2) when s2 copies no dim of the inner result: under
    ``allowzero=1`` (0 means an empty dim there), or when s2 is a constant whose 0 entries (copy that dim)
    are dims of the inner result known statically, written out."""
    data = node.inputs[0]
    inner = _sole_producer(data, "Reshape")
    target = node.inputs[1] if len(node.inputs) > 1 else None
    if data is None or inner is None or target is None:
        return False
    if node.attributes.get_int("allowzero", 0) == 0:
        if target.const_value is None:
            return False
        entries = target.const_value.numpy().reshape(-1).tolist()
        if 0 in entries:
            copied = list(data.shape) if data.shape is not None else []
            written: list[int] = []
            for i, entry in enumerate(entries):
                dim = entry if entry != 0 else copied[i] if i < len(copied) else None
                if not isinstance(dim, int) or (entry == 0 and dim <= 0):
                    return False  # a dim copied that is unknown statically (or empty)
                written.append(dim)
            constant = ir.node("Constant", inputs=[], attributes={"value": ir.tensor(written, dtype=ir.DataType.INT64)})
            _graph(node).insert_before(node, constant)
            node.replace_input_with(1, constant.outputs[0])
    node.replace_input_with(0, inner.inputs[0])
    return True


def _concat_read_only_by_concats(value: ir.Value | None, axis: int | None) -> ir.Node | None:
    """The Concat on ``axis`` producing ``value``, when every reader of ``value`` is a Concat on that axis too:
    each of them takes its inputs in, and the inner one goes once the last has (an exporter's Concat of two
    dims shared by two targets)."""
    if value is None or axis is None or value.is_graph_output() or not value.uses():
        return None
    producer = value.producer()
    if producer is None or producer.op_type != "Concat" or producer.domain not in ("", "ai.onnx"):
        return None
    if producer.attributes.get_int("axis") != axis:
        return None
    for use in value.uses():
        reader = use.node
        if reader.op_type != "Concat" or reader.domain not in ("", "ai.onnx"):
            return None
        if reader.attributes.get_int("axis") != axis:
            return None
    return producer


def _flatten_concats(node: ir.Node) -> bool:
    """Concat(a, Concat(b, c), d) on one axis = Concat(a, b, c, d)."""
    axis = node.attributes.get_int("axis")
    inputs: list[ir.Value | None] = []
    merged = False
    for value in node.inputs:
        inner = _concat_read_only_by_concats(value, axis)
        if inner is not None:
            inputs.extend(inner.inputs)
            merged = True
        else:
            inputs.append(value)
    if not merged:
        return False
    concat = ir.node("Concat", inputs=inputs, attributes={"axis": axis}, name=node.name)
    ir.convenience.replace_nodes_and_values(_graph(node), node, [node], [concat], node.outputs, concat.outputs)
    return True


def _constant_operand(node: ir.Node) -> tuple[ir.Value, ir.TensorProtocol] | None:
    """(the other input, the constant's value) of a binary node with exactly one constant input."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    if first is None or second is None:
        return None
    if first.const_value is None and second.const_value is not None:
        return first, second.const_value
    if second.const_value is None and first.const_value is not None:
        return second, first.const_value
    return None


def _merge_constant_arithmetic(node: ir.Node) -> bool:
    """(x * c1) * c2 = x * (c1 * c2), and (x + c1) + c2 = x + (c1 + c2), folding the constants into one no
    larger than the larger of them (up to floating-point rounding, as any fold)."""
    outer = _constant_operand(node)
    if outer is None:
        return False
    inner_value, c2 = outer
    inner = _sole_producer(inner_value, node.op_type)
    operands = _constant_operand(inner) if inner is not None else None
    if operands is None:
        return False
    x, c1 = operands
    a, b = c1.numpy(), c2.numpy()
    if a.dtype != b.dtype or a.dtype.kind not in "fiu":
        return False
    combined = a * b if node.op_type == "Mul" else a + b
    if combined.size > max(a.size, b.size) or combined.ndim > max(a.ndim, b.ndim):
        return False
    constant = ir.node("Constant", inputs=[], attributes={"value": ir.tensor(combined)})
    merged = ir.node(node.op_type, inputs=[x, constant.outputs[0]], name=node.name)
    ir.convenience.replace_nodes_and_values(
        _graph(node), node, [node], [constant, merged], node.outputs, merged.outputs
    )
    return True


# op type → [(rule name, statistic, rewrite that returns whether it fired)], tried in order
_RULES = {
    "Transpose": [
        ("merge-transposes", "Transpose pairs", _merge_transposes),
        ("transpose-into-reshape", "Transposes into the Reshape before them", _transpose_into_reshape),
    ],
    "Reshape": [("merge-reshapes", "Reshape pairs", _merge_reshapes)],
    "Concat": [("flatten-concats", "nested Concats", _flatten_concats)],
    "Mul": [("merge-constant-arithmetic", "constant Mul/Add pairs", _merge_constant_arithmetic)],
    "Add": [("merge-constant-arithmetic", "constant Mul/Add pairs", _merge_constant_arithmetic)],
}


def merge_consecutive(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
    for node in [node for graph in graphs for node in graph]:
        if node.domain not in ("", "ai.onnx"):
            continue
        for rule, what, rewrite in _RULES.get(node.op_type, ()):
            site = site_name(node)
            if node.graph is not None and rewrites.allows(rule, site) and rewrite(node):
                rewrites.record(rule, site, "merged", what)
                break
