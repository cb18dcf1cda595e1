"""``Snapshot``: what the pipeline's checks, parity and rollback read, without copying what they do not need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxkit import modelio
from onnxkit.model_bytes import TensorEncodings
from onnxkit.passes import shape_inference
from onnxkit.snapshot import Baseline, Clock, Snapshot
from tests.passes.test_shape_inference_ml import _tree_classifier
from tests.test_huge_models import matmul_chain


def test_a_lazily_loaded_model_is_snapshot_as_references_to_its_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 2 * 2**20)
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(matmul_chain(512, 4), folder / "big.onnx", save_as_external_data=True, location="big.onnx.data")
    monkeypatch.chdir(tmp_path)  # the checker once looked for the data file here
    model = modelio.load_model(folder / "big.onnx")
    snapshot = Snapshot.of(model, folder)
    assert isinstance(snapshot.model, bytes) and len(snapshot.model) < 64 * 2**10  # the graph, not the weights
    assert snapshot.size > 4 * 512 * 512 * 4  # what the model weighs as saved
    baseline = Baseline.of(snapshot)
    assert baseline.checker_ok and baseline.shape_inference_ok
    restored = snapshot.restore().graph.initializers["w2"].const_value
    assert isinstance(restored, ir.ExternalTensor)
    np.testing.assert_array_equal(restored.numpy(), model.graph.initializers["w2"].const_value.numpy())


def test_the_shape_check_reads_tree_arrays_cut_short_and_still_catches_a_broken_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shape_inference, "LONG_ML_LIST", 1)  # every tree array counts as long
    model = _tree_classifier()
    snapshot = Snapshot.of(model)
    assert snapshot.shapes is not None
    sent = onnx.load_model_from_string(snapshot.shapes).graph.node[0]
    assert max(len(a.floats) + len(a.ints) + len(a.strings) for a in sent.attribute) == 1
    # The model itself is whole, as onnx_ir writes it (from parts: in another field order).
    assert onnx.load_model_from_string(snapshot.model) == ir.serde.serialize_model(model)
    baseline = Baseline.of(snapshot)
    assert baseline.checker_ok and baseline.shape_inference_ok

    # The tree's FLOAT scores added to an INT64 constant: strict inference still sees the tree's output type.
    offset = ir.Value(name="offset", const_value=ir.tensor(np.array([1, 1], np.int64)))
    model.graph.initializers.add(offset)
    copy = model.graph.node(1)
    broken = ir.node("Add", [copy.inputs[0], offset], name="broken")
    model.graph.insert_before(copy, broken)
    copy.replace_input_with(0, broken.outputs[0])
    problems = baseline.problems(Snapshot.of(model), Clock({}))
    assert any(problem.startswith("shape inference:") for problem in problems), problems


def test_the_shape_check_keeps_small_initializers_and_sends_weights_as_inputs() -> None:
    """Shape inference reads the values of shape-like inputs only: initializers up to 1 KB stay, by the bytes
    their dims and type make (a 256-element int64 shape vector is 2 KB), larger ones become typed inputs."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = [
        numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),  # 16 bytes: kept
        numpy_helper.from_array(np.ones(256, np.float32), "bias"),  # exactly 1 KB: kept
        numpy_helper.from_array(np.ones(257, np.float32), "weight"),  # 1028 bytes: an input
        numpy_helper.from_array(np.ones((2, 128), np.int64), "indices"),  # 2 KB: an input
        numpy_helper.from_array(np.array([b"a", b"b"], dtype=object), "words"),  # strings: by their encoded size
    ]
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    snapshot = Snapshot.of(ir.serde.deserialize_model(helper.make_model(graph)))
    assert snapshot.shapes is not None
    sent = onnx.load_model_from_string(snapshot.shapes).graph
    assert [t.name for t in sent.initializer] == ["shape", "bias", "words"]
    inputs = {value.name: value for value in sent.input}
    assert set(inputs) == {"x", "weight", "indices"}
    assert [d.dim_value for d in inputs["indices"].type.tensor_type.shape.dim] == [2, 128]
    assert inputs["indices"].type.tensor_type.elem_type == TensorProto.INT64
    inferred = onnx.shape_inference.infer_shapes(onnx.load_model_from_string(snapshot.shapes), strict_mode=True)
    (y,) = inferred.graph.output
    assert [d.dim_value for d in y.type.tensor_type.shape.dim] == [1, 6]  # the shape's values were read


def test_snapshots_of_one_run_share_the_bytes_of_the_tensors_a_pass_kept() -> None:
    """A pass replaces the tensors it changes and keeps the others: the next snapshot encodes only the new ones,
    and its bytes are still the model onnx_ir writes."""
    model = ir.serde.deserialize_model(matmul_chain(64, 3))
    encodings = TensorEncodings()
    first = Snapshot.of(model, encodings=encodings)
    assert onnx.load_model_from_string(first.model) == ir.serde.serialize_model(model)
    kept, replaced = model.graph.initializers["w0"], model.graph.initializers["w1"]
    replaced.const_value = ir.tensor(np.full((64, 64), 0.5, np.float32))  # what a pass does to change a weight
    second = Snapshot.of(model, encodings=encodings)
    assert second.new_weights == (replaced.const_value,)
    assert onnx.load_model_from_string(second.model) == ir.serde.serialize_model(model)
    assert isinstance(first.content, bytes) and isinstance(second.content, bytes)
    w0 = ir.serde.serialize_tensor(kept.const_value).SerializeToString()
    assert first.content.count(w0) == second.content.count(w0) == 1
    np.testing.assert_array_equal(second.restore().graph.initializers["w1"].const_value.numpy(), 0.5)
    model.graph.initializers["w2"].const_value = replaced.const_value  # one tensor, two initializers
    third = onnx.load_model_from_string(Snapshot.of(model, encodings=encodings).model)
    assert third == ir.serde.serialize_model(model)
    assert [t.name for t in third.graph.initializer] == ["w0", "w1", "w2"]


def test_the_checker_reads_the_weightless_model_and_checks_new_weights_one_by_one() -> None:
    """A pass's output is checked as its weightless form plus the weights new since the last snapshot: a new
    weight the checker refuses (two value fields, fewer bytes than its dims say) is still caught, as the whole
    model's check would."""
    model = ir.serde.deserialize_model(matmul_chain(64, 2))
    encodings = TensorEncodings()
    baseline = Baseline.of(Snapshot.of(model, encodings=encodings))
    assert baseline.checker_ok
    bad = onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "w1")
    bad.float_data.append(1.0)  # raw_data and float_data both set
    model.graph.initializers["w1"].const_value = ir.serde.TensorProtoTensor(bad)
    snapshot = Snapshot.of(model, encodings=encodings)
    assert isinstance(snapshot.shapes, bytes) and len(snapshot.shapes) < 4096  # the weights are inputs there
    with pytest.raises(onnx.checker.ValidationError, match="one and only one value field"):
        onnx.checker.check_model(snapshot.model)
    problems = baseline.problems(snapshot, Clock({}))
    assert any("one and only one value field" in problem for problem in problems), problems

    short = onnx.TensorProto(name="w0", data_type=onnx.TensorProto.FLOAT, dims=[64, 64], raw_data=b"\0" * 16)
    model.graph.initializers["w0"].const_value = ir.serde.TensorProtoTensor(short)
    model.graph.initializers["w1"].const_value = ir.tensor(np.ones((64, 64), np.float32))
    problems = baseline.problems(Snapshot.of(model, encodings=encodings), Clock({}))
    assert any("raw_data size" in problem for problem in problems), problems  # its size against its dims


def test_an_ir3_model_whose_initializers_are_inputs_keeps_its_signature_and_checks() -> None:
    """Before IR 4 every initializer is also a graph input: the snapshot writes each once, the signature leaves
    them out, and the weightless form declares them once."""
    proto = matmul_chain(64, 2)
    proto.ir_version = 3
    proto.opset_import[0].version = 9
    proto.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in proto.graph.initializer
    )
    model = ir.serde.deserialize_model(proto)
    snapshot = Snapshot.of(model)
    assert [name for name, _, _ in snapshot.signature.inputs] == ["x"]
    assert onnx.load_model_from_string(snapshot.model) == ir.serde.serialize_model(model)
    assert snapshot.shapes is not None
    assert [value.name for value in onnx.load_model_from_string(snapshot.shapes).graph.input] == ["x", "w0", "w1"]
    baseline = Baseline.of(snapshot)
    assert baseline.checker_ok and baseline.shape_inference_ok
    assert baseline.problems(Snapshot.of(model), Clock({})) == []


def _saved(tmp_path: Path, proto: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(proto, path)
    return path


def test_a_model_read_from_its_file_is_snapshot_as_the_file_bytes_with_the_same_weightless_form(
    tmp_path: Path,
) -> None:
    """The pipeline's input, read by ``load_source``, is snapshot as its file's bytes (no serialization through
    onnx_ir): the same signature and size as saved, and a weightless form declaring the same weights as inputs,
    keeping the same small initializers, and passing the same checks as the one made through onnx_ir."""
    from onnx import TensorProto, helper, numpy_helper

    proto = matmul_chain(64, 2)
    proto.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "shape"))
    proto.graph.node.append(helper.make_node("Reshape", [proto.graph.output[0].name, "shape"], ["flat"]))
    proto.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, [None]))
    path = _saved(tmp_path, proto)
    loaded = modelio.load_source(path)
    assert loaded.content == path.read_bytes()
    snapshot = Snapshot.of_loaded(loaded, tmp_path)
    assert snapshot is not None and snapshot.model is loaded.content and snapshot.size == path.stat().st_size
    through_ir = Snapshot.of(loaded.model)
    assert snapshot.signature == through_ir.signature
    assert snapshot.shapes is not None and through_ir.shapes is not None
    mine, theirs = (onnx.load_model_from_string(s).graph for s in (snapshot.shapes, through_ir.shapes))
    assert [v.name for v in mine.input] == [v.name for v in theirs.input] == ["x", "w0", "w1"]
    assert [t.name for t in mine.initializer] == [t.name for t in theirs.initializer] == ["shape"]
    assert mine.node == theirs.node
    baseline = Baseline.of(snapshot, as_read=True)
    assert baseline.checker_ok and baseline.shape_inference_ok
    assert [node.op_type for node in snapshot.restore().graph][-1] == "Reshape"


def test_a_model_with_external_data_or_over_the_limit_is_not_snapshot_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its file's bytes are not the whole model, or are not to be held beside the parsed model: not kept."""
    onnx.save(matmul_chain(64, 2), tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data")
    loaded = modelio.load_source(tmp_path / "m.onnx")
    assert loaded.content is None and Snapshot.of_loaded(loaded, tmp_path) is None
    path = _saved(tmp_path, matmul_chain(64, 2), "whole.onnx")
    assert modelio.load_source(path).content == path.read_bytes()
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", path.stat().st_size)
    assert modelio.load_source(path).content is None


def test_the_weights_checked_with_the_file_are_not_new_to_the_checker_of_the_next_snapshot(tmp_path: Path) -> None:
    """The loaded weights pass onnx.checker with the input's file: the first snapshot through onnx_ir encodes
    them, yet only the weight a pass replaced is checked on its own."""
    loaded = modelio.load_source(_saved(tmp_path, matmul_chain(64, 3)))
    encodings = TensorEncodings()
    encodings.checked_already(v.const_value for v in loaded.model.graph.initializers.values())
    replaced = loaded.model.graph.initializers["w1"]
    replaced.const_value = ir.tensor(np.full((64, 64), 0.5, np.float32))
    assert Snapshot.of(loaded.model, encodings=encodings).new_weights == (replaced.const_value,)


def test_a_check_only_the_input_file_passes_is_not_held_against_a_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input's checks are made on its file; a pass's output is written by onnx_ir. Where the output fails a
    check, the input as onnx_ir writes it is checked too, and a failure it shares is not the pass's; one it does
    not share still is. A check the file fails is settled by onnx_ir's writing of it at once."""
    import onnxkit.snapshot as snapshot_module

    loaded = modelio.load_source(_saved(tmp_path, matmul_chain(64, 2)))
    original = Snapshot.of_loaded(loaded, tmp_path)
    assert original is not None
    output = Snapshot.of(loaded.model)

    baseline = Baseline.of(original, as_read=True)
    real = snapshot_module._shape_inference_error
    # onnx_ir's writing of the input fails shape inference as the pass's output does (it never touched it).
    monkeypatch.setattr(
        snapshot_module, "_shape_inference_error", lambda model: None if model is original.shapes else "shape: x"
    )
    assert baseline.problems(output, Clock({})) == []
    assert not baseline.shape_inference_ok and baseline.checker_ok and baseline.as_read is None

    baseline = Baseline.of(original, as_read=True)
    broken = [output.shapes]  # only the pass's output fails
    monkeypatch.setattr(
        snapshot_module, "_shape_inference_error", lambda m: "shape: x" if any(m is b for b in broken) else real(m)
    )
    assert baseline.problems(output, Clock({})) == ["shape: x"]
    assert baseline.shape_inference_ok and baseline.as_read is None

    # Only the file fails (onnx_ir's writing passes): the check is still held against passes, as it was when the
    # input was serialized through onnx_ir.
    monkeypatch.setattr(
        snapshot_module, "_shape_inference_error", lambda m: "shape: x" if m is original.shapes else real(m)
    )
    baseline = Baseline.of(original, as_read=True)
    assert baseline.shape_inference_ok and baseline.checker_ok and baseline.as_read is None
