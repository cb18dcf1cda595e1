"""The bad-input matrix (issue 12): every way a user's model, data, spec or output can be wrong, through the
CLI and through the Python API.

Each case must end in one ``error:`` line naming the problem plus a ``Note:`` hint, exit 2 for a user error,
no traceback, no ONNX Runtime log line, every input file byte for byte as it was, and nothing new left in the
folder: no output, no temporary. The CLI runs in-process (click's runner) with ``capfd`` watching the real
file descriptors, where ONNX Runtime's C++ logger writes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit.cli import main
from onnxkit.errors import OnnxkitError
from onnxkit.pipeline import Pipeline

SIDE = 16  # the input is float32[batch,3,16,16]; the weight (3 KiB) goes to external data when asked


def make_model(
    *, inputs: bool = True, outputs: bool = True, op: str = "Relu", domain: str = "", opset: int = 17
) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, SIDE, SIDE])
    weight = numpy_helper.from_array(np.full((1, 3, SIDE, SIDE), 2.0, np.float32), "w")
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["t"], name="scale"),
        helper.make_node(op, ["t"], ["y"], name="act", domain=domain),
    ]
    if not inputs:
        constant = numpy_helper.from_array(np.ones((1, 3, SIDE, SIDE), np.float32))
        nodes.insert(0, helper.make_node("Constant", [], ["x"], value=constant))
    graph = helper.make_graph(nodes, "g", [x] if inputs else [], [y] if outputs else [], [weight])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def save_with_external_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save ``model`` with its weight in external data, then point the weight at ``location`` as given."""
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )
    proto = onnx.load(path, load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(proto.SerializeToString())


def x_array(*, batch: int = 2, dtype: type = np.float32, shape: tuple[int, ...] | None = None) -> np.ndarray:
    return np.ones(shape or (batch, 3, SIDE, SIDE), dtype)


@dataclasses.dataclass
class Case:
    """What the user gives: the model, then extra CLI options (``{dir}`` is the case's folder) and the same
    through the Python API; ``None`` where the interface has no such thing to get wrong."""

    message: str
    model: str = "m.onnx"
    cli: list[str] | None = dataclasses.field(default_factory=lambda: ["--passes", "cleanup"])
    api: dict | None = dataclasses.field(default_factory=dict)
    spec: str = "cleanup"
    exit_code: int = 2


def _write(folder: Path, name: str, content: bytes) -> None:
    (folder / name).write_bytes(content)


def _model_cases() -> dict[str, tuple[Callable[[Path], None], Case]]:
    cnn_bytes = make_model().SerializeToString()

    def save(model: onnx.ModelProto) -> Callable[[Path], None]:
        return lambda folder: onnx.save(model, folder / "m.onnx")

    def symlinked_outside(folder: Path) -> None:
        outside = folder.parent / f"{folder.name}-outside.bin"
        outside.write_bytes(b"\0" * 4096)
        (folder / "link.bin").symlink_to(outside)
        save_with_external_data(make_model(), folder / "m.onnx", "link.bin")

    def escaping(location: Callable[[Path], str]) -> Callable[[Path], None]:
        def build(folder: Path) -> None:
            outside = folder.parent / f"{folder.name}-outside.bin"
            outside.write_bytes(b"\0" * 4096)
            save_with_external_data(make_model(), folder / "m.onnx", location(outside))

        return build

    def missing_data(folder: Path) -> None:
        save_with_external_data(make_model(), folder / "m.onnx", "m.onnx.data")
        (folder / "m.onnx.data").unlink()

    return {
        "missing path": (lambda folder: None, Case("no such file")),
        "folder": (lambda folder: (folder / "m.onnx").mkdir(), Case("is a folder")),
        "empty file": (lambda folder: _write(folder, "m.onnx", b""), Case("is empty")),
        "random bytes": (
            lambda folder: _write(folder, "m.onnx", np.random.default_rng(0).bytes(4000)),
            Case("not a valid ONNX model"),
        ),
        "truncated model": (
            lambda folder: _write(folder, "m.onnx", cnn_bytes[: len(cnn_bytes) // 2]),
            Case("not a valid ONNX model"),
        ),
        "protobuf, not a model": (
            lambda folder: _write(
                folder, "m.onnx", helper.make_tensor("t", TensorProto.FLOAT, [1], [1.0]).SerializeToString()
            ),
            Case("not"),
        ),
        "missing external data": (missing_data, Case("is missing")),
        "external data ../": (escaping(lambda outside: f"../{outside.name}"), Case("outside the model's folder")),
        "external data absolute": (escaping(str), Case("absolute external-data location")),
        "external data symlink": (symlinked_outside, Case("outside the model's folder")),
        "custom op, parity on": (
            save(make_model(op="Foo", domain="com.acme")),
            Case("ONNX Runtime does not know operator com.acme:Foo"),
        ),
        "custom op, quantize": (
            save(make_model(op="Foo", domain="com.acme")),
            Case(
                "ONNX Runtime does not know operator com.acme:Foo",
                cli=["--passes", "quantize{mode=dynamic}", "--check", "off"],
                api={"check": "off"},
                spec="quantize{mode=dynamic}",
            ),
        ),
        "unknown opset": (save(make_model(opset=99)), Case("opset 99 of domain 'ai.onnx'")),
        "no inputs": (save(make_model(inputs=False)), Case("no graph inputs")),
        "no outputs": (save(make_model(outputs=False)), Case("no graph outputs")),
    }


def _spec_and_output_cases() -> dict[str, tuple[Callable[[Path], None], Case]]:
    good = lambda folder: onnx.save(make_model(), folder / "m.onnx")  # noqa: E731
    return {
        "unknown pass": (good, Case("unknown pass 'cleanp'", cli=["--passes", "cleanp"], spec="cleanp")),
        "bad option value": (
            good,
            Case("option 'mode'", cli=["--passes", "quantize{mode=fast}"], spec="quantize{mode=fast}"),
        ),
        "bad option type": (
            good,
            Case(
                "option 'target_cosine'", cli=["--passes", "fp16{target_cosine=high}"], spec="fp16{target_cosine=high}"
            ),
        ),
        "unknown option": (
            good,
            Case("has no option 'depth'", cli=["--passes", "cleanup{depth=2}"], spec="cleanup{depth=2}"),
        ),
        "--dim too large": (
            good,
            Case(
                "synthetic input 'x' would be",
                cli=["--passes", "cleanup", "--dim", "batch=100000000000"],
                api={"dims": {"batch": 100_000_000_000}},
            ),
        ),
        "output is the input": (
            good,
            Case("refusing to overwrite the input model", cli=["--passes", "cleanup", "-o", "{dir}/m.onnx"], api=None),
        ),
        "output folder missing": (
            good,
            Case(
                "does not exist",
                cli=["--passes", "cleanup", "-o", "{dir}/no/o.onnx"],
                api={"output": "{dir}/no/o.onnx"},
            ),
        ),
        "unwritable output folder": (
            good,
            Case("cannot write", cli=["--passes", "cleanup", "-o", "/proc/o.onnx"], api={"output": "/proc/o.onnx"}),
        ),
    }


def _data_cases() -> dict[str, tuple[Callable[[Path], None], Case]]:
    def with_data(**arrays: np.ndarray) -> Callable[[Path], None]:
        def build(folder: Path) -> None:
            onnx.save(make_model(), folder / "m.onnx")
            np.savez(folder / "d.npz", **arrays)

        return build

    def with_npy(array: np.ndarray, *, pickle: bool = False) -> Callable[[Path], None]:
        def build(folder: Path) -> None:
            onnx.save(make_model(), folder / "m.onnx")
            np.save(folder / "d.npy", array, allow_pickle=pickle)

        return build

    nan, inf = x_array(), x_array()
    nan[1, 0, 0, 0] = np.nan
    inf[0, 2, 3, 3] = -np.inf
    cases: dict[str, tuple[Callable[[Path], None], Case]] = {}
    for flag, key in (("--data", "data"), ("--calib-data", "calibration_data")):

        def case(message: str, file: str = "d.npz", flag: str = flag, key: str = key) -> Case:
            return Case(message, cli=["--passes", "cleanup", flag, f"{{dir}}/{file}"], api={key: f"{{dir}}/{file}"})

        cases |= {
            f"{flag} wrong name": (with_data(z=x_array()), case("missing input 'x'")),
            f"{flag} wrong dtype": (with_data(x=x_array(dtype=np.float64)), case("has dtype float64")),
            f"{flag} wrong rank": (with_data(x=x_array(shape=(2, 3, 4, SIDE, SIDE, 1))), case("rank")),
            f"{flag} wrong static dim": (with_data(x=x_array(shape=(2, 3, SIDE + 1, SIDE))), case("on axis 2")),
            f"{flag} NaN": (with_data(x=nan), case("NaN or infinite")),
            f"{flag} inf": (with_data(x=inf), case("NaN or infinite")),
            f"{flag} pickled objects": (
                with_npy(np.array([{"x": 1}], dtype=object), pickle=True),
                case("pickle", "d.npy"),
            ),
            f"{flag} missing file": (
                lambda folder: onnx.save(make_model(), folder / "m.onnx"),
                case("no such data file", "nope.npz"),
            ),
            f"{flag} empty": (with_data(x=x_array(batch=0)[None][:0]), case("no samples")),
        }
    return cases


CASES = {**_model_cases(), **_spec_and_output_cases(), **_data_cases()}


def _digests(folder: Path) -> dict[str, str]:
    """Every file and folder in ``folder`` with its contents' hash (the link itself for symlinks)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "link:" + os.readlink(path)
        elif path.is_file():
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[key] = "folder"
    return found


def _fill(value: str, folder: Path) -> str:
    return value.replace("{dir}", str(folder))


def _assert_clean_error(stderr: str, case: Case) -> None:
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), stderr
    assert case.message in lines[0], stderr
    assert len(lines) == 2 and lines[1].startswith("Note: "), f"one error line and one hint:\n{stderr}"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name", list(CASES))
def test_cli(name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    build, case = CASES[name]
    assert case.cli is not None
    root, tmp_path = tmp_path, tmp_path / "case"  # the case's folder, with room beside it for escaping files
    tmp_path.mkdir()
    build(tmp_path)
    before = _digests(root)
    args = ["optimize", str(tmp_path / case.model), *(_fill(a, tmp_path) for a in case.cli)]
    if "-o" not in case.cli:
        args += ["-o", str(tmp_path / "out.onnx")]
    result = CliRunner().invoke(main, args)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == case.exit_code, result.stderr
    _assert_clean_error(result.stderr, case)
    outside = capfd.readouterr()
    assert "onnxruntime" not in outside.err + outside.out, "ONNX Runtime's own log lines reached the terminal"
    assert _digests(root) == before, "inputs changed or something was left behind"


@pytest.mark.parametrize("name", [name for name, (_, case) in CASES.items() if case.api is not None])
def test_python_api(name: str, tmp_path: Path) -> None:
    build, case = CASES[name]
    root, tmp_path = tmp_path, tmp_path / "case"
    tmp_path.mkdir()
    build(tmp_path)
    before = _digests(root)
    options = {
        key: _fill(value, tmp_path) if isinstance(value, str) else value for key, value in (case.api or {}).items()
    }
    output = options.pop("output", str(tmp_path / "out.onnx"))
    with pytest.raises(OnnxkitError) as raised:
        Pipeline.parse(case.spec).run(str(tmp_path / case.model), **options).save(output)
    assert raised.value.exit_code == case.exit_code
    assert case.message in raised.value.message and "\n" not in raised.value.message
    assert raised.value.hint, f"no hint for: {raised.value.message}"
    assert _digests(root) == before, "inputs changed or something was left behind"


# ---------------------------------------------------------------------------------------------------------
# A write that fails half-way (disk full): the save is abandoned and nothing is left


def _disk_fills_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever writer saves the model (onnx_ir's, or modelio's own for the bytes the pipeline serialized
    already, as the CLI saves them) puts half of it on disk, then the disk is full."""
    from onnxkit import modelio

    real_save = ir.save

    def save(model: ir.Model, path: str | os.PathLike[str], **kwargs: object) -> None:
        real_save(model, path, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_parts(path: Path, parts: list[bytes]) -> None:
        path.write_bytes(b"".join(parts)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ir, "save", save)
    monkeypatch.setattr(modelio, "_write_parts", write_parts)


@pytest.mark.parametrize("external_data", [False, True])
def test_disk_full_during_save_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], external_data: bool
) -> None:
    if external_data:
        save_with_external_data(make_model(), tmp_path / "m.onnx", "m.onnx.data")
    else:
        onnx.save(make_model(), tmp_path / "m.onnx")
    (tmp_path / "out.onnx").write_bytes(b"an earlier output")  # an existing output must survive too
    before = _digests(tmp_path)
    _disk_fills_up(monkeypatch)
    result = CliRunner().invoke(
        main, ["optimize", str(tmp_path / "m.onnx"), "--passes", "cleanup", "-o", str(tmp_path / "out.onnx")]
    )
    assert result.exit_code == 2, result.stderr
    _assert_clean_error(result.stderr, Case("No space left on device"))
    assert _digests(tmp_path) == before
    with pytest.raises(OnnxkitError, match="No space left on device"):
        Pipeline.parse("cleanup").run(str(tmp_path / "m.onnx")).save(tmp_path / "out.onnx")
    assert _digests(tmp_path) == before
    assert "onnxruntime" not in capfd.readouterr().err


# A few cases again as a real process: the exit status the shell sees, and nothing on stderr but our two lines
# (no ONNX Runtime log, no C++ abort from a thread torn down at exit).
@pytest.mark.parametrize(
    "name",
    [
        "custom op, parity on",
        "--calib-data NaN",
        pytest.param("no outputs", marks=pytest.mark.slow),
        pytest.param("external data symlink", marks=pytest.mark.slow),
    ],
)
def test_as_a_real_process(name: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    build, case = CASES[name]
    folder = tmp_path / "case"
    folder.mkdir()
    build(folder)
    before = _digests(tmp_path)
    assert case.cli is not None
    args = [
        sys.executable,
        "-m",
        "onnxkit",
        "optimize",
        str(folder / case.model),
        *(_fill(a, folder) for a in case.cli),
        "-o",
        str(folder / "out.onnx"),
    ]
    done = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == case.exit_code, done.stderr
    _assert_clean_error(done.stderr, case)
    assert _digests(tmp_path) == before
