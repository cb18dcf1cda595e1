"""The CLI as a user meets it: real subprocesses, real files, exit codes, and nothing lost on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxkit.examples import build_example
from tests.conftest import run_model


def onnxkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxkit", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(build_example("mlp"), path)
    return path


def test_help_lists_commands():
    result = onnxkit("--help")
    assert result.returncode == 0
    for command in ("optimize", "passes", "inspect"):
        assert command in result.stdout


def test_passes_shows_kind_doc_and_options():
    result = onnxkit("passes")
    assert result.returncode == 0
    assert "cleanup  (exact)" in result.stdout
    assert "strict: bool = false" in result.stdout
    as_json = json.loads(onnxkit("passes", "--json").stdout)
    assert {"name": "strict", "type": "bool", "default": "false"} in next(
        p for p in as_json if p["name"] == "shape-inference"
    )["options"]


def test_inspect_text_and_json(model_path):
    text = onnxkit("inspect", str(model_path))
    assert text.returncode == 0
    assert "x: FLOAT [batch, 16]" in text.stdout
    summary = json.loads(onnxkit("inspect", str(model_path), "--json").stdout)
    assert summary["nodes"] == 8
    assert summary["op_histogram"]["Identity"] == 2
    assert summary["inputs"] == [{"name": "x", "dtype": "FLOAT", "shape": ["batch", 16]}]
    assert summary["initializer_bytes"] == (16 * 32 + 32 + 32 * 10 + 10 + 64) * 4


def test_inspect_counts_subgraphs(tmp_path):
    path = tmp_path / "branchy.onnx"
    onnx.save(build_example("branchy"), path)
    summary = json.loads(onnxkit("inspect", str(path), "--json").stdout)
    assert summary["subgraphs"] == 2
    assert summary["nodes"] == 4 + 2 + 3


def test_optimize_cleanup_keeps_outputs(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert f"saved {out}" in result.stdout
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_model(out, feeds)[0], run_model(model_path, feeds)[0], rtol=1e-6, atol=1e-6)
    metadata = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert metadata["onnxkit.spec"] == "cleanup"
    assert json.loads(metadata["onnxkit.passes"])[0]["stats"] == ["removed 3 nodes", "removed 1 unused initializers"]


def test_optimize_default_output_sits_beside_input(model_path):
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup")
    assert result.returncode == 0, result.stderr
    assert (model_path.parent / "m.opt.onnx").exists()


def test_optimize_json_report(model_path, tmp_path):
    result = onnxkit(
        "optimize", str(model_path), "--passes", "cleanup,shape-inference", "-o", str(tmp_path / "o.onnx"), "--json"
    )
    report = json.loads(result.stdout)
    assert [p["name"] for p in report["passes"]] == ["cleanup", "shape-inference"]
    cleanup = report["passes"][0]
    assert (cleanup["nodes_before"], cleanup["nodes_after"]) == (8, 5)
    assert cleanup["op_delta"] == {"Identity": -2, "Sigmoid": -1}
    assert cleanup["parity"]["passed"] is True


def test_example_quick_start(tmp_path):
    result = onnxkit("optimize", "--example", "cnn", "--passes", "cleanup", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cnn.opt.onnx").exists()


def test_second_run_is_a_no_op_with_identical_graph(model_path, tmp_path):
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    assert onnxkit("optimize", str(model_path), "--passes", "cleanup,shape-inference", "-o", str(first)).returncode == 0
    result = onnxkit("optimize", str(first), "--passes", "cleanup,shape-inference", "-o", str(second), "--json")
    assert all(not p["modified"] for p in json.loads(result.stdout)["passes"])
    graph_bytes = [onnx.load(p).graph.SerializeToString() for p in (first, second)]
    assert graph_bytes[0] == graph_bytes[1]


def _write_bad(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a model at all\n" * 10)
    elif kind == "truncated":
        path.write_bytes(build_example("cnn").SerializeToString()[:1500])
    elif kind == "folder":
        path.mkdir()


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "text", "truncated"])
def test_bad_models_exit_2_with_one_line_and_no_output(tmp_path, kind):
    path = tmp_path / "bad.onnx"
    _write_bad(kind, path, tmp_path)
    before = digest(path) if path.is_file() else None
    result = onnxkit("optimize", str(path), "--passes", "cleanup", "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert len(lines) <= 2  # the error, and at most one Note: hint
    assert not (tmp_path / "out.onnx").exists()
    if before is not None:
        assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.onnx"] if kind != "missing" else [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--passes", "cleanp"], "unknown pass 'cleanp'"),
        (["--passes", "shape-inference{strict=maybe}"], "option 'strict'"),
        (["--passes", "cleanup{depth=2}"], "has no option 'depth'"),
        (["--passes", "cleanup", "-o", "/nonexistent-folder/out.onnx"], "does not exist"),
    ],
)
def test_bad_specs_and_outputs_exit_2(model_path, args, message):
    before = digest(model_path)
    result = onnxkit("optimize", str(model_path), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert digest(model_path) == before
    assert sorted(p.name for p in model_path.parent.iterdir()) == ["m.onnx"]


def test_unwritable_output_folder_exits_2(model_path):
    # /proc refuses new files even for root, so this fails the same way on every machine.
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup", "-o", "/proc/out.onnx")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot write") and "Traceback" not in result.stderr


def test_output_that_is_a_folder_exits_2(model_path, tmp_path):
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup", "-o", str(tmp_path))
    assert result.returncode == 2
    assert "is a folder" in result.stderr


def test_refuses_to_overwrite_input_without_in_place(model_path):
    before = digest(model_path)
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup", "-o", str(model_path))
    assert result.returncode == 2
    assert "refusing to overwrite the input model" in result.stderr
    assert digest(model_path) == before
    result = onnxkit("optimize", str(model_path), "--passes", "cleanup", "-o", str(model_path), "--in-place")
    assert result.returncode == 0, result.stderr
    assert digest(model_path) != before


# ---------------------------------------------------------------------------------------------------------
# Exit codes: 0 every pass did its job within tolerance, 1 a pass failed or was rolled back, 2 a user error


def onnxkit_with_plugins(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command with tests/plugin_passes.py's misbehaving passes registered, as a user's plugins would be."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "tests.plugin_passes", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("on_fail", ["stop", "rollback", "warn"])
def test_a_pass_that_fails_parity_exits_1_whatever_on_fail_says(model_path, tmp_path, on_fail):
    out = tmp_path / "out.onnx"
    result = onnxkit_with_plugins(
        "optimize",
        str(model_path),
        "--passes",
        "cleanup,scale-weight",
        "-o",
        str(out),
        "--on-fail",
        on_fail,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    if on_fail == "stop":
        assert result.stderr.startswith("error: pass 'scale-weight' changed the model's outputs")
        assert not out.exists()
        return
    statuses = [
        record["status"]
        for record in json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["onnxkit.passes"])
    ]
    drift = np.abs(run_model(out, feeds)[0] - run_model(model_path, feeds)[0]).max()
    if on_fail == "rollback":
        assert statuses == ["ok", "rolled-back"]
        assert "rolled back: scale-weight (the saved model does without it)" in result.stdout
        assert drift < 1e-5  # the saved model is correct: the input with only cleanup applied
    else:
        assert statuses == ["ok", "parity-warning"]
        assert "parity failed; kept because --on-fail warn was given" in result.stdout
        assert drift > 1e-3  # kept as asked, and the exit code says it is not within tolerance


def test_internal_error_of_a_pass_is_one_line_and_its_traceback_only_with_verbose(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    args = ("optimize", str(model_path), "--passes", "type-error,cleanup", "-o", str(out))
    rolled_back = onnxkit_with_plugins(*args, "--on-fail", "rollback", cwd=tmp_path)
    assert rolled_back.returncode == 1, rolled_back.stderr
    assert "type-error: pass 'type-error' hit an internal error: TypeError: " in rolled_back.stdout
    assert "Traceback" not in rolled_back.stdout + rolled_back.stderr
    assert out.exists()
    stopped = onnxkit_with_plugins(*args, cwd=tmp_path)
    assert stopped.returncode == 1
    assert stopped.stderr.startswith("error: pass 'type-error' hit an internal error: TypeError: ")
    assert "Traceback" not in stopped.stderr
    verbose = onnxkit_with_plugins(*args, "--verbose", cwd=tmp_path)
    assert verbose.returncode == 1
    assert "Traceback" in verbose.stderr and "plugin_passes.py" in verbose.stderr
    report = json.loads(onnxkit_with_plugins(*args, "--on-fail", "rollback", "--json", cwd=tmp_path).stdout)
    assert "Traceback" in report["passes"][0]["traceback"] and report["exit_code"] == 1


def test_user_error_inside_a_pass_exits_2(model_path, tmp_path):
    result = onnxkit_with_plugins(
        "optimize",
        str(model_path),
        "--passes",
        "bad-data",
        "-o",
        str(tmp_path / "o.onnx"),
        "--on-fail",
        "rollback",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: input 'x' has 3 dims") and "Traceback" not in result.stderr


def test_narrowed_pass_exits_0_and_says_what_it_skipped(tmp_path):
    from tests.plugin_passes import relu_chain

    model, out = tmp_path / "chain.onnx", tmp_path / "out.onnx"
    onnx.save(relu_chain(), model)
    result = onnxkit_with_plugins("optimize", str(model), "--passes", "two-rules-checker", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "two-rules-checker: skipped relu-as-max at node relu_1 (onnx.checker: Unrecognized attribute: alpha "
        "for operator Max)"
    ) in result.stdout
    assert "narrowed" in result.stdout
    onnx.checker.check_model(onnx.load(out), full_check=True)
