"""Shared test helpers: real ONNX Runtime runs of small inline models."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

# Two cores are shared by everything on these machines: keep each session to one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model in ONNX Runtime (graph optimizations off, one thread) and return its outputs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# A test that measures something worth reading in CI's log (the node-test corpus counts) records it with
# ``record_property("summary", text)``; the lines are printed after the run. User properties travel from
# pytest-xdist workers to the controller, where plain prints are lost.
_summaries: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _summaries.extend(str(value) for key, value in report.user_properties if key == "summary")


def pytest_terminal_summary(terminalreporter) -> None:
    if _summaries:
        terminalreporter.section("measured")
        for line in _summaries:
            terminalreporter.write_line(line)
