"""The per-channel weight scales handed to ORT's static quantizer are the ones ORT computes itself: channel by
channel against ORT's ``compute_data_quant_params``, and the whole quantized model byte for byte against ORT
run without them. Should an ORT upgrade change its formula or which weights it quantizes per channel, these fail."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantType, qdq_quantizer, quant_utils
from onnxruntime.quantization.calibrate import TensorsData
from onnxruntime.quantization.quant_utils import compute_data_quant_params, get_qmin_qmax_for_qType

from onnxkit.passes.quantize import rewrite, weight_scales
from onnxkit.passes.quantize.options import STATIC_OP_TYPES
from onnxkit.passes.quantize.rewrite import QuantizeSettings, QuantTypeName, quantize_model
from onnxkit.passes.quantize.weight_scales import channel_scales, per_channel_overrides

WEIGHT_TYPES: dict[QuantTypeName, QuantType] = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def _awkward_weights(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Random weights with the channels ORT's formula treats apart: all zero, all negative, all positive,
    and values so small that the scale falls below float32's smallest normal number."""
    weights = np.random.default_rng(0).normal(0, 0.3, shape).astype(np.float32)
    channels = np.moveaxis(weights, axis, 0)
    channels[0] = 0
    channels[1] = -np.abs(channels[1])
    channels[2] = np.abs(channels[2])
    channels[3] *= np.float32(1e-37)
    return weights


@pytest.mark.parametrize("weight_type", sorted(WEIGHT_TYPES))
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize(("shape", "axis"), [((6, 3, 3, 3), 0), ((5, 7), 1), ((3, 6, 2, 2), 1)])
def test_channel_scales_are_orts_bit_for_bit(
    weight_type: QuantTypeName, reduce_range: bool, shape: tuple[int, ...], axis: int
) -> None:
    weights = _awkward_weights(shape, axis)
    quant_type = WEIGHT_TYPES[weight_type].tensor_type
    scales, zero_points = channel_scales(weights, axis, quant_type, reduce_range)
    expected = [
        compute_data_quant_params(weights.take(i, axis).ravel(), quant_type, True, reduce_range=reduce_range)
        for i in range(shape[axis])
    ]
    expected_zero_points = np.asarray([zero_point for zero_point, _ in expected])
    expected_scales = np.asarray([scale for _, scale in expected])
    assert scales.dtype == expected_scales.dtype == np.float32
    assert zero_points.dtype == expected_zero_points.dtype
    assert scales.tobytes() == expected_scales.tobytes()
    assert zero_points.tobytes() == expected_zero_points.tobytes()
    assert scales[3] == 1 and zero_points[3] == 0  # the tiny channel took ORT's fallback


@pytest.mark.parametrize("weight_type", sorted(WEIGHT_TYPES))
@pytest.mark.parametrize("scale_dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((6, 3, 3, 3), 0), ((5, 7), 1), ((3, 6, 2, 2), 1)])
def test_quantized_weights_are_orts_bit_for_bit(
    weight_type: QuantTypeName, scale_dtype: type, shape: tuple[int, ...], axis: int
) -> None:
    weights = _awkward_weights(shape, axis)
    quant_type = WEIGHT_TYPES[weight_type].tensor_type
    scales, zero_points = channel_scales(weights, axis, quant_type, reduce_range=True)
    # Scales as ORT may adjust them for a bias (float64 as well), some small enough that values clip.
    scales = (scales * np.linspace(0.25, 1.5, len(scales))).astype(scale_dtype)
    tensor = numpy_helper.from_array(weights, "w")
    mine = weight_scales._quantize_initializer(tensor, quant_type, zero_points, scales, axis)
    orts = quant_utils.quantize_onnx_initializer(tensor, quant_type, zero_points, scales, axis)
    assert mine.SerializeToString() == orts.SerializeToString()
    assert np.isin(numpy_helper.to_array(orts), get_qmin_qmax_for_qType(quant_type)).any()  # some clipped


def test_orts_quantizer_calls_the_replacement_only_within() -> None:
    """Fails when ORT's QDQ quantizer no longer quantizes weights through ``quantize_onnx_initializer``."""
    assert qdq_quantizer.quantize_onnx_initializer is quant_utils.quantize_onnx_initializer
    with weight_scales.vectorized_weight_quantization():
        with weight_scales.vectorized_weight_quantization():
            assert qdq_quantizer.quantize_onnx_initializer is weight_scales._quantize_initializer
        assert qdq_quantizer.quantize_onnx_initializer is weight_scales._quantize_initializer
    assert qdq_quantizer.quantize_onnx_initializer is quant_utils.quantize_onnx_initializer


def _initializer(name: str, shape: tuple[int, ...], axis: int) -> onnx.TensorProto:
    return numpy_helper.from_array(_awkward_weights(shape, axis), name)


def _small_model() -> onnx.ModelProto:
    """Conv (axis 0), ConvTranspose (axis 1), Gemm with and without transB (axis 0 / 1), MatMuls (axis 1), one
    weight read by two of them, one read by a MatMul and an Add (not quantized); and weights ORT quantizes per
    tensor or not at all: a rank-1 MatMul weight, one read by a MatMul and a Gather, and the weight of
    a node kept in float."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "convt_w"], ["t"], name="convt"),
        helper.make_node("Flatten", ["t"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_wt", "gemm_b"], ["g1"], name="gemm_t", transB=1),
        helper.make_node("Gemm", ["g1", "gemm_w"], ["g2"], name="gemm"),
        helper.make_node("MatMul", ["g2", "mm_w"], ["m1"], name="mm"),
        helper.make_node("MatMul", ["m1", "shared_w"], ["m2"], name="mm_shared_a"),
        helper.make_node("MatMul", ["m2", "shared_w"], ["m3"], name="mm_shared_b"),
        helper.make_node("MatMul", ["m3", "kept_w"], ["m4"], name="mm_kept"),
        helper.make_node("MatMul", ["m4", "added_w"], ["m5"], name="mm_added"),
        helper.make_node("Add", ["m5", "added_w"], ["m6"], name="add"),
        helper.make_node("MatMul", ["m6", "gathered_w"], ["m6b"], name="mm_gathered"),
        helper.make_node("Gather", ["gathered_w", "row"], ["gz"], name="gather"),
        helper.make_node("Add", ["m6b", "gz"], ["m6c"], name="add_gathered"),
        helper.make_node("Flatten", ["m6c"], ["m7"], name="flatten_row", axis=0),
        helper.make_node("MatMul", ["m7", "vector_w"], ["y"], name="mm_vector"),
    ]
    flat = 6 * 6 * 6
    initializers = [
        _initializer("conv_w", (8, 3, 3, 3), 0),
        numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "conv_b"),
        _initializer("convt_w", (8, 6, 3, 3), 1),
        _initializer("gemm_wt", (12, flat), 0),
        numpy_helper.from_array(np.linspace(-1, 1, 12, dtype=np.float32), "gemm_b"),
        _initializer("gemm_w", (12, 10), 1),
        _initializer("mm_w", (10, 8), 1),
        _initializer("shared_w", (8, 8), 1),
        _initializer("kept_w", (8, 8), 1),
        _initializer("added_w", (8, 8), 1),
        _initializer("gathered_w", (8, 8), 1),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "row"),
        numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "vector_w"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        # mm_w also listed as an input, as IR<4 models list every initializer.
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info("mm_w", TensorProto.FLOAT, [10, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _ranges(model: onnx.ModelProto) -> TensorsData:
    names = ["x", *(name for node in model.graph.node for name in node.output)]
    low, high = np.array(-2.5, dtype=np.float32), np.array(3.0, dtype=np.float32)
    return TensorsData(CalibrationMethod.MinMax, dict.fromkeys(names, (low, high)))


@pytest.mark.parametrize("weight_type", sorted(WEIGHT_TYPES))
@pytest.mark.parametrize("reduce_range", [False, True])
def test_quantized_model_is_byte_identical_to_orts_own(
    weight_type: QuantTypeName, reduce_range: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _small_model()
    settings = QuantizeSettings("static", "qdq", True, reduce_range, "uint8", weight_type, STATIC_OP_TYPES)
    keep_float = {"mm_kept"}
    overrides = per_channel_overrides(
        model, WEIGHT_TYPES[weight_type].tensor_type, reduce_range, STATIC_OP_TYPES, keep_float
    )
    # Exactly the weights ORT quantizes per channel, each on the axis ORT picks.
    assert {name: channels[0]["axis"] for name, channels in overrides.items()} == {
        "conv_w": 0,
        "convt_w": 1,
        "gemm_wt": 0,
        "gemm_w": 1,
        "mm_w": 1,
        "shared_w": 1,
        "added_w": 1,
    }
    fast = quantize_model(model, settings, _ranges(model), keep_float)
    monkeypatch.setattr(rewrite, "per_channel_overrides", lambda *args, **kwargs: {})
    monkeypatch.setattr(rewrite, "vectorized_weight_quantization", contextlib.nullcontext)
    plain = quantize_model(model, settings, _ranges(model), keep_float)
    assert fast.SerializeToString() == plain.SerializeToString()
    # ORT's own per-channel choice: the overridden weights; and, left to its own computation, the biases of the
    # Conv and Gemm, and the weight a Gather also reads (the MatMul marked last, so per channel here).
    per_channel = {node.input[0] for node in plain.graph.node if node.op_type == "DequantizeLinear" and node.attribute}
    assert per_channel == {f"{name}_quantized" for name in [*overrides, "conv_b", "gemm_b", "gathered_w"]}
