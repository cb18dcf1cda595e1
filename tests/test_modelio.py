"""Model I/O: loading with its exact errors, external data safety, atomic saves, large-model external data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import ModelLoadError, ModelSaveError, load_model, modelio, save_model
from onnxkit.examples import build_example
from tests.conftest import run_model


def _model_with_external_data(folder, location: str = "weights.bin") -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    return model


def _point_external_data_at(path, location: str) -> None:
    proto = onnx.load(path, load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def test_load_reads_external_data(tmp_path):
    _model_with_external_data(tmp_path)
    model = load_model(tmp_path / "model.onnx")
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy().ravel(), np.arange(64))


@pytest.mark.parametrize(("name", "fmt"), [("model.onnx", "protobuf"), ("model.onnxtxt", "onnxtxt")])
def test_a_model_file_is_parsed_from_its_mapping_and_a_text_one_by_onnx(tmp_path, name, fmt):
    """The binary file is parsed from the mapped file (no copy read first); the proto owns its bytes, so the
    file may change after the load. A text format, by its extension, goes to onnx's reader."""
    proto = _model_with_external_data(tmp_path)
    onnx.load_external_data_for_model(proto, str(tmp_path))
    onnx.save_model(proto, tmp_path / name, format=fmt)
    model = load_model(tmp_path / name)
    (tmp_path / name).write_bytes(b"overwritten")
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy().ravel(), np.arange(64))


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    _model_with_external_data(inner)
    (tmp_path / "weights.bin").write_bytes((inner / "weights.bin").read_bytes())
    _point_external_data_at(inner / "model.onnx", location)
    with pytest.raises(ModelLoadError, match=r"outside the model's folder|absolute external-data location"):
        load_model(inner / "model.onnx")


def test_external_data_symlink_escaping_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    _model_with_external_data(inner)
    outside = tmp_path / "secret.bin"
    outside.write_bytes((inner / "weights.bin").read_bytes())
    os.remove(inner / "weights.bin")
    os.symlink(outside, inner / "weights.bin")
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(inner / "model.onnx")


def test_missing_external_data_file_is_named(tmp_path):
    _model_with_external_data(tmp_path)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError, match=r"external data file 'weights\.bin'"):
        load_model(tmp_path / "model.onnx")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_text("this is a text file, not a model\n" * 20), "not"),
        (lambda p: p.write_bytes(build_example("cnn").SerializeToString()[:1500]), "not a valid ONNX model"),
    ],
    ids=["missing", "folder", "empty", "text", "truncated"],
)
def test_bad_files_give_their_own_error(tmp_path, make, message):
    path = tmp_path / "model.onnx"
    make(path)
    with pytest.raises(ModelLoadError, match=message):
        load_model(path)


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path, monkeypatch):
    model = ir.serde.deserialize_model(build_example("mlp"))
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous content")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ir, "save", fail)
    with pytest.raises(ModelSaveError, match="No space left on device"):
        save_model(model, target)
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_save_into_missing_folder_is_a_user_error(tmp_path):
    model = ir.serde.deserialize_model(build_example("mlp"))
    with pytest.raises(ModelSaveError, match="does not exist"):
        save_model(model, tmp_path / "nowhere" / "out.onnx")


def test_large_models_get_external_data(tmp_path, monkeypatch):
    # Lower the threshold instead of allocating 2 GB: the decision and the layout are what is tested.
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1000)
    model = ir.serde.deserialize_model(build_example("cnn"))
    save_model(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    feeds = {"image": np.ones((1, 3, 16, 16), np.float32)}
    np.testing.assert_allclose(
        run_model(tmp_path / "big.onnx", feeds)[0], run_model(build_example("cnn"), feeds)[0], rtol=1e-6
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]


def test_resaving_over_own_external_data_keeps_weights(tmp_path):
    _model_with_external_data(tmp_path)
    model = load_model(tmp_path / "model.onnx")
    save_model(model, tmp_path / "model.onnx", external_data=True)
    reloaded = load_model(tmp_path / "model.onnx")
    np.testing.assert_array_equal(reloaded.graph.initializers["w"].const_value.numpy().ravel(), np.arange(64))


def _classifier_with_zipmap() -> onnx.ModelProto:
    """What skl2onnx writes for a scikit-learn classifier: IR 3, ai.onnx.ml only, a seq(map) ZipMap output."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "LinearClassifier",
                ["x"],
                ["label", "scores"],
                domain="ai.onnx.ml",
                classlabels_ints=[0, 1, 2],
                coefficients=[0.4, 1.4, -2.1, -1.0, 0.6, -1.7],
                intercepts=[0.2, 0.6, -0.9],
                post_transform="LOGISTIC",
            ),
            helper.make_node("Normalizer", ["scores"], ["normalized"], domain="ai.onnx.ml", norm="L1"),
            helper.make_node(
                "ZipMap", ["normalized"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
            ),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [3]),
            helper.make_value_info(
                "probabilities",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
    )
    return helper.make_model(graph, ir_version=3, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])


def test_map_typed_outputs_load_save_and_run(tmp_path):
    original = _classifier_with_zipmap()
    onnx.save_model(original, tmp_path / "classifier.onnx")
    save_model(load_model(tmp_path / "classifier.onnx"), tmp_path / "resaved.onnx")

    resaved = onnx.load(tmp_path / "resaved.onnx")
    onnx.checker.check_model(resaved, full_check=True)
    assert resaved.ir_version == 3
    assert [o.type for o in resaved.graph.output] == [o.type for o in original.graph.output]
    feeds = {"x": np.array([[1, 2], [-1, 0.5], [3, -2]], np.float32)}
    expected_labels, expected_probabilities = run_model(original, feeds)
    labels, probabilities = run_model(tmp_path / "resaved.onnx", feeds)
    np.testing.assert_array_equal(labels, expected_labels)
    assert probabilities == expected_probabilities  # lists of {class: probability}


def test_map_typed_outputs_go_through_simplify_fuse_with_parity(tmp_path):
    from onnxkit import Pipeline

    result = Pipeline.parse("simplify,fuse").run(_classifier_with_zipmap())
    assert not result.report.failed
    assert result.report.passes[0].parity is not None
    result.save(tmp_path / "out.onnx")
    feeds = {"x": np.array([[0.5, -1], [2, 2], [0, 0]], np.float32)}
    labels, probabilities = run_model(tmp_path / "out.onnx", feeds)
    expected_labels, expected_probabilities = run_model(_classifier_with_zipmap(), feeds)
    np.testing.assert_array_equal(labels, expected_labels)
    assert probabilities == expected_probabilities


def test_small_external_data_is_read_in_so_the_model_is_whole_anywhere(tmp_path, monkeypatch):
    _model_with_external_data(tmp_path)
    model = load_model(tmp_path / "model.onnx")
    assert not isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    copy = modelio.as_ir_model(modelio.to_proto(model).SerializeToString())
    np.testing.assert_array_equal(copy.graph.initializers["w"].const_value.numpy().ravel(), np.arange(64))


def test_large_external_data_stays_on_disk_and_copies_still_find_it(tmp_path, monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)  # the 256-byte weight counts as large
    _model_with_external_data(tmp_path)
    model = load_model(tmp_path / "model.onnx")
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    serialized = modelio.to_proto(model)
    with pytest.raises(FileNotFoundError):  # what every pass that re-reads a model would otherwise meet
        ir.serde.deserialize_model(serialized).graph.initializers["w"].const_value.numpy()
    for copy in (modelio.clone_model(model), modelio.as_ir_model(serialized, model_dir=tmp_path)):
        np.testing.assert_array_equal(copy.graph.initializers["w"].const_value.numpy().ravel(), np.arange(64))


def test_tensor_layout_counts_every_tensor_as_onnx_ir_does():
    # Initializers, Constant values inside an If branch, and 4-bit and float16 tensors: the layout's byte count
    # read from the loaded protos is onnx_ir's own ``nbytes`` summed over every tensor.
    int4 = onnx.helper.make_tensor("w4", onnx.TensorProto.INT4, [5, 3], list(range(-7, 8)))
    half = onnx.numpy_helper.from_array(np.ones((4, 3), np.float16), "h")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones(7, np.float32)))],
        "branch",
        [],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [7])],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)],
        "g",
        [helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [7])],
        initializer=[int4, half],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    every = [v.const_value for v in model.graph.initializers.values()]
    every += [n.attributes["value"].value for g in model.graphs() for n in g if n.op_type == "Constant"]
    assert len(every) == 4
    layout = modelio.tensor_layout(model)
    assert layout.in_memory_bytes == sum(t.nbytes for t in every) == 8 + 24 + 2 * 28
    assert layout.external_bytes == 0 and layout.folder is None
