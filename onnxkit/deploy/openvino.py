"""OpenVINO, held in a child process (``openvino_child.py``) and driven from here.

OpenVINO's native code can crash the process that loads a model into it: its ONNX frontend segfaults on the
corpus's onnxasr_wespeaker (exit -11). ``deploy-check`` must report that as a failed check, so every model
reaches OpenVINO in a child, and a child that dies is ``OpenVinoCrashed`` with the signal that killed it.

- ``query(path, device)``: what the ONNX frontend leaves unconverted and what the device does not run, as
  plain data that ``support.check_openvino`` maps back to ONNX nodes;
- ``OpenVinoSession``: the model compiled and run behind ONNX Runtime's session interface, so onnxkit's parity
  check compares it with ONNX Runtime like any other candidate.

OpenVINO's CPU plugin runs in bfloat16 by default on CPUs that have it; a deployment check asks for the
precision it is given (float32 by default: the model as written), and the report says which.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from onnxkit.errors import OnnxkitError

CHILD_MODULE = "onnxkit.deploy.openvino_child"


class OpenVinoError(RuntimeError):
    """OpenVINO raised an error (it cannot read, compile or run the model); the message is its last line."""


class OpenVinoCrashed(OpenVinoError):
    """The child holding OpenVINO died (a signal, usually SIGSEGV) while it worked on the model."""


def require_openvino() -> None:
    """A user error when OpenVINO is not installed. It is found, not imported: only the child loads it."""
    if importlib.util.find_spec("openvino") is None:
        raise OnnxkitError("OpenVINO is not installed", hint="pip install 'onnxkit[openvino]'")


@functools.lru_cache(maxsize=1)
def openvino_version() -> str:
    """``2026.4.1``: the installed distribution's version, without the build tag ``openvino.__version__`` has."""
    require_openvino()
    return importlib.metadata.version("openvino")


class OpenVinoProcess:
    """One child process holding OpenVINO; ``call`` sends it a request and returns its answer."""

    def __init__(self) -> None:
        require_openvino()  # a missing install is a user error here, not a child that dies at import
        self._stderr = tempfile.TemporaryFile()
        self._child = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self._lock = threading.Lock()  # parity may run the candidate from a worker thread; one request at a time
        self.crash: str | None = None  # set once the child has died

    def call(self, doing: str, command: str, *args: Any) -> Any:
        """Send ``command`` and return its answer. ``doing`` says what OpenVINO was doing, for the crash message."""
        with self._lock:
            if self.crash is not None:
                raise OpenVinoCrashed(self.crash)
            assert self._child.stdin is not None and self._child.stdout is not None
            try:
                pickle.dump((command, args), self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._child.stdin.flush()
                status, value = pickle.load(self._child.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self.crash = f"OpenVINO crashed ({self._cause()}) while {doing}"
                raise OpenVinoCrashed(self.crash) from None
        if status == "error":
            raise OpenVinoError(value)
        return value

    def _cause(self) -> str:
        try:
            code = self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            code = self._child.wait()
        if code < 0:
            try:
                cause = signal.Signals(-code).name
            except ValueError:
                cause = f"signal {-code}"
        else:
            cause = f"exit code {code}"
        self._stderr.seek(0)
        said = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return f"{cause}: {said[-1]}" if said else cause

    def close(self) -> None:
        if self._child.poll() is None:
            assert self._child.stdin is not None
            try:
                self._child.stdin.close()
                self._child.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self._child.kill()
                self._child.wait()
        for stream in (self._child.stdin, self._child.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._stderr.close()

    def __enter__(self) -> OpenVinoProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def query(model_path: str | Path, device: str = "CPU") -> dict[str, Any]:
    """``openvino_child.query``'s answer for the model at ``model_path``; raises ``OpenVinoCrashed``."""
    with OpenVinoProcess() as process:
        answer: dict[str, Any] = process.call(
            "converting the model with its ONNX frontend", "query", str(model_path), device
        )
        return answer


@dataclasses.dataclass(frozen=True)
class _Port:
    name: str


class OpenVinoSession:
    """A model read and compiled by OpenVINO in a child process, run the way ``onnxruntime.InferenceSession``
    runs. Raises ``OpenVinoError`` when OpenVINO cannot compile it (``OpenVinoCrashed`` when it dies trying);
    a crash during a run is kept in ``crash`` as well. ``close()`` ends the child."""

    def __init__(
        self, model_path: str | Path, *, device: str = "CPU", precision: str = "f32", onnx_names: Sequence[str] = ()
    ) -> None:
        self.version = openvino_version()
        self.device = device
        self.precision = precision
        self._process = OpenVinoProcess()
        try:
            ports = self._process.call(
                "compiling the model", "compile", str(model_path), device, precision, list(onnx_names)
            )
        except BaseException:
            self._process.close()
            raise
        self._inputs = [_Port(name) for name in ports["inputs"]]
        self._outputs = [_Port(name) for name in ports["outputs"]]

    @property
    def crash(self) -> str | None:
        return self._process.crash

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feed: Mapping[str, Any]) -> list[np.ndarray]:
        feed = {name: np.asarray(value) for name, value in feed.items()}
        outputs: list[np.ndarray] = self._process.call("running the model", "run", list(names) if names else None, feed)
        return outputs

    def describe(self) -> str:
        return f"OpenVINO {self.version} on {self.device}, inference precision {self.precision}"

    def close(self) -> None:
        self._process.close()

    def __enter__(self) -> OpenVinoSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
