"""A Reshape to a shape computed at run time, where shape inference tells the result → constant-axis ops.

YOLOv8's DFL head writes ``Reshape(x, Concat(N, 4, A))`` on an ``[N, 1, 4, A]`` tensor, and ``Reshape(y,
Concat(N, 4, 16, A))`` on an ``[N, 64, A]`` one, each target gathered from a Shape. Where inference names every
dimension of the input and of the output:

* output = input with static 1s taken out (put in): ``Squeeze`` (``Unsqueeze``) of those axes;
* the output's symbols sit at the input's indices (the rest known sizes): a constant target of 0-copies and
  the known sizes, ``[0, 6, 1, 0]``. ONNX Runtime writes ``-1`` beside a 0-copy instead, which fails for an
  empty batch (the ``-1`` is then 0/0); 0-copies need no ``-1``, so every size, 0 included, reshapes as
  before;
* the symbols line up once static 1s are put in (``[N, 64, A]`` → ``[N, 4, 16, A]``): an ``Unsqueeze``
  (``[N, 64, 1, A]``), then that constant target, where at least two nodes computing the target go
  (``reshape-chain`` leaves the pair alone: folded, it would need a ``-1`` beside a 0-copy).

Exact for any sizes; the nodes computing the target go once nothing else reads them. A constant target is
left as it is (``simplify`` settles those).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxkit.pass_base import Site
from onnxkit.passes._graph_utils import model_graphs
from onnxkit.passes.fuse._base import FusionContext, insert_constant
from onnxkit.passes.fuse._shape_of_transpose import _take_place

_STANDARD = ("", "ai.onnx")
# Squeeze and Unsqueeze take their axes as an input from opset 13, as an attribute before.
_AXES_INPUT_OPSET = 13

Dim = int | ir.SymbolicDim


def apply_reshape_as_squeeze(model: ir.Model, context: FusionContext) -> int:
    fired = 0
    for graph in (*model_graphs(model), *model.functions.values()):
        for reshape in list(graph):
            if reshape.graph is graph and _rewrite(reshape, graph, context):
                fired += 1
    return fired


def _named_dims(value: ir.Value | None) -> list[Dim] | None:
    """The value's dims where every one is a known size or a named symbol; None otherwise."""
    if value is None or value.shape is None:
        return None
    dims: list[Dim] = []
    for dim in value.shape:
        if isinstance(dim, int):
            dims.append(dim)
        elif isinstance(dim, ir.SymbolicDim) and dim.value is not None:
            dims.append(dim)
        else:
            return None
    return dims


def _same(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value == b.value


def _unit_axes(longer: list[Dim], shorter: list[Dim]) -> list[int] | None:
    """Axes of ``longer`` that are static 1s and, taken out, leave ``shorter``; None when there are none such."""
    axes, next_kept = [], 0
    for axis, dim in enumerate(longer):
        if next_kept < len(shorter) and _same(dim, shorter[next_kept]):
            next_kept += 1
        elif dim == 1:
            axes.append(axis)
        else:
            return None
    return axes if axes and next_kept == len(shorter) else None


def _symbols_line_up(before: list[Dim], after: list[Dim]) -> bool:
    """Whether ``after`` has ``before``'s symbols at the same indices and known sizes elsewhere: then the
    target of 0-copies and those sizes gives ``after`` with no ``-1``."""
    if len(before) != len(after) or 0 in after:  # a 0 in a target would copy, not mean 0
        return False
    return all(
        isinstance(a, int) == isinstance(b, int) and (isinstance(a, int) or _same(a, b))
        for a, b in zip(before, after)
        if not (isinstance(a, int) and isinstance(b, int))
    )


def _unsqueezed_to_line_up(before: list[Dim], after: list[Dim]) -> list[int] | None:
    """Axes of static 1s that, put into ``before``, bring each of its symbols to its index in ``after``
    (``[N, 64, A]`` → ``[N, 64, 1, A]`` for ``[N, 4, 16, A]``); None when no such insertion lines them up."""
    if len(before) >= len(after):
        return None
    symbols_before = [i for i, d in enumerate(before) if not isinstance(d, int)]
    symbols_after = [j for j, d in enumerate(after) if not isinstance(d, int)]
    if len(symbols_before) != len(symbols_after) or not symbols_before:
        return None
    padded: list[Dim] = []
    axes: list[int] = []
    source = 0
    for i, j in zip(symbols_before, symbols_after):
        if not _same(before[i], after[j]):
            return None
        padded.extend(before[source:i])
        while len(padded) < j:  # ones in front of the symbol, so that it lands at index j
            axes.append(len(padded))
            padded.append(1)
        if len(padded) != j:
            return None
        padded.append(before[i])
        source = i + 1
    padded.extend(before[source:])
    while len(padded) < len(after):
        axes.append(len(padded))
        padded.append(1)
    return axes if axes and _symbols_line_up(padded, after) else None


def _dying_nodes(target: ir.Value, reshape: ir.Node) -> int:
    """How many nodes computing the target go once the Reshape no longer reads it."""
    dying: set[ir.Node] = {reshape}
    frontier = [target]
    while frontier:
        value = frontier.pop()
        producer = value.producer()
        if producer is None or producer in dying or producer.graph is not reshape.graph:
            continue
        if any(out.is_graph_output() or any(user not in dying for user, _ in out.uses()) for out in producer.outputs):
            continue
        dying.add(producer)
        frontier.extend(v for v in producer.inputs if v is not None)
    return len(dying) - 1


def _unit_axes_op(
    kind: str,
    x: ir.Value,
    axes: list[int],
    base: str | None,
    graph: ir.Graph | ir.Function,
    before: ir.Node,
    context: FusionContext,
) -> ir.Node:
    if context.opset < _AXES_INPUT_OPSET:
        return ir.node(kind, [x], attributes={"axes": axes})
    axes_value = insert_constant(np.array(axes, dtype=np.int64), context.fresh_name(f"{base}_axes"), graph, before)
    return ir.node(kind, [x, axes_value])


def _rewrite(reshape: ir.Node, graph: ir.Graph | ir.Function, context: FusionContext) -> bool:
    if reshape.op_type != "Reshape" or reshape.domain not in _STANDARD or len(reshape.inputs) != 2:
        return False
    x, target = reshape.inputs
    if x is None or target is None or ir.convenience.get_const_tensor(target) is not None:
        return False
    before, after = _named_dims(x), _named_dims(reshape.outputs[0])
    if before is None or after is None:
        return False
    old = reshape.outputs[0]
    if len(before) > len(after) and (axes := _unit_axes(before, after)) is not None:
        kind = "Squeeze"
    elif len(before) < len(after) and (axes := _unit_axes(after, before)) is not None:
        kind = "Unsqueeze"
    elif _symbols_line_up(before, after) and _dying_nodes(target, reshape):
        kind, axes = "Reshape", []  # [0 where a symbol sits, the known size elsewhere]
    elif (axes := _unsqueezed_to_line_up(before, after)) is not None and _dying_nodes(target, reshape) >= 2:
        kind = "Unsqueeze+Reshape"  # two nodes for the Reshape and at least two computing its target
    else:
        return False
    anchor = reshape.name or old.name or ""  # unnamed nodes go by their output
    if not context.allows(context.fusion, anchor):
        return False
    if kind in ("Squeeze", "Unsqueeze"):
        new_nodes = [_unit_axes_op(kind, x, axes, old.name, graph, reshape, context)]
    else:
        if kind == "Unsqueeze+Reshape":
            new_nodes = [_unit_axes_op("Unsqueeze", x, axes, old.name, graph, reshape, context)]
            x = new_nodes[0].outputs[0]
        else:
            new_nodes = []
        shape = insert_constant(
            np.array([d if isinstance(d, int) else 0 for d in after], dtype=np.int64),
            context.fresh_name(f"{old.name}_shape"),
            graph,
            reshape,
        )
        new_nodes.append(ir.node("Reshape", [x, shape]))
    for node in new_nodes:
        graph.insert_before(reshape, node)
    new_nodes[-1].name = reshape.name
    result = new_nodes[-1].outputs[0]
    result.shape, result.type = old.shape, old.type
    _take_place(old, result, graph)  # its name, and every reader
    graph.remove(reshape, safe=True)
    context.sites.append(Site(context.fusion, anchor))
    return True
