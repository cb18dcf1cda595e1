"""Cancel the Transposes around a region of elementwise ops: the ops run in the layout before the Transposes.

Exporters of channels-last models (tf2onnx, and torch ports of them) wrap every layer in a Transpose pair:
``Conv → Transpose(0,2,3,1) → Add, Mul, Relu ... → Transpose(0,3,1,2) → Conv``. Elementwise ops do not
care about the layout, so the region between the Transposes can run in the layout the Transposes came
from: its constant operands are transposed once, at rewrite time, and the Transposes on its edges go away
(an entering one that nothing else reads, a leaving one whose perm then composes to the identity). The
result is bit-exact: each element is computed from the same operands by the same op.

A region is a connected set of elementwise nodes. Every value entering it is the output of a Transpose
with one same ``perm``, a constant (no higher rank than the Transposes), or a value the region itself
computes; every value it computes is read only by region nodes and Transposes, and is no graph output.
Regions where that does not hold are left alone, as are regions where no node would be saved. This is
ONNX Runtime's transpose optimizer reduced to what exactness and the node count need.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxkit.pass_base import Site
from onnxkit.passes.fuse._base import FusionContext, constant_array

# Ops whose every input broadcasts against the others elementwise, and whose one output has the
# broadcast shape: they compute the same in any layout, given operands in that layout.
ELEMENTWISE = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "Ceil", "Celu", "Cos", "Cosh", "Elu",
    "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max",
    "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum", "Where", "Xor",
    "Clip",  # min and max are scalars from opset 11, attributes before
})
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
    return node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE and len(node.outputs) == 1


@dataclasses.dataclass
class _Region:
    perm: tuple[int, ...]
    nodes: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # ordered: rewrites are deterministic
    entering: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # Transposes whose outputs enter
    leaving: dict[ir.Node, None] = dataclasses.field(default_factory=dict)  # Transposes that read region values
    constants: dict[ir.Value, np.ndarray] = dataclasses.field(default_factory=dict)

    def in_layout(self, value: ir.Value) -> bool:
        """Whether ``value`` is in the Transposes' layout: computed by the region or by an entering Transpose."""
        producer = value.producer()
        return producer is not None and (producer in self.nodes or producer in self.entering)


def _grow(seed: ir.Node, graph: ir.Graph | ir.Function) -> _Region | None:
    """The region the seed Transpose enters, or None when it breaks a rule of the module docstring."""
    perm = perm_of(seed)
    if perm is None or seed.outputs[0].is_graph_output():
        return None
    region = _Region(perm, entering={seed: None})
    pending = [user for user, _ in seed.outputs[0].uses() if _is_elementwise(user) or user.op_type == "Transpose"]
    while pending:
        node = pending.pop()
        if node in region.nodes or node in region.entering or node in region.leaving:
            continue
        if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and any(
                region.in_layout(value) for value in node.inputs if value is not None):
            if perm_of(node) is None or len(perm_of(node) or ()) != len(perm) or node.graph is not graph:
                return None
            region.leaving[node] = None
            continue
        if not _is_elementwise(node) or node.graph is not graph or len(region.nodes) >= _MAX_REGION_NODES:
            return None
        region.nodes[node] = None
        for value in node.inputs:
            if value is None or region.in_layout(value):
                continue
            producer = value.producer()
            array = constant_array(value)
            if array is not None:
                if array.ndim > len(perm):
                    return None
                region.constants[value] = array
            elif producer is not None and producer.graph is graph and producer.op_type == "Transpose" \
                    and perm_of(producer) == perm and not value.is_graph_output():
                region.entering[producer] = None
                pending.extend(user for user, _ in value.uses() if _is_elementwise(user) or user.op_type == "Transpose")
            elif producer is not None and producer.graph is graph and _is_elementwise(producer):
                pending.append(producer)
            else:
                return None  # a value in another layout, computed outside: it would need its own Transpose
        output = node.outputs[0]
        if output.is_graph_output():
            return None
        pending.extend(user for user, _ in output.uses())
    # Every value the region computes must be read by region nodes and Transposes only.
    readers = set(region.nodes) | set(region.leaving)
    if set(region.leaving) & set(region.entering) or any(user not in readers for node in region.nodes for user, _ in node.outputs[0].uses()):
        return None
    return region


def _composed(inner: tuple[int, ...], outer: tuple[int, ...]) -> tuple[int, ...]:
    """The perm of ``Transpose(Transpose(x, inner), outer)`` as one Transpose of ``x``."""
    return tuple(inner[axis] for axis in outer)


def _nodes_saved(region: _Region) -> int:
    region_readers = set(region.nodes) | set(region.leaving)
    entering = sum(1 for t in region.entering
                   if all(user in region_readers for user, _ in t.outputs[0].uses()))
    leaving = sum(1 for t in region.leaving if _composed(region.perm, perm_of(t) or ()) == tuple(range(len(region.perm)))
                  and (not t.outputs[0].is_graph_output() or _renamable(t.inputs[0], region)))
    return entering + leaving


def _constants_fit(region: _Region) -> bool:
    """Constants read outside the region are copied; only small ones may be."""
    return all(array.nbytes <= _MAX_COPIED_CONSTANT_BYTES or all(user in region.nodes for user, _ in value.uses())
               for value, array in region.constants.items())


def _in_source_layout(array: np.ndarray, perm: tuple[int, ...]) -> np.ndarray:
    """The constant that, transposed by ``perm``, broadcasts as ``array`` did."""
    rank = len(perm)
    if all(size == 1 for size in array.shape):
        return array  # broadcasts the same in any layout
    full = array.reshape((1,) * (rank - array.ndim) + array.shape)
    return np.ascontiguousarray(np.transpose(full, np.argsort(perm)))


def _rewrite(region: _Region, graph: ir.Graph | ir.Function, context: FusionContext) -> None:
    perm = region.perm
    inverse = tuple(int(axis) for axis in np.argsort(perm))
    sources = {t.outputs[0]: t.inputs[0] for t in region.entering}
    replaced: dict[ir.Value, ir.Value] = {}
    insert_before = next(iter(region.nodes))
    for value, array in region.constants.items():
        moved = _in_source_layout(array, perm)
        if moved is array:
            continue
        tensor = ir.tensor(moved, name=context.fresh_name(value.name))
        if isinstance(graph, ir.Graph):
            new = ir.Value(name=tensor.name, shape=ir.Shape(moved.shape), type=ir.TensorType(tensor.dtype),
                           const_value=tensor)
            graph.register_initializer(new)
        else:  # functions hold no initializers
            constant = ir.node("Constant", [], attributes={"value": tensor}, outputs=[
                ir.Value(name=tensor.name, shape=ir.Shape(moved.shape), type=ir.TensorType(tensor.dtype))])
            graph.insert_before(insert_before, constant)
            new = constant.outputs[0]
        replaced[value] = new
    for node in region.nodes:
        for index, value in enumerate(node.inputs):
            if value in sources:
                node.replace_input_with(index, sources[value])
            elif value in replaced:
                node.replace_input_with(index, replaced[value])
        output = node.outputs[0]
        if output.shape is not None:
            rank_kept = output.shape.rank() == len(perm)
            output.shape = ir.Shape([output.shape[position] for position in inverse]) if rank_kept else None
    identity = tuple(range(len(perm)))
    for transpose in region.leaving:
        value = transpose.inputs[0]
        if value in sources:  # a Transpose right after an entering one reads the source too
            transpose.replace_input_with(0, sources[value])
        composed = _composed(perm, perm_of(transpose) or ())
        if composed != identity:
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
    source, output = transpose.inputs[0], transpose.outputs[0]
    if not output.is_graph_output():
        output.replace_all_uses_with(source)
        graph.remove(transpose, safe=True)
        return True
    if source is None or not _renamable(source, region):
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
    for graph in (*model.graphs(), *model.functions.values()):
        fired += _apply_to_graph(graph, context)
    return fired


def _apply_to_graph(graph: ir.Graph | ir.Function, context: FusionContext) -> int:
    fired = 0
    order = {node: index for index, node in enumerate(graph)}
    seen: set[ir.Node] = set()
    for seed in list(graph):
        if seed.op_type != "Transpose" or seed.domain not in ("", "ai.onnx") or seed in seen or seed.graph is not graph:
            continue
        region = _grow(seed, graph)
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
