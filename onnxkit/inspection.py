"""A model at a glance: what ``onnxkit inspect`` prints."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from onnxkit.modelio import tensor_bytes
from onnxkit.pipeline import count_nodes, op_histogram


def _value_summary(value: ir.Value) -> dict[str, Any]:
    shape = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else (str(d) if d is not None and str(d) else "?") for d in value.shape]
    return {"name": value.name, "dtype": value.dtype.name if value.dtype is not None else None, "shape": shape}


def describe_model(model: ir.Model) -> dict[str, Any]:
    """IR version, opsets, producer, signature, node and op counts (subgraphs included), tensor bytes."""
    initializer_names = set(model.graph.initializers)
    return {
        "ir_version": model.ir_version,
        "opsets": dict(sorted(model.opset_imports.items())),
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p) or None,
        "inputs": [_value_summary(v) for v in model.graph.inputs if v.name not in initializer_names],
        "outputs": [_value_summary(v) for v in model.graph.outputs],
        "nodes": count_nodes(model),
        "op_histogram": dict(op_histogram(model).most_common()),
        "initializers": len(model.graph.initializers) + sum(len(g.initializers) for g in model.graph.subgraphs()),
        "initializer_bytes": tensor_bytes(model),
        "subgraphs": sum(1 for _ in model.graph.subgraphs()),
        "functions": len(model.functions),
        "metadata": dict(model.metadata_props),
    }
