"""What every fusion shares: the fusion table entry, the per-run context, and helpers for rules.

A fusion is a named group of rewrite rules (or one function over the model) that reduces the node count
without changing the outputs beyond floating-point rounding. The helpers here hold the safety rules that
every fusion must follow: constants are only what cannot change at run time, graph inputs and outputs keep
their names, and new tensors get names no other value has.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence, Set
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

# Private onnxscript names (tested with onnxscript 0.7.2, the range pinned in pyproject.toml): the narrowing guard
# wraps a rule's replacement and reads a rule's output pattern to name its anchor node. No public API exposes
# these; this module and ``_rule_index`` (rules applied by op type) are the only fuse modules that reach inside
# onnxscript.
from onnxscript.rewriter import RewriteRule
from onnxscript.rewriter._rewrite_rule import ReplacementPatternFunction

from onnxkit.graph import default_opset
from onnxkit.pass_base import Site
from onnxkit.passes._graph_utils import graph_likes, opset_problem
from onnxkit.passes.fuse._rule_index import Census, RuleIndex
from onnxkit.passes.shape_inference import infer_shapes

Target = Literal["standard", "onnxruntime"]
CONTRIB_DOMAIN = "com.microsoft"
FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})


def _allow_everywhere(fusion: str, node: str | None = None) -> bool:
    return True


@dataclasses.dataclass
class FusionContext:
    """What rules need to know about the run: the target runtime, the model's opset, and the names in use.

    It also carries the narrowing contract (see ``onnxkit.pass_base.Site``): ``fusion`` is the fusion being
    applied, ``allows(fusion, node)`` says whether it may fire at a node, and ``sites`` collects every
    place a fusion fired, in order.
    """

    target: Target
    opset: int
    used_names: set[str] = dataclasses.field(default_factory=set)
    fusion: str = ""
    allows: Callable[[str, str | None], bool] = _allow_everywhere
    sites: list[Site] = dataclasses.field(default_factory=list)
    # Each rule fusion's guarded rules, built on its first round and reused by the next ones (building them
    # costs as much as matching them on a small model). Shared by the ``for_fusion`` copies, as the sites are.
    rule_sets: dict[Callable[..., Any], RuleIndex | None] = dataclasses.field(default_factory=dict)
    # What ops the model holds and how they are linked, kept current by the pass: a rule fusion none of whose
    # patterns has its links there is not searched. None: not known, search everything.
    census: Census | None = None

    @classmethod
    def for_model(
        cls, model: ir.Model, target: Target, allows: Callable[[str, str | None], bool] | None = None
    ) -> FusionContext:
        names = set(model.graph.initializers)
        for graph in graph_likes(model):
            names.update(v.name for v in graph.inputs if v.name)
            for node in graph:
                names.update(v.name for v in node.outputs if v.name)
            if isinstance(graph, ir.Graph):
                names.update(graph.initializers)
        context = cls(target=target, opset=default_opset(model), used_names=names)
        if allows is not None:
            context.allows = allows
        return context

    def for_fusion(self, name: str) -> FusionContext:
        """The same context (names and sites shared) while fusion ``name`` applies."""
        return dataclasses.replace(self, fusion=name)

    def fresh_name(self, base: str | None) -> str:
        """A value name no other value in the model has, so a new initializer never replaces an old one."""
        stem = f"{base or 'fused'}_fused"
        name, counter = stem, 0
        while name in self.used_names:
            counter += 1
            name = f"{stem}_{counter}"
        self.used_names.add(name)
        return name


@dataclasses.dataclass(frozen=True)
class Fusion:
    """One user-visible fusion: a name for ``skip=``, a line for ``onnxkit passes``, and how to apply it.

    ``apply(model, context)`` returns how many times the fusion fired. ``stat`` formats that count for the
    pass's statistics, e.g. ``"folded {n} BatchNormalization into Conv"``. ``requires`` lists op types
    every match contains (``"Conv|ConvTranspose"``: either); a model that lacks one is not searched,
    because matching costs time on large models.
    """

    name: str
    summary: str
    stat: str
    apply: Callable[[ir.Model, FusionContext], int]
    requires: tuple[str, ...]
    targets: frozenset[str] = frozenset({"standard", "onnxruntime"})
    min_opset: int = 1
    per_site: bool = True  # a rule fusion that records and honours single sites (see ``rule_fusion``)

    def can_match(self, op_types: Set[str]) -> bool:
        return all(any(op in op_types for op in alternatives.split("|")) for alternatives in self.requires)


# A node's op type, the position of one of its inputs, and the op type of the node that computes that input.


def rule_fusion(
    build_rules: Callable[[FusionContext], Sequence[RewriteRule]],
) -> Callable[[ir.Model, FusionContext], int]:
    """A fusion made of onnxscript rewrite rules, built for this run's context and applied everywhere:
    the main graph, If/Loop/Scan bodies and local functions."""

    def apply(model: ir.Model, context: FusionContext) -> int:
        if apply not in context.rule_sets:  # the rules hold the run's context: built once per run, not per round
            rules = [_narrowable(rule, context) for rule in build_rules(context)]
            context.rule_sets[apply] = RuleIndex(rules) if rules else None
        rule_index = context.rule_sets[apply]
        if rule_index is None:
            return 0
        census = context.census
        # A model without Constant nodes has no constants to mark (simplify leaves none).
        constants = census is None or "Constant" in census.op_types
        if census is not None and not rule_index.may_match(census.links):
            rule_index.search_nothing(model, constants=constants)
            return 0
        return rule_index.apply_to_model(model, constants=constants)

    return apply


def _narrowable(rule: RewriteRule, context: FusionContext) -> RewriteRule:
    """``rule``, guarded: it fires only where ``context.allows`` the fusion at the matched root node and
    where every node it writes exists, with those attributes and inputs, at the model's opset; each
    rewrite is recorded as a ``Site`` (fusion, root node name).

    The match's root is the last node of the pattern (the BatchNormalization a Conv absorbs, the Add that
    becomes a Gemm): the node the rewrite replaces, so its name identifies the site on a rerun of the pass.
    """
    guard = _RuleGuard(rule._replacement_pattern, rule._condition_function, context)
    rule._condition_function = guard.check
    rule._replacement_pattern = guard
    return rule


class _RuleGuard(ReplacementPatternFunction):
    """Wraps a rule's check and replacement: the check asks ``allows`` first; the replacement is refused when
    a node it writes is not valid at the model's opset, and recorded as a site otherwise."""

    def __init__(
        self, replacement: ReplacementPatternFunction, check: Callable[..., Any], context: FusionContext
    ) -> None:
        super().__init__(replacement._function)
        self._replacement, self._check, self._context = replacement, check, context
        self._anchor = ""

    def check(self, match_context: Any, **bindings: Any) -> Any:
        anchor = match_context.root.name or ""
        if not self._context.allows(self._context.fusion, anchor):
            return False
        self._anchor = anchor
        return self._check(match_context, **bindings)

    def get_replacement(self, match: Any) -> Any:
        subgraph = self._replacement.get_replacement(match)
        if subgraph is None:
            return None
        invalid = next(
            (
                problem
                for node in subgraph.new_nodes
                if (problem := opset_problem(node, self._context.opset)) is not None
            ),
            None,
        )
        if invalid is not None:
            match.fail(invalid)
            return None
        self._context.sites.append(Site(self._context.fusion, self._anchor))
        return subgraph


# ---------------------------------------------------------------------------------------------------------
# Helpers for rule checks and rewrites


def annotate_shapes(model: ir.Model) -> Callable[[], None]:
    """Fill in the shapes and types ONNX shape inference can tell, where the model has none; return a
    function that takes them out again (for a pass that ends up changing nothing).

    Shapes the model already carries are kept as they are: a declared graph output shape may be wrong,
    and the passes must not start believing a corrected one either. Dimensions inference could not name
    stay anonymous: it calls them ``unk__0``, ``unk__1``, ... afresh on every run, so two runs could give
    different unknown sizes the same name.
    """
    graphs = list(graph_likes(model))
    values = [
        value
        for graph in graphs
        for value in (*graph.inputs, *graph.outputs, *(v for node in graph for v in node.outputs))
    ]
    values += [value for graph in graphs if isinstance(graph, ir.Graph) for value in graph.initializers.values()]
    original = {value: (value.shape, value.type) for value in values}
    # onnx_ir's helper under inference takes large initializers out while it runs and puts them back last.
    initializer_order = list(model.graph.initializers.values())
    # onnxkit's inference, not onnx_ir's ShapeInferencePass: it reads back only the types inference changed,
    # where the pass deserializes the whole inferred model (most of its cost, twice per fuse on large models).
    with contextlib.suppress(Exception):  # ONNX raises its own types; a model it cannot infer is matched as it is
        infer_shapes(model, strict=False)
    for value in values:
        shape, type_ = original[value]
        if shape is not None:
            value.shape, value.type = shape, type_
        elif value.shape is not None:
            value.shape = ir.Shape([None if is_generated_dim(d) else d for d in value.shape])

    def undo() -> None:
        for value, (shape, type_) in original.items():
            value.shape, value.type = shape, type_
        model.graph.initializers.clear()
        for initializer in initializer_order:
            model.graph.initializers.add(initializer)

    return undo


def shapeless_values(model: ir.Model) -> set[ir.Value]:
    """The values of every graph that have no shape or no type: where shape inference might tell more."""
    return {
        value
        for graph in graph_likes(model)
        for value in (*graph.inputs, *(v for node in graph for v in node.outputs))
        if value.shape is None or value.type is None
    }


def is_generated_dim(dim: object) -> bool:
    """Whether a dimension is one ONNX shape inference made up (``unk__N``), which carries no identity."""
    return isinstance(dim, ir.SymbolicDim) and (dim.value is None or dim.value.startswith("unk__"))


def static_dims(value: ir.Value) -> list[int | ir.SymbolicDim | None] | None:
    """The value's dimensions as rules may trust them: a size, a named symbol, or None where nothing is known.

    Dimensions ONNX shape inference made up are unknown, and so are negative sizes: some exporters
    (paddle2onnx) store an unknown dimension as the integer -1. None when even the rank is unknown.
    """
    if value.shape is None:
        return None
    return [None if is_generated_dim(d) or (isinstance(d, int) and d < 0) else d for d in value.shape]


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's array when it cannot change at run time: an initializer that is not also a graph input
    (a user may feed those), or the output of a Constant node. None otherwise."""
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except FileNotFoundError:  # external data that is not reachable
        return None


def only_used_by(value: ir.Value, nodes: Iterable[ir.Node]) -> bool:
    allowed = set(nodes)
    return not value.is_graph_output() and all(user in allowed for user, _ in value.uses())


def produced_in(value: ir.Value, graph: ir.Graph | ir.Function) -> bool:
    """Whether a node of ``graph`` itself computes ``value`` (not an input, initializer or outer-scope value)."""
    producer = value.producer()
    return producer is not None and producer.graph is graph


def matched_node(value: ir.Value) -> ir.Node:
    """The node computing ``value``, a node output a rule's pattern matched (so a node does compute it)."""
    node = value.producer()
    assert node is not None, f"matched value {value.name} has no producer"
    return node


def present_input(node: ir.Node, index: int) -> ir.Value:
    """Input ``index`` of ``node``, where the pattern or a check already proved it present."""
    value = node.inputs[index]
    assert value is not None, f"{node.op_type} {node.name} lacks input {index}"
    return value


def _tensor(array: np.ndarray, name: str) -> ir.Tensor:
    """``ir.tensor(array, name=name)`` without its checks for other kinds of input (a runtime Protocol check
    costs more than the tensor: a quarter of fuse's time on a model with 200 folded layers)."""
    return ir.Tensor(array, name=name)


def new_constant(op: Any, array: np.ndarray, name: str, *, in_function: bool) -> ir.Value:
    """A constant input for a replacement node: an initializer in a graph, a Constant node in a function
    (functions cannot hold initializers)."""
    tensor = _tensor(array, name)
    if in_function:
        return op.Constant(value=tensor)
    return op.initializer(tensor, name=name)


def pass_through(op: Any, value: ir.Value, replaced: ir.Value, graph: ir.Graph | ir.Function) -> ir.Value:
    """What a rule returns to make ``replaced`` equal ``value``.

    The rewriter gives the returned value the replaced value's name. That is only safe for a value the
    same graph computes and that is not already a graph output; otherwise an Identity keeps both names
    (graph inputs, outputs and outer-scope values must never be renamed).
    """
    if produced_in(value, graph) and not value.is_graph_output() and not replaced.is_graph_output():
        return value
    return op.Identity(value)


def rank_of(value: ir.Value) -> int | None:
    return None if value.shape is None else value.shape.rank()


def insert_constant(array: np.ndarray, name: str, graph: ir.Graph | ir.Function, before: ir.Node) -> ir.Value:
    """A constant for rules that edit the graph directly: an initializer of ``graph``, or in a function (which
    holds no initializers) a Constant node placed before ``before``."""
    tensor = _tensor(array, name)
    if isinstance(graph, ir.Graph):
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
        return value
    constant = ir.node(
        "Constant",
        [],
        attributes={"value": tensor},
        outputs=[ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))],
    )
    graph.insert_before(before, constant)
    return constant.outputs[0]
