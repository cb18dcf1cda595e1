"""`onnxkit demo`: the whole workflow end to end, and its fallback when passes are missing."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from onnxkit.cli import main
from onnxkit.pytorch.demo import DEMO_SPEC, _available_spec

torch.set_num_threads(1)


def test_a_spec_without_unregistered_passes_names_them():
    assert _available_spec(DEMO_SPEC) == (DEMO_SPEC, [])
    assert _available_spec("simplify,no-such-pass{x=1},fuse") == ("simplify,fuse", ["no-such-pass"])


@pytest.mark.slow  # trains, exports, calibrates and times: about a minute on 2 shared cores
def test_demo_trains_exports_quantizes_and_reports(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert report["spec"] == DEMO_SPEC and report["missing_passes"] == []
    assert report["training"]["amp"] == "bfloat16" and report["training"]["accumulation_steps"] == 2
    # Export parity, torch against ONNX Runtime, at the example batch size and at another.
    checks = report["export"]["checks"]
    assert [c["shapes"]["image"][0] for c in checks] == [1, 4]
    assert all(c["passed"] and c["outputs"][0]["max_abs_error"] <= 1e-4 for c in checks)
    # Accuracy: FP32 at least 95%, INT8 at most half a point below it.
    fp32, int8 = report["fp32"], report["int8"]
    assert fp32["accuracy"] >= 0.95
    assert int8["accuracy"] >= fp32["accuracy"] - 0.005
    # The latency gate is on: INT8 is either really INT8 and kept because the gate timed it faster than FP32
    # on this CPU, or the float model with the reason, in one line. Which one depends on the CPU, not the test.
    quantize = next(p for p in report["pipeline"]["passes"] if p["name"] == "quantize")
    assert fp32["int8_ops"] == [] and "max_slowdown" not in report["spec"]
    if quantize["modified"]:
        assert set(int8["int8_ops"]) == {"Conv", "Gemm"} and int8["bytes"] < fp32["bytes"] / 2
        assert quantize["details"]["latency"]["ratio"] <= 1.02  # the gate's own verdict, within timing resolution
        assert report["int8_verdict"].startswith("INT8 kept by the latency gate: ")
    else:
        assert int8["int8_ops"] == [] and report["int8_verdict"].startswith("INT8 not used on this ")
    assert report["parity"]["passed"] and all(p["status"] == "ok" for p in report["pipeline"]["passes"])

    for name in (
        "model.fp32.onnx",
        "model.int8.onnx",
        "model.pt",
        "report.json",
        "report.md",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (out / name).is_file(), name
    markdown = (out / "report.md").read_text()
    assert "| test accuracy |" in markdown and "| INT8 compute ops |" in markdown
