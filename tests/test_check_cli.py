"""``onnxkit check``: exit 0 within tolerance, 1 outside it, 2 on a user error; in-process and as a real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit.cli import main


def classifier(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"], axis=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weight.shape[1]]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", weight.shape[1]]),
        ],
        [numpy_helper.from_array(weight, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def models(tmp_path: Path, rng: np.random.Generator) -> dict[str, Path]:
    weight = rng.standard_normal((6, 4)).astype(np.float32)
    perturbed = weight.copy()
    perturbed[2, 1] += 0.1  # one weight changed
    paths = {
        "reference": tmp_path / "ref.onnx",
        "copy": tmp_path / "copy.onnx",
        "perturbed": tmp_path / "perturbed.onnx",
    }
    onnx.save(classifier(weight), paths["reference"])
    onnx.save(classifier(weight.copy()), paths["copy"])
    onnx.save(classifier(perturbed), paths["perturbed"])
    return paths


def check(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["check", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_identical_copy_passes_with_one_line_per_output(models) -> None:
    code, output = check(models["reference"], models["copy"], "--dim", "batch=3")
    assert code == 0, output
    lines = output.strip().splitlines()
    assert lines[0].startswith("PASSED  logits  float32[3, 4]  max abs 0")
    assert lines[1].startswith("PASSED  probs  float32[3, 4]")
    assert lines[-1].startswith("PASSED: all 2 outputs within tolerance (atol 0.0001, rtol 0.001) over 4 samples")


def test_perturbed_weight_fails_with_metrics_and_minimum_tolerance(models) -> None:
    code, output = check(models["reference"], models["perturbed"], "--samples", "3")
    assert code == 1
    logits = next(line for line in output.splitlines() if line.startswith("FAILED  logits"))
    for text in ("max abs", "max rel", "cosine", "SQNR", "top-1", "elements beyond atol", "would pass with atol >="):
        assert text in logits
    assert output.strip().splitlines()[-1].startswith("FAILED: 2 of 2 outputs outside tolerance")
    # The printed minimum atol is enough; just below the real threshold is not.
    needed = float(logits.split("would pass with atol >= ")[1].split(" ")[0])
    assert check(models["reference"], models["perturbed"], "--samples", "3", "--atol", needed)[0] == 0
    report = json.loads(check(models["reference"], models["perturbed"], "--samples", "3", "--json")[1])
    exact_needed = max(o["min_atol"] for o in report["outputs"])
    assert check(models["reference"], models["perturbed"], "--samples", "3", "--atol", exact_needed * 0.99)[0] == 1


def test_budget_options_and_json(models) -> None:
    code, output = check(models["reference"], models["perturbed"], "--min-cosine", "0.9", "--json")
    report = json.loads(output)
    assert code == 0 and report["passed"] is True
    assert report["tolerance"]["atol"] is None and report["tolerance"]["min_cosine"] == 0.9
    assert {"passed", "max_abs_error", "min_cosine", "outputs", "errors"} <= report.keys()
    code, output = check(
        models["reference"],
        models["perturbed"],
        "--min-cosine",
        "0.9",
        "--output-tolerance",
        "logits:min-cosine=0.9999999",
        "--json",
    )
    report = json.loads(output)
    assert code == 1 and [o["passed"] for o in report["outputs"]] == [False, True]


def test_user_errors_exit_2_without_traceback(models, tmp_path) -> None:
    code, output = check(models["reference"], tmp_path / "missing.onnx")
    assert code == 2 and "error: no such file" in output and "Traceback" not in output
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 5), np.float64))
    code, output = check(models["reference"], models["copy"], "--data", tmp_path / "wrong.npz")
    assert code == 2 and "input 'x' has dtype float64" in output
    assert check(models["reference"], models["copy"], "--dim", "batch=0")[0] == 2
    assert check(models["reference"], models["copy"], "--output-tolerance", "logits:bogus=1")[0] == 2


def test_real_onnxkit_command(models, tmp_path) -> None:
    command = Path(sys.executable).parent / "onnxkit"
    assert command.exists(), "the onnxkit console script is installed with the package"
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(3).standard_normal((5, 2, 6)).astype(np.float32))

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([str(command), "check", *map(str, args)], capture_output=True, text=True, check=False)

    passed = run(models["reference"], models["copy"], "--data", tmp_path / "inputs.npz")
    assert passed.returncode == 0, passed.stderr
    assert "over 5 samples" in passed.stdout
    failed = run(models["reference"], models["perturbed"], "--data", tmp_path / "inputs.npz")
    assert failed.returncode == 1 and "FAILED  logits" in failed.stdout
    usage = run(models["reference"], tmp_path / "missing.onnx")
    assert usage.returncode == 2 and "error: no such file" in usage.stderr and "Traceback" not in usage.stderr
