"""Walks over every graph of a model, and what the pipeline measures with them.

Every graph means the main graph, the bodies of If/Loop/Scan nodes at any depth, local functions and the
bodies inside those. ``default_opset`` reads the standard domain's version. ``count_nodes`` and ``op_histogram``
instrument a pass; ``fingerprint`` lets the pipeline check a pass's claim that it left a model unchanged,
instead of trusting it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, overload

import numpy as np
import onnx
import onnx_ir as ir

STANDARD_DOMAINS = ("", "ai.onnx")
_GRAPH_TYPES = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    """The main graph, every subgraph inside it, local functions and the subgraphs inside those; each subgraph
    right after the graph that holds it, in node order (``ir.Model.graphs`` order)."""
    yield model.graph
    yield from subgraphs(model.graph)
    for function in model.functions.values():
        yield function
        yield from subgraphs(function)


def subgraphs(graph: ir.Graph | ir.Function) -> Iterator[ir.Graph]:
    """The graphs inside ``graph``'s nodes, at any depth, each before the graphs inside it.

    onnx_ir's ``Graph.subgraphs`` finds them through its recursive node iterator, which costs about five times
    this loop on a large model, and passes walk every graph several times per round. Like it, this leaves out
    a body without nodes (an If branch that returns an outer value): nothing in it to walk.
    """
    for node in graph:
        attributes = node.attributes
        # onnx_ir's Attributes is a UserDict: reading its plain dict skips the Mapping machinery per node.
        for attribute in getattr(attributes, "data", attributes).values():
            if attribute.type not in _GRAPH_TYPES or attribute.is_ref():
                continue
            for body in (attribute.as_graph(),) if attribute.type == ir.AttributeType.GRAPH else attribute.as_graphs():
                if len(body):
                    yield body
                yield from subgraphs(body)


def nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node of every graph of the model."""
    for graph in graphs(model):
        yield from graph


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph, its subgraphs, and local functions."""
    return sum(1 for _ in nodes(model))


@overload
def default_opset(model: ir.Model | onnx.ModelProto, missing: int = 1) -> int: ...
@overload
def default_opset(model: ir.Model | onnx.ModelProto, missing: None) -> int | None: ...
def default_opset(model: ir.Model | onnx.ModelProto, missing: int | None = 1) -> int | None:
    """The version of the standard ONNX domain (``""`` or its alias ``"ai.onnx"``) a model imports; ``missing``
    (1, or what the caller passes, e.g. None) when it imports neither."""
    if isinstance(model, onnx.ModelProto):
        return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), missing)
    return next((model.opset_imports[d] for d in STANDARD_DOMAINS if d in model.opset_imports), missing)


def op_histogram(model: ir.Model) -> collections.Counter[str]:
    """How many nodes of each op type (``domain::Op`` outside the standard domain), subgraphs included."""
    histogram: collections.Counter[str] = collections.Counter()
    for node in nodes(model):
        histogram[node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"] += 1
    return histogram


# ---------------------------------------------------------------------------------------------------------
# Fingerprint


class _TensorRef:
    """A tensor inside a fingerprint: equal to the very same tensor object, or to one with equal contents.

    Identity settles it cheaply for in-place passes, which keep the tensors they do not touch; a pass that
    rebuilds the model (a proto-level tool) makes new objects, and only then are the contents read.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _TensorRef):
            return NotImplemented
        mine, theirs = self.tensor, other.tensor
        if mine is theirs:
            return True
        if mine is None or theirs is None:
            return False
        if mine.dtype != theirs.dtype or tuple(mine.shape) != tuple(theirs.shape):
            return False
        return bool(np.array_equal(mine.numpy(), theirs.numpy(), equal_nan=mine.dtype.is_floating_point()))

    def __hash__(self) -> int:
        return 0  # fingerprints are compared, never hashed by content


def _value(value: ir.Value | None) -> tuple:
    if value is None:
        return ("",)
    shape = None if value.shape is None else tuple(str(d) for d in value.shape)
    return (value.name, str(value.type), shape)


def _attribute(attribute: ir.Attr) -> tuple:
    if attribute.is_ref():
        return (attribute.name, "ref", attribute.ref_attr_name)
    if attribute.type == ir.AttributeType.GRAPH:
        return (attribute.name, "graph", _graph(attribute.as_graph()))
    if attribute.type == ir.AttributeType.GRAPHS:
        return (attribute.name, "graphs", tuple(_graph(g) for g in attribute.as_graphs()))
    if attribute.type == ir.AttributeType.TENSOR:
        return (attribute.name, "tensor", _TensorRef(attribute.value))
    if attribute.type == ir.AttributeType.TENSORS:
        return (attribute.name, "tensors", tuple(_TensorRef(t) for t in attribute.value))
    value = attribute.value
    return (attribute.name, str(attribute.type), tuple(value) if isinstance(value, (list, tuple)) else value)


def _graph(graph: ir.Graph | ir.Function) -> tuple:
    node_records = tuple(
        (
            node.name,
            node.domain,
            node.op_type,
            node.overload,
            tuple(_value(v) for v in node.inputs),
            tuple(_value(v) for v in node.outputs),
            # onnx_ir's Attributes is a UserDict: its plain dict skips the Mapping machinery (a third of the walk).
            tuple(_attribute(a) for a in getattr(node.attributes, "data", node.attributes).values()),
        )
        for node in graph
    )
    initializers: tuple = ()
    if isinstance(graph, ir.Graph):  # by name: their order means nothing, and passes that rebuild them reorder them
        initializers = tuple(
            (_value(v), _TensorRef(v.const_value))
            for _, v in sorted(graph.initializers.items(), key=lambda item: item[0])
        )
    return (
        tuple(_value(v) for v in graph.inputs),
        tuple(_value(v) for v in graph.outputs),
        initializers,
        node_records,
        tuple(sorted(graph.opset_imports.items())),
    )


def fingerprint(model: ir.Model) -> tuple:
    """Everything a pass could change, in a form that compares with ``==``: nodes (names, op types,
    attributes, subgraphs), value names, types and shapes, initializers, graph signatures, opset imports,
    functions and metadata. Take it before a pass runs: an in-place pass edits the very model it is given."""
    return (
        _graph(model.graph),
        tuple((key, _graph(f)) for key, f in model.functions.items()),
        tuple(sorted(model.opset_imports.items())),
        tuple(sorted(model.metadata_props.items())),
        model.ir_version,
    )


def computation(print_: tuple) -> tuple:
    """The part of a ``fingerprint`` that decides what the model computes: the same, less the types and shapes
    recorded on the values between nodes (value_info, what shape inference annotates), node names and metadata.
    Two models whose ``computation`` is equal have the same nodes, attributes, wiring, initializers, graph
    signatures, functions and opsets: ONNX Runtime gives them the same outputs, since no kernel reads an
    annotation."""
    main, functions, opsets, _metadata, ir_version = print_
    return (_bare_graph(main), tuple((key, _bare_graph(f)) for key, f in functions), opsets, ir_version)


def _bare_graph(record: tuple) -> tuple:
    # Inputs and weights are kept whole (ONNX Runtime checks what it is fed against the inputs' shapes), outputs
    # less their shapes, which it only warns about.
    inputs, outputs, initializers, node_records, opsets = record
    outputs = tuple(value[:2] for value in outputs)  # name and type
    return (inputs, outputs, initializers, tuple(_bare_node(n) for n in node_records), opsets)


def _bare_node(record: tuple) -> tuple:
    _name, domain, op_type, overload, inputs, outputs, attributes = record
    return (
        domain,
        op_type,
        overload,
        tuple(value[0] for value in inputs),  # the value's name: what the node reads and writes
        tuple(value[0] for value in outputs),
        tuple(_bare_attribute(a) for a in attributes),
    )


def _bare_attribute(record: tuple) -> tuple:
    if record[1] == "graph":
        return (record[0], "graph", _bare_graph(record[2]))
    if record[1] == "graphs":
        return (record[0], "graphs", tuple(_bare_graph(g) for g in record[2]))
    return record
