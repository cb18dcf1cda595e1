"""Cancel the Transposes around a region of elementwise ops: the ops run in the layout before the Transposes.

Exporters of channels-last models (tf2onnx, and torch ports of them) wrap every layer in a Transpose pair:
``Conv → Transpose(0,2,3,1) → Add, Mul, Relu ... → Transpose(0,3,1,2) → Conv``. Elementwise ops do not
care about the layout, so the region between the Transposes can run in the layout the Transposes came
from: its constant operands are transposed once, at rewrite time, and the Transposes on its edges go away
(an entering one that nothing else reads, a leaving one whose perm then composes to the identity). The
result is bit-exact: each element is computed from the same operands by the same op.

A region is a connected set of elementwise nodes, and of Squeeze/Unsqueeze nodes with constant axes (their
axes are renumbered for the other layout; ports of Keras Conv1D squeeze the batch between Transposes).
Every value entering it is the output of a Transpose, a constant (no higher rank than the values it meets),
or a value the region itself computes, and each node's operands agree on their layout; every value it
computes is read only by region nodes and Transposes, and is no graph output.
Regions where that does not hold are left alone, as are regions where no node would be saved. This is
ONNX Runtime's transpose optimizer reduced to what exactness and the node count need.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxkit.pass_base import Site
from onnxkit.passes._graph_utils import model_graphs
from onnxkit.passes.fuse._base import FusionContext, constant_array, insert_constant

_STANDARD = ("", "ai.onnx")
# Ops whose every input broadcasts against the others elementwise, and whose one output has the
# broadcast shape: they compute the same in any layout, given operands in that layout.
ELEMENTWISE = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Cast",
        "Ceil",
        "Celu",
        "Cos",
        "Cosh",
        "Elu",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "IsInf",
        "IsNaN",
        "LeakyRelu",
        "Log",
        "Mish",
        "Neg",
        "Not",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Softplus",
        "Softsign",
        "Sqrt",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Add",
        "And",
        "BitShift",
        "Div",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Max",
        "Mean",
        "Min",
        "Mod",
        "Mul",
        "Or",
        "Pow",
        "PRelu",
        "Sub",
        "Sum",
        "Where",
        "Xor",
        "Clip",  # min and max are scalars from opset 11, attributes before
    }
)
# A constant operand read by a node outside the region gets a transposed copy; above this size the copy
# would add more to the file than the Transposes it saves are worth.
_MAX_COPIED_CONSTANT_BYTES = 1 << 16
# Regions are found by a walk; one larger than this is left alone rather than searched further.
_MAX_REGION_NODES = 10_000


def perm_of(node: ir.Node) -> tuple[int, ...] | None:
    attribute = node.attributes.get("perm")
    if attribute is None or attribute.is_ref():
        return None
    return tuple(attribute.as_ints())


def _is_elementwise(node: ir.Node) -> bool:
    return node.domain in _STANDARD and node.op_type in ELEMENTWISE and len(node.outputs) == 1


def _axes_op(node: ir.Node) -> bool:
    """A Squeeze/Unsqueeze with constant axes: it moves with the layout, its axes renumbered."""
    return node.domain in _STANDARD and node.op_type in ("Squeeze", "Unsqueeze") and bool(_axes(node))


def _in_region_kind(node: ir.Node) -> bool:
    return _is_elementwise(node) or _axes_op(node)


def _data_inputs(node: ir.Node) -> list[ir.Value]:
    """The inputs that carry the layout: all of an elementwise op's, the first of a Squeeze/Unsqueeze's."""
    inputs = node.inputs[:1] if _axes_op(node) else node.inputs
    return [value for value in inputs if value is not None]


@dataclasses.dataclass
class _Region:
    nodes: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # ordered: rewrites are deterministic
    entering: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # Transposes whose outputs enter
    leaving: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # Transposes that read region values
    constants: dict[ir.Value, np.ndarray] = dataclasses.field(default_factory=dict)
    # Each value in the transposed layout: the perm that takes its untransposed form to it.
    perms: dict[ir.Value, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    # A Squeeze's axes in the untransposed layout (an Unsqueeze keeps its own).
    new_axes: dict[ir.Node, list[int]] = dataclasses.field(default_factory=dict)

    def in_layout(self, value: ir.Value) -> bool:
        """Whether ``value`` is in the Transposes' layout: computed by the region or by an entering Transpose."""
        producer = value.producer()
        return producer is not None and (producer in self.nodes or producer in self.entering)

    def enters(self, transpose: ir.Node) -> None:
        self.entering[transpose] = None
        self.perms[transpose.outputs[0]] = perm_of(transpose) or ()


def _source(leaving: ir.Node) -> ir.Value:
    """The region value a leaving Transpose reads (it joined the region by reading one)."""
    value = leaving.inputs[0]
    assert value is not None
    return value


def _layout_readers(value: ir.Value) -> list[ir.Node]:
    return [user for user, _ in value.uses() if _in_region_kind(user) or user.op_type == "Transpose"]


def _grow(seed: ir.Node, graph: ir.Graph | ir.Function, order: dict[ir.Node, int]) -> _Region | None:
    """The region the seed Transpose enters, or None when it breaks a rule of the module docstring."""
    if perm_of(seed) is None or seed.outputs[0].is_graph_output():
        return None
    region = _Region()
    region.enters(seed)
    pending = _layout_readers(seed.outputs[0])
    while pending:
        node = pending.pop()
        if node in region.nodes or node in region.entering or node in region.leaving:
            continue
        if (
            node.op_type == "Transpose"
            and node.domain in _STANDARD
            and any(region.in_layout(value) for value in node.inputs if value is not None)
        ):
            if perm_of(node) is None or node.graph is not graph:
                return None
            region.leaving[node] = None
            continue
        if not _in_region_kind(node) or node.graph is not graph or len(region.nodes) >= _MAX_REGION_NODES:
            return None
        region.nodes[node] = None
        for value in _data_inputs(node):
            if region.in_layout(value):
                continue
            producer = value.producer()
            array = constant_array(value)
            if array is not None and not _axes_op(node):
                region.constants[value] = array
            elif (
                producer is not None
                and producer.graph is graph
                and producer.op_type == "Transpose"
                and producer.domain in _STANDARD
                and perm_of(producer) is not None
                and not value.is_graph_output()
            ):
                region.enters(producer)
                pending.extend(_layout_readers(value))
            elif producer is not None and producer.graph is graph and _in_region_kind(producer):
                pending.append(producer)
            else:
                return None  # a value in another layout, computed outside: it would need its own Transpose
        output = node.outputs[0]
        if output.is_graph_output():
            return None
        pending.extend(user for user, _ in output.uses())
    # Every value the region computes must be read by region nodes and Transposes only.
    readers = set(region.nodes) | set(region.leaving)
    if set(region.leaving) & set(region.entering) or any(
        user not in readers for node in region.nodes for user, _ in node.outputs[0].uses()
    ):
        return None
    return region if _assign_perms(region, order) else None


def _assign_perms(region: _Region, order: dict[ir.Node, int]) -> bool:
    """Give every region value its perm, in graph order; False where the layouts do not agree."""
    for node in sorted(region.nodes, key=order.__getitem__):
        perms = {region.perms.get(value) for value in _data_inputs(node) if value not in region.constants}
        if len(perms) != 1 or None in perms:
            return False  # operands in different layouts (or a value the walk did not place)
        perm = perms.pop()
        assert perm is not None
        if node.op_type == "Squeeze" and _axes_op(node):
            squeezed = _normalized(_axes(node), len(perm))
            if squeezed is None:
                return False
            moved = sorted(perm[axis] for axis in squeezed)
            region.new_axes[node] = moved
            kept = [perm[axis] for axis in range(len(perm)) if axis not in squeezed]
            perm = tuple(axis - sum(1 for gone in moved if gone < axis) for axis in kept)
        elif node.op_type == "Unsqueeze" and _axes_op(node):
            inserted = _normalized(_axes(node), len(perm) + len(_axes(node) or []))
            if inserted is None:
                return False
            perm, axes = _unsqueezed(perm, inserted, region)
            if axes != inserted:
                region.new_axes[node] = axes
        elif any(region.constants[value].ndim > len(perm) for value in node.inputs if value in region.constants):
            return False
        region.perms[node.outputs[0]] = perm
    return all(len(perm_of(t) or ()) == len(region.perms.get(_source(t), ())) for t in region.leaving)


def _unsqueezed(perm: tuple[int, ...], inserted: list[int], region: _Region) -> tuple[tuple[int, ...], list[int]]:
    """The perm of an Unsqueeze's output, and its axes in the untransposed layout.

    The new axes may go anywhere in the untransposed layout. They go where a leaving Transpose of the region's
    rank would put them, if that makes the perm that Transpose's inverse (so it cancels); else where they
    were (an Unsqueeze of a fixed axis, such as the batch, is then right already).
    """
    rank = len(perm) + len(inserted)
    targets = [
        tuple(int(i) for i in np.argsort(perm_of(t) or ())) for t in region.leaving if len(perm_of(t) or ()) == rank
    ]
    candidates = [sorted(target[axis] for axis in inserted) for target in targets]
    for axes in [*candidates, inserted]:
        others = [axis for axis in range(rank) if axis not in inserted]
        placed = [axis for axis in range(rank) if axis not in axes]
        new_axis = dict(zip(inserted, axes))
        result = tuple(new_axis[axis] if axis in new_axis else placed[perm[others.index(axis)]] for axis in range(rank))
        if axes is inserted or result in targets:
            return result, axes
    raise AssertionError("unreachable: the last candidate is always taken")


def _axes(node: ir.Node) -> list[int] | None:
    """A Squeeze/Unsqueeze's axes, from its attribute (opset < 13) or its constant input; None if unknown."""
    if "axes" in node.attributes:
        return list(node.attributes.get_ints("axes"))
    array = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if array is None else [int(axis) for axis in array.reshape(-1)]


def _normalized(axes: list[int] | None, rank: int) -> list[int] | None:
    if not axes or any(not -rank <= axis < rank for axis in axes):
        return None
    return sorted(axis + rank if axis < 0 else axis for axis in axes)


def _composed(inner: tuple[int, ...], outer: tuple[int, ...]) -> tuple[int, ...]:
    """The perm of ``Transpose(Transpose(x, inner), outer)`` as one Transpose of ``x``."""
    return tuple(inner[axis] for axis in outer)


def _cancels(transpose: ir.Node, region: _Region) -> bool:
    composed = _composed(region.perms[_source(transpose)], perm_of(transpose) or ())
    return composed == tuple(range(len(composed)))


def _nodes_saved(region: _Region) -> int:
    region_readers = set(region.nodes) | set(region.leaving)
    entering = sum(1 for t in region.entering if all(user in region_readers for user, _ in t.outputs[0].uses()))
    leaving = sum(
        1
        for t in region.leaving
        if _cancels(t, region) and (not t.outputs[0].is_graph_output() or _renamable(_source(t), region))
    )
    return entering + leaving


def _constants_fit(region: _Region) -> bool:
    """Constants read outside the region are copied; only small ones may be."""
    return all(
        array.nbytes <= _MAX_COPIED_CONSTANT_BYTES or all(user in region.nodes for user, _ in value.uses())
        for value, array in region.constants.items()
    )


def _in_source_layout(array: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    """The constant that, transposed by ``perm``, broadcasts as ``array`` did."""
    rank = len(perm)
    if all(size == 1 for size in array.shape):
        return array  # broadcasts the same in any layout
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return np.ascontiguousarray(np.transpose(full, np.argsort(perm)))


def _rewrite(region: _Region, graph: ir.Graph | ir.Function, context: FusionContext) -> None:
    sources = {t.outputs[0]: t.inputs[0] for t in region.entering}
    moved: dict[tuple[ir.Value, tuple[int, ...]], ir.Value] = {}
    for node in region.nodes:
        perm = region.perms[next(v for v in _data_inputs(node) if v not in region.constants)]
        for index, value in enumerate(node.inputs):
            if value in sources:
                node.replace_input_with(index, sources[value])
            elif value in region.constants:
                if (value, perm) not in moved:
                    array = _in_source_layout(region.constants[value], perm)
                    moved[value, perm] = (
                        value
                        if array is region.constants[value]
                        else insert_constant(array, context.fresh_name(value.name), graph, node)
                    )
                node.replace_input_with(index, moved[value, perm])
        if node in region.new_axes:
            axes = region.new_axes[node]
            if "axes" in node.attributes:
                node.attributes["axes"] = ir.AttrInt64s("axes", axes)
            else:
                node.replace_input_with(
                    1,
                    insert_constant(
                        np.array(axes, dtype=np.int64), context.fresh_name(f"{node.outputs[0].name}_axes"), graph, node
                    ),
                )
        output = node.outputs[0]
        out_perm = region.perms[output]
        if output.shape is not None:
            rank_kept = output.shape.rank() == len(out_perm)
            output.shape = ir.Shape([output.shape[int(i)] for i in np.argsort(out_perm)]) if rank_kept else None
    for transpose in region.leaving:
        value = _source(transpose)
        composed = _composed(region.perms[value], perm_of(transpose) or ())
        if value in sources:  # a Transpose right after an entering one reads the source too
            transpose.replace_input_with(0, sources[value])
        if composed != tuple(range(len(composed))):
            transpose.attributes["perm"] = ir.AttrInt64s("perm", list(composed))
        elif not _drop_leaving(transpose, region, graph):
            # A graph output that must keep its name and now equals a graph input or an outer value.
            transpose.op_type = "Identity"
            del transpose.attributes["perm"]
    for transpose in region.entering:
        if not transpose.outputs[0].uses() and transpose.graph is graph:
            graph.remove(transpose, safe=True)


def _renamable(value: ir.Value, region: _Region) -> bool:
    """Whether a region value may take a graph output's name: it is computed by the region, and neither
    a graph output itself nor read by another graph output's Transpose."""
    return value.producer() in region.nodes and not value.is_graph_output()


def _drop_leaving(transpose: ir.Node, region: _Region, graph: ir.Graph | ir.Function) -> bool:
    """Remove a leaving Transpose that composes to the identity; False where it must stay (as an Identity)."""
    source, output = _source(transpose), transpose.outputs[0]
    if not output.is_graph_output():
        output.replace_all_uses_with(source)
        graph.remove(transpose, safe=True)
        return True
    if not _renamable(source, region):
        return False
    # The region's value becomes the graph output, under the output's name.
    for index, value in enumerate(list(graph.outputs)):
        if value is output:
            graph.outputs[index] = source
    output.replace_all_uses_with(source)
    graph.remove(transpose, safe=True)
    name, shape, type_ = output.name, output.shape, output.type
    output.name = None
    # The output keeps its name and its declaration, even a declared shape that inference would correct.
    source.name, source.shape, source.type = name, shape, type_
    return True


def apply_transpose_regions(model: ir.Model, context: FusionContext) -> int:
    """Cancel the Transposes around every qualifying region; return how many regions moved."""
    fired = 0
    graphs: list[ir.Graph | ir.Function] = [*model_graphs(model), *model.functions.values()]
    for graph in graphs:
        fired += _apply_to_graph(graph, context)
    return fired


def _apply_to_graph(graph: ir.Graph | ir.Function, context: FusionContext) -> int:
    fired = 0
    order = {node: index for index, node in enumerate(graph)}
    seen: set[ir.Node] = set()
    for seed in list(graph):
        if seed.op_type != "Transpose" or seed.domain not in ("", "ai.onnx") or seed in seen or seed.graph is not graph:
            continue
        region = _grow(seed, graph, order)
        if region is None:
            continue
        seen.update(region.entering)
        if not _nodes_saved(region) or not _constants_fit(region):
            continue
        # Named by its first entering Transpose, whichever seed found it, so a rerun names it the same.
        first = min(region.entering, key=lambda t: order.get(t, len(order)))
        anchor = first.name or first.outputs[0].name or ""  # unnamed nodes go by their output
        if not context.allows(context.fusion, anchor):
            continue
        _rewrite(region, graph, context)
        context.sites.append(Site(context.fusion, anchor))
        fired += 1
    return fired
