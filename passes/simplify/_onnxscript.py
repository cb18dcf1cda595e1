"""The one place simplify reaches inside onnxscript's constant folder (``onnxscript.optimizer._constant_folding``).

onnxscript exposes the folder as ``FoldConstantsPass`` but not the two things simplify needs from it: the
folded-tensor hook, where a fold that would inflate the model is refused once its real size is known, and
the shape values the folder tracks (``_state``), which simplify's own shape evaluators read and extend.
Everything else simplify uses from onnxscript is re-exported from here, so an onnxscript upgrade that moves
these pieces breaks one small file.

Tested with onnxscript 0.7.2 and onnx-ir 1.1.0 (the versions the project's environment pins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding as constant_folding

# The folder's record of shape values: ``get_sym_value(value)`` / ``set_sym_value(value, ir.Shape)``.
ShapeValues = constant_folding.OptimizerState
# What a node is replaced by: new outputs and the nodes that compute them.
Replacement = constant_folding.Replacement
# The op builder evaluators write replacement nodes with (``op.Constant(...)``, ``op.Reshape(...)``).
TapeBuilder = constant_folding.TapeBuilder
# What a folding sweep returns: a PassResult that also carries the shape values it tracked.
FoldResult = constant_folding.FoldConstantsResult
# Ops onnxscript never folds by default (quantization ops, ConstantOfShape, ...).
NEVER_FOLDED_BY_DEFAULT = frozenset(constant_folding.DEFAULT_CONSTANT_FOLD_BLACKLIST)
DEFAULT_INPUT_SIZE_LIMIT = constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT
LOGGER_NAME = constant_folding.logger.name


class FolderBase(constant_folding.FoldConstantsPass):
    """onnxscript's folder with its private pieces behind two public names: ``shape_values`` and
    ``accept_folded_tensor``."""

    @property
    def shape_values(self) -> ShapeValues:
        return self._state

    def infer_node(self, node: ir.Node) -> None:
        """ONNX's shape inference of ``node`` alone, from its inputs' types and small constants, merged into
        its outputs (onnxscript's incremental inference; failures are logged at debug level and ignored)."""
        self._do_inference(node)

    @staticmethod
    def read_constant(node: ir.Node) -> None:
        """Give a Constant node's output its value, type and shape, as the folder does when it reaches it."""
        constant_folding._process_constant_node(node)

    def accept_folded_tensor(self, node: ir.Node, tensor: ir.Tensor) -> bool:
        """Whether the constant ``node`` folded into may be stored; subclasses refuse ones too large."""
        del node, tensor
        return True

    def _prepare_folded_tensor(self, node: ir.Node, output_name: str, output_array: Any) -> ir.Tensor | None:
        """onnxscript's own (0.7.2), less its ``ir.tensor``: that constructor's runtime Protocol checks cost a
        hundred times the tensor, half a millisecond per folded node. Its ``output_size_limit`` is kept."""
        if not isinstance(output_array, np.ndarray):
            return None  # sequences and the like: onnxscript's folder stores no constant for them either
        if not output_array.flags.c_contiguous:
            # The reference evaluator may return a view (a Transpose does); tensors need contiguous data.
            output_array = output_array.copy(order="C")
        tensor = ir.Tensor(output_array, name=output_name)
        if output_array.size > self.output_size_limit and output_array.size > _single_use_input_size(node):
            return None
        if not self.accept_folded_tensor(node, tensor):
            return None
        return tensor


def _single_use_input_size(node: ir.Node) -> int:
    """Elements of the constant inputs only ``node`` reads: what folding it frees (onnxscript's measure)."""
    size = 0
    for value in node.inputs:
        if value is not None and len(value.uses()) == 1:
            array = constant_folding._get_numpy_value(value)
            if array is not None:
                size += array.size
    return size
