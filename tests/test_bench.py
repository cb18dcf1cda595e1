"""`onnxkit bench` on a tiny model: every tool really runs, and the JSON holds real, consistent figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import run_model
from onnx import TensorProto, helper, numpy_helper

from onnxkit.bench import run_bench
from onnxkit.cli import main


def tiny_classifier(path: Path) -> Path:
    """[batch, 8] → Identity → MatMul+Add → Relu → MatMul → [batch, 4]; the Identity is clutter to remove."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 4)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["x_copy"]),
            helper.make_node("MatMul", ["x_copy", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_bench_cli_writes_real_figures_for_every_tool(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    samples = np.random.default_rng(1).standard_normal((12, 8)).astype(np.float32)
    labels = np.argmax(run_model(onnx.load(model), {"x": samples})[0], axis=1)
    np.savez(tmp_path / "data.npz", x=samples, labels=labels)
    out = tmp_path / "bench.json"

    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(model),
            "--passes",
            "cleanup",
            "--peers",
            "onnxslim,ort-basic",
            "--data",
            str(tmp_path / "data.npz"),
            "--batch",
            "1,4",
            "--threads",
            "1",
            "--repeats",
            "3",
            "--warmup",
            "1",
            "--min-seconds",
            "0",
            "--json",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["specs"] == ["cleanup"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["versions"]["onnxruntime"]
    records = {t["label"]: t for t in report["tools"]}
    assert list(records) == ["original", "onnxkit", "onnxslim", "ort-basic"]
    original = records["original"]
    assert original["nodes"] == 5 and original["file_bytes"] == model.stat().st_size
    for label, record in records.items():
        assert record["ok"], (label, record["error"])
        assert record["accuracy"] == 1.0  # labels are the original's own predictions
        for key in ("b1-t1", "b4-t1"):
            latency = record["latency"][key]
            assert latency["runs"] == 3 and 0 < latency["p50_ms"] <= latency["p90_ms"]
        if label != "original":
            parity = record["parity"]
            assert parity["passed"] and parity["min_cosine"] > 0.99999 and parity["max_abs_error"] < 1e-4
            assert record["transform_seconds"] > 0 and record["peak_rss_bytes"] > 10 * 2**20
            assert record["ratios"]["vs_original"]["nodes"] == record["nodes"] / original["nodes"]
    # The Identity goes, whoever removes it, and the report says how onnxkit compares with the better peer.
    assert records["onnxkit"]["nodes"] == 4
    assert records["onnxkit"]["op_histogram"] == {"Add": 1, "MatMul": 2, "Relu": 1}
    best_nodes = min(records["onnxslim"]["nodes"], records["ort-basic"]["nodes"])
    assert records["onnxkit"]["ratios"]["vs_best_peer"]["nodes"] == 4 / best_nodes
    assert "onnxkit" in result.output and "ort-basic" in result.output


def test_a_failing_tool_is_a_row_not_a_crash(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")

    report = run_bench(model, "cleanup", peers=["ort-basic"], timeout=0.01, measure=False)

    rows = {t.label: t for t in report.tools}
    for label in ("onnxkit", "ort-basic"):
        assert not rows[label].ok and rows[label].error.startswith("timed out after")
        assert rows[label].nodes is None
    assert rows["original"].ok and rows["original"].nodes == 5


def test_quantize_peers_follow_the_pipelines_mode(tmp_path: Path) -> None:
    from onnxkit.bench import plan_tools

    tools, notes = plan_tools(["cleanup", "cleanup,quantize{mode=static}"], None)
    labels = [t.label for t in tools]
    assert "ort-quantize-static" in labels and "ort-quantize-dynamic" not in labels
    assert {t.klass for t in tools if t.label.startswith("onnxkit")} == {"exact", "static"}

    tools, notes = plan_tools(["cleanup,quantize{mode=auto}"], None)
    assert {t.label for t in tools if t.runner == "ort-quantize"} == {"ort-quantize-dynamic", "ort-quantize-static"}

    tools, notes = plan_tools(["cleanup"], None)
    assert not any(t.runner == "ort-quantize" for t in tools)
    assert any("ort-quantize" in note for note in notes)


def test_bench_rejects_unknown_peer(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(main, ["bench", str(model), "--passes", "cleanup", "--peers", "onnxwhatever"])
    assert result.exit_code == 2
    assert "unknown peer 'onnxwhatever'" in result.output


@pytest.mark.slow
def test_quick_suite_writes_results_for_every_model_and_tool(tmp_path: Path) -> None:
    """The CI smoke run of the suite: one command, every model × tool in RESULTS.md, JSON and plots written."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=repo,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert [m["name"] for m in results["models"]] == ["digits-cnn", "lstm"]
    for model in results["models"]:
        assert f"### {model['name']}" in markdown
        for tool in model.get("report", {}).get("tools", []):
            assert f"| {tool['label']} |" in markdown  # every tool has its row, failed or not
    measured = [m for m in results["models"] if "report" in m]
    assert measured, "no model could be built"
    for model in measured:
        original = model["report"]["tools"][0]
        assert original["label"] == "original" and original["nodes"] > 0
        assert original["latency"]["b1-t1"]["p50_ms"] > 0
    assert "## Known gaps" in markdown and "## Calibration memory" in markdown
    assert all((tmp_path / "plots" / f"{name}.png").stat().st_size > 1000 for name in ("latency", "size"))


def test_static_quantization_is_calibrated_on_the_same_samples_by_both_tools(tmp_path: Path) -> None:
    model = tiny_classifier(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32))

    report = run_bench(
        model,
        "quantize{mode=static,max_slowdown=none}",
        data=tmp_path / "data.npz",
        peers=["ort-quantize"],
        batch_sizes=[1],
        threads=[1],
        repeats=2,
        warmup=0,
        min_seconds=0,
    )

    rows = {t.label: t for t in report.tools}
    assert list(rows) == ["original", "onnxkit", "ort-quantize-static"]
    for label in ("onnxkit", "ort-quantize-static"):
        record = rows[label]
        assert record.ok, record.error
        assert record.klass == "static" and record.op_histogram.get("QuantizeLinear", 0) >= 1
        assert record.parity["passed"] and record.parity["min_cosine"] >= 0.99  # the lossy budget
    assert "calibrated (minmax) on 40 samples" in rows["ort-quantize-static"].notes
    assert rows["onnxkit"].ratios["best_peer"]["nodes"] == "ort-quantize-static"
