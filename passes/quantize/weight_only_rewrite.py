"""Weight-only mode's rewrite: ONNX Runtime's ``matmul_nbits_quantizer`` run on a copy of the model, the nodes
it can take (a MatMul with a constant float weight, a Gather from a constant float table), and what it wrote.

``weight_only_mix`` reads ORT's names for the nodes it writes (``<node>_Q4``, ``<node>_Q8``) to put each rewrite
beside its float node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx


def quantize_nbits(
    proto: onnx.ModelProto,
    options: Any,
    accuracy_level: int,
    op_types: Sequence[str],
    exclude: set[str],
    raised: set[str],
) -> onnx.ModelProto:
    """ORT's quantizer on a copy (it edits the model it is given): ``options.bits`` everywhere but ``exclude``
    and ``raised``, then 8 bits for the MatMuls in ``raised`` (its tables stay float: ORT has no 8-bit table).
    HQQ handles MatMul; Gather tables always go through the default (round-to-nearest) quantizer, the only one
    with a GatherBlockQuantized rewrite."""
    nbits = import_quantizer()
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    steps: list[tuple[Any, tuple[str, ...], int, set[str]]] = []
    rest = list(op_types)
    if options.algo == "hqq" and "MatMul" in rest:
        steps.append(
            (
                nbits.HQQWeightOnlyQuantConfig(
                    block_size=options.block, bits=options.bits, op_types_to_quantize=("MatMul",)
                ),
                ("MatMul",),
                options.bits,
                exclude | raised,
            )
        )
        rest.remove("MatMul")
    if rest:
        steps.append((None, tuple(rest), options.bits, exclude | raised))
    if raised:  # the MatMuls still float now are the user's exclusions and these
        steps.append((None, ("MatMul",), 8, exclude))
    root = logging.getLogger()  # ORT's quantizer logs every node it skips or rewrites at INFO
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        for config, types, bits, skipped in steps:
            config = config or nbits.DefaultWeightOnlyQuantConfig(
                block_size=options.block,
                is_symmetric=False,
                accuracy_level=accuracy_level,
                bits=bits,
                op_types_to_quantize=types,
            )
            quantizer = nbits.MatMulNBitsQuantizer(
                model,
                bits=bits,
                block_size=options.block,
                accuracy_level=accuracy_level,
                nodes_to_exclude=list(skipped),
                op_types_to_quantize=types,
                algo_config=config,
            )
            quantizer.process()
            model = quantizer.model.model
    finally:
        root.setLevel(previous)
    for node in model.graph.node:  # HQQ's config has no accuracy_level: set it on the nodes it wrote
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
    return model


def import_quantizer() -> Any:
    """ORT's ``matmul_nbits_quantizer``, without what importing it does to the process: it calls
    ``logging.basicConfig(level=INFO)``, which would print every library's INFO lines from then on."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    return matmul_nbits_quantizer


def candidates(proto: onnx.ModelProto, op_types: Sequence[str], exclude: set[str]) -> dict[str, int]:
    """How many main-graph nodes of each op type read a constant float weight (MatMul's B, Gather's table)."""
    weights = {
        t.name for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else node.input[0] if node.op_type == "Gather" else None
        if node.op_type in op_types and node.name not in exclude and weight in weights:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantized_nodes(proto: onnx.ModelProto) -> dict[str, int]:
    """Counts by what each node became, e.g. ``{"MatMul → 4-bit MatMulNBits": 24}``."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
            key = f"{'MatMul' if node.op_type == 'MatMulNBits' else 'Gather'} → {bits}-bit {node.op_type}"
            counts[key] = counts.get(key, 0) + 1
    return counts
