"""``shape-inference``: annotate every value with its inferred type and shape."""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

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
        try:
            annotated = len(infer_shapes(model, strict=self.options.strict, data_prop=self.options.data_prop))
        except Exception as e:
            if self.options.strict:
                raise PassFailedError(f"shape inference failed: {e}", hint="retry without strict=true") from e
            return PassResult(model, False, [f"shape inference failed, model left as it was: {e}"])
        return PassResult(model, annotated > 0, [f"annotated {annotated} values"] if annotated else [])


def infer_shapes(model: ir.Model, *, strict: bool = False, data_prop: bool = True,
                 check_type: bool = True) -> list[ir.Value]:
    """Run ONNX shape inference and copy what it found onto ``model``'s values; returns the values that changed.

    Raises what ONNX raises (in strict mode, any inference error).
    """
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=check_type, strict_mode=strict,
                                                 data_prop=data_prop)

    # onnx_ir's helper (private, tested with onnx-ir 1.1.0) hands ONNX a copy without initializer data, so
    # models over 2 GB work too.
    inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
    return _merge_types(model, inferred)


def _merge_types(model: ir.Model, inferred: ir.Model) -> list[ir.Value]:
    """Copy inferred types and shapes onto the model's values; returns the values that changed.

    Not onnx_ir's ShapeInferencePass merge: it sets ``dtype``, which turns sequence and optional values
    inside subgraphs into tensors. Here a value takes the whole inferred type, and only when it had none
    or one of the same kind. Graph outputs that declare a shape keep it: a declaration may be wrong, and
    "fixing" it from inference would change what the model promises.
    """
    changed = []
    for graph, inferred_graph in zip(model.graphs(), inferred.graphs()):
        inferred_values = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            source = inferred_values.get(name)
            if source is None or source.type is None or value.is_graph_input():
                continue
            if value.is_graph_output() and value.shape is not None:
                continue
            if value.type is not None and type(value.type) is not type(source.type):
                continue
            if value.type != source.type or value.shape != source.shape:
                value.type = source.type
                if source.shape is not None:
                    value.shape = source.shape
                changed.append(value)
    return changed
