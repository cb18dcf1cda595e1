"""A demanding user's awkward input, beyond tests/test_bad_input.py's matrix: Ctrl-C during a pass and during the
save, ``--json`` on error paths, reports and bench results that cannot be written, broken configs, models from a
newer IR, bench data that does not fit. Each ends in one ``error:`` line, the right exit status, every input file
as it was, and no partial output.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxkit import modelio
from onnxkit.cli import main
from onnxkit.errors import ModelLoadError, ModelSaveError
from tests.test_bad_input import make_model, save_with_external_data


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(make_model(), path)
    return path


def _one_error_line(stderr: str, message: str) -> None:
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and message in lines[0], stderr
    assert len(lines) <= 2 and all(line.startswith(("error: ", "Note: ")) for line in lines), stderr


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C: a real process, a real SIGINT


_DRIVER = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from onnxkit import Pass, PassResult, modelio, register_pass
    from onnxkit.cli import main

    # A shell starts background jobs (CI runners among them) with SIGINT ignored, and Python keeps it ignored;
    # this process stands for a command run in the foreground, where Ctrl-C raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    marker = Path(sys.argv.pop(1))

    class Slow(Pass):
        name = "slow"

        def call(self, model):
            marker.write_text("pass")
            while True:  # Python code: the interrupt lands here, as in any long pass
                time.sleep(0.02)

    def slow_write(path, parts):  # the save's writer: half the model on disk, then a slow disk
        with open(path, "wb") as file:
            file.write(b"".join(parts)[:100])
            file.flush()
            marker.write_text("save")
            while True:
                time.sleep(0.02)

    register_pass(Slow)
    if "--passes" in sys.argv and sys.argv[sys.argv.index("--passes") + 1] == "cleanup":
        modelio._write_parts = slow_write
    main(prog_name="onnxkit")
    """
)


@pytest.mark.parametrize("where", ["pass", "save"])
def test_ctrl_c_exits_130_with_one_line_and_leaves_no_partial_output(tmp_path: Path, model: Path, where: str) -> None:
    (tmp_path / "out.onnx").write_bytes(b"an earlier output")  # must survive an interrupted save
    driver, marker = tmp_path / "driver.py", tmp_path / "marker"
    driver.write_text(_DRIVER)
    spec = "slow" if where == "pass" else "cleanup"
    arguments = [str(marker), "optimize", str(model), "--passes", spec, "-o", str(tmp_path / "out.onnx")]
    before = _digests(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, str(driver), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    deadline = time.monotonic() + 60
    while not (marker.exists() and marker.read_text() == where) and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the slow step"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    _one_error_line(stderr, "interrupted")
    marker.unlink()
    assert _digests(tmp_path) == before, "the input changed, the earlier output was touched, or a temporary stayed"


def test_an_interrupt_during_the_final_moves_of_a_save_waits_for_them() -> None:
    """The data file and the model are moved into place as one step: Ctrl-C between them would leave new data
    without its model; it is raised once both moves are done."""
    if sys.platform == "win32" or not _in_main_thread():
        pytest.skip("signal handlers are set from the main thread only")
    done = []
    # As in a foreground command (a background job, as under some CI runners, starts with SIGINT ignored).
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with modelio._interrupts_deferred():
                signal.raise_signal(signal.SIGINT)
                done.append("moves")
        assert done == ["moves"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outside)


def test_an_ignored_interrupt_stays_ignored_through_the_final_moves_of_a_save() -> None:
    """A process started with SIGINT ignored (a background job) keeps ignoring it: holding it for the moves
    must not turn it into a KeyboardInterrupt afterwards."""
    if sys.platform == "win32" or not _in_main_thread():
        pytest.skip("signal handlers are set from the main thread only")
    outside = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = []
        with modelio._interrupts_deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("moves")
        assert done == ["moves"]
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outside)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------------------
# --json: CI scripts parse stdout, errors included


@pytest.mark.parametrize(
    "args, exit_code, message",
    [
        (["optimize", "{dir}/missing.onnx", "--passes", "cleanup", "--json"], 2, "no such file"),
        (["optimize", "{model}", "--passes", "cleanup{", "--json"], 2, "unclosed '{'"),
        (["optimize", "{model}", "--passes", "cleanup", "--check", "bogus", "--json"], 2, "Invalid value"),
        (["optimize", "{model}", "--passes", "cleanup", "--dim", "batch", "--json"], 2, "bad --dim entry"),
        (["check", "{model}", "{dir}/missing.onnx", "--json"], 2, "no such file"),
        (["inspect", "{dir}", "--json"], 2, "is a folder"),
        (["debug", "quant", "{dir}/missing.onnx", "--calib-data", "{dir}/d.npz", "--json"], 2, "no such"),
    ],
)
def test_json_errors_are_json_on_stdout(model: Path, args: list[str], exit_code: int, message: str) -> None:
    folder = model.parent
    result = CliRunner().invoke(main, [a.replace("{model}", str(model)).replace("{dir}", str(folder)) for a in args])
    assert result.exit_code == exit_code, result.output
    payload = json.loads(result.stdout)
    assert message in payload["error"] and payload["exit_code"] == exit_code
    assert message in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Files written beside the model: checked before any work, written whole or not at all


@pytest.mark.parametrize("report", ["{dir}/no/r.json", "{dir}", "{dir}/m.onnx", "{dir}/file/r.md"])
def test_a_report_that_cannot_be_written_fails_before_the_run(model: Path, report: str) -> None:
    folder = model.parent
    (folder / "file").write_text("a file where a folder should be")
    before = _digests(folder)
    result = CliRunner().invoke(
        main,
        [
            "optimize",
            str(model),
            "--passes",
            "cleanup",
            "-o",
            str(folder / "o.onnx"),
            "--report",
            report.format(dir=folder),
        ],
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "")
    assert _digests(folder) == before, "no model is written when its report cannot be"


def test_report_is_written_atomically(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = model.parent
    (folder / "r.json").write_text("an earlier report")

    def fails(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fails)
    with pytest.raises(ModelSaveError, match="No space left on device"):
        modelio.write_text_atomic(folder / "r.json", "{}")
    assert (folder / "r.json").read_text() == "an earlier report"
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx", "r.json"]


def test_output_whose_folder_is_a_file_says_so(model: Path) -> None:
    (model.parent / "f").write_text("x")
    result = CliRunner().invoke(
        main, ["optimize", str(model), "--passes", "cleanup", "-o", str(model.parent / "f/o.onnx")]
    )
    assert result.exit_code == 2
    _one_error_line(result.stderr, "is a file, not a folder")


# ---------------------------------------------------------------------------------------------------------
# Models, configs, options and bench data


def test_a_model_from_a_newer_ir_is_refused_on_load(tmp_path: Path) -> None:
    proto = make_model()
    proto.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"IR version {onnx.IR_VERSION + 1}"):
        modelio.load_model(path)
    # debug quant calibrated it and failed with a ValueError traceback
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3, 16, 16), np.float32))
    result = CliRunner().invoke(
        main, ["debug", "quant", str(path), "--calib-data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "dq")]
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "IR version")
    assert not (tmp_path / "dq").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        ("passes = 3", "'passes' must be a list"),
        ("passes = [", "not valid TOML"),
        (b"\x08\x07\x12\x86\xff", "not valid TOML"),  # a binary file (a model) given as --config
    ],
)
def test_bad_configs_are_one_line(model: Path, config: str | bytes, message: str) -> None:
    path = model.parent / "c.toml"
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    result = CliRunner().invoke(
        main, ["optimize", str(model), "--config", str(path), "-o", str(model.parent / "o.onnx")]
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, message)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--atol", "-1"], "atol must be a non-negative number"),
        (["--min-cosine", "nan"], "min_cosine must lie between"),
        (["--dim", "=4"], "bad --dim entry"),
    ],
)
def test_bad_options_are_refused_even_when_no_check_would_read_them(
    model: Path, option: list[str], message: str
) -> None:
    output = model.parent / "o.onnx"
    result = CliRunner().invoke(main, ["optimize", str(model), "--passes", "cleanup", "-o", str(output), *option])
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, message)
    assert not output.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: (folder / "m.onnx").write_text("not a model\n"), "not a valid ONNX model"),
        (lambda folder: (folder / "m.onnx").mkdir(), "is a folder"),
        (
            lambda folder: save_with_external_data(make_model(), folder / "m.onnx", "../outside.bin"),
            "outside the model's folder",
        ),
    ],
)
def test_bench_refuses_a_bad_model_in_one_line(tmp_path: Path, make: object, message: str) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    make(folder)  # type: ignore[operator]
    result = CliRunner().invoke(main, ["bench", str(folder / "m.onnx"), "--passes", "cleanup", "--peers", "none"])
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, message)


@pytest.mark.parametrize(
    "array, message",
    [(np.ones((2, 3), np.float32), "rank 2"), (np.ones((2, 3, 16, 16), np.float64), "dtype float64")],
)
def test_bench_refuses_data_the_model_does_not_take_before_any_tool_runs(
    model: Path, array: np.ndarray, message: str
) -> None:
    np.savez(model.parent / "d.npz", x=array)
    result = CliRunner().invoke(
        main, ["bench", str(model), "--passes", "cleanup", "--peers", "none", "--data", str(model.parent / "d.npz")]
    )
    assert result.exit_code == 2, result.output  # was 0, with every tool FAILED in the table
    _one_error_line(result.stderr, message)


def test_bench_results_that_cannot_be_written_fail_before_the_bench(model: Path) -> None:
    result = CliRunner().invoke(
        main, ["bench", str(model), "--passes", "cleanup", "--peers", "none", "--json", str(model.parent / "no/b.json")]
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "does not exist")


# ---------------------------------------------------------------------------------------------------------
# The input's external data is part of the input


@pytest.mark.parametrize(
    "args",
    [
        ["-o", "{dir}/m.onnx.data"],
        ["-o", "{dir}/m.onnx.data", "--in-place"],  # --in-place replaces the model file, never its data
        ["-o", "{dir}/o.onnx", "--report", "{dir}/m.onnx.data"],
    ],
)
def test_an_output_over_the_inputs_external_data_is_refused(tmp_path: Path, args: list[str]) -> None:
    save_with_external_data(make_model(), tmp_path / "m.onnx", "m.onnx.data")
    before = _digests(tmp_path)
    result = CliRunner().invoke(
        main, ["optimize", str(tmp_path / "m.onnx"), "--passes", "cleanup", *(a.format(dir=tmp_path) for a in args)]
    )
    assert result.exit_code == 2, result.output  # was 0, the input's weights replaced by the output model
    _one_error_line(result.stderr, "the input model's external data is in it")
    assert _digests(tmp_path) == before


def test_save_refuses_the_data_file_its_own_weights_are_read_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 100)  # the 3 KiB weight stays in its file
    save_with_external_data(make_model(), tmp_path / "m.onnx", "m.onnx.data")
    before = _digests(tmp_path)
    model = modelio.load_model(tmp_path / "m.onnx")
    with pytest.raises(ModelSaveError, match="weights are read from it"):
        modelio.save_model(model, tmp_path / "m.onnx.data")
    assert _digests(tmp_path) == before


def test_reduce_never_writes_its_side_files_over_an_input(tmp_path: Path) -> None:
    """``reduce A B -o g.onnx`` also writes g.original.onnx and g.inputs.npz: reducing a pair that an earlier
    reduction wrote (g.original.onnx) into the same -o replaced the input being read."""
    onnx.save(make_model(), tmp_path / "g.original.onnx")
    candidate = make_model()
    candidate.graph.node[0].op_type = "Add"  # fails parity against the original's Mul
    onnx.save(candidate, tmp_path / "bad.onnx")
    before = _digests(tmp_path)
    result = CliRunner().invoke(
        main, ["reduce", str(tmp_path / "g.original.onnx"), str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "g.onnx")]
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "refusing to overwrite the input model")
    assert "--in-place" not in result.stderr  # reduce has no such option
    assert _digests(tmp_path) == before


def test_reduce_with_data_and_an_original_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    onnx.save(make_model(op="Foo", domain="com.acme"), tmp_path / "a.onnx")
    onnx.save(make_model(), tmp_path / "b.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3, 16, 16), np.float32))
    result = CliRunner().invoke(
        main,
        [
            "reduce",
            str(tmp_path / "a.onnx"),
            str(tmp_path / "b.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "-o",
            str(tmp_path / "r.onnx"),
        ],
    )
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "ONNX Runtime cannot load the original model")


def test_truncated_external_data_is_named_before_it_is_read(tmp_path: Path) -> None:
    save_with_external_data(make_model(), tmp_path / "m.onnx", "m.onnx.data")
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2, result.output
    _one_error_line(result.stderr, "external data file 'm.onnx.data' is truncated: it holds 100 bytes")
    assert "Note: the file may have been cut short" in result.stderr


@pytest.mark.parametrize("suffix", [".onnxtxt", ".json", ".textproto"])
def test_an_output_named_as_a_text_format_is_written_in_it(model: Path, suffix: str) -> None:
    """onnx picks the format by the extension on load: the binary bytes written to ``o.json`` could be read by
    nothing, onnxkit included."""
    output = model.parent / f"o{suffix}"
    result = CliRunner().invoke(main, ["optimize", str(model), "--passes", "cleanup", "-o", str(output)])
    assert result.exit_code == 0, result.output
    written = onnx.load(output)  # by the extension, as every onnx user reads it
    assert [node.op_type for node in written.graph.node] == ["Mul", "Relu"]
    import onnxruntime as ort

    session = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    sample = np.full((1, 3, 16, 16), 0.5, np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": sample})[0], np.maximum(sample * 2, 0))


def test_a_text_format_cannot_take_external_data(model: Path) -> None:
    with pytest.raises(ModelSaveError, match="cannot hold a model with external data"):
        modelio.save_model(modelio.load_model(model), model.parent / "o.json", external_data=True)
    assert sorted(p.name for p in model.parent.iterdir()) == ["m.onnx"]


def test_bench_of_a_model_onnx_runtime_cannot_run_exits_2(tmp_path: Path) -> None:
    onnx.save(make_model(op="Foo", domain="com.acme"), tmp_path / "m.onnx")
    result = CliRunner().invoke(
        main,
        [
            "bench",
            str(tmp_path / "m.onnx"),
            "--passes",
            "cleanup",
            "--peers",
            "none",
            "--repeats",
            "1",
            "--warmup",
            "0",
        ],
    )
    assert result.exit_code == 2, result.output  # was 0 with a table of failures
    *_progress, error, note = result.stderr.strip().splitlines()  # the bench's progress lines, then the error
    assert error.startswith("error: the original model does not run") and note.startswith("Note: ")
    assert "Traceback" not in result.stderr


def test_a_model_past_2gb_in_a_sparse_data_file_loads_lazily_and_a_cut_one_is_named(tmp_path: Path) -> None:
    """A real 2.4 GB external data file, sparse so that it costs no disk: the weights stay in their file (the
    load reads none of it), inspect works, and the same file cut short is one error line."""
    import onnx_ir as ir
    from onnx import TensorProto, helper

    count = 600_000_000  # float32: 2.4 GB, past protobuf's 2 GB
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[count], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "m.onnx.data"), ("offset", "0"), ("length", str(4 * count))):
        weight.external_data.add(key=key, value=value)
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [count]) for name in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    (tmp_path / "m.onnx").write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    with open(tmp_path / "m.onnx.data", "wb") as data:
        data.truncate(4 * count)
    loaded = modelio.load_model(tmp_path / "m.onnx")
    assert isinstance(loaded.graph.initializers["w"].const_value, ir.ExternalTensor)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0 and "2,400,000,000 bytes" in result.output, result.output
    os.truncate(tmp_path / "m.onnx.data", 10**6)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    _one_error_line(result.stderr, "is truncated: it holds 1000000 bytes, tensor 'w' needs bytes up to 2400000000")
