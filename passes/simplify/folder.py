"""Constant folding that never bloats the model, with a rule name for every kind of replacement.

onnxscript's folder does the evaluation and its own op-specific simplifications; this subclass adds:
- a limit in bytes: a fold may store a constant over ``max_constant_bytes`` only when it frees as much
  (a Transpose of a weight does; a Tile, Expand or ConstantOfShape of a small tensor does not);
- simplify's shape-value evaluators (``shape_values``) for nodes onnxscript leaves alone;
- one rule name per replacement (``fold-constants``, ``fold-shape-values``, ``materialize-reshape``,
  ``no-op-<op>``, ``inline-constant-if``, ``remove-dropout``, ``simplify-<op>``), asked before it is applied;
- a guard that every node a replacement brings in is valid at the model's opset: onnxscript writes
  ``Constant(value_ints)``, ``Squeeze``/``Unsqueeze`` with axes inputs and ``Split(num_outputs)`` whatever
  the opset.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxkit.graph import default_opset
from onnxkit.passes._graph_utils import opset_problem
from onnxkit.passes.simplify import shape_values
from onnxkit.passes.simplify._onnxscript import (
    DEFAULT_INPUT_SIZE_LIMIT,
    NEVER_FOLDED_BY_DEFAULT,
    FolderBase,
    FoldResult,
    Replacement,
    TapeBuilder,
)
from onnxkit.passes.simplify.rewrites import Rewrites, site_name

# ConstantOfShape is on onnxscript's never-fold list for size, which the byte limit here already handles;
# the rest (quantization ops) carry meaning and stay.
_KEEP_UNFOLDED = NEVER_FOLDED_BY_DEFAULT - {"ConstantOfShape"}
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Dims named by one sweep's node-by-node inference: unk__N as ONNX names them (so the next round's inference
# forgets them, as it forgets its own), numbered far above any N ONNX reaches.
_FIRST_SWEEP_DIM = 10**9


class SimplifyFolder(FolderBase):
    """One folding sweep over the model; ``refused`` collects the folds the byte limit kept out (site → bytes)."""

    def __init__(
        self,
        max_constant_bytes: int,
        rewrites: Rewrites,
        refused: dict[str, tuple[str, int]],
        declared_ranks: dict[ir.Value, int] | None = None,
    ) -> None:
        # onnxscript's own output limit counts elements; ours counts bytes and is enforced here, so its
        # limit is set where it can never be the stricter one. Its node-by-node shape inference is off:
        # each round starts with ONNX's inference of the whole model, which costs a fraction of it.
        super().__init__(
            shape_inference=False,
            input_size_limit=DEFAULT_INPUT_SIZE_LIMIT,
            output_size_limit=np.iinfo(np.int64).max,
            should_fold=self._should_fold,
        )
        self.max_constant_bytes = max_constant_bytes
        self.rewrites = rewrites
        self.refused = refused
        # The ranks graph outputs declare (their shapes are hidden while simplify runs): a replacement
        # must not let inference tell another one, or the model's own shape check fails.
        self.declared_ranks = declared_ranks or {}
        self.opset = 1
        self._evaluated: ir.Node | None = None
        # Values whose shapes this sweep inferred, node by node, downstream of a replacement (see _infer).
        self._inferred: set[ir.Value] = set()
        self._dim_names = itertools.count(_FIRST_SWEEP_DIM)

    def call(self, model: ir.Model) -> FoldResult:
        self.opset = default_opset(model)
        return super().call(model)

    def process_node(self, node: ir.Node, is_function: bool) -> Replacement | None:
        self._evaluated = None
        if self._inferred and any(value in self._inferred for value in node.inputs):
            self._infer(node)
        if node.op_type == "Identity" and not self.rewrites.allows("remove-identity", site_name(node)):
            return None  # the folder would forward the Identity's readers to its input
        try:
            replacement = super().process_node(node, is_function)
        except RuntimeError:
            # onnxscript wraps a crash of one of its evaluators (SplitToSequence with a computed split,
            # in 0.7) in a RuntimeError: that node is left as it is, the rest is still folded.
            return None
        replacement = self._accepted(node, replacement)
        if replacement is None and node.domain in ("", "ai.onnx"):
            replacement = self._accepted(node, self._evaluate_shape_values(node))
        return replacement

    def replace_node(self, node: ir.Node, replacement: Replacement, root: ir.Graph | ir.Function) -> None:
        super().replace_node(node, replacement, root)
        for new_node in replacement.new_nodes:
            if new_node.op_type == "Constant":
                self.read_constant(new_node)  # a Reshape's new target: inference reads its value
            else:
                self._infer(new_node)

    def _infer(self, node: ir.Node) -> None:
        """Infer the shapes of ``node``'s outputs that have none, where a replacement upstream in this sweep
        made them knowable: a Reshape whose target became constant, and what reads it.

        Without this, a chain of Reshapes each computed from the Shape of the one before takes a round, a
        whole-model inference, per link (seven rounds on a PP-OCR recognizer). Dims the node's inference
        cannot size get names of their own, as ONNX's whole-model inference gives them, so that a Shape read
        downstream can tell a Reshape target copies them; the next round's inference names them afresh.
        Graph outputs are left alone: their shapes stay what the model declares.
        """
        unknown = [value for value in node.outputs if value.shape is None]
        if not unknown or node.op_type in _CONTROL_FLOW or any(value.is_graph_output() for value in node.outputs):
            return
        self.infer_node(node)
        for value in unknown:
            if value.shape is None:
                continue
            value.shape = ir.Shape(
                [
                    ir.SymbolicDim(f"unk__{next(self._dim_names)}")
                    if isinstance(dim, ir.SymbolicDim) and dim.value is None
                    else dim
                    for dim in value.shape
                ]
            )
            self._inferred.add(value)

    def _accepted(self, node: ir.Node, replacement: Replacement | None) -> Replacement | None:
        """The replacement, recorded, when its rule is allowed here and it is valid; else None."""
        if replacement is None:
            return None
        rule, verb, what = self._classify(node, replacement)
        site = site_name(node)
        # Evaluated folds asked for leave in ``_should_fold``, before the folder stored their constant.
        if rule != "fold-constants" and not self.rewrites.allows(rule, site):
            return None
        if not self._valid(node, replacement) or not self._keeps_declared_ranks(node, replacement):
            return None
        self.rewrites.record(rule, site, verb, what)
        return replacement

    def _evaluate_shape_values(self, node: ir.Node) -> Replacement | None:
        for evaluator in shape_values.evaluators(node.op_type, self.opset):
            builder = TapeBuilder()
            outputs = evaluator(node, builder, self.shape_values)
            if outputs is not None:
                return Replacement([outputs] if isinstance(outputs, ir.Value) else outputs, builder.nodes)
        return None

    def _classify(self, node: ir.Node, replacement: Replacement) -> tuple[str, str, str]:
        """The rule a replacement applies, and the statistic it counts under."""
        new_ops = [n.op_type for n in replacement.new_nodes]
        op_type = node.op_type
        if node is self._evaluated:
            return "fold-constants", "folded", "nodes into constants"
        if op_type == "If":
            return "inline-constant-if", "inlined", "If with a constant condition"
        if op_type == "Dropout":
            return "remove-dropout", "removed", "Dropout"
        if all(op == "Constant" for op in new_ops):
            return "fold-shape-values", "folded", "nodes into constants"
        if new_ops == ["Identity"]:
            return f"no-op-{op_type.lower()}", "removed", f"no-op {op_type}"
        if op_type == "Reshape" and new_ops == ["Constant", "Reshape"]:
            return "materialize-reshape", "simplified", "Reshape targets into constants"
        return f"simplify-{op_type.lower()}", "simplified", op_type

    def _keeps_declared_ranks(self, node: ir.Node, replacement: Replacement) -> bool:
        """Whether a Reshape written for a graph output keeps the rank it declares. Some exporters declare a
        wrong one (ddddocr's CRNN: ``[1, seqlen]`` for a ``[T, 1, 8210]`` result); a computed target hid
        that from ONNX's shape check, a constant one of another length would make the check fail."""
        for old, new in zip(node.outputs, replacement.new_outputs):
            rank = self.declared_ranks.get(old)
            producer = new.producer()
            if rank is None or producer is None or producer.op_type != "Reshape" or len(producer.inputs) < 2:
                continue
            target = ir.convenience.get_const_tensor(producer.inputs[1]) if producer.inputs[1] else None
            if target is not None and target.size != rank:
                return False
        return True

    def _valid(self, node: ir.Node, replacement: Replacement) -> bool:
        """Make the replacement's nodes valid at the model's opset, or refuse it (and count why); refuse one
        whose outputs change type (onnxscript writes int64 constants for int32 shape values)."""
        for old, new in zip(node.outputs, replacement.new_outputs):
            new_type = new.dtype
            if new_type is None and (tensor := ir.convenience.get_const_tensor(new)) is not None:
                new_type = tensor.dtype
            if old.dtype is not None and new_type is not None and old.dtype != new_type:
                return False
        for new_node in replacement.new_nodes:
            if opset_problem(new_node, self.opset) is None:
                continue
            if new_node.op_type == "Constant" and _tensor_valued_constant(new_node):
                continue
            self.rewrites.tally["kept", f"{node.op_type} rewrites that opset {self.opset} cannot express"] += 1
            return False
        return True

    # -- the byte limit -----------------------------------------------------------------------------------

    def _should_fold(self, node: ir.Node) -> bool | None:
        """Decide from the inferred output shapes before evaluating, so a huge Tile is never computed."""
        if node.domain == "" and node.op_type in _KEEP_UNFOLDED:
            return None  # onnxscript's default rules keep these
        if not self.rewrites.allows("fold-constants", site_name(node)):
            return False
        self._evaluated = node
        output_bytes = _static_nbytes(node.outputs)
        if output_bytes is None:
            return None  # shapes unknown: onnxscript's default rules, then the check on the real result
        return self._fits(node, output_bytes)

    def accept_folded_tensor(self, node: ir.Node, tensor: ir.Tensor) -> bool:
        return self._fits(node, tensor.nbytes)

    def _fits(self, node: ir.Node, output_bytes: int) -> bool:
        if output_bytes <= self.max_constant_bytes or output_bytes <= _bytes_freed_by_folding(node):
            return True
        self.refused[site_name(node)] = (node.op_type, output_bytes)
        return False


def _tensor_valued_constant(node: ir.Node) -> bool:
    """Rewrite a Constant's ``value_ints``/``value_float``/... (opset 12+) as the ``value`` tensor every opset
    knows; False when it has no single attribute to convert."""
    if len(node.attributes) != 1 or "value" in node.attributes or "sparse_value" in node.attributes:
        return False
    tensor = ir.convenience.get_const_tensor(node.outputs[0])
    if tensor is None:
        return False
    node.attributes.clear()
    node.attributes["value"] = ir.AttrTensor("value", tensor)
    return True


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


def unfolded_placeholders(model_nodes: Sequence[ir.Node], refused: dict[str, tuple[str, int]]) -> list[str]:
    """Statistics for the folds the byte limit kept out that are still in the model, per op type."""
    remaining = {site_name(node) for node in model_nodes}
    totals: dict[str, list[int]] = collections.defaultdict(list)
    for site, (op_type, nbytes) in refused.items():
        if site in remaining:
            totals[op_type].append(nbytes)
    lines = []
    for op_type, sizes in sorted(totals.items()):
        what = "placeholders" if op_type == "ConstantOfShape" else "nodes"
        lines.append(
            f"kept {len(sizes)} {op_type} {what} ({sum(sizes) / 1e6:.1f} MB) unfolded: folding would grow the model"
        )
    return lines
