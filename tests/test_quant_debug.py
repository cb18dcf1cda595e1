"""``onnxkit debug quant``: a model with one layer INT8 ruins is debugged through the real quantize pass and
ONNX Runtime; the ruined layer comes out worst, with the pass's reason for keeping it float."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="first"),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="damaged"),
        helper.make_node("Tanh", ["h2"], ["t2"], name="tanh"),
        helper.make_node("MatMul", ["t2", "w3"], ["y"], name="last"),
    ]
    graph = helper.make_graph(
        nodes,
        "damaged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(w, name) for w, name in ((w1, "w1"), (w2, "w2"), (w3, "w3"))],
    )
    model_path, data_path = folder / "damaged.onnx", folder / "calib.npz"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    np.savez(data_path, x=rng.normal(size=(40, 16)).astype(np.float32))
    return model_path, data_path


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, QuantDebugResult]:
    model_path, data_path = _damaged_mlp(tmp_path_factory.mktemp("quant-debug"))
    return model_path, data_path, debug_quant(model_path, data_path, SPEC, isolate=2)


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
    # Quantized alone, the ruined layer still ruins the output; the second worst alone barely moves it.
    assert worst.alone_sqnr_db is not None and worst.alone_sqnr_db < 3
    second = result.layers[1]
    assert second.alone_sqnr_db is not None and second.alone_sqnr_db > 20
    assert result.layers[2].alone_sqnr_db is None  # isolate=2: not measured
    assert model_path.read_bytes() == before


def test_json_markdown_and_png_are_written(damaged, tmp_path: Path) -> None:
    _, _, result = damaged
    written, missing = quant_debug_report.save(result, tmp_path / "out", top=2)
    assert missing is None
    assert [p.name for p in written] == ["quant-debug.json", "quant-debug.md", "quant-debug.png"]
    report = json.loads((tmp_path / "out" / "quant-debug.json").read_text())
    assert set(report) == {
        "model",
        "spec",
        "settings",
        "samples",
        "samples_from",
        "ranked_by",
        "layers",
        "outputs",
        "tensors",
        "pass",
        "notes",
    }
    assert report["ranked_by"] == "added"  # isolate=2 of 3 ranked layers
    assert report["spec"] == SPEC
    layer = report["layers"][0]
    assert set(layer) == {
        "rank",
        "node",
        "op_type",
        "position",
        "output",
        "sqnr_db",
        "cosine",
        "added_nsr",
        "share_of_added_noise",
        "rounding_nsr",
        "alone_output_sqnr_db",
        "alone_output_cosine",
        "int8_when_all_quantized",
        "pass_result",
        "why_float",
    }
    assert (layer["rank"], layer["node"], layer["pass_result"]) == (1, "damaged", "float")
    assert report["layers"][1]["pass_result"] == "int8" and report["layers"][1]["why_float"] is None
    assert {t["name"] for t in report["tensors"]} == {"h1", "h2", "t2", "y"}
    assert all(isinstance(t["sqnr_db"], (float, int, str)) and -1 <= t["cosine"] <= 1 for t in report["tensors"])
    assert report["pass"]["report"]["kept_float"].keys() == {"damaged"}
    assert (tmp_path / "out" / "quant-debug.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "out" / "quant-debug.md").read_text()
    assert "| 1 | damaged | MatMul |" in markdown


def test_without_matplotlib_json_and_markdown_are_written_and_the_plot_explained(
    damaged, tmp_path: Path, monkeypatch
) -> None:
    _, _, result = damaged
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    written, missing = quant_debug_report.save(result, tmp_path, top=2)
    assert [p.name for p in written] == ["quant-debug.json", "quant-debug.md"]
    assert missing is not None and "matplotlib" in missing
    assert not (tmp_path / "quant-debug.png").exists()


def _debug_quant(model_path: Path, data_path: Path, *options: str, env: dict[str, str] | None = None) -> Any:
    """``onnxkit debug quant MODEL --calib-data DATA --spec SPEC OPTIONS...`` through click's runner."""
    arguments = ["debug", "quant", str(model_path), "--calib-data", str(data_path), "--spec", SPEC, *options]
    return CliRunner().invoke(main, arguments, env=env)


def test_cli_prints_the_worst_layer_folded_to_80_columns_and_writes_the_files(damaged, tmp_path: Path) -> None:
    model_path, data_path, _ = damaged
    out = tmp_path / "debug"
    result = _debug_quant(model_path, data_path, "--out", str(out), "--top", "2", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines if not line.startswith(("  pass result", "wrote"))) <= 80
    assert "1  damaged  MatMul" in lines
    assert (out / "quant-debug.json").exists() and (out / "quant-debug.png").exists()
    as_json = _debug_quant(model_path, data_path, "--out", str(out), "--json", "--isolate", "all")
    assert as_json.exit_code == 0
    report = json.loads(as_json.stdout)
    # Every layer isolated: ordered by the output error each causes alone, and the ruined one still leads.
    assert report["ranked_by"] == "alone"
    assert report["layers"][0]["node"] == "damaged"
    alone = [layer["alone_output_sqnr_db"] for layer in report["layers"]]
    assert all(isinstance(value, float) for value in alone) and alone == sorted(alone)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing.onnx", "--calib-data", "{data}"], "no such file"),
        (["{model}", "--calib-data", "{data}", "--spec", "fuse"], "must be one quantize pass"),
        (["{model}", "--calib-data", "{data}", "--spec", "quantize{mode=weight-only}"], "weight-only"),
        (["{model}", "--calib-data", "{data}", "--spec", "quantize{calib=nonsense}"], "calib"),
        (["{model}", "--calib-data", "{wrong}"], "calibration data"),
        (["{model}", "--calib-data", "{data}", "--isolate", "some"], "--isolate"),
    ],
)
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
    result = CliRunner().invoke(
        main, ["debug", "quant", str(quantized), "--calib-data", str(data_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "nothing to debug: model is already quantized" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# MiniLM (slow: a real transformer, exported from torch)


@pytest.mark.slow
def test_minilm_the_layers_named_worst_are_the_ones_to_keep_float(tmp_path: Path) -> None:
    """The debugger's ranking checked against the model itself. Every layer is quantized alone (``isolate=all``);
    one of those measurements is reproduced through the pipeline with every other node excluded; and keeping
    the three layers it names worst in float brings the sentence embedding closer to FP32 than keeping the
    three it names least harmful."""
    pytest.importorskip("torch")
    zoo = pytest.importorskip("onnxkit.pytorch.zoo")
    from onnxkit.modelio import load_model, to_proto
    from onnxkit.passes.quantize.runtime import tensor_elem_types
    from onnxkit.pipeline import Pipeline
    from onnxkit.quant_debug import tensor_errors

    model, tokenizer = zoo.load_minilm()
    path = zoo.export_minilm(tmp_path / "minilm.onnx", dynamo=False, opset=17, model=model, tokenizer=tokenizer)
    samples = [
        {name: tensor.numpy() for name, tensor in zoo.tokenize(tokenizer, [sentence]).items()}
        for sentence in zoo.minilm_sentences()
    ]
    cache = tmp_path / "cache"  # the pinned runs below reuse the debugger's calibration
    # smooth_alpha=none: the pinned runs below set no target, so the pass would not try SmoothQuant there either.
    result = debug_quant(
        path,
        samples,
        "quantize{mode=static,samples=64,max_slowdown=none,smooth_alpha=none}",
        isolate="all",
        calib_cache=cache,
    )
    ranked = result.worst
    assert result.ranked_by == "alone" and len(ranked) > 30 and result.samples == 12
    assert result.outputs_all_int8[0].cosine < result.outputs_pass_result[0].cosine
    quant_debug_report.save(result, tmp_path / "report", top=10)
    assert (tmp_path / "report" / "quant-debug.png").read_bytes()[:4] == b"\x89PNG"

    float_proto = to_proto(load_model(path))
    in_int8 = [layer.node for layer in result.layers if layer.int8_when_all_quantized]

    def embedding_error(keep_float: list[str]) -> tuple[float, float]:
        pinned = (
            f"quantize{{mode=static,samples=64,max_slowdown=none,smooth_alpha=none,target_cosine=none,"
            f"exclude={','.join(keep_float)}}}"
        )
        quantized = (
            Pipeline.parse(pinned).run(str(path), calibration_data=samples, check="off", calib_cache=cache).model
        )
        held_out = samples[4::5]  # the samples CalibrationSplit holds out, as the debugger measured
        error = tensor_errors(
            float_proto, to_proto(quantized), tensor_elem_types(float_proto), held_out, names=["sentence_embedding"]
        )[0]
        return error.sqnr_db, error.cosine

    worst = ranked[0]
    alone_sqnr, _ = embedding_error([name for name in in_int8 if name != worst.node])
    assert alone_sqnr == pytest.approx(worst.alone_sqnr_db, abs=0.5)
    _, worst_kept_float = embedding_error([layer.node for layer in ranked[:3]])
    _, least_kept_float = embedding_error([layer.node for layer in ranked[-3:]])
    assert worst_kept_float > least_kept_float, (worst_kept_float, least_kept_float, result.outputs_all_int8)
