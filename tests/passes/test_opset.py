"""``opset``: upgrades and downgrades through onnx.version_converter, bodies of If/Loop included; no-op at the
target; clear errors for unconvertible ops (a missing down adapter named), approximating down adapters caught
by parity, out-of-range versions."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit import ParityError, PassFailedError, Pipeline, SpecError
from onnxkit.cli import main
from onnxkit.graph import default_opset
from onnxkit.passes.opset import OpsetPass
from tests.conftest import run_model

FLOAT = TensorProto.FLOAT


def opset_of(model: onnx.ModelProto) -> int:
    return default_opset(model)


def opset11_model() -> onnx.ModelProto:
    """Ops whose attributes became inputs after opset 11: Squeeze/Unsqueeze/ReduceSum axes, Split sizes."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
        helper.make_node("ReduceSum", ["u"], ["s"], axes=[2], keepdims=1),
        helper.make_node("Squeeze", ["s"], ["q"], axes=[0, 2]),
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2]),
        helper.make_node("Relu", ["b"], ["c"]),
    ]
    outputs = [
        helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in (("q", [2]), ("a", [2, 1]), ("c", [2, 2]))
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [2, 3])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model, full_check=True)
    return model


def if_model_opset11() -> onnx.ModelProto:
    """An If whose branches Squeeze an outer value with the opset-11 attribute form."""
    then_branch = helper.make_graph(
        [helper.make_node("Squeeze", ["x"], ["t"], axes=[0])],
        "then",
        [],
        [helper.make_tensor_value_info("t", FLOAT, [3])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Squeeze", ["n"], ["e"], axes=[0])],
        "else",
        [],
        [helper.make_tensor_value_info("e", FLOAT, [3])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", FLOAT, [3])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(model: onnx.ModelProto, spec: str):
    result = Pipeline.parse(spec).run(model)  # verification and the parity guard run inside
    return ir.serde.serialize_model(result.model), result.report.passes[-1]


def test_upgrade_moves_attributes_to_inputs_and_keeps_outputs():
    model = opset11_model()
    converted, entry = convert(model, "opset{version=17}")
    assert opset_of(converted) == 17 and entry.modified and entry.status == "ok"
    assert entry.stats[0] == "converted opset 11 → 17"
    squeeze = next(n for n in converted.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2 and not squeeze.attribute  # axes is an input from opset 13
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    for expected, actual in zip(run_model(model, feeds), run_model(converted, feeds)):
        np.testing.assert_array_equal(actual, expected)


def test_if_bodies_are_converted():
    model = if_model_opset11()
    converted, _ = convert(model, "opset{version=17}")
    for branch in converted.graph.node[-1].attribute:
        squeeze = next(n for n in branch.g.node if n.op_type == "Squeeze")
        assert len(squeeze.input) == 2
    for sign in (1, -1):
        feeds = {"x": sign * np.abs(np.random.default_rng(1).standard_normal((1, 3))).astype(np.float32)}
        np.testing.assert_array_equal(run_model(converted, feeds)[0], run_model(model, feeds)[0])


def test_already_at_the_target_is_not_a_modification():
    model = ir.serde.deserialize_model(opset11_model())
    result = OpsetPass(version=11)(model)
    assert not result.modified and result.stats == []
    upgraded = OpsetPass(version=17)(model).model
    assert not OpsetPass(version=17)(upgraded).modified


def quantize_model() -> onnx.ModelProto:
    """QuantizeLinear at opset 13: onnx may know newer versions of it than ONNX Runtime has kernels for."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def loads_in_onnxruntime(model: onnx.ModelProto) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # ORT's own exception types
        return False
    return True


@pytest.mark.parametrize("build", [opset11_model, quantize_model])
def test_default_target_is_the_newest_opset_onnxruntime_runs_the_model_at(build):
    model = build()
    converted, entry = convert(model, "opset")
    target = opset_of(converted)
    assert target > opset_of(model) and entry.stats[0].endswith(f"→ {target}")
    assert loads_in_onnxruntime(converted)
    if target < onnx.defs.onnx_opset_version():
        one_newer = onnx.version_converter.convert_version(model, target + 1)
        assert not loads_in_onnxruntime(one_newer)
    assert Pipeline.parse("opset").to_string() == "opset"


def test_a_model_without_onnx_ops_is_left_alone():
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", FLOAT, [2])], [helper.make_tensor_value_info("y", FLOAT, [2])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    result = OpsetPass()(ir.serde.deserialize_model(model))
    assert not result.modified


def opset13_model(softmax_axis: int = -1) -> onnx.ModelProto:
    """Squeeze/Unsqueeze/ReduceSum with axes as inputs (opset 13's form) and a Softmax."""
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axis0"], ["u"]),
        helper.make_node("ReduceSum", ["u", "axis2"], ["s"], keepdims=1),
        helper.make_node("Squeeze", ["s", "axis0"], ["q"]),
        helper.make_node("Softmax", ["x"], ["y"], axis=softmax_axis),
    ]
    initializers = [
        numpy_helper.from_array(np.array(values, np.int64), name) for name, values in (("axis0", [0]), ("axis2", [2]))
    ]
    outputs = [helper.make_tensor_value_info("q", FLOAT, [2, 1]), helper.make_tensor_value_info("y", FLOAT, [2, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, [2, 3])], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_downgrade_moves_inputs_back_to_attributes_and_keeps_outputs():
    model = opset13_model()
    converted, entry = convert(model, "opset{version=11}")  # the pipeline's exact parity check passes too
    assert opset_of(converted) == 11 and entry.modified and entry.status == "ok"
    assert entry.stats[0] == "converted opset 13 → 11"
    squeeze = next(n for n in converted.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 1 and [a.name for a in squeeze.attribute] == ["axes"]
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)}
    for expected, actual in zip(run_model(model, feeds), run_model(converted, feeds)):
        np.testing.assert_array_equal(actual, expected)


def reshape13_model() -> onnx.ModelProto:
    """A Reshape at opset 13: onnx has no Reshape adapter down to 12."""
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["r"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
        [helper.make_tensor_value_info("r", FLOAT, [6])],
        [numpy_helper.from_array(np.array([-1], np.int64), "flat")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_downgrade_through_an_op_without_down_adapter_names_the_op():
    with pytest.raises(
        PassFailedError, match=r"^cannot convert down from opset 13 to 11: .* no down adapter for Reshape$"
    ):
        OpsetPass(version=11)(ir.serde.deserialize_model(reshape13_model()))


def test_a_downgrade_below_an_ops_first_opset_says_when_it_came():
    # LayerNormalization is standard from opset 17; MiniLM exported at 18 cannot go down to 11.
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1)]
    weights = [numpy_helper.from_array(np.ones(3, np.float32), name) for name in ("scale", "bias")]
    values = [helper.make_tensor_value_info(name, FLOAT, [2, 3]) for name in ("x", "y")]
    graph = helper.make_graph(nodes, "g", values[:1], values[1:], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(
        PassFailedError,
        match=r"^cannot convert down from opset 18 to 11: LayerNormalization does not exist at opset 11 "
        r"\(ONNX added it at opset 17\)$",
    ):
        OpsetPass(version=11)(ir.serde.deserialize_model(model))


def test_a_downgrade_the_cli_cannot_do_is_one_line_and_leaves_the_input(tmp_path):
    source, output = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(reshape13_model(), source)
    before = source.read_bytes()
    result = CliRunner().invoke(main, ["optimize", str(source), "--passes", "opset{version=11}", "-o", str(output)])
    assert result.exit_code == PassFailedError.exit_code, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0].endswith("no down adapter for Reshape"), result.stderr
    assert "Traceback" not in result.stderr
    assert source.read_bytes() == before and not output.exists()


def test_an_approximating_down_adapter_is_caught_by_parity():
    # Softmax 13 normalizes over one axis; the converter keeps axis=0 for Softmax 11, which flattens
    # to 2-D from that axis and normalizes over all six values: different outputs, same graph shape.
    model = opset13_model(softmax_axis=0)
    with pytest.raises(ParityError, match="pass 'opset' changed the model's outputs beyond exact tolerance"):
        Pipeline.parse("opset{version=11}").run(model)


def test_an_op_without_adapter_is_a_clear_error():
    # ImageScaler left the standard after opset 9: the converter has nothing to turn it into.
    node = helper.make_node("ImageScaler", ["x"], ["y"], scale=2.0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", FLOAT, [1, 3, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    with pytest.raises(PassFailedError, match="cannot convert this model to opset 11") as raised:
        OpsetPass(version=11)(ir.serde.deserialize_model(model))
    assert "ImageScaler" in str(raised.value)


def scan8_model() -> onnx.ModelProto:
    """A running sum with opset 8's Scan, whose inputs carry a batch axis that Scan 9 dropped."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["sum_in", "row"], ["sum_out"]),
            helper.make_node("Identity", ["sum_out"], ["scan_out"]),
        ],
        "body",
        [helper.make_tensor_value_info("sum_in", FLOAT, [2]), helper.make_tensor_value_info("row", FLOAT, [2])],
        [helper.make_tensor_value_info("sum_out", FLOAT, [2]), helper.make_tensor_value_info("scan_out", FLOAT, [2])],
    )
    node = helper.make_node("Scan", ["", "initial", "x"], ["total", "y"], body=body, num_scan_inputs=1)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("initial", FLOAT, [1, 2]), helper.make_tensor_value_info("x", FLOAT, [1, 3, 2])],
        [helper.make_tensor_value_info("total", FLOAT, [1, 2]), helper.make_tensor_value_info("y", FLOAT, [1, 3, 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])


def test_a_conversion_that_changes_the_graph_signature_is_refused():
    model = ir.serde.deserialize_model(scan8_model())
    with pytest.raises(PassFailedError, match="changed the model's input 'initial' from rank 2 to 1"):
        OpsetPass(version=11)(model)
    assert not OpsetPass()(model).modified  # without a version: left as it is


@pytest.mark.parametrize("version", [3, onnx.defs.onnx_opset_version() + 1])
def test_versions_outside_what_onnx_knows_are_spec_errors(version):
    with pytest.raises(SpecError, match="version must be between"):
        Pipeline.parse(f"opset{{version={version}}}")
