"""Models past protobuf's 2 GB limit (issue 12), at a lowered limit so the test writes megabytes, not gigabytes:
every command runs from a folder other than the model's, outputs keep external data, and ONNX Runtime loads
them. ``benchmarks/huge_model.py`` runs the same commands on a real 2.3 GB model and measures peak memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit import modelio
from onnxkit.cli import main
from tests.conftest import run_model

pytestmark = pytest.mark.slow

SIDE = 512  # four 1 MiB weights; the limit is lowered to 2 MiB


def matmul_chain(side: int, layers: int) -> onnx.ModelProto:
    """x @ w0 -> Relu -> ... -> Identity -> y, the weights scaled so that the outputs stay near 1."""
    nodes, weights, current = [], [], "x"
    for i in range(layers):
        weight = (np.random.default_rng(i).standard_normal((side, side)) / np.sqrt(side)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        current = f"r{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))  # something for cleanup to remove
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", side])], weights)
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


def test_huge_model_through_inspect_and_check(huge: Path) -> None:
    inspected = CliRunner().invoke(main, ["inspect", str(huge), "--json"])
    assert inspected.exit_code == 0, inspected.stderr
    optimized = huge.with_name("out.onnx")
    assert CliRunner().invoke(main, ["optimize", str(huge), "--passes", "cleanup", "-o", str(optimized)]).exit_code == 0
    checked = CliRunner().invoke(main, ["check", str(huge), str(optimized)])
    assert checked.exit_code == 0, checked.stderr + checked.stdout
    assert "PASSED" in checked.stdout
