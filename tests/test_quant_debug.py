"""``onnxkit debug quant``: a model with one layer INT8 ruins is debugged through the real quantize pass and
ONNX Runtime; the ruined layer comes out worst, with the pass's reason for keeping it float."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit import quant_debug_report
from onnxkit.cli import main
from onnxkit.quant_debug import QuantDebugResult, debug_quant

# minmax calibration keeps the outlier inside the activation range (entropy would clip it), and no latency
# gate: on a toy model INT8 timing says nothing, and the result must not depend on it.
SPEC = "quantize{mode=static,calib=minmax,max_slowdown=none}"


def _damaged_mlp(folder: Path) -> tuple[Path, Path]:
    """x -> MatMul first -> MatMul damaged -> Tanh -> MatMul last -> y, and calibration data for x.

    ``first`` writes one channel 2000x larger than the others, and ``damaged`` ignores that channel (a zero
    weight row). Per-tensor uint8 quantization of ``first``'s output spends its 256 levels on the outlier,
    so what ``damaged`` reads is all rounding noise: INT8 ruins that layer and no other.
    """
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32) * 0.3
    w1[:, 0] *= 2000.0
    w2 = rng.normal(size=(32, 32)).astype(np.float32) * 0.3
    w2[0, :] = 0.0
    w3 = rng.normal(size=(32, 8)).astype(np.float32) * 0.3
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="first"),
             helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="damaged"),
             helper.make_node("Tanh", ["h2"], ["t2"], name="tanh"),
             helper.make_node("MatMul", ["t2", "w3"], ["y"], name="last")]
    graph = helper.make_graph(nodes, "damaged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                              [numpy_helper.from_array(w, name) for w, name in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    model_path, data_path = folder / "damaged.onnx", folder / "calib.npz"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    np.savez(data_path, x=rng.normal(size=(40, 16)).astype(np.float32))
    return model_path, data_path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, QuantDebugResult]:
    model_path, data_path = _damaged_mlp(tmp_path_factory.mktemp("quant-debug"))
    return model_path, data_path, debug_quant(model_path, data_path, SPEC)


def test_the_layer_int8_ruins_is_named_worst_with_the_pass_reason(damaged) -> None:
    model_path, _, result = damaged
    before = model_path.read_bytes()
    worst = result.layers[0]
    assert worst.node == "damaged"
    assert worst.sqnr_db < 3 and worst.added_nsr is not None and worst.added_nsr > 0.5
    others = {layer.node: layer for layer in result.layers[1:]}
    assert set(others) == {"first", "last"}
    assert others["first"].sqnr_db > 10 and all((o.added_nsr or 0) < 0.1 for o in others.values())
    # The pass kept exactly the ruined layer float, and says why: first in its own ranking.
    assert worst.pass_kept_float is not None and worst.pass_kept_float.startswith("rank 1 of")
    assert all(o.pass_kept_float is None for o in others.values())
    # Everything in INT8 ruins the output; the pass's result, with that one layer float, does not.
    assert result.outputs_all_int8[0].cosine < 0.5
    assert result.outputs_pass_result[0].cosine > 0.99
    assert result.samples == 8 and result.samples_from.startswith("held-out")
    assert model_path.read_bytes() == before


def test_json_markdown_and_png_are_written(damaged, tmp_path: Path) -> None:
    _, _, result = damaged
    written, missing = quant_debug_report.save(result, tmp_path / "out", top=2)
    assert missing is None
    assert [p.name for p in written] == ["quant-debug.json", "quant-debug.md", "quant-debug.png"]
    report = json.loads((tmp_path / "out" / "quant-debug.json").read_text())
    assert set(report) == {"model", "spec", "settings", "samples", "samples_from", "layers", "outputs", "tensors",
                           "pass", "notes"}
    assert report["spec"] == SPEC
    layer = report["layers"][0]
    assert set(layer) == {"rank", "node", "op_type", "position", "output", "sqnr_db", "cosine", "added_nsr",
                          "share_of_added_noise", "rounding_nsr", "int8_when_all_quantized", "pass_result",
                          "why_float"}
    assert (layer["rank"], layer["node"], layer["pass_result"]) == (1, "damaged", "float")
    assert report["layers"][1]["pass_result"] == "int8" and report["layers"][1]["why_float"] is None
    assert {t["name"] for t in report["tensors"]} == {"h1", "h2", "t2", "y"}
    assert all(isinstance(t["sqnr_db"], (float, int, str)) and -1 <= t["cosine"] <= 1 for t in report["tensors"])
    assert report["pass"]["report"]["kept_float"].keys() == {"damaged"}
    assert (tmp_path / "out" / "quant-debug.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "out" / "quant-debug.md").read_text()
    assert "| 1 | damaged | MatMul |" in markdown


def test_without_matplotlib_json_and_markdown_are_written_and_the_plot_explained(damaged, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    _, _, result = damaged
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    written, missing = quant_debug_report.save(result, tmp_path, top=2)
    assert [p.name for p in written] == ["quant-debug.json", "quant-debug.md"]
    assert missing is not None and "matplotlib" in missing
    assert not (tmp_path / "quant-debug.png").exists()


def test_cli_prints_the_worst_layer_folded_to_80_columns_and_writes_the_files(damaged, tmp_path: Path) -> None:
    model_path, data_path, _ = damaged
    out = tmp_path / "debug"
    result = CliRunner().invoke(main, ["debug", "quant", str(model_path), "--calib-data", str(data_path),
                                       "--spec", SPEC, "--out", str(out), "--top", "2"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines if not line.startswith(("  pass result", "wrote"))) <= 80
    assert "1  damaged  MatMul" in lines
    assert (out / "quant-debug.json").exists() and (out / "quant-debug.png").exists()
    as_json = CliRunner().invoke(main, ["debug", "quant", str(model_path), "--calib-data", str(data_path),
                                        "--spec", SPEC, "--out", str(out), "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["layers"][0]["node"] == "damaged"


@pytest.mark.parametrize("arguments, message", [
    (["missing.onnx", "--calib-data", "{data}"], "no such file"),
    (["{model}", "--calib-data", "{data}", "--spec", "fuse"], "must be one quantize pass"),
    (["{model}", "--calib-data", "{data}", "--spec", "quantize{mode=weight-only}"], "weight-only"),
    (["{model}", "--calib-data", "{data}", "--spec", "quantize{calib=nonsense}"], "calib"),
    (["{model}", "--calib-data", "{wrong}"], "calibration data"),
])
def test_bad_input_is_one_line_and_exit_2(damaged, tmp_path: Path, arguments: list[str], message: str) -> None:
    model_path, data_path, _ = damaged
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, not_x=np.zeros((4, 16), np.float32))
    given = {"{model}": str(model_path), "{data}": str(data_path), "{wrong}": str(wrong)}
    filled = [given.get(a, a) for a in arguments]
    result = CliRunner().invoke(main, ["debug", "quant", *filled, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr.splitlines()[0]
    assert not (tmp_path / "out").exists()


def test_an_already_quantized_model_is_refused_with_the_reason(damaged, tmp_path: Path) -> None:
    model_path, data_path, _ = damaged
    from onnxkit.pipeline import Pipeline

    quantized = tmp_path / "int8.onnx"
    Pipeline.parse(SPEC).run(str(model_path), calibration_data=str(data_path), check="off").save(quantized)
    result = CliRunner().invoke(main, ["debug", "quant", str(quantized), "--calib-data", str(data_path),
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "nothing to debug: model is already quantized" in result.stderr
