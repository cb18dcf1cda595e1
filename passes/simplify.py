"""``simplify``: constant folding that never bloats the model, then removal of everything that computes nothing.

Built from onnxscript's constant folder and rewrite rules and onnx_ir's common passes; onnxkit adds what
they lack: a size limit in bytes that stops Tile/Expand/ConstantOfShape-style folds from inflating the
model, common-subexpression elimination inside If/Loop/Scan bodies and functions, a no-op Pad rule,
statistics per category, an honest ``modified`` flag, and a guard that keeps the graph's declared output
shapes out of every decision (a model whose declared output shape is wrong keeps computing the real one).

``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead, imported only then.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import constant_folding
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    collapse_slice2_rule,
    collapse_slice_rule,
    dropout_inference_rule,
    dropout_zero_rule,
    no_op_cast_rule,
    no_op_dynamic_scatter_nd_rule,
    no_op_expand_rule,
    no_op_static_scatter_nd_rule,
    no_op_transpose_rule,
)
from onnxscript.rewriter.rules.common import _no_op

from onnxkit import modelio
from onnxkit.errors import PassFailedError, SpecError
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import all_nodes, eliminate_identities, graph_likes, structural_fingerprint

Backend = Literal["onnxkit", "onnxsim", "onnxoptimizer", "onnxslim"]

# Each round folds, removes no-ops and merges duplicates; a later round sees what an earlier one exposed.
# Real models settle in two or three rounds.
MAX_ROUNDS = 10


@dataclasses.dataclass(frozen=True)
class SimplifyOptions:
    # A folded constant may exceed this many bytes only when folding frees at least as many (a Transpose
    # of a weight does; a Tile or Expand of a small tensor does not).
    max_constant_bytes: int = 1 << 20
    backend: Backend = "onnxkit"

    def __post_init__(self) -> None:
        if self.max_constant_bytes < 0:
            raise ValueError("max_constant_bytes must be >= 0")


class SimplifyPass(Pass):
    """Fold constants (size-limited), infer shapes, remove dead, Identity and no-op nodes, merge duplicates.

    Folding never creates a constant larger than ``max_constant_bytes`` unless it frees at least as much.
    No-op Cast/Reshape/Transpose/Pad/Slice/Expand, inference-mode Dropout, x*1, x+0 and the like become
    nothing; duplicate initializers and common subexpressions are merged; Constant nodes become
    initializers. All of it also runs inside If/Loop/Scan bodies and local functions. Graph input and
    output names, order and declared shapes are kept; dynamic dimensions stay dynamic.
    ``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead (it must be installed).
    """

    name = "simplify"
    kind = "exact"
    Options = SimplifyOptions

    @property
    def in_place(self) -> bool:
        # The peers work on protobufs and hand back a new model.
        return self.options.backend == "onnxkit"

    @property
    def changes_input(self) -> bool:
        return self.in_place

    def call(self, model: ir.Model) -> PassResult:
        if self.options.backend != "onnxkit":
            return _run_peer(self.options.backend, model)
        return _Simplifier(model, self.options.max_constant_bytes).run()


# ---------------------------------------------------------------------------------------------------------
# The onnxkit simplifier


def _no_op_pad_check(context, x: ir.Value, pads: ir.Value, **_) -> bool:
    del context, x
    value = pads.const_value
    return value is not None and not np.any(value.numpy())


def _no_op_pad_pattern(op, x, pads):
    return op.Pad(x, pads, _allow_other_inputs=True)


def _to_identity(op, x, **_):
    return op.Identity(x)


# Pad with all-zero pads copies its input; onnxscript has no rule for it. (opset < 11 Pad keeps pads in an
# attribute; torch and current converters emit the input form.)
_no_op_pad_rule = pattern.RewriteRule(_no_op_pad_pattern, _to_identity, _no_op_pad_check)

# Statistics are counted per (verb, what): "removed 3 no-op Cast".
Tally = collections.Counter[tuple[str, str]]
_VERB_ORDER = ("folded", "inlined", "removed", "merged", "lifted", "simplified")

# What each rewrite rule removes, as the statistics name it. All of them leave an Identity behind, which
# Identity elimination then takes out.
_NO_OP_RULES: dict[str, list[pattern.RewriteRule]] = {
    "no-op Cast": [no_op_cast_rule],
    "no-op Transpose": [no_op_transpose_rule],
    "no-op Expand": [no_op_expand_rule],
    "no-op Slice": [collapse_slice_rule, collapse_slice2_rule],
    "no-op Pad": [_no_op_pad_rule],
    "no-op ScatterND": [no_op_static_scatter_nd_rule, no_op_dynamic_scatter_nd_rule],
    "Dropout": [dropout_inference_rule, dropout_zero_rule],
    "arithmetic no-ops (x*1, x+0, x-0, x/1)": [
        *_no_op.mul_by_1_rule.commute(),
        *_no_op.add_0_rule.commute(),
        _no_op.sub_0_rule,
        _no_op.div_by_1_rule,
    ],
}


class _SizeAwareFolder(constant_folding.FoldConstantsPass):
    """onnxscript's folder with a limit in bytes, and a tally of what it folded or found to be a no-op."""

    def __init__(self, max_constant_bytes: int, tally: Tally) -> None:
        # onnxscript's own output limit counts elements; ours counts bytes and is enforced here, so its
        # limit is set where it can never be the stricter one.
        super().__init__(
            shape_inference=True,
            input_size_limit=constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
            output_size_limit=np.iinfo(np.int64).max,
            should_fold=self._should_fold,
        )
        self.max_constant_bytes = max_constant_bytes
        self.tally = tally

    def _should_fold(self, node: ir.Node) -> bool | None:
        """Decide from the inferred output shapes before evaluating, so a huge Tile is never computed."""
        if node.domain == "" and node.op_type in constant_folding.DEFAULT_CONSTANT_FOLD_BLACKLIST:
            return None  # onnxscript's default rules keep these
        output_bytes = _static_nbytes(node.outputs)
        if output_bytes is None:
            return None  # shapes unknown: onnxscript's default rules, then the check on the real result
        return self._fits(node, output_bytes)

    def _fits(self, node: ir.Node, output_bytes: int) -> bool:
        return output_bytes <= self.max_constant_bytes or output_bytes <= _bytes_freed_by_folding(node)

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array: object) -> ir.Tensor | None:
        tensor = super()._prepare_folded_tensor(node, output_name, output_array)
        if tensor is not None and not self._fits(node, tensor.nbytes):
            return None
        return tensor

    def replace_node(self, node: ir.Node, replacement: constant_folding.Replacement, root: ir.Graph | ir.Function) -> None:
        new_ops = [n.op_type for n in replacement.new_nodes]
        if node.op_type == "If":
            self.tally["inlined", "If with a constant condition"] += 1
        elif node.op_type == "Dropout":
            self.tally["removed", "Dropout"] += 1
        elif all(op == "Constant" for op in new_ops):
            self.tally["folded", "nodes into constants"] += 1
        elif new_ops == ["Identity"]:
            self.tally["removed", f"no-op {node.op_type}"] += 1
        else:
            self.tally["simplified", node.op_type] += 1
        super().replace_node(node, replacement, root)


def _static_nbytes(values: Sequence[ir.Value | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            continue
        if value.dtype is None or value.shape is None or not value.shape.is_static():
            return None
        if value.dtype == ir.DataType.STRING:
            return None  # unknown until evaluated
        total += math.ceil(value.dtype.bitwidth * math.prod(value.shape.numpy()) / 8)
    return total


def _bytes_freed_by_folding(node: ir.Node) -> int:
    """Bytes of the constant inputs that only this node reads: they disappear when it is folded."""
    freed = 0
    for value in {v for v in node.inputs if v is not None}:
        if value.const_value is not None and len(value.uses()) == 1 and not value.is_graph_output():
            freed += value.const_value.nbytes
    return freed


def _count(model: ir.Model, op_type: str | None = None) -> int:
    return sum(1 for node in all_nodes(model) if op_type is None or (node.op_type == op_type and node.domain == ""))


def _count_initializers(model: ir.Model) -> int:
    return sum(len(graph.initializers) for graph in model.graphs())


@dataclasses.dataclass
class _DeclaredOutput:
    graph: ir.Graph
    index: int
    name: str
    shape: ir.Shape | None


class _Simplifier:
    """One run of simplify on one model: rounds of folding and cleanup until nothing changes."""

    def __init__(self, model: ir.Model, max_constant_bytes: int) -> None:
        self.model = model
        self.max_constant_bytes = max_constant_bytes
        self.tally: Tally = collections.Counter()

    def run(self) -> PassResult:
        model = self.model
        before = structural_fingerprint(model)
        original_identities = [n for n in all_nodes(model) if n.op_type == "Identity" and n.domain == ""]
        declared = self._hide_declared_output_shapes()
        try:
            for _ in range(MAX_ROUNDS):
                round_start = structural_fingerprint(model)
                self._round()
                if structural_fingerprint(model) == round_start:
                    break
            common.RemoveUnusedFunctionsPass()(model)
            common.RemoveUnusedOpsetsPass()(model)
            common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        finally:
            self._restore_declared_outputs(declared)
        remaining = set(map(id, all_nodes(model)))
        if removed := sum(1 for n in original_identities if id(n) not in remaining):
            self.tally["removed", "Identity"] += removed
        modified = structural_fingerprint(model) != before
        return PassResult(model, modified, self._stats() if modified else [])

    def _round(self) -> None:
        model, tally = self.model, self.tally
        _SizeAwareFolder(self.max_constant_bytes, tally)(model)
        for label, rules in _NO_OP_RULES.items():
            tally["removed", label] += pattern.RewriteRuleSet(rules).apply_to_model(model)
        eliminate_identities(model)
        tally["removed", "unused nodes"] += self._removed_by(common.RemoveUnusedNodesPass(), _count)
        tally["lifted", "Constant nodes to initializers"] += self._removed_by(
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
            lambda m: _count(m, "Constant"),
        )
        common.LiftSubgraphInitializersToMainGraphPass()(model)
        tally["merged", "duplicate initializers"] += self._removed_by(
            common.DeduplicateHashedInitializersPass(), _count_initializers
        )
        tally["merged", "common subexpressions"] += self._eliminate_common_subexpressions()

    def _removed_by(self, step: ir.passes.PassBase, counter: Callable[[ir.Model], int]) -> int:
        before = counter(self.model)
        step(self.model)
        return before - counter(self.model)

    def _eliminate_common_subexpressions(self) -> int:
        # onnx_ir's pass only looks at the main graph; the same elimination is applied to every body.
        cse = common.CommonSubexpressionEliminationPass()
        before = _count(self.model)
        for graph in list(graph_likes(self.model)):
            cse._eliminate_common_subexpression(graph)  # noqa: SLF001 - the per-graph step of the pass
        return before - _count(self.model)

    # -- declared output shapes ---------------------------------------------------------------------------

    def _hide_declared_output_shapes(self) -> list[_DeclaredOutput]:
        """Take the declared shapes off graph outputs while the graph is rewritten.

        onnxscript and onnx_ir merge a graph output's shape backwards into the value that produces it
        (Identity elimination, the folder's Identity handler), and a later Shape/Reshape/Slice fold would
        trust it. A model whose declared output shape is wrong would then compute something else.
        """
        declared = []
        for graph in self.model.graphs():
            for index, output in enumerate(graph.outputs):
                declared.append(_DeclaredOutput(graph, index, output.name, output.shape))
                output.shape = None
        return declared

    def _restore_declared_outputs(self, declared: list[_DeclaredOutput]) -> None:
        """Put the declared names and shapes back on the graph outputs (where a shape was declared)."""
        for entry in declared:
            graph = entry.graph
            output = graph.outputs[entry.index]
            if output.name != entry.name:
                output = _output_named(graph, entry.index, entry.name)
            if entry.shape is not None:
                output.shape = entry.shape

    def _stats(self) -> list[str]:
        counted = [(verb, what, n) for (verb, what), n in self.tally.items() if n]
        counted.sort(key=lambda item: (_VERB_ORDER.index(item[0]), -item[2], item[1]))
        return [f"{verb} {n} {what}" for verb, what, n in counted] or ["inferred shapes"]


def _output_named(graph: ir.Graph, index: int, name: str) -> ir.Value:
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


# ---------------------------------------------------------------------------------------------------------
# Peers


def _run_peer(backend: str, model: ir.Model) -> PassResult:
    try:
        module = importlib.import_module(backend)
    except ImportError as e:
        raise SpecError(
            f"simplify backend '{backend}' is not installed",
            hint=f"pip install {backend}  (or pip install 'onnxkit[peers]')",
        ) from e
    proto = modelio.to_proto(model)
    try:
        if backend == "onnxsim":
            simplified, _ = module.simplify(proto)
        elif backend == "onnxoptimizer":
            simplified = module.optimize(proto)
        else:
            simplified = module.slim(proto)
    except Exception as e:  # peers raise anything from RuntimeError to their own C++ errors
        raise PassFailedError(f"{backend} failed on this model: {type(e).__name__}: {e}",
                              hint="run simplify with the default backend=onnxkit") from e
    if not isinstance(simplified, onnx.ModelProto):
        raise PassFailedError(f"{backend} returned no model", hint="run simplify with the default backend=onnxkit")
    modified = simplified.SerializeToString(deterministic=True) != proto.SerializeToString(deterministic=True)
    return PassResult(ir.serde.deserialize_model(simplified), modified, [f"ran {backend}"] if modified else [])
