"""Helpers shared by graph passes: walking every graph of a model, and telling whether a pass changed it.

A pass reports ``modified`` honestly by comparing the model before and after, not by trusting the tools it
calls: onnxscript's optimizer and ONNX Runtime may rebuild a graph that is the same as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common


def graph_likes(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every If/Loop/Scan body inside it, local functions and the bodies inside those."""
    yield from model.graphs()
    for function in model.functions.values():
        yield function
        for node in ir.traversal.RecursiveGraphIterator(function):
            for attribute in node.attributes.values():
                if attribute.is_ref():
                    continue
                if attribute.type == ir.AttributeType.GRAPH:
                    yield attribute.as_graph()
                elif attribute.type == ir.AttributeType.GRAPHS:
                    yield from attribute.as_graphs()


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of the model: main graph, subgraphs, local functions."""
    for graph in graph_likes(model):
        yield from graph


def _arities(model: ir.Model) -> dict[int, tuple[int, int, int]]:
    """Each node's input and output counts and unnamed (dropped) outputs, by node identity."""
    return {id(node): (len(node.inputs), len(node.outputs), sum(1 for value in node.outputs if not value.name))
            for node in all_nodes(model)}


def remove_unused_nodes(model: ir.Model) -> tuple[int, int]:
    """onnx_ir's dead-node removal, with all it did counted: ``(nodes removed, nodes trimmed)``.

    Besides removing nodes it trims trailing empty inputs (``Clip(x, "", "")`` → ``Clip(x)``) and unused
    optional outputs, and its own ``modified`` says nothing of that; the pipeline holds a pass to the model
    it returns, so a pass must count the trims as changes.
    """
    before = _arities(model)
    common.RemoveUnusedNodesPass()(model)
    after = _arities(model)
    trimmed = sum(1 for key, arity in after.items() if before.get(key, arity) != arity)
    return len(before) - len(after), trimmed


class _Same:
    """Compares equal only to the very same object; holds it, so its id cannot be reused meanwhile."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _value_signature(value: ir.Value | None) -> tuple:
    if value is None:
        return ("",)
    shape = None if value.shape is None else tuple(str(d) for d in value.shape)
    return (value.name, str(value.type), shape)


def _attribute_signature(attribute: ir.Attr) -> tuple:
    if attribute.is_ref():
        return (attribute.name, "ref", attribute.ref_attr_name)
    if attribute.type == ir.AttributeType.GRAPH:
        return (attribute.name, "graph", _graph_signature(attribute.as_graph()))
    if attribute.type == ir.AttributeType.GRAPHS:
        return (attribute.name, "graphs", tuple(_graph_signature(g) for g in attribute.as_graphs()))
    if attribute.type == ir.AttributeType.TENSOR:
        # Tensors are compared by identity: passes build a new tensor whenever they change one.
        return (attribute.name, "tensor", _Same(attribute.value))
    if attribute.type == ir.AttributeType.TENSORS:
        return (attribute.name, "tensors", tuple(_Same(t) for t in attribute.value))
    value = attribute.value
    return (attribute.name, str(attribute.type), tuple(value) if isinstance(value, (list, tuple)) else value)


def _graph_signature(graph: ir.Graph | ir.Function) -> tuple:
    nodes = tuple(
        (
            node.name,
            node.domain,
            node.op_type,
            node.overload,
            tuple(_value_signature(v) for v in node.inputs),
            tuple(_value_signature(v) for v in node.outputs),
            tuple(_attribute_signature(a) for a in node.attributes.values()),
        )
        for node in graph
    )
    initializers = ()
    if isinstance(graph, ir.Graph):
        initializers = tuple(
            (_value_signature(v), _Same(v.const_value)) for v in graph.initializers.values()
        )
    return (
        tuple(_value_signature(v) for v in graph.inputs),
        tuple(_value_signature(v) for v in graph.outputs),
        initializers,
        nodes,
        tuple(sorted(graph.opset_imports.items())),
    )


def structural_fingerprint(model: ir.Model) -> tuple:
    """Everything a pass could change, in a form that compares with ``==``.

    Names, op types, attributes, value types and shapes, graph signatures, opset imports, functions and
    metadata. Tensor contents are compared by identity (a pass that changes a tensor makes a new one),
    which keeps this cheap on large models.
    """
    return (
        _graph_signature(model.graph),
        tuple((key, _graph_signature(f)) for key, f in model.functions.items()),
        tuple(sorted(model.opset_imports.items())),
        tuple(sorted(model.metadata_props.items())),
    )


def signature_changes(before: ir.Model, after: ir.Model) -> list[str]:
    """How the graph inputs and outputs differ in name, order, dtype or rank (where both state them)."""
    changes = []
    for side in ("inputs", "outputs"):
        old, new = getattr(before.graph, side), getattr(after.graph, side)
        if [v.name for v in old] != [v.name for v in new]:
            changes.append(f"{side} from {[v.name for v in old]} to {[v.name for v in new]}")
            continue
        for a, b in zip(old, new):
            if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
                changes.append(f"{side[:-1]} '{a.name}' from {a.dtype.name} to {b.dtype.name}")
            if a.shape is not None and b.shape is not None and len(a.shape) != len(b.shape):
                changes.append(f"{side[:-1]} '{a.name}' from rank {len(a.shape)} to {len(b.shape)}")
    return changes


def eliminate_identities(model: ir.Model, allowed: Callable[[ir.Node], bool] | None = None) -> int:
    """Remove Identity nodes everywhere, keeping every graph's output names; returns how many went.

    ``allowed``, when given, says which Identity nodes may go (a pass narrowed by its caller keeps the rest).

    onnx_ir's ``IdentityEliminationPass`` renames the Identity's input to the output's name when the output
    is a graph output. That breaks two cases this function keeps the Identity for: the input is itself a
    graph output (it would lose its name), and the input is an outer-scope value of an If/Loop/Scan body
    (the outer value would be renamed, and ONNX Runtime refuses a body that returns an outer value).
    It also leaves shapes alone: a graph output's declared shape is never copied backwards.
    """
    removed = 0
    for node in list(all_nodes(model)):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        if allowed is not None and not allowed(node):
            continue
        source, result = node.inputs[0], node.outputs[0]
        graph = node.graph
        if source is None or graph is None:
            continue
        if result.is_graph_output():
            if (
                source.is_graph_input()
                or source.is_initializer()
                or source.is_graph_output()
                or source.graph is not graph
            ):
                continue
            ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
            source.name = result.name
            if source.shape is None:
                # The value now stands for the graph output: keep the output's declared shape where nothing
                # better is known (the checker requires a shape on graph outputs that declared one).
                source.shape = result.shape
        else:
            ir.convenience.replace_all_uses_with(result, source)
        if source.type is None:
            source.type = result.type
        graph.remove(node, safe=True)
        removed += 1
    return removed


def opset_problem(node: ir.Node, opset: int) -> str | None:
    """Why ``node`` is not valid in the standard domain at ``opset``, or None when it is (or is not ours to judge).

    Checks what rewrites get wrong when they build nodes for the newest opset: the op exists at that version,
    its attributes are ones that version knows (``Reshape(allowzero)`` needs 14, ``Constant(value_ints)`` 12,
    ``Split(num_outputs)`` 18), and its input and output counts fit (``Squeeze`` takes axes as an input from 13).
    Nodes of other domains are not checked.
    """
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return f"{node.op_type} does not exist at opset {opset}"
    unknown = sorted(set(node.attributes) - set(schema.attributes))
    if unknown:
        return f"{node.op_type}-{schema.since_version} has no attribute {', '.join(unknown)}"
    inputs = len(node.inputs)
    if not schema.min_input <= inputs <= schema.max_input:
        return f"{node.op_type}-{schema.since_version} takes {schema.min_input}..{schema.max_input} inputs, not {inputs}"
    outputs = len(node.outputs)
    if not schema.min_output <= outputs <= schema.max_output:
        return f"{node.op_type}-{schema.since_version} gives {schema.min_output}..{schema.max_output} outputs, not {outputs}"
    return None
