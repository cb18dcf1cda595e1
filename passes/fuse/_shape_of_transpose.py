"""A Transpose read only by Shape nodes, beside a Shape of its input: the Shapes gather from that one instead.

``Shape(Transpose(x, perm))`` is ``Gather(Shape(x), perm)``. Exporters of recurrent models (tf2onnx's LSTM
loops) transpose an input to time-major and read both layouts' shapes; where ``Shape(x)`` is computed anyway,
the Transpose goes and each Shape of it becomes a Gather of that ``Shape(x)``: one node fewer, and no tensor
is transposed just to learn its dims. This is ONNX Runtime's transpose optimizer's Shape rule, taken only
where it saves a node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxkit.pass_base import Site
from onnxkit.passes._graph_utils import model_graphs
from onnxkit.passes.fuse._base import FusionContext, insert_constant
from onnxkit.passes.fuse._transpose_region import perm_of

_STANDARD = ("", "ai.onnx")


def _is_full_shape(node: ir.Node, x: ir.Value) -> bool:
    return (
        node.op_type == "Shape"
        and node.domain in _STANDARD
        and node.inputs[0] is x
        and "start" not in node.attributes
        and "end" not in node.attributes
    )


def _sliced(perm: tuple[int, ...], shape_node: ir.Node) -> list[int]:
    """The entries of ``perm`` a Shape with start/end reads (negative ends count from the rank, out of range
    ones clamp: exactly Python's slicing)."""
    start = shape_node.attributes.get_int("start", 0)
    end = shape_node.attributes.get_int("end", len(perm))
    return list(perm[start:end])


def apply_shape_of_transpose(model: ir.Model, context: FusionContext) -> int:
    fired = 0
    for graph in (*model_graphs(model), *model.functions.values()):
        for transpose in list(graph):
            if transpose.graph is graph and _rewrite(transpose, graph, context):
                fired += 1
    return fired


def _rewrite(transpose: ir.Node, graph: ir.Graph | ir.Function, context: FusionContext) -> bool:
    if transpose.op_type != "Transpose" or transpose.domain not in _STANDARD:
        return False
    perm, x, output = perm_of(transpose), transpose.inputs[0], transpose.outputs[0]
    if perm is None or x is None or output.is_graph_output() or not output.uses():
        return False
    readers = [user for user, _ in output.uses()]
    if any(user.op_type != "Shape" or user.domain not in _STANDARD or user.graph is not graph for user in readers):
        return False
    shape_of_x = next((user for user, _ in x.uses() if user.graph is graph and _is_full_shape(user, x)), None)
    anchor = transpose.name or output.name or ""  # unnamed nodes go by their output
    if shape_of_x is None or not context.allows(context.fusion, anchor):
        return False
    order = {node: index for index, node in enumerate(graph)}
    if order[shape_of_x] > order[transpose]:  # x exists before the Transpose, so its Shape may move there
        graph.remove(shape_of_x)
        graph.insert_before(transpose, shape_of_x)
    for reader in dict.fromkeys(readers):
        indices = np.array(_sliced(perm, reader), dtype=np.int64)
        name = context.fresh_name(f"{reader.outputs[0].name}_perm")
        index_value = insert_constant(indices, name, graph, reader)
        gather = ir.node(
            "Gather",
            [shape_of_x.outputs[0], index_value],
            attributes={"axis": 0},
            outputs=[ir.Value(name=context.fresh_name(reader.outputs[0].name))],
            name=reader.name,
        )
        old = reader.outputs[0]
        gather.outputs[0].shape, gather.outputs[0].type = old.shape, old.type
        graph.insert_before(reader, gather)
        _take_place(old, gather.outputs[0], graph)
        graph.remove(reader, safe=True)
    graph.remove(transpose, safe=True)
    context.sites.append(Site(context.fusion, anchor))
    return True


def _take_place(old: ir.Value, new: ir.Value, graph: ir.Graph | ir.Function) -> None:
    """``new`` replaces ``old`` everywhere, as a graph output too, under ``old``'s name."""
    for index, value in enumerate(list(graph.outputs)):
        if value is old:
            graph.outputs[index] = new
    old.replace_all_uses_with(new)
    name = old.name
    old.name = None
    new.name = name
