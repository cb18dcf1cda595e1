"""Models past protobuf's 2 GB limit (issue 12), at a lowered limit so the test writes megabytes, not gigabytes:
every command runs from a folder other than the model's, outputs keep external data, and ONNX Runtime loads
them; the graph passes, their checks and parity leave the weights in the data file. ``benchmarks/huge_model.py``
runs the same commands on a real 2.3 GB model and measures peak memory.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit import modelio, runtime
from onnxkit.cli import main
from onnxkit.pipeline import Pipeline
from tests.conftest import run_model

SIDE = 512  # four 1 MiB weights; the limit is lowered to 2 MiB


def matmul_chain(side: int, layers: int) -> onnx.ModelProto:
    """x @ w0 -> Relu -> ... -> Identity -> y, the weights scaled so that the outputs stay near 1."""
    nodes, weights, current = [], [], "x"
    for i in range(layers):
        weight = (np.random.default_rng(i).standard_normal((side, side)) / np.sqrt(side)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))  # something for cleanup to remove
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", side])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def huge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 2 * 2**20)
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(matmul_chain(SIDE, 4), folder / "big.onnx", save_as_external_data=True, location="big.onnx.data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder / "big.onnx"


def _record_prepacking(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The ``session.disable_prepacking`` entry of every ONNX Runtime session made from now on (None: packs)."""
    prepacking: list[str | None] = []
    real_session = ort.InferenceSession.__init__

    def session(self: Any, model: Any, options: Any = None, *args: Any, **kwargs: Any) -> None:
        try:
            prepacking.append(options.get_session_config_entry("session.disable_prepacking"))
        except (AttributeError, RuntimeError):  # no options, or the entry not set: ORT prepacks
            prepacking.append(None)
        real_session(self, model, options, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "__init__", session)
    return prepacking


def test_parity_packs_weights_as_users_sessions_do_unless_they_stay_in_their_file(
    tmp_path: Path, huge: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packing changes what some kernels compute (MatMulNBits honours accuracy_level only on packed weights), so
    parity packs as users' sessions do; only weights left in their file go unpacked, and not under such an op."""
    small = tmp_path / "small.onnx"
    onnx.save(matmul_chain(8, 2), small)
    prepacking = _record_prepacking(monkeypatch)
    assert Pipeline.parse("cleanup").run(small).report.passes[0].parity["passed"]
    assert prepacking and set(prepacking) == {None}, prepacking

    lazy = modelio.load_model(huge)
    assert not runtime.packs_weights(lazy)
    x = lazy.graph.inputs[0]
    packed = ir.Value(name="packed")
    lazy.graph.append(
        ir.node("MatMulNBits", [x, lazy.graph.initializers["w0"]], domain="com.microsoft", outputs=[packed])
    )
    assert runtime.packs_weights(lazy)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["cleanup", "simplify,fuse", "quantize{mode=dynamic}"])
def test_huge_model_through_optimize(huge: Path, spec: str) -> None:
    output = huge.with_name("out.onnx")
    result = CliRunner().invoke(main, ["optimize", str(huge), "--passes", spec, "-o", str(output), "--json"])
    assert result.exit_code == 0, result.stderr
    if spec.startswith("quantize"):  # a new model, INT8 weights a quarter the size: under the limit, inline
        assert output.stat().st_size < modelio.EXTERNAL_DATA_THRESHOLD
    else:  # a model read with external data is saved with it: the weights are not in the model file
        assert output.with_name("out.onnx.data").exists() and output.stat().st_size < 64 * 2**10
    feeds = {"x": np.random.default_rng(0).standard_normal((2, SIDE)).astype(np.float32)}
    expected, actual = run_model(huge, feeds)[0], run_model(output, feeds)[0]
    tolerance = 1e-4 if spec != "quantize{mode=dynamic}" else 0.2
    np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=tolerance)
    assert not [p.name for p in Path.cwd().iterdir()], "nothing is written into the working folder"


@pytest.mark.slow
def test_huge_model_through_inspect_and_check(huge: Path) -> None:
    inspected = CliRunner().invoke(main, ["inspect", str(huge), "--json"])
    assert inspected.exit_code == 0, inspected.stderr
    optimized = huge.with_name("out.onnx")
    assert CliRunner().invoke(main, ["optimize", str(huge), "--passes", "cleanup", "-o", str(optimized)]).exit_code == 0
    checked = CliRunner().invoke(main, ["check", str(huge), str(optimized)])
    assert checked.exit_code == 0, checked.stderr + checked.stdout
    assert "PASSED" in checked.stdout


def test_graph_passes_parity_and_save_leave_the_weights_in_their_file(
    huge: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model past the limit is loaded lazily; cleanup, simplify and fuse, the snapshots their checks read,
    parity and the save must keep it that way: no weight read into Python (onnx_ir's external tensor maps its
    file on first use: ``tobytes``, ``numpy``; nor any allocation as large as one weight), and every ONNX Runtime
    session maps the weights from the data file rather than packing a private copy of each (what held 2-3x the
    model in memory)."""
    read: list[str] = []
    real_load = ir.ExternalTensor._load
    monkeypatch.setattr(ir.ExternalTensor, "_load", lambda tensor: read.append(tensor.name) or real_load(tensor))
    prepacking = _record_prepacking(monkeypatch)
    Pipeline.parse("cleanup,simplify,fuse").run(huge)  # first: imports and one-time caches are not the model's
    prepacking.clear()
    tracemalloc.start()
    try:
        result = Pipeline.parse("cleanup,simplify,fuse").run(huge)
        modelio.save_model(result.model, huge.with_name("out.onnx"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.report.passes[0].bytes_before > 4 * SIDE * SIDE * 4, "the size counts the external data"
    checked = [entry.parity for entry in result.report.passes if entry.parity]
    assert checked and all(parity["passed"] for parity in checked)
    assert read == []
    assert peak < SIDE * SIDE * 4, f"{peak} bytes allocated at once, one weight is {SIDE * SIDE * 4}"
    assert prepacking and set(prepacking) == {"1"}, prepacking
    loaded = modelio.load_model(huge.with_name("out.onnx"))
    assert isinstance(loaded.graph.initializers["w0"].const_value, ir.ExternalTensor)


def test_equal_weights_left_in_their_file_still_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """simplify hashes a lazily loaded weight from its file: equal weights are still found equal."""
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 2 * 2**20)
    model = matmul_chain(SIDE, 3)
    model.graph.initializer[2].CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(model.graph.initializer[0]), "w2")
    )
    onnx.save(model, tmp_path / "twins.onnx", save_as_external_data=True, location="twins.onnx.data")
    loaded = modelio.load_model(tmp_path / "twins.onnx")
    assert all(isinstance(v.const_value, ir.ExternalTensor) for v in loaded.graph.initializers.values())
    result = Pipeline.parse("simplify").run(loaded, model_dir=tmp_path)
    assert sorted(result.model.graph.initializers) == ["w0", "w1"]
    assert result.report.passes[0].parity["passed"]
