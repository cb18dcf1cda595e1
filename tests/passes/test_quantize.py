"""The quantize pass on small inline models: real ORT quantization, real sessions, real files."""

from __future__ import annotations

import functools
import json
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import quantize_dynamic
from onnxruntime.quantization.calibrate import load_tensors_data

from onnxkit.cli import main
from onnxkit.errors import PassFailedError, SpecError
from onnxkit.graph import default_opset
from onnxkit.pass_base import PassContext
from onnxkit.passes.quantize import QuantizePass, cpu
from onnxkit.pipeline import Pipeline
from tests.conftest import run_model

# ---------------------------------------------------------------------------------------------------------
# Small models


def _weight(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def mlp(opset: int = 17, constant_weights: bool = False, seed: int = 0) -> onnx.ModelProto:
    """x[N,16] → MatMul → Add → Relu → MatMul → y[N,8]."""
    rng = np.random.default_rng(seed)
    tensors = {"w1": _weight(rng, 16, 32), "b1": _weight(rng, 32), "w2": _weight(rng, 32, 8)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    initializers = []
    if constant_weights:
        nodes = [
            helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
            for name, value in tensors.items()
        ] + nodes
    else:
        initializers = [numpy_helper.from_array(value, name) for name, value in tensors.items()]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def convnet(opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] → Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm → y[N,10]."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(_weight(rng, 8, 3, 3, 3), "c1_w"),
        numpy_helper.from_array(_weight(rng, 8), "c1_b"),
        numpy_helper.from_array(_weight(rng, 16, 8, 3, 3), "c2_w"),
        numpy_helper.from_array(_weight(rng, 16), "c2_b"),
        numpy_helper.from_array(_weight(rng, 10, 16), "fc_w"),
        numpy_helper.from_array(_weight(rng, 10), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def if_model(seed: int = 0) -> onnx.ModelProto:
    """y = If(flag) then x @ W_then (an initializer of the branch) else x @ W_else (a Constant in the branch)."""
    rng = np.random.default_rng(seed)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_then"], ["y_then"], name="then_matmul")],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(_weight(rng, 16, 8), "w_then")],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w_else"], value=numpy_helper.from_array(_weight(rng, 16, 8), "w_else")),
            helper.make_node("MatMul", ["x", "w_else"], ["y_else"], name="else_matmul"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, ["N", 8])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)],
        "if_model",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [out],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def samples(name: str, shape: tuple[int, ...], count: int, seed: int = 1, **extra: np.ndarray) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32), **extra} for _ in range(count)]


def quantize(model: onnx.ModelProto, data: list[dict] | None = None, context: dict | None = None, **options):
    """Run the pass alone, ``context`` giving ``PassContext`` fields; returns (result, output proto)."""
    pass_ = QuantizePass(**options)
    pass_.context = PassContext(data=data, **(context or {}))
    result = pass_(ir.serde.deserialize_model(model))
    return result, ir.serde.serialize_model(result.model)


def op_counts(model: onnx.ModelProto) -> Counter:
    counts = Counter(n.op_type for n in model.graph.node)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                counts.update(n.op_type for n in attribute.g.node)
    return counts


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a.ravel(), b.ravel())) / norms if norms > 0 else 0.0


def assert_valid_and_close(
    original: onnx.ModelProto, quantized: onnx.ModelProto, feeds: dict, min_cosine: float
) -> None:
    onnx.checker.check_model(quantized, full_check=True)
    expected = run_model(original, feeds)[0]
    actual = run_model(quantized, feeds)[0]
    assert actual.shape == expected.shape
    assert cosine(expected, actual) >= min_cosine


NO_GATE = {"max_slowdown": None}

# ---------------------------------------------------------------------------------------------------------
# CPU-aware defaults


def test_cpu_flags_decide_reduce_range() -> None:
    avx2 = cpu.features_from_flags("x86_64", cpu.parse_cpuinfo_flags("processor : 0\nflags : fpu sse4_2 avx avx2\n"))
    assert avx2.avx2 and not avx2.vnni and avx2.needs_reduce_range
    vnni = cpu.features_from_flags("x86_64", cpu.parse_cpuinfo_flags("flags : avx2 avx512f avx512_vnni\n"))
    assert vnni.vnni and vnni.avx512 and not vnni.needs_reduce_range
    arm = cpu.features_from_flags("aarch64", cpu.parse_cpuinfo_flags("Features : fp asimd asimddp\n"))
    assert not arm.needs_reduce_range


def test_passes_listing_states_cpu_dependent_defaults() -> None:
    result = CliRunner().invoke(main, ["passes"])
    assert result.exit_code == 0, result.output
    section = result.output[result.output.index("quantize  (lossy)") :]
    reduce_range = "true" if cpu.detect_cpu().needs_reduce_range else "false"
    assert f"reduce_range defaults to {reduce_range}" in section
    assert "dynamic op_types default: MatMul, Gemm, Attention, LSTM, GRU, Gather (not Conv" in section


@pytest.mark.parametrize(
    "spec, message",
    [
        ("quantize{calib=entropy,num_bins=128}", "num_bins"),
        ("quantize{act_type=int8,weight_type=uint8}", "uint8 weights"),
        ("quantize{percentile=0}", "percentile"),
        ("quantize{mode=dynamic,act_type=int8}", "uint8 only"),
        ("quantize{max_slowdown=0}", "max_slowdown"),
    ],
)
def test_bad_options_are_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Pipeline.parse(spec)


def test_spec_round_trips() -> None:
    spec = "quantize{mode=static,calib=percentile,samples=16,percentile=99.9,exclude=fc1,fc2,max_slowdown=none}"
    assert Pipeline.parse(spec).to_string() == spec


# ---------------------------------------------------------------------------------------------------------
# Dynamic mode


def test_dynamic_quantizes_matmul_and_second_run_changes_nothing() -> None:
    model = mlp()
    data = samples("x", (4, 16), 10)
    result, quantized = quantize(model, data, mode="dynamic", **NO_GATE)
    assert result.modified
    ops = op_counts(quantized)
    assert ops["MatMulInteger"] == 2 and ops["DynamicQuantizeLinear"] >= 1
    assert_valid_and_close(model, quantized, data[0], 0.99)
    assert any("quantized 2 nodes: 2 MatMul" in line for line in result.stats)

    again = QuantizePass(mode="dynamic")(ir.serde.deserialize_model(quantized))
    assert not again.modified
    assert "already quantized" in again.stats[0]


def test_dynamic_leaves_conv_float_and_quantizes_gemm_as_matmul() -> None:
    model = convnet()
    data = samples("x", (2, 3, 8, 8), 10)
    result, quantized = quantize(model, data, mode="dynamic", **NO_GATE)
    ops = op_counts(quantized)
    assert "ConvInteger" not in ops and ops["Conv"] == 2
    assert ops["MatMulInteger"] == 1 and "Gemm" not in ops
    assert any("Gemm with constant weights as MatMul" in step for step in result.details["preprocessing"])
    assert_valid_and_close(model, quantized, data[0], 0.99)


def test_dynamic_says_why_a_gemm_with_run_time_weights_stays_float() -> None:
    """The ONNX Model Zoo's "light" CNNs compute their weights with ConstantOfShape at run time."""
    model = convnet()
    fc_weight = next(t for t in model.graph.initializer if t.name == "fc_w")
    model.graph.initializer.remove(fc_weight)
    model.graph.node.insert(
        0,
        helper.make_node(
            "ConstantOfShape",
            ["fc_w_shape"],
            ["fc_w"],
            name="fc_w_fill",
            value=numpy_helper.from_array(np.array([0.1], np.float32)),
        ),
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array([10, 16], np.int64), "fc_w_shape"))
    result, quantized = quantize(model, None, mode="dynamic", **NO_GATE)
    assert not result.modified
    assert result.stats == [
        (
            "no MatMul, Attention, LSTM, GRU, Gather nodes to quantize "
            "(1 Gemm whose weights are computed at run time stay float)"
        )
    ]
    assert op_counts(quantized) == op_counts(model)


def test_static_says_nothing_to_quantize_before_preparing_or_calibrating(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model with no op to quantize (a tree ensemble, here an Add) is answered from its node list: preparing
    it (copies, shape inference) and calibrating took minutes on a 190 MB LightGBM model."""
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "x"], ["y"], name="add")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepared a model with nothing to quantize")

    monkeypatch.setattr("onnxkit.passes.quantize.preprocess.prepare", refuse)
    result, unchanged = quantize(model, samples("x", (1, 4), 4), mode="static")
    assert not result.modified and result.details == {"skipped": "nothing to quantize"}
    assert result.stats == [
        (
            "no Conv, ConvTranspose, MatMul, Gemm, Gather, Relu, Clip, MaxPool, AveragePool, "
            "GlobalAveragePool nodes to quantize"
        )
    ]
    assert unchanged.graph == model.graph


# ---------------------------------------------------------------------------------------------------------
# Static mode


def test_static_qdq_per_channel_is_valid_and_close() -> None:
    model = convnet()
    data = samples("x", (2, 3, 8, 8), 20)
    result, quantized = quantize(model, data, mode="static", **NO_GATE)
    assert result.modified
    weight_dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "c1_w_quantized"]
    assert weight_dq and helper.get_attribute_value(next(a for a in weight_dq[0].attribute if a.name == "axis")) == 0
    assert_valid_and_close(model, quantized, data[0], 0.99)
    details = result.details
    assert details["settings"]["act_type"] == "uint8" and details["settings"]["weight_type"] == "int8"
    assert details["settings"]["reduce_range"] == cpu.detect_cpu().needs_reduce_range
    assert details["quantized_nodes"]["Conv"] == 2
    assert details["size"]["ratio"] < 1


def test_static_qoperator_format() -> None:
    model = convnet()
    data = samples("x", (2, 3, 8, 8), 10)
    _, quantized = quantize(model, data, mode="static", format="qoperator", **NO_GATE)
    assert op_counts(quantized)["QLinearConv"] == 2
    assert_valid_and_close(model, quantized, data[0], 0.99)


def test_static_without_data_calibrates_on_synthetic_inputs_and_says_so() -> None:
    result, _quantized = quantize(convnet(), None, mode="static", samples=8, **NO_GATE)
    assert result.modified
    assert any(line.startswith("warning: no calibration data") for line in result.stats)
    assert result.details["data"].startswith("synthetic")


def test_mode_auto_follows_the_data() -> None:
    model = mlp()
    with_data, _ = quantize(model, samples("x", (2, 16), 6), **NO_GATE)
    without, _ = quantize(model, None, **NO_GATE)
    assert with_data.details["settings"]["mode"] == "static"
    assert without.details["settings"]["mode"] == "dynamic"


# ---------------------------------------------------------------------------------------------------------
# Robustness


def test_opset11_model_is_upgraded_for_per_channel_qdq() -> None:
    model = convnet(opset=11)
    data = samples("x", (2, 3, 8, 8), 10)
    result, quantized = quantize(model, data, mode="static", **NO_GATE)
    opset = default_opset(quantized)
    assert opset >= 13
    assert any("upgraded opset 11 → 13" in step for step in result.details["preprocessing"])
    assert_valid_and_close(model, quantized, data[0], 0.99)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_constant_node_weights_are_quantized(mode: str) -> None:
    model = mlp(constant_weights=True)
    data = samples("x", (4, 16), 10)
    result, quantized = quantize(model, data, mode=mode, calib="minmax", **NO_GATE)
    assert result.details["quantized_nodes"] == {"MatMul": 2}
    assert "Constant" not in op_counts(quantized)
    assert any("lifted 3 Constant nodes" in step for step in result.details["preprocessing"])
    assert_valid_and_close(model, quantized, data[0], 0.99)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_weights_inside_if_branches(mode: str) -> None:
    model = if_model()
    data = samples("x", (4, 16), 10, flag=np.array(True))
    result, quantized = quantize(model, data, mode=mode, **NO_GATE)
    onnx.checker.check_model(quantized, full_check=True)
    for flag in (True, False):
        feeds = {"x": data[0]["x"], "flag": np.array(flag)}
        assert cosine(run_model(model, feeds)[0], run_model(quantized, feeds)[0]) >= 0.99
    if mode == "dynamic":  # ORT quantizes inside If bodies in dynamic mode only
        assert result.modified and op_counts(quantized)["MatMulInteger"] == 2
    else:
        assert not result.modified and "no" in result.stats[0]


def test_already_quantized_model_is_left_alone(tmp_path) -> None:
    source, target = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(mlp(), source)
    quantize_dynamic(str(source), str(target))
    result = QuantizePass()(ir.load(target))
    assert not result.modified
    assert result.stats == [result.stats[0]] and "already quantized" in result.stats[0]
    assert "MatMulInteger" in result.stats[0]


def test_excluded_nodes_stay_float() -> None:
    model = mlp()
    data = samples("x", (4, 16), 10)
    result, quantized = quantize(model, data, mode="static", calib="minmax", exclude=("fc2",), **NO_GATE)
    fc2 = next(n for n in quantized.graph.node if n.name == "fc2")
    assert fc2.input[1] == "w2"  # the float weight, not a DequantizeLinear output
    assert result.details["kept_float"] == {"fc2": "excluded by the user"}
    assert result.details["quantized_nodes"] == {"MatMul": 1}


# ---------------------------------------------------------------------------------------------------------
# Parity target


def outlier_model() -> onnx.ModelProto:
    """fc1's output has one channel 1000 times larger than the others, which fc2 ignores: quantizing that
    activation per tensor wipes out everything fc2 reads, while fc1's own int8 weights are harmless."""
    rng = np.random.default_rng(0)
    w1 = _weight(rng, 16, 32)
    w1[:, 0] *= 1000.0
    w2 = _weight(rng, 32, 8)
    w2[0, :] = 0.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
        ],
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_parity_target_keeps_the_sensitive_node_float() -> None:
    model = outlier_model()
    data = samples("x", (4, 16), 25)
    _, plain = quantize(model, data, mode="static", calib="minmax", target_cosine=None, **NO_GATE)
    assert cosine(run_model(model, data[4])[0], run_model(plain, data[4])[0]) < 0.9

    result, quantized = quantize(model, data, mode="static", calib="minmax", **NO_GATE)
    assert result.details["target_met"]
    assert list(result.details["kept_float"]) == ["fc2"]
    assert result.details["kept_float"]["fc2"].startswith("rank 1 of 2: output SQNR")
    assert result.details["quantized_nodes"] == {"MatMul": 1}
    held_out = result.details["parity"]["held-out"]
    assert held_out["passed"] and held_out["samples"] == 5 and held_out["min_cosine"] >= 0.99
    for index in range(len(data)):
        assert cosine(run_model(model, data[index])[0], run_model(quantized, data[index])[0]) >= 0.99


def test_target_not_met_leaves_the_float_model_and_says_why(monkeypatch) -> None:
    """A model that misses the target is never handed on for the pipeline's parity check to reject."""
    from onnxkit.passes.quantize import float_search

    search = float_search.keep_sensitive_in_float
    monkeypatch.setattr(float_search, "keep_sensitive_in_float", functools.partial(search, max_rankings=0))
    model = mlp()
    result, kept = quantize(model, samples("x", (4, 16), 10), mode="static", target_cosine=0.999999, **NO_GATE)
    assert not result.modified
    assert result.details["target_met"] is False
    reason = result.details["latency_gate"]["kept_whole_model_float"]
    assert reason == "target cosine >= 0.999999 not met even with 0 of 3 candidate nodes in float"
    assert f"kept the float model: {reason}" in result.stats
    assert op_counts(kept) == op_counts(model)


def test_user_metric_replaces_the_parity_target() -> None:
    model = outlier_model()
    data = samples("x", (4, 16), 25)
    probe = samples("x", (64, 16), 1, seed=7)[0]
    reference = run_model(model, probe)[0].argmax(-1)
    calls = []

    def agreement(session) -> float:
        calls.append(1)
        return float(np.mean(session.run(None, probe)[0].argmax(-1) == reference))

    result, _ = quantize(
        model, data, context={"metric": agreement}, mode="static", calib="minmax", max_metric_drop=0.02, **NO_GATE
    )
    assert result.details["target_met"]
    assert result.details["target"].startswith("metric ≥")
    assert result.details["parity"]["metric"] >= 0.98
    assert len(calls) >= 3  # the float model, all quantized, then with fc2 float


# ---------------------------------------------------------------------------------------------------------
# Latency gate


def test_latency_gate_refuses_when_asked() -> None:
    data = samples("x", (4, 16), 10)
    with pytest.raises(PassFailedError, match="slower than allowed"):
        quantize(mlp(), data, mode="static", max_slowdown=1e-9, on_slow="refuse")


def test_latency_gate_keeps_the_float_model() -> None:
    model = mlp()
    result, kept = quantize(model, samples("x", (4, 16), 10), mode="static", max_slowdown=1e-9)
    assert not result.modified
    assert any(line.startswith("kept the float model: INT8 is slower than allowed") for line in result.stats)
    assert result.details["latency"]["ratio"] > 1e-9
    assert op_counts(kept) == op_counts(model)


def negative_outlier_convnet() -> onnx.ModelProto:
    """convnet with conv1's channel 0 biased to -1000. With the Relu INT8 too, conv1's output is quantized over
    the Relu's range, from 0; with the Relu float, over conv1's own range, and the small activations vanish."""
    model = convnet()
    bias = next(t for t in model.graph.initializer if t.name == "c1_b")
    values = numpy_helper.to_array(bias).copy()
    values[0] = -1000.0
    bias.CopyFrom(numpy_helper.from_array(values, "c1_b"))
    return model


def test_target_holds_for_the_model_after_the_latency_gate(monkeypatch) -> None:
    """The gate decides by timing, after the target search; here timing is forced to say INT8 Relu is slow, so
    the gate keeps Relu float, which ruins conv1's output range (cosine about 0.77). The pass must judge that
    final model, keep more float, and hand on a model that passes the pipeline's parity check on the same data
    (ORT optimizations off) as well as with the kernels that deploy (on)."""
    from onnxkit import parity
    from onnxkit.passes.quantize import latency, op_speed
    from onnxkit.passes.quantize.report import quantized_nodes

    def relu_in_int8_is_slow(float_model, candidate, samples, max_slowdown=None) -> latency.Timing:
        # Slow while the Relu is INT8 (fused away into conv1's output range); otherwise each INT8 node saves a
        # little, so keeping Relu float, and the Convs INT8, is the gate's best choice.
        relu_in_int8 = not any(n.op_type == "Relu" for n in candidate.graph.node)
        in_int8 = quantized_nodes(float_model, candidate)
        return latency.Timing(float_ms=1.0, quantized_ms=(2.0 if relu_in_int8 else 0.9) - 0.1 * len(in_int8))

    monkeypatch.setattr(latency, "compare", relu_in_int8_is_slow)
    monkeypatch.setattr(op_speed.Predictor, "__call__", lambda self, candidate: None)  # timing decides
    model = negative_outlier_convnet()
    data = samples("x", (2, 3, 8, 8), 25)
    result, quantized = quantize(model, data, mode="static", calib="minmax", target_cosine=0.99)
    details = result.details
    assert result.modified
    assert details["latency_gate"]["float_op_types"] == ["Relu"]
    assert details["target_met"]
    tolerance = {"atol": None, "rtol": None, "min_cosine": 0.99}
    for optimized in (False, True):
        assert parity.compare_models(model, quantized, data, tolerance=tolerance, ort_optimizations=optimized).passed
    assert details["latency"]["ratio"] <= 1.0
    assert "conv1" in details["kept_float"] and details["quantized_nodes"]["Conv"] == 1
    # And through the pipeline, whose lossy parity guard runs on the same data.
    Pipeline.parse("quantize{mode=static,calib=minmax}").run(model, data=data, check="each")


def test_latency_within_timing_resolution_is_not_called_slower() -> None:
    from onnxkit.passes.quantize.latency import TIMING_RESOLUTION, Timing

    assert Timing(float_ms=1.0, quantized_ms=1.0 + TIMING_RESOLUTION / 2).within(1.0)
    assert not Timing(float_ms=1.0, quantized_ms=1.0 + 2 * TIMING_RESOLUTION).within(1.0)
    assert Timing(float_ms=1.0, quantized_ms=1.4).within(1.5)


def test_latency_gate_reports_the_ratio() -> None:
    result, _ = quantize(convnet(), samples("x", (2, 3, 8, 8), 10), mode="static", max_slowdown=1e9)
    latency = result.details["latency"]
    assert latency["float_ms"] > 0 and latency["quantized_ms"] > 0
    assert latency["ratio"] == pytest.approx(latency["quantized_ms"] / latency["float_ms"], rel=1e-3)
    assert any(line.startswith("INT8/FP32 latency") for line in result.stats)


# ---------------------------------------------------------------------------------------------------------
# Cache, pipeline report, CLI


def test_calibration_cache_hits_for_same_model_data_and_settings(tmp_path) -> None:
    model, data = convnet(), samples("x", (2, 3, 8, 8), 10)
    extras = {"calib_cache": tmp_path / "cache"}  # PassContext.calib_cache
    first, quantized = quantize(model, data, extras, mode="static", **NO_GATE)
    second, again = quantize(model, data, extras, mode="static", **NO_GATE)
    # calib=auto (the default) stores minmax's ranges beside entropy's: both come from its one pass.
    minmax, _ = quantize(model, data, extras, mode="static", calib="minmax", **NO_GATE)
    other, _ = quantize(model, data, extras, mode="static", calib="percentile", **NO_GATE)
    assert first.details["calibration"]["cache"] == "stored"
    assert second.details["calibration"]["cache"] == "hit"
    assert minmax.details["calibration"]["cache"] == "hit"
    assert other.details["calibration"]["cache"] == "stored"
    assert again.SerializeToString() == quantized.SerializeToString()
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 3
    assert load_tensors_data(entries[0]).data  # ORT's own format: quantize_static can read it too


def test_pipeline_report_carries_the_quantize_details() -> None:
    data = samples("x", (4, 16), 10)
    result = Pipeline.parse("quantize{mode=static,max_slowdown=none}").run(mlp(), data=data)
    details = result.report.passes[0].details
    assert {"size", "parity", "latency", "quantized_nodes", "kept_float", "calibration"} <= set(details)
    json.loads(result.report.to_json())


def test_cli_optimize_with_calib_data_and_cache(tmp_path) -> None:
    model_path, calib_path, output = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "m.int8.onnx"
    onnx.save(convnet(), model_path)
    rng = np.random.default_rng(0)
    np.savez(calib_path, x=rng.standard_normal((12, 2, 3, 8, 8)).astype(np.float32))
    cache = tmp_path / "cache"
    args = [
        "optimize",
        str(model_path),
        "--passes",
        "quantize{mode=static,max_slowdown=none}",
        "--calib-data",
        str(calib_path),
        "--calib-cache",
        str(cache),
        "-o",
        str(output),
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passes"][0]["details"]["calibration"]["cache"] == "stored"
    assert list(cache.glob("*.json"))
    onnx.checker.check_model(str(output))
    assert "QuantizeLinear" in op_counts(onnx.load(output))


# ---------------------------------------------------------------------------------------------------------
# Streaming calibration


def elementwise_model() -> onnx.ModelProto:
    """x → Mul(1.5) → Relu → Add(0.25): every value depends on one input value only, so results are exact
    whatever the batching, and calibration results can be compared for equality."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"], name="mul"),
            helper.make_node("Relu", ["scaled"], ["relu"], name="relu"),
            helper.make_node("Add", ["relu", "shift"], ["y"], name="add"),
        ],
        "elementwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [
            numpy_helper.from_array(np.array(1.5, np.float32), "scale"),
            numpy_helper.from_array(np.array(0.25, np.float32), "shift"),
        ],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def heavy_tailed_rows(rows: int, seed: int = 3) -> np.ndarray:
    """Standard normal with 0.1% of values blown up 40 times: the outliers MinMax cannot ignore."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, 64)).astype(np.float32)
    outliers = rng.random(values.shape) < 0.001
    values[outliers] *= 40.0
    return values


def calibrate(rows: np.ndarray, batch: int, **settings) -> dict[str, tuple[float, float]]:
    from onnxkit.passes.quantize import calibration
    from onnxkit.passes.quantize.runtime import tensor_elem_types

    model = elementwise_model()
    types = tensor_elem_types(model)
    names = calibration.calibration_tensors(model, ("Mul", "Relu", "Add"), types)
    data = [{"x": rows[i : i + batch]} for i in range(0, len(rows), batch)]
    ranges = calibration.calibrate(model, names, types, data, calibration.CalibrationSettings(**settings))
    return {name: (float(ranges[name].range_value[0]), float(ranges[name].range_value[1])) for name in names}


def test_outputs_of_float_result_ops_are_calibrated_only_where_another_node_reads_them() -> None:
    """MatMul and Gemm get no QDQ pair on their outputs: a range is measured for such an output only where
    another candidate quantizes it as its input, and ORT writes the same model with those fewer ranges."""
    from onnxkit.passes.quantize import calibration
    from onnxkit.passes.quantize.rewrite import QuantizeSettings, quantize_model
    from onnxkit.passes.quantize.runtime import tensor_elem_types

    model = mlp()
    types = tensor_elem_types(onnx.shape_inference.infer_shapes(model))
    assert calibration.calibration_tensors(model, ("MatMul", "Relu"), types) == ["x", "h", "hb", "r", "y"]
    assert calibration.calibration_tensors(model, ("MatMul", "Relu"), types, ("MatMul",)) == ["x", "hb", "r"]
    op_types = ("MatMul", "Add", "Relu")  # the Add reads fc1's output: it is calibrated
    fewer = calibration.calibration_tensors(model, op_types, types, ("MatMul",))
    assert fewer == ["x", "h", "hb", "r"]
    settings = QuantizeSettings("static", "qdq", True, False, "uint8", "int8", op_types)
    data = samples("x", (2, 16), 8)
    models = [
        quantize_model(
            model, settings, calibration.calibrate(model, names, types, data, calibration.CalibrationSettings())
        )
        for names in (calibration.calibration_tensors(model, op_types, types), fewer)
    ]
    assert models[0].SerializeToString() == models[1].SerializeToString()


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_does_not_depend_on_batching(method: str) -> None:
    rows = heavy_tailed_rows(96)
    results = [calibrate(rows, batch, method=method) for batch in (1, 7, 32, 96)]
    assert all(result == results[0] for result in results[1:])
    assert set(results[0]) == {"x", "scaled", "relu", "y"}


def test_entropy_and_percentile_clip_what_minmax_keeps() -> None:
    rows = heavy_tailed_rows(512)
    minmax = calibrate(rows, 64, method="minmax")
    entropy = calibrate(rows, 64, method="entropy")
    assert minmax["x"] == (float(rows.min()), float(rows.max()))
    low, high = entropy["x"]
    assert minmax["x"][0] < low < -2.0 and 2.0 < high < minmax["x"][1]
    assert entropy["relu"][0] == 0.0 and 2.0 < entropy["relu"][1] < minmax["relu"][1]


def test_percentile_is_honoured() -> None:
    rows = heavy_tailed_rows(512)
    wide = calibrate(rows, 64, method="percentile", percentile=99.99)
    narrow = calibrate(rows, 64, method="percentile", percentile=99.0)
    assert narrow["x"][1] < wide["x"][1]
    bin_width = float(rows.max() - rows.min()) / 2048
    assert narrow["x"][1] == pytest.approx(np.percentile(rows, 99.5), abs=2 * bin_width)
    assert narrow["x"][0] == pytest.approx(np.percentile(rows, 0.5), abs=2 * bin_width)


def test_num_bins_is_honoured() -> None:
    rows = heavy_tailed_rows(512)
    results = {bins: calibrate(rows, 64, method="entropy", num_bins=bins)["x"] for bins in (512, 2048, 8192)}
    assert len(set(results.values())) == 3
