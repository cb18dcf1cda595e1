"""The ``--scale`` benchmark's steps on a small version of its model: every tool runs in its own process, and
the quantized models it reports valid really are (the real run uses a >2 GB model; see benchmarks/measure.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import measure
from benchmarks.report import _scale_section


@pytest.mark.slow
def test_scale_steps_run_every_tool_and_check_the_quantized_models(tmp_path: Path) -> None:
    result = measure.scale_test(tmp_path, target_bytes=32 * 2**20)
    tools = {t["label"]: t for t in result["tools"]}
    assert list(tools) == [tool.label for tool, _ in measure.SCALE_TOOLS]
    assert all(t["ok"] for t in tools.values()), {label: t["error"] for label, t in tools.items() if not t["ok"]}
    data_bytes = result["model"]["data_bytes"]
    for label in ("onnxkit quantize{mode=dynamic}", "ort-quantize-dynamic"):
        assert tools[label]["valid"] == "valid"
        assert tools[label]["file_bytes"] < data_bytes / 3  # INT8 weights: a quarter of the float ones
        assert (
            "MatMulInteger" in tools[label]["op_histogram"] or "DynamicQuantizeLinear" in tools[label]["op_histogram"]
        )
    assert tools["onnxkit"]["op_histogram"] == {"Gemm": 1, "Relu": 1}
    assert any("quantize{mode=dynamic}" in line and "valid" in line for line in _scale_section(result))
    assert not list(tmp_path.glob("scale-*.onnx*")), "each tool's output model is removed once measured"
