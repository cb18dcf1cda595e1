"""YOLOv5/YOLOX's Focus block: four strided Slices of an image concatenated on channels → SpaceToDepth.

``Concat(x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2], axis=1)`` takes every
2×2 block of ``x`` apart into channels. ``SpaceToDepth(x, blocksize=2)`` does the same in one node, its output
channels ordered block offset first: channel ``(2*h0 + w0)*C + c`` holds ``x[:, c, h0::2, w0::2]``. Where the
Concat lists the offsets in another order (Focus uses (0,0),(1,0),(0,1),(1,1)), a Gather on the channel axis
restores it. Five nodes become two (one where the order already matches). This is what ONNX Runtime's basic
level writes for the block. Only static, even H and W are taken: for odd ones the Slices differ in size and
the Concat fails, as SpaceToDepth does, but an error is kept as the exporter's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxkit.pass_base import Site
from onnxkit.passes._graph_utils import model_graphs
from onnxkit.passes.fuse._base import FusionContext, insert_constant
from onnxkit.passes.fuse._shape_of_transpose import _take_place

_STANDARD = ("", "ai.onnx")
_BLOCK = 2
_RANK = 4


def apply_space_to_depth(model: ir.Model, context: FusionContext) -> int:
    fired = 0
    for graph in (*model_graphs(model), *model.functions.values()):
        for concat in list(graph):
            if concat.graph is graph and _rewrite(concat, graph, context):
                fired += 1
    return fired


def _ints(value: ir.Value | None) -> list[int] | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if tensor is None else [int(v) for v in tensor.numpy().reshape(-1)]


def _block_offset(slice_node: ir.Node, height: int, width: int) -> tuple[int, int] | None:
    """``(h0, w0)`` where the Slice is ``x[:, :, h0::2, w0::2]`` of a rank-4 ``x``; None for any other Slice."""
    if slice_node.op_type != "Slice" or slice_node.domain not in _STANDARD or len(slice_node.inputs) != 5:
        return None
    _, starts_value, ends_value, axes_value, steps_value = slice_node.inputs
    starts, ends, axes, steps = (_ints(v) for v in (starts_value, ends_value, axes_value, steps_value))
    if starts is None or ends is None or axes is None or steps is None or len(starts) != 2:
        return None
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    by_axis = {axis % _RANK: (start, end, step) for axis, start, end, step in zip(axes, starts, ends, steps)}
    if sorted(by_axis) != [2, 3]:
        return None
    offsets = []
    for axis, size in ((2, height), (3, width)):
        start, end, step = by_axis[axis]
        if step != _BLOCK or start not in (0, 1) or end < size:  # to the end of the axis, from 0 or 1
            return None
        offsets.append(start)
    return offsets[0], offsets[1]


def _rewrite(concat: ir.Node, graph: ir.Graph | ir.Function, context: FusionContext) -> bool:
    if concat.op_type != "Concat" or concat.domain not in _STANDARD or len(concat.inputs) != _BLOCK * _BLOCK:
        return False
    first = concat.inputs[0].producer() if concat.inputs[0] is not None else None
    # Only Slices can be the parts; a part made by an op without inputs (a Constant) ends the match here.
    x = first.inputs[0] if first is not None and first.op_type == "Slice" and first.inputs else None
    if x is None or x.shape is None or len(x.shape) != _RANK or concat.attributes.get_int("axis", 0) % _RANK != 1:
        return False
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    if not all(isinstance(d, int) for d in (channels, height, width)):
        return False
    assert isinstance(channels, int) and isinstance(height, int) and isinstance(width, int)
    if height % _BLOCK or width % _BLOCK:
        return False
    offsets = []
    for part in concat.inputs:
        producer = part.producer() if part is not None else None
        if (
            part is None
            or producer is None
            or producer.op_type != "Slice"
            or not producer.inputs
            or producer.inputs[0] is not x
            or producer.graph is not graph
            or part.is_graph_output()
            or len(part.uses()) != 1
        ):
            return False
        offset = _block_offset(producer, height, width)
        if offset is None:
            return False
        offsets.append(offset)
    if len(set(offsets)) != len(offsets):
        return False
    anchor = concat.name or concat.outputs[0].name or ""  # unnamed nodes go by their output
    if not context.allows(context.fusion, anchor):
        return False
    old = concat.outputs[0]
    s2d = ir.node(
        "SpaceToDepth",
        [x],
        attributes={"blocksize": _BLOCK},
        name=concat.name,
        outputs=[ir.Value(name=context.fresh_name(f"{old.name}_space_to_depth"))],
    )
    graph.insert_before(concat, s2d)
    result = s2d.outputs[0]
    # SpaceToDepth's channel (2*h0 + w0)*C + c is x[:, c, h0::2, w0::2]; the Concat wants its parts' order.
    order = np.array([(_BLOCK * h0 + w0) * channels + c for h0, w0 in offsets for c in range(channels)], dtype=np.int64)
    if not np.array_equal(order, np.arange(order.size)):
        name = context.fresh_name(f"{old.name}_channels")
        indices = insert_constant(order, name, graph, concat)
        gather = ir.node(
            "Gather", [result, indices], attributes={"axis": 1}, outputs=[ir.Value(name=context.fresh_name(old.name))]
        )
        graph.insert_before(concat, gather)
        result = gather.outputs[0]
    result.shape, result.type = old.shape, old.type
    _take_place(old, result, graph)
    parts = [part.producer() for part in concat.inputs if part is not None]
    graph.remove(concat, safe=True)
    for producer in parts:
        if producer is not None:
            graph.remove(producer, safe=True)
    context.sites.append(Site(context.fusion, anchor))
    return True
