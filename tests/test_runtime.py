"""onnxkit.runtime: the one session factory, ORT's errors as one line, ORT kept quiet, external data found
from any folder — in-process and through the CLI, run from a folder that is not the model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import modelio, runtime

ORT_LOG_MARKERS = ("[E:onnxruntime", "[W:onnxruntime")


def _reshape_to_3x5() -> onnx.ModelProto:
    """Loads fine, and fails in ORT at run time on every input but one of 15 elements."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_to_3x5")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
        [numpy_helper.from_array(np.array([3, 5], np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _custom_domain_op() -> onnx.ModelProto:
    """A valid ONNX model that ORT cannot load: an op of a domain it has no kernels for (like onnx.brevitas)."""
    graph = helper.make_graph(
        [helper.make_node("Quant", ["x"], ["y"], domain="onnx.brevitas")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("onnx.brevitas", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _save_with_external_data(folder: Path) -> Path:
    """MatMul by a 32x32 weight kept in ``weights.bin``, then an Identity that ``cleanup`` removes."""
    weight = numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(32, 32) / 1024, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Identity", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 32])],
        [weight],
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        path,
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def _onnxkit(*args: str | os.PathLike[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "onnxkit", *map(str, args)]
    return subprocess.run(
        command,
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


# --- one line per ORT error ---------------------------------------------------------------------------------


def test_a_run_failure_becomes_one_line_that_names_the_node() -> None:
    session = runtime.make_session(_reshape_to_3x5())
    with pytest.raises(Exception) as caught:
        session.run(None, {"x": np.ones(4, np.float32)})
    line = runtime.error_line(caught.value)
    assert line.startswith("Reshape node 'reshape_to_3x5': ")
    assert "cannot be reshaped" in line and "{3,5}" in line
    for noise in ("[ONNXRuntimeError]", "Non-zero status code", "onnxruntime_src", ".h:", "was false", "\n"):
        assert noise not in line
    assert runtime.failing_node(caught.value) == ("Reshape", "reshape_to_3x5")


def test_a_load_failure_becomes_one_line() -> None:
    with pytest.raises(Exception) as caught:
        runtime.make_session(_custom_domain_op())
    line = runtime.error_line(caught.value)
    assert "onnx.brevitas:Quant" in line and "is not a registered function/op" in line
    assert "[ONNXRuntimeError]" not in line and not line.startswith("Load model")


def test_error_line_leaves_other_errors_as_their_first_line() -> None:
    assert runtime.error_line(ValueError("bad value\nmore detail")) == "bad value"
    assert runtime.error_line(KeyError()) == "KeyError"


# --- sessions ---------------------------------------------------------------------------------------------


def test_sessions_from_every_kind_of_model_agree(tmp_path: Path) -> None:
    proto = _reshape_to_3x5()
    onnx.save(proto, tmp_path / "m.onnx")
    feeds = {"x": np.arange(15, dtype=np.float32)}
    sources = [
        tmp_path / "m.onnx",
        str(tmp_path / "m.onnx"),
        proto,
        proto.SerializeToString(),
        ir.serde.deserialize_model(proto),
    ]
    for source in sources:
        np.testing.assert_array_equal(runtime.make_session(source).run(None, feeds)[0], feeds["x"].reshape(3, 5))


def test_caller_options_are_kept_but_made_quiet() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 0
    options.intra_op_num_threads = 2
    session = runtime.make_session(_reshape_to_3x5(), options=options)
    assert session.get_session_options().log_severity_level == 4
    assert session.get_session_options().intra_op_num_threads == 2


def test_in_memory_model_finds_its_external_data_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    path = _save_with_external_data(tmp_path / "models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    feeds = {"x": np.ones((2, 32), np.float32)}
    expected = runtime.make_session(path).run(None, feeds)[0]

    serialized = onnx.load(path, load_external_data=False).SerializeToString()  # references weights.bin
    with pytest.raises(Exception, match=r"weights\.bin"):
        runtime.make_session(serialized)  # ORT alone looks in the current folder
    np.testing.assert_array_equal(runtime.make_session(serialized, model_dir=path.parent).run(None, feeds)[0], expected)
    # An ir.Model that reads its weights lazily from the file knows where they are.
    np.testing.assert_array_equal(runtime.make_session(ir.load(path)).run(None, feeds)[0], expected)
    np.testing.assert_array_equal(runtime.make_session(modelio.load_model(path)).run(None, feeds)[0], expected)


def test_one_options_object_serves_models_whose_data_is_in_different_places(tmp_path: Path, monkeypatch) -> None:
    """Parity shares one options object between its two sessions: the data folder of one must not stick."""
    first, second = _save_with_external_data(tmp_path / "first"), _save_with_external_data(tmp_path / "second")
    in_memory = modelio.load_model(second)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    feeds = {"x": np.ones((2, 32), np.float32)}
    expected = runtime.make_session(first).run(None, feeds)[0]
    options = runtime.session_options()
    sessions = [
        runtime.make_session(
            onnx.load(first, load_external_data=False).SerializeToString(), options=options, model_dir=first.parent
        ),
        runtime.make_session(ir.load(second), options=options),  # weights read by ORT from the second folder
    ]
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1024)  # "over 2 GB": through a temporary folder
    sessions.append(runtime.make_session(in_memory, options=options))
    for session in sessions:
        np.testing.assert_array_equal(session.run(None, feeds)[0], expected)


# --- the CLI, run from a folder that is not the model's -----------------------------------------------------


@pytest.fixture
def external_data_model(tmp_path: Path) -> tuple[Path, Path]:
    """(the model, an empty folder elsewhere to run from)"""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return _save_with_external_data(tmp_path / "models"), elsewhere


def test_optimize_and_check_run_from_another_folder(tmp_path: Path, external_data_model) -> None:
    model, elsewhere = external_data_model
    output = tmp_path / "out" / "model.opt.onnx"
    output.parent.mkdir()
    optimized = _onnxkit("optimize", model, "--passes", "cleanup", "-o", output, cwd=elsewhere)
    assert optimized.returncode == 0, optimized.stderr
    assert "PASSED" in optimized.stdout  # cleanup removed the Identity, so parity ran on the in-memory model
    feeds = {"x": np.full((2, 32), 0.5, np.float32)}
    np.testing.assert_allclose(
        runtime.make_session(output).run(None, feeds)[0], runtime.make_session(model).run(None, feeds)[0], rtol=1e-6
    )

    checked = _onnxkit("check", model, output, cwd=elsewhere)
    assert checked.returncode == 0, checked.stderr
    assert "PASSED" in checked.stdout


@pytest.mark.parametrize("layout", ["--external-data", "--no-external-data"])
def test_optimize_writes_the_weights_where_the_output_is(tmp_path: Path, external_data_model, layout: str) -> None:
    model, elsewhere = external_data_model
    output = tmp_path / "out.onnx"
    result = _onnxkit("optimize", model, "--passes", "cleanup", layout, "-o", output, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.onnx.data").exists() == (layout == "--external-data")
    locations = {t.data_location for t in onnx.load(output, load_external_data=False).graph.initializer}
    assert (TensorProto.EXTERNAL in locations) == (layout == "--external-data")
    feeds = {"x": np.full((2, 32), 0.25, np.float32)}
    np.testing.assert_allclose(
        runtime.make_session(output).run(None, feeds)[0], runtime.make_session(model).run(None, feeds)[0], rtol=1e-6
    )


def test_inspect_runs_from_another_folder(external_data_model) -> None:
    model, elsewhere = external_data_model
    result = _onnxkit("inspect", model, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "MatMul" in result.stdout


def test_bench_runs_from_another_folder(tmp_path: Path, external_data_model) -> None:
    model, elsewhere = external_data_model
    result = _onnxkit(
        "bench",
        model,
        "--passes",
        "cleanup",
        "--peers",
        "ort-basic",
        "--batch",
        "2",
        "--threads",
        "1",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--min-seconds",
        "0",
        "--json",
        tmp_path / "bench.json",
        cwd=elsewhere,
    )
    assert result.returncode == 0, result.stderr
    tools = {tool["label"]: tool for tool in json.loads((tmp_path / "bench.json").read_text())["tools"]}
    assert set(tools) == {"original", "onnxkit", "ort-basic"}
    assert all(tool["ok"] and tool["latency"]["b2-t1"]["runs"] >= 2 for tool in tools.values()), tools
    assert tools["onnxkit"]["parity"]["passed"] and tools["ort-basic"]["parity"]["passed"]


# --- ORT stays quiet ----------------------------------------------------------------------------------------


def _assert_one_clean_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    """A user error: exit 2, one ``error:`` line naming ``expected``, no ORT log line, no traceback."""
    assert result.returncode == 2
    assert not any(marker in result.stderr for marker in ORT_LOG_MARKERS), result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert "Traceback" not in result.stderr


def test_a_model_that_fails_at_run_time_gives_one_line_and_no_ort_log(tmp_path: Path) -> None:
    onnx.save(_reshape_to_3x5(), tmp_path / "m.onnx")
    np.savez(tmp_path / "bad.npz", x=np.ones((1, 4), np.float32))
    result = _onnxkit("check", "m.onnx", "m.onnx", "--data", "bad.npz", cwd=tmp_path)
    _assert_one_clean_error(result, "cannot be reshaped")


def test_a_model_ort_cannot_load_gives_one_line_and_no_ort_log(tmp_path: Path) -> None:
    onnx.save(_custom_domain_op(), tmp_path / "m.onnx")
    result = _onnxkit("check", "m.onnx", "m.onnx", cwd=tmp_path)
    _assert_one_clean_error(result, "onnx.brevitas:Quant")


def test_set_verbose_lets_ort_log_lines_through(tmp_path: Path) -> None:
    """The other side of the quiet tests: the log lines they look for do appear when asked for."""
    onnx.save(_reshape_to_3x5(), tmp_path / "m.onnx")
    script = (
        "import numpy as np, sys\n"
        "from onnxkit import runtime\n"
        "runtime.set_verbose(sys.argv[1] == 'verbose')\n"
        "session = runtime.make_session('m.onnx')\n"
        "try:\n"
        "    session.run(None, {'x': np.ones(4, np.float32)})\n"
        "except Exception as e:\n"
        "    print(runtime.error_line(e))\n"
    )
    quiet, verbose = (
        subprocess.run(
            [sys.executable, "-c", script, mode], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        for mode in ("quiet", "verbose")
    )
    assert "cannot be reshaped" in quiet.stdout and "cannot be reshaped" in verbose.stdout
    assert "[E:onnxruntime" not in quiet.stderr
    assert "[E:onnxruntime" in verbose.stderr
