"""Helpers shared by graph passes: walking every graph of a model, and telling whether a pass changed it.

A pass reports ``modified`` honestly by comparing the model before and after, not by trusting the tools it
calls: onnxscript's optimizer and ONNX Runtime may rebuild a graph that is the same as before.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_ir as ir
from onnx_ir.passes import common

from onnxkit import graph

# The one walk over every graph lives in onnxkit.graph; passes call it by these names.
graph_likes = graph.graphs
all_nodes = graph.nodes
subgraphs = graph.subgraphs
_GRAPH_TYPES = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def model_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every graph inside its nodes at any depth, bodies without nodes included (an If
    branch that returns an outer value still has outputs), in ``ir.Model.graphs`` order: each body right
    after the node that holds it, before the graphs inside it. That method walks onnx_ir's recursive node
    iterator, several times the cost of this loop, and rules call it once per application."""
    found: list[ir.Graph] = [model.graph]
    seen = {id(model.graph)}

    def visit(graph: ir.Graph) -> None:
        for node in graph:
            attributes = node.attributes
            # onnx_ir's Attributes is a UserDict: reading its plain dict skips the Mapping machinery per node.
            for attribute in getattr(attributes, "data", attributes).values():
                if attribute.type not in _GRAPH_TYPES or attribute.is_ref():
                    continue
                bodies = (attribute.as_graph(),) if attribute.type == ir.AttributeType.GRAPH else attribute.as_graphs()
                for body in bodies:
                    if id(body) not in seen:
                        seen.add(id(body))
                        found.append(body)
                    visit(body)

    visit(model.graph)
    return found


def _arities(model: ir.Model) -> dict[int, tuple[int, int, int]]:
    """Each node's input and output counts and unnamed (dropped) outputs, by node identity."""
    return {
        id(node): (len(node.inputs), len(node.outputs), sum(1 for value in node.outputs if not value.name))
        for node in all_nodes(model)
    }


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
        return (
            f"{node.op_type}-{schema.since_version} takes {schema.min_input}..{schema.max_input} inputs, not {inputs}"
        )
    outputs = len(node.outputs)
    if not schema.min_output <= outputs <= schema.max_output:
        return f"{node.op_type}-{schema.since_version} gives {schema.min_output}..{schema.max_output} outputs, not {outputs}"
    return None
