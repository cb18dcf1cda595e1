"""Up-front validation (onnxkit.validate) and the threat model README states, one claim per test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxkit.data import validate_sample
from onnxkit.data.graph_hints import MAX_STATED_SIZE
from onnxkit.data.synthetic import SyntheticDataset
from onnxkit.errors import DataError, ModelLoadError, SpecError
from onnxkit.pipeline import Pipeline
from tests.test_bad_input import make_model


def test_numpy_scalars_are_valid_rank_0_inputs() -> None:
    """A stacked .npz read row by row gives ``x[i]``, a numpy scalar, for a rank-0 input (silero_vad's ``sr``)."""
    specs = [_spec("sr", TensorProto.INT64, [])]
    sample = validate_sample({"sr": np.int64(16000)}, specs)
    assert isinstance(sample["sr"], np.ndarray) and sample["sr"].shape == () and sample["sr"] == 16000


def _spec(name: str, dtype: int, shape: list) -> object:
    from onnxkit.data.specs import InputSpec

    return InputSpec(name, "tensor", np.dtype(helper.tensor_dtype_to_np_dtype(dtype)), tuple(shape))


def test_a_data_error_names_the_models_inputs() -> None:
    with pytest.raises(DataError) as raised:
        Pipeline.parse("cleanup").run(make_model(), data=[{"x": np.ones((2, 3, 16, 15), np.float32)}])
    assert raised.value.message.startswith("data: sample 0: input 'x' has size 15 on axis 3")
    assert raised.value.hint == "the model's inputs are x: float32[batch,3,16,16]"


def test_calibration_data_is_checked_before_the_first_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad calibration data is refused up front, not after the passes before ``quantize`` ran."""
    from onnxkit.passes.cleanup import CleanupPass

    def must_not_run(self: object, model: object) -> None:
        raise AssertionError("a pass ran before the data was checked")

    monkeypatch.setattr(CleanupPass, "call", must_not_run)
    with pytest.raises(DataError, match="calibration data: sample 0: missing input 'x'"):
        Pipeline.parse("cleanup,quantize{mode=static}").run(make_model(), calibration_data=[{"y": np.ones(3)}])


def test_custom_ops_are_fine_when_nothing_runs_the_model() -> None:
    model = make_model(op="Foo", domain="com.acme")
    result = Pipeline.parse("cleanup").run(model, check="off")
    assert [n.op_type for n in result.model.graph] == ["Mul", "Foo"]
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime does not know operator com\.acme:Foo"):
        Pipeline.parse("cleanup").run(model)


def test_local_functions_define_their_own_domain() -> None:
    """A node calling a model-local function is not an unknown operator."""
    body = helper.make_function(
        "local", "Act", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    model = make_model(op="Act", domain="local")
    model.functions.append(body)
    result = Pipeline.parse("cleanup").run(model)
    assert result.report.exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# The threat model (README, "Security")


def test_metadata_sizes_are_not_believed_past_a_bound(tmp_path: Path) -> None:
    """Metadata is the model author's word: a stated seq_len of 10**11 must not size the synthetic inputs."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq_len"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq_len"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])], "g", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"seq_len": str(10**11)})
    result = Pipeline.parse("cleanup").run(model)
    assert result.report.exit_code == 0 and "seq_len=" in result.report.parity_inputs
    helper.set_model_props(model, {"seq_len": "96"})
    assert SyntheticDataset(model).shapes["x"] == (1, 96)
    assert MAX_STATED_SIZE < 10**6


def test_metadata_is_never_a_path_nor_code(tmp_path: Path) -> None:
    """Metadata that looks like paths or code goes through a run as inert text, and no file is created."""
    model = make_model()
    props = {
        "external_data": "../../../etc/passwd",
        "onnxkit.spec": "__import__('os').system('touch pwned')",
        "onnxkit.passes": '[{"name": "os:system"}]',
        "image_size": "/dev/zero",
    }
    helper.set_model_props(model, props)
    onnx.save(model, tmp_path / "m.onnx")
    Pipeline.parse("cleanup,simplify").run(str(tmp_path / "m.onnx")).save(tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx"]
    saved = {p.key: p.value for p in onnx.load(tmp_path / "out.onnx").metadata_props}
    assert saved["external_data"] == props["external_data"] and saved["image_size"] == "/dev/zero"


@pytest.mark.parametrize("spec", ["os:system", "tests.never_imported_module:Pass", "subprocess"])
def test_pass_names_are_never_imported(spec: str, tmp_path: Path) -> None:
    """Only registered names (built-ins, installed entry points, ``register_pass``) load: a spec or config
    naming a module is an unknown pass, and nothing is imported for it."""
    with pytest.raises(SpecError):
        Pipeline.parse(spec)
    config = tmp_path / "passes.toml"
    config.write_text(f'passes = [{{ name = "{spec}" }}]\n')
    with pytest.raises(SpecError):
        Pipeline.from_config(config)
    assert "tests.never_imported_module" not in sys.modules


def test_external_data_of_an_in_memory_model_stays_in_its_folder(tmp_path: Path) -> None:
    """A model built in Python, whose tensor points outside its folder, is refused like a file would be."""
    (tmp_path / "secret.bin").write_bytes(np.arange(768, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    model = ir.serde.deserialize_model(make_model())
    weight = model.graph.initializers["w"]
    weight.const_value = ir.ExternalTensor(
        "../secret.bin", 0, 768 * 4, ir.DataType.FLOAT, shape=ir.Shape([1, 3, 16, 16]), name="w", base_dir=folder
    )
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        Pipeline.parse("cleanup").run(model)


def test_inputs_synthetic_data_cannot_fill_are_not_refused_up_front() -> None:
    """A sequence input (ONNX node tests) has no synthetic fill; a run that makes none must still go through
    (ort-optimize with parity off; the size check once refused all 17 such node-test models)."""
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["seq", "zero"], ["t"]), helper.make_node("Identity", ["t"], ["y"])],
        "g",
        [seq],
        [y],
        [onnx.numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = Pipeline.parse("ort-optimize,cleanup").run(model, check="off")
    assert result.report.exit_code == 0


def test_every_standard_op_onnx_defines_is_one_onnx_runtime_knows():
    # validate._check_runtime_ops takes onnx's word for standard ops instead of listing ORT's schemas.
    from onnxkit.validate import _runtime_ops

    standard = {schema.name for schema in onnx.defs.get_all_schemas() if schema.domain == ""}
    assert standard and not standard - {name for domain, name in _runtime_ops() if domain == ""}
