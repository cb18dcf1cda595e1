"""Per-channel weights for ORT's static QDQ quantizer, computed with numpy over whole tensors rather than channel by
channel in Python, with exactly ORT's float operations, so that its quantized model is byte-identical.

ORT's ``QDQQuantizer`` loops in Python over every output channel of every per-channel weight twice: once for its
scale and zero point (``compute_data_quant_params``, ~41k calls, 0.9 s of each ``quantize_static`` on MiniLM),
once to quantize it (``quantize_onnx_initializer``, 0.6 s). The first loop is spared through ORT's public
``extra_options["TensorQuantOverrides"]`` (per-channel ``scale``/``zero_point`` lists, which ORT then takes
instead of computing them): ``per_channel_overrides``. The second has no public option; within
``vectorized_weight_quantization`` ORT's quantizer calls a one-expression replacement of it. Both are held
against ORT's own computation by ``tests/test_quantize_weight_scales.py``, so that an ORT upgrade that changes
either fails there.

An override also decides the axis ORT quantizes a weight on, and makes a weight per-channel that ORT would
have quantized per tensor; so a weight gets one only where ORT's op quantizer itself asks for per-channel on
that axis: the weight input of a Conv (axis 0), ConvTranspose (axis 1), Gemm (axis 0 with transB, else 1) or
MatMul (axis 1) that ORT quantizes, read by the nodes it quantizes only in such inputs (on one axis), float32,
finite and non-empty. Any other weight is left to ORT's own computation.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import qdq_quantizer, quant_utils
from onnxruntime.quantization.quant_utils import get_qmin_qmax_for_qType

TensorQuantOverrides = dict[str, list[dict[str, Any]]]


def per_channel_overrides(
    model: onnx.ModelProto,
    weight_type: onnx.TensorProto.DataType,
    reduce_range: bool,
    op_types: Collection[str],
    keep_float: Collection[str] = (),
) -> TensorQuantOverrides:
    """ORT's ``TensorQuantOverrides`` giving the scale and zero point of every weight that ORT's static QDQ
    quantizer (``per_channel=True``, no ``MinimumRealRange``) quantizes per channel, exactly as it would compute
    them; ``weight_type`` is ORT's ``QuantType.tensor_type`` (INT8 or UINT8)."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    overrides: TensorQuantOverrides = {}
    for name, axis in _per_channel_weights(model, initializers, op_types, keep_float):
        weights = numpy_helper.to_array(initializers[name])
        if axis >= weights.ndim or weights.size == 0 or not np.isfinite(weights).all():
            continue  # ORT quantizes it per tensor, or its own computation raises: left to ORT
        scales, zero_points = channel_scales(weights, axis, weight_type, reduce_range)
        channels: list[dict[str, Any]] = [
            {"scale": scale, "zero_point": zero_point} for scale, zero_point in zip(scales, zero_points, strict=True)
        ]
        channels[0]["axis"] = axis
        overrides[name] = channels
    return overrides


def channel_scales(
    weights: np.ndarray, axis: int, weight_type: onnx.TensorProto.DataType, reduce_range: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The scale and zero point of each channel of ``weights`` along ``axis``, as ORT's ``compute_scale_zp``
    gives them for a per-channel weight (always symmetric) of float32 ``weights``: the channel's absolute
    maximum (with 0 in the range) over (qmax - qmin) in float64, stored as float32; where that is below
    float32's smallest normal number, scale 1 and zero point 0."""
    qmin, qmax = get_qmin_qmax_for_qType(weight_type, reduce_range, symmetric=True)
    others = tuple(i for i in range(weights.ndim) if i != axis)
    # ORT takes rmin = min(data.min(), 0), rmax = max(data.max(), 0), then absmax = max(|rmin|, |rmax|) in float32.
    rmin = np.minimum(weights.min(axis=others), np.float32(0))
    rmax = np.maximum(weights.max(axis=others), np.float32(0))
    absmax = np.maximum(np.abs(rmin), np.abs(rmax))
    # (rmax - rmin) / (qmax - qmin), both promoted to float64 first, as ORT does.
    scale = (absmax.astype(np.float64) - (-absmax).astype(np.float64)) / (np.float64(qmax) - np.float64(qmin))
    # Symmetric: ORT's zero point is round((qmin + qmax) / 2), the same in every channel.
    middle = np.array(np.round((qmin + qmax) / np.array(2.0, dtype=np.float64)), dtype=qmin.dtype)
    too_small = scale < np.finfo(np.float32).tiny
    scales = np.where(too_small, np.float32(1.0), scale.astype(np.float32))
    zero_points = np.where(too_small, np.zeros((), dtype=qmin.dtype), middle).astype(qmin.dtype)
    return scales, zero_points


def _per_channel_weights(
    model: onnx.ModelProto,
    initializers: dict[str, onnx.TensorProto],
    op_types: Collection[str],
    keep_float: Collection[str],
) -> Iterator[tuple[str, int]]:
    """(weight name, axis) for each float32 initializer that ORT's op quantizers (operators/conv.py, gemm.py,
    matmul.py) would quantize per channel: read by the nodes ORT quantizes only as such a weight, on one axis (a
    weight one of them also reads as anything else keeps ORT's own choice), and by no If/Loop/Scan body."""
    # Only the nodes ORT quantizes (should_quantize_node: the op types asked for, none kept float) mark weights.
    excluded = set(keep_float)
    quantized_nodes = [node for node in model.graph.node if node.op_type in op_types and node.name not in excluded]
    reads = Counter(name for node in quantized_nodes for name in node.input)
    slots: dict[str, list[int]] = {}
    for node in quantized_nodes:
        for name, axis in _weight_inputs(node):
            slots.setdefault(name, []).append(axis)
    read_in_bodies = _names_read_in_bodies(model.graph)
    for name in sorted(slots):
        tensor = initializers.get(name)
        axes = slots[name]
        if (
            tensor is not None
            and tensor.data_type == onnx.TensorProto.FLOAT
            and len(axes) == reads[name]
            and len(set(axes)) == 1
            and name not in read_in_bodies
        ):
            yield name, axes[0]


def _weight_inputs(node: onnx.NodeProto) -> list[tuple[str, int]]:
    """The inputs ORT's op quantizer for ``node`` asks ``is_tensor_per_channel`` about, with the default axis
    it passes (ORT keeps its choice when no ``QDQOpTypePerChannelSupportToAxis`` is given)."""
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        return [(node.input[1], 0 if node.op_type == "Conv" else 1)]
    if node.op_type == "Gemm" and len(node.input) > 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return [(node.input[1], 0 if trans_b else 1)]
    if node.op_type == "MatMul":
        # ORT asks for every initializer input of a MatMul, the left one too, with axis 1.
        return [(name, 1) for name in node.input if name]
    return []


def _names_read_in_bodies(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node inside an If/Loop/Scan body at any depth (a body may read an outer weight)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for body in bodies:
                names.update(name for inner in body.node for name in inner.input)
                names |= _names_read_in_bodies(body)
    return names


_ORTS_QUANTIZE_INITIALIZER = quant_utils.quantize_onnx_initializer
_patch_lock = threading.Lock()
_patch_depth = 0


@contextlib.contextmanager
def vectorized_weight_quantization() -> Iterator[None]:
    """Within: ORT's QDQ quantizer quantizes each per-channel INT8/UINT8 weight in one numpy expression
    (``quantize_per_channel``) instead of its loop over the channels; everything else goes to ORT's own
    ``quantize_onnx_initializer``. The replacement is set on ``onnxruntime.quantization.qdq_quantizer``, the
    module that calls it, for the whole process while any caller is inside (nested and threaded uses are
    counted); as it gives ORT's bytes, another quantization running meanwhile gets the same result. Where ORT
    no longer calls it by that name, nothing is replaced (the test says so)."""
    global _patch_depth
    replaceable = getattr(qdq_quantizer, "quantize_onnx_initializer", None) in (
        _ORTS_QUANTIZE_INITIALIZER,
        _quantize_initializer,
    )
    if not replaceable:
        yield
        return
    with _patch_lock:
        _patch_depth += 1
        qdq_quantizer.quantize_onnx_initializer = _quantize_initializer
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                qdq_quantizer.quantize_onnx_initializer = _ORTS_QUANTIZE_INITIALIZER


def quantize_per_channel(
    weights: np.ndarray, quant_type: onnx.TensorProto.DataType, zero_point: np.ndarray, scale: np.ndarray, axis: int
) -> np.ndarray:
    """``weights`` quantized with one scale and zero point per channel along ``axis``, as ORT's
    ``quantize_nparray`` does each channel: ``round(w / scale) + zero_point`` in the weights' float type (or
    the scale's, if wider), clipped to the type's full range."""
    shape = [1] * weights.ndim
    shape[axis] = -1
    quantized = np.asarray((weights.astype(np.float32) / scale.reshape(shape)).round() + zero_point.reshape(shape))
    qmin, qmax = get_qmin_qmax_for_qType(quant_type)
    np.clip(quantized, qmin, qmax, out=quantized)
    return quantized.astype(quant_utils.ONNX_TYPE_TO_NP_TYPE[quant_type])


def _quantize_initializer(
    weight: onnx.TensorProto,
    quant_type: onnx.TensorProto.DataType,
    zero_point: np.ndarray,
    scale: np.ndarray,
    axis: int | None = None,
    quant_weight_name: str | None = None,
    block_size: int = 0,
) -> onnx.TensorProto:
    """ORT's ``quantize_onnx_initializer``, its per-channel INT8/UINT8 case (no blocks) in one expression."""
    if axis is None or block_size or quant_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
        return _ORTS_QUANTIZE_INITIALIZER(weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
    quantized = quantize_per_channel(quant_utils.tensor_proto_to_array(weight), quant_type, zero_point, scale, axis)
    name = quant_weight_name or f"{weight.name}{quant_utils.TENSOR_NAME_QUANT_SUFFIX}"
    return numpy_helper.from_array(quantized.reshape(weight.dims), name)
