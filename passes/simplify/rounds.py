"""One run of simplify: rounds of folding and cleanup until a round changes nothing.

Each round infers shapes, folds, removes no-ops and merges duplicates; a later round sees what an earlier
one exposed. The whole-model inference that begins each round is its costliest step, so rounds are few:
Constant nodes are lifted before the first (they go to inference without their data), the folder infers
node by node what its own replacements make knowable (a chain of computed Reshape targets folds in one
sweep), and a round that only lifted and merged constants is the last. Real models settle in one or two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
from collections.abc import Iterator, Mapping

import onnx_ir as ir
from onnx_ir.passes import common

from onnxkit.graph import default_opset
from onnxkit.pass_base import PassContext, PassResult
from onnxkit.passes._graph_utils import (
    all_nodes,
    eliminate_identities,
    graph_likes,
    model_graphs,
    remove_unused_nodes,
)
from onnxkit.passes.shape_inference import infer_shapes
from onnxkit.passes.simplify import consecutive, merge, no_op
from onnxkit.passes.simplify._onnxscript import LOGGER_NAME as FOLDER_LOGGER
from onnxkit.passes.simplify.folder import SimplifyFolder, unfolded_placeholders
from onnxkit.passes.simplify.rewrites import Rewrites, site_name

MAX_ROUNDS = 10
# Changes after which another round finds nothing new, so a round that made only these ends the loop
# without the round that would confirm it (a whole shape inference and sweep, a third of simplify's time):
# the values are the same tensors, so inference and every rule see what they saw; a merged initializer
# only gains readers, which enables no fold (a fold frees weights only their single reader holds), and the
# nodes that came to read the same initializer were merged by this round's CSE, which runs after.
_NEUTRAL = frozenset({("lifted", "Constant nodes to initializers"), ("merged", "duplicate initializers")})


def simplify(model: ir.Model, max_constant_bytes: int, context: PassContext) -> PassResult:
    with _quiet_loggers(FOLDER_LOGGER):
        return _Simplifier(model, max_constant_bytes, context).run()


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Hold back the warnings onnxscript's folder and onnx_ir's passes log for every node they cannot handle
    (custom ops, sequences): simplify leaves those as they are, by design."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _infer_shapes(model: ir.Model, declared: Mapping[ir.Value, ir.Shape] | None = None) -> bool:
    """Annotate shapes; whether any value's type or shape changed (graph outputs aside: their ``declared``
    shapes are hidden meanwhile, and what they end with is judged when they are restored)."""
    forgotten = _forget_inferred_names(model)
    # Not strict: a model with ops ONNX cannot infer (custom domains) keeps what it has for those values.
    # Not onnx_ir's ShapeInferencePass: its merge turns sequence values into tensors (see infer_shapes).
    try:
        changed = infer_shapes(model, check_type=False)
    except Exception:  # ONNX raises its own types; an uninferable model is folded as it is
        for value, (shape, _) in forgotten.items():
            value.shape = shape
        return False
    inferred = set(changed)
    for value, (shape, _) in forgotten.items():
        if value not in inferred:  # inference could not tell this value's shape: it keeps the names it had
            value.shape = shape
    # A value whose names were forgotten changed only if it comes back other than it was.
    return any(
        not value.is_graph_output() and (value not in forgotten or (value.shape, value.type) != forgotten[value])
        for value in inferred | renumber_inferred_names(model, declared or {})
    )


_INFERRED_NAME = re.compile(r"^unk__\d+$")


def _is_inferred_name(dim: int | ir.SymbolicDim) -> bool:
    """Whether ``dim`` is a dimension ONNX's inference named. A shape's dims are ints or SymbolicDims: the
    int test, in C, spares most dims the isinstance check onnx_ir's protocol metaclass makes in Python."""
    if isinstance(dim, int) or not isinstance(dim, ir.SymbolicDim):
        return False
    name = dim.value
    return name is not None and _INFERRED_NAME.match(name) is not None


def renumber_inferred_names(model: ir.Model, declared: Mapping[ir.Value, ir.Shape]) -> set[ir.Value]:
    """Rename the dimensions inference named (``unk__N``) on the values nodes compute to ``unk__0``,
    ``unk__1``, ... in the order the graphs, nodes and outputs come; returns the values renamed.

    ONNX numbers them in the order it meets them on the model it was sent, and the last inference of a run
    saw the model before the last round's folds and removals: a second run, whose inference sees the
    result, numbered them otherwise (``unk__3`` became ``unk__2``), so simplify was not idempotent. Numbered
    by the result itself, the same dimensions get the same names on every run. Names are renamed one for
    one (a name shared by two values stays shared). The graph outputs that declare a shape (``declared``: those
    outputs with it, as simplify hides it meanwhile) are left alone; the names they and the graph inputs declare
    stay, and no other value takes one.
    """
    computed: list[ir.Value] = []
    kept_names: set[str] = set()
    for graph in graph_likes(model):
        for shape in (*(value.shape for value in graph.inputs), *declared.values()):
            kept_names.update(dim.value for dim in shape or () if isinstance(dim, ir.SymbolicDim) and dim.value)
        for node in graph:
            for value in node.outputs:
                shape = value.shape
                if shape is not None and value not in declared and any(map(_is_inferred_name, shape)):
                    computed.append(value)
    new_names: dict[str, str] = {}
    numbers = itertools.count()

    def renamed(dim: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
        if isinstance(dim, int) or not _is_inferred_name(dim) or dim.value in kept_names:
            return dim
        name = str(dim.value)
        if name not in new_names:
            new_names[name] = next(n for n in (f"unk__{i}" for i in numbers) if n not in kept_names)
        return dim if new_names[name] == name else ir.SymbolicDim(new_names[name])

    changed = set()
    for value in computed:
        shape = value.shape
        assert shape is not None  # chosen above for the names in its shape
        dims = [renamed(dim) for dim in shape]
        if any(new is not old for new, old in zip(dims, shape)):
            value.shape = ir.Shape(dims)
            changed.add(value)
    return changed


def _forget_inferred_names(model: ir.Model) -> dict[ir.Value, tuple[ir.Shape, ir.TypeProtocol | None]]:
    """Make the dimensions an earlier inference named (``unk__N``) unknown again, on the values nodes compute;
    returns those values with their shapes and types as they were.

    ONNX keeps a name a value already has over the one it infers, so a name given before a rule made a
    dimension known would stick, and hide that it is the same as another (a Reshape target that now copies
    ``N`` still reads ``unk__60`` downstream). Inference then names them afresh, consistently.
    """
    forgotten = {}
    for graph in graph_likes(model):
        for node in graph:
            for value in node.outputs:
                shape = value.shape
                if shape is None or value.is_graph_output() or not any(map(_is_inferred_name, shape)):
                    continue
                forgotten[value] = (shape, value.type)
                value.shape = ir.Shape([ir.SymbolicDim(None) if _is_inferred_name(dim) else dim for dim in shape])
    return forgotten


def _unlist_initializers_before_ir4(model: ir.Model) -> list[ir.Value]:
    """IR versions 1-3 list every initializer among the graph inputs because the format required it, not to
    let callers feed them: while simplifying they are constants, so what reads them folds. Returns the
    graph inputs as they were."""
    inputs = list(model.graph.inputs)
    if model.ir_version < 4:
        model.graph.inputs[:] = [value for value in inputs if not value.is_initializer()]
    return inputs


def _list_initializers_as_inputs_before_ir4(model: ir.Model, inputs_before: list[ir.Value]) -> bool:
    """IR versions 1-3 require every initializer of the main graph to be a graph input too: the initializers
    left, lifted and folded join the inputs, after the real ones. (Bodies of If/Loop/Scan keep theirs: their
    inputs are positional.) Whether the inputs now differ from ``inputs_before``."""
    if model.ir_version >= 4:
        return False
    listed = set(model.graph.inputs)
    model.graph.inputs.extend(value for value in model.graph.initializers.values() if value not in listed)
    return list(model.graph.inputs) != inputs_before


def _sort_topologically(model: ir.Model) -> bool:
    """Put the nodes in topological order where they are not; whether any moved."""
    if all(_is_sorted(graph) for graph in graph_likes(model)):
        return False  # the common case, checked in a fraction of a sort's time
    order = [id(node) for node in all_nodes(model)]
    common.TopologicalSortPass()(model)
    return order != [id(node) for node in all_nodes(model)]


def _is_sorted(graph: ir.Graph | ir.Function) -> bool:
    """Whether every node of ``graph`` comes after the nodes of ``graph`` that produce its inputs."""
    seen: set[int] = set()
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is node.graph and id(producer) not in seen:
                return False
        seen.add(id(node))
    return True


def _forget_negative_dims(model: ir.Model) -> list[tuple[ir.Value, ir.Shape]]:
    """Make dims stored as negative numbers (paddle2onnx writes -1 for "any") unknown, so that no fold takes
    them for sizes (a Shape of such a value folded to -1 would be a second -1 in a Reshape target).
    Returns the graph inputs changed with their declared shapes, to restore: the signature stays as declared."""
    changed_inputs = []
    for graph in graph_likes(model):
        values = [*graph.inputs, *(value for node in graph for value in node.outputs)]
        for value in values:
            shape = value.shape
            if shape is None or not any(isinstance(dim, int) and dim < 0 for dim in shape):
                continue
            if value.is_graph_input():
                changed_inputs.append((value, shape))
            value.shape = ir.Shape([ir.SymbolicDim(None) if isinstance(d, int) and d < 0 else d for d in shape])
    return changed_inputs


@dataclasses.dataclass
class _DeclaredOutput:
    graph: ir.Graph
    index: int
    name: str | None  # onnx_ir values may be unnamed (a model built in memory, not yet saved)
    shape: ir.Shape | None


class _Simplifier:
    def __init__(self, model: ir.Model, max_constant_bytes: int, context: PassContext) -> None:
        self.model = model
        self.max_constant_bytes = max_constant_bytes
        self.rewrites = Rewrites(context)
        self.opset = default_opset(model)
        self.initializers = merge.InitializerMerger()
        self.refused: dict[str, tuple[str, int]] = {}  # folds the byte limit kept out: site → (op, bytes)
        self.original_identities = [n for n in all_nodes(model) if n.op_type == "Identity" and n.domain == ""]
        self._original_identity_ids = set(map(id, self.original_identities))  # the list keeps the ids unique
        # Whether anything changed: every step reports it, so no before/after comparison of the whole model
        # is needed (the pipeline still checks the claim).
        self.modified = False
        self._declared: list[_DeclaredOutput] = []

    def run(self) -> PassResult:
        model = self.model
        declared = self._declared = self._hide_declared_output_shapes()
        declared_inputs = _forget_negative_dims(model)
        inputs_before = _unlist_initializers_before_ir4(model)
        # The folder reads nodes in order; some exporters leave a node before its input's producer.
        self.modified |= _sort_topologically(model)
        # Constant nodes become initializers in the first round anyway; lifted before it, they go to shape
        # inference without their data (onnx_ir sends initializers empty), which halves the first
        # inference on exports made of Constant nodes (paddle2onnx: 400 of 860 nodes).
        try:
            self._lift_constants()
            settled = False
            for _ in range(MAX_ROUNDS):
                if not self._round():
                    settled = True
                    break
            self.modified |= common.RemoveUnusedFunctionsPass()(model).modified
            self.modified |= common.RemoveUnusedOpsetsPass()(model).modified
            self.modified |= _list_initializers_as_inputs_before_ir4(model, inputs_before)
            if not settled:  # a round that changed nothing began with this inference
                self.modified |= _infer_shapes(model, self._declared_shapes())
        finally:
            self._restore_declared_outputs(declared)
            for value, shape in declared_inputs:
                value.shape = shape
        # The names the last inference gave, numbered again on the model as it ends (see the function).
        self.modified |= bool(renumber_inferred_names(model, self._declared_shapes()))
        for node in self.original_identities:
            if node.graph is None:
                self.rewrites.record("remove-identity", site_name(node), "removed", "Identity")
        if not self.modified:
            return PassResult(model, False, [])
        stats = self.rewrites.stats() + unfolded_placeholders(list(all_nodes(model)), self.refused)
        return PassResult(model, True, stats or ["inferred shapes"], sites=self.rewrites.sites)

    def _round(self) -> bool:
        """One round of every rule; whether the next round could find more to do (see ``_NEUTRAL``)."""
        model, rewrites = self.model, self.rewrites
        tally_before = rewrites.tally.copy()
        # ONNX shape inference names every unknown dim (unk__N) and carries the name along, so the
        # folder can tell that a Reshape target copies its input's dims.
        self.modified |= _infer_shapes(model, self._declared_shapes())
        changed = SimplifyFolder(self.max_constant_bytes, rewrites, self.refused, self._declared_ranks())(
            model
        ).modified
        # Walking every subgraph is the costliest part of a walk: the rules share one list of graphs.
        graphs = list(graph_likes(model))
        no_op.remove_no_ops(graphs, rewrites, self.opset)
        no_op.drop_zero_initial_states(graphs, rewrites)
        consecutive.merge_consecutive(graphs, rewrites)
        changed |= eliminate_identities(model, self._may_remove_identity) > 0
        removed, trimmed = remove_unused_nodes(model)
        graphs = list(graph_likes(model))  # unused If/Loop nodes took their bodies with them
        if removed:
            rewrites.tally["removed", "unused nodes"] += removed
        if trimmed:
            rewrites.tally["trimmed", "nodes' empty optional inputs or unused optional outputs"] += trimmed
        merge.lift_constants(graphs, rewrites)
        changed |= common.LiftSubgraphInitializersToMainGraphPass()(model).modified
        self.initializers.merge(graphs, rewrites)
        merge.eliminate_common_subexpressions(graphs, rewrites)
        counted = {key for key, n in rewrites.tally.items() if n != tally_before[key]}
        self.modified |= changed or bool(counted)
        return changed or not counted <= _NEUTRAL

    def _lift_constants(self) -> None:
        recorded_before = sum(self.rewrites.tally.values())
        merge.lift_constants(list(graph_likes(self.model)), self.rewrites)
        self.modified |= sum(self.rewrites.tally.values()) != recorded_before

    def _may_remove_identity(self, node: ir.Node) -> bool:
        # Identities the rules left behind go with their rule; the model's own ones are sites of their own.
        return id(node) not in self._original_identity_ids or self.rewrites.allows("remove-identity", site_name(node))

    # -- declared output shapes ---------------------------------------------------------------------------

    def _hide_declared_output_shapes(self) -> list[_DeclaredOutput]:
        """Take the declared shapes off graph outputs while the graph is rewritten.

        onnxscript and onnx_ir merge a graph output's shape backwards into the value that produces it
        (Identity elimination, the folder's Identity handler), and a later Shape/Reshape/Slice fold would
        trust it. A model whose declared output shape is wrong would then compute something else.
        """
        declared = []
        for graph in model_graphs(self.model):
            for index, output in enumerate(graph.outputs):
                declared.append(_DeclaredOutput(graph, index, output.name, output.shape))
                output.shape = None
        return declared

    def _declared_shapes(self) -> dict[ir.Value, ir.Shape]:
        """The graph outputs now in the declared ones' places, with the shapes declared (where one was)."""
        graphs = {id(graph) for graph in model_graphs(self.model)}
        return {
            entry.graph.outputs[entry.index]: entry.shape
            for entry in self._declared
            if entry.shape is not None and id(entry.graph) in graphs and entry.index < len(entry.graph.outputs)
        }

    def _declared_ranks(self) -> dict[ir.Value, int]:
        """The graph outputs now in the declared ones' places, with the ranks declared."""
        return {value: len(shape) for value, shape in self._declared_shapes().items()}

    def _restore_declared_outputs(self, declared: list[_DeclaredOutput]) -> None:
        """Put the declared names and shapes back on the graph outputs (where a shape was declared)."""
        graphs = {id(graph) for graph in model_graphs(self.model)}
        for entry in declared:
            graph = entry.graph
            if id(graph) not in graphs:
                continue  # the body of an If with a constant condition, now inlined
            output = graph.outputs[entry.index]
            if output.name != entry.name:
                output = _output_named(graph, entry.index, entry.name)
            if entry.shape is not None:
                output.shape = entry.shape
            elif output.shape is not None:
                self.modified = True  # inference found the shape of an output that declared none


def _output_named(graph: ir.Graph, index: int, name: str | None) -> ir.Value:
    """Make ``graph.outputs[index]`` carry ``name`` again after a rewrite renamed or replaced it."""
    value = graph.outputs[index]
    # Renaming is only safe for a value this graph alone defines and lists once among its outputs.
    shared = value.graph is not graph or value.is_graph_input() or sum(1 for o in graph.outputs if o is value) > 1
    if not shared:
        value.name = name
        return value
    identity = ir.node("Identity", inputs=[value], outputs=[ir.Value(name=name, type=value.type)])
    graph.append(identity)
    graph.outputs[index] = identity.outputs[0]
    return identity.outputs[0]
