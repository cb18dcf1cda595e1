"""``shape-inference``: annotate every value with its inferred type and shape."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxkit.errors import PassFailedError
from onnxkit.pass_base import Pass, PassResult


@dataclasses.dataclass(frozen=True)
class ShapeInferenceOptions:
    strict: bool = False  # fail on any inference error instead of leaving that value's shape unknown
    data_prop: bool = True  # propagate constant shape values, so Reshape targets resolve


class ShapeInferencePass(Pass):
    """Infer types and shapes of all values, subgraph bodies included (ONNX shape inference)."""

    name = "shape-inference"
    kind = "exact"
    Options = ShapeInferenceOptions

    def call(self, model: ir.Model) -> PassResult:
        before = _shape_annotations(model)
        try:
            common.ShapeInferencePass(check_type=True, strict_mode=self.options.strict,
                                      data_prop=self.options.data_prop)(model)
        except Exception as e:
            raise PassFailedError(f"shape inference failed: {e}", hint="retry without strict=true") from e
        after = _shape_annotations(model)
        annotated = sum(1 for name, shape in after.items() if shape is not None and before.get(name) != shape)
        modified = before != after
        return PassResult(model, modified, [f"annotated {annotated} values"] if modified else [])


def _shape_annotations(model: ir.Model) -> dict[str, tuple]:
    """Name → (dtype, shape) of every value in the model, subgraphs included."""
    annotations: dict[str, tuple] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            shape = tuple(str(d) for d in value.shape) if value.shape is not None else None
            annotations[f"{id(node.graph)}:{value.name}"] = (value.dtype, shape)
    return annotations
