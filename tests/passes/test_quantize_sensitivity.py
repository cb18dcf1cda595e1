"""Per-node sensitivity where ORT folds a Relu into the range of the Conv before it (the fused ResNet-18 case),
and which nodes the report counts as INT8."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import calibration, sensitivity
from onnxkit.passes.quantize.options import STATIC_OP_TYPES
from onnxkit.passes.quantize.rewrite import QuantizeSettings, quantize_model
from onnxkit.passes.quantize.runtime import tensor_elem_types
from tests.passes.test_quantize import NO_GATE, _weight, convnet, quantize, samples


def conv_relu_chain(depth: int = 4, width: int = 8, loud: int = 1) -> onnx.ModelProto:
    """x → (Conv → Relu) × depth, BatchNorm already folded as fuse leaves it: every Relu is folded by ORT into
    its Conv's output range. Conv ``loud`` has one output channel 50 times louder than the rest, so its
    readers' input range is wide and quantizing the chain whole misses cosine 0.999."""
    rng = np.random.default_rng(0)
    initializers, nodes = [], []
    previous, channels = "x", 3
    for i in range(depth):
        weight = _weight(rng, width, channels, 3, 3, scale=0.5)
        if i == loud:
            weight[0] *= 50.0
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(_weight(rng, width), f"b{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        previous, channels = f"r{i}", width
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", width, 8, 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def all_int8(model: onnx.ModelProto, data: list[dict]) -> onnx.ModelProto:
    """ORT's static QDQ model with every candidate in INT8, as the pass's search starts from."""
    settings = QuantizeSettings("static", "qdq", True, False, "uint8", "int8", STATIC_OP_TYPES)
    types = tensor_elem_types(model)
    tensors = calibration.calibration_tensors(model, STATIC_OP_TYPES, types)
    ranges = calibration.calibrate(model, tensors, types, data, calibration.CalibrationSettings("minmax", 2048, 99.999))
    return quantize_model(model, settings, ranges)


def test_a_conv_and_the_relu_ort_folds_into_it_are_ranked_by_the_relu_output_the_relu_first() -> None:
    model, data = onnx.shape_inference.infer_shapes(conv_relu_chain()), samples("x", (2, 3, 8, 8), 8)
    quantized = all_int8(model, data)
    # ORT removed every Relu: each Conv writes the Relu's output, clamped only by its QuantizeLinear's range.
    assert sorted(sensitivity.folded_activations(model, quantized)) == ["relu0", "relu1", "relu2", "relu3"]
    assert not any(n.op_type == "Relu" for n in quantized.graph.node)
    ranking = sensitivity.measure_sensitivity(model, quantized, list(model.graph.node), tensor_elem_types(model), data)
    assert len(ranking) == 8
    for i in range(4):
        relu = next(k for k, s in enumerate(ranking) if s.node == f"relu{i}")
        assert ranking[relu + 1].node == f"conv{i}" and ranking[relu + 1].added_nsr == ranking[relu].added_nsr
    # Before, each Relu took the whole noise upstream of it (its input, gone, counted as clean), no Conv was
    # ranked, and the Conv after a Relu read its producer's unclamped output as its input: added noise -10.8.
    assert all(s.added_nsr > -0.01 for s in ranking)
    # conv0 reads the clean input: its added noise is its output's, as ORT's QDQ loss debugging measures it.
    conv0 = next(s for s in ranking if s.node == "conv0")
    assert np.isclose(10 * np.log10(1 / conv0.added_nsr), conv0.output_sqnr_db, atol=1e-6)


def test_the_search_reaches_the_convs_behind_folded_relus_and_meets_the_target() -> None:
    """Keeping a folded Relu float leaves its Conv's output quantized: the search used to rank only Relus, by
    the noise upstream of them, spend its budget on those and hand on the float model (cosine 0.9976)."""
    model, data = conv_relu_chain(), samples("x", (2, 3, 8, 8), 25)
    result, _ = quantize(model, data, mode="static", calib="minmax", target_cosine=0.999, smooth_alpha=None, **NO_GATE)
    details = result.details
    assert details["target_met"], details["parity"]
    assert details["parity"]["held-out"]["min_cosine"] >= 0.999
    convs = [name for name in details["kept_float"] if name.startswith("conv")]
    assert convs and details["quantized_nodes"]["Conv"] == 4 - len(convs)


def test_an_excluded_node_reading_an_activation_another_node_quantized_is_not_counted_as_int8() -> None:
    """conv1's output is quantized for itself (Relu folded), and ORT has conv2, excluded, read its
    DequantizeLinear output too: conv2 computes in float on it, and is not an INT8 node."""
    result, quantized = quantize(
        convnet(), samples("x", (2, 3, 8, 8), 10), mode="static", calib="minmax", exclude=("conv2",), **NO_GATE
    )
    conv2 = next(n for n in quantized.graph.node if n.name == "conv2")
    assert conv2.input[0].endswith("_DequantizeLinear_Output") and conv2.input[1] == "c2_w"
    assert result.details["quantized_nodes"]["Conv"] == 1
    assert result.details["kept_float"] == {"conv2": "excluded by the user"}
