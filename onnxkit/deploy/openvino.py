"""Running a model in OpenVINO, behind ONNX Runtime's session interface so that onnxkit's parity check
compares it with ONNX Runtime like any other candidate.

OpenVINO's CPU plugin runs in bfloat16 by default on CPUs that have it; a deployment check asks for the
precision it is given (float32 by default: the model as written), and the report says which.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.deploy.support import import_openvino, openvino_version


@dataclasses.dataclass(frozen=True)
class _Port:
    name: str


class OpenVinoSession:
    """A model read and compiled by OpenVINO, run the way ``onnxruntime.InferenceSession`` runs."""

    def __init__(
        self, model_path: str | Path, *, device: str = "CPU", precision: str = "f32", onnx_names: Sequence[str] = ()
    ) -> None:
        openvino = import_openvino()
        core = openvino.Core()
        self.version = openvino_version()
        self.device = device
        self.precision = precision
        self.compiled = core.compile_model(
            core.read_model(str(model_path)), device, {"INFERENCE_PRECISION_HINT": precision}
        )
        self.request = self.compiled.create_infer_request()
        # A tensor can carry several names in OpenVINO (an ONNX output that is also some node's input name,
        # say); each port is called by the name the ONNX graph gives it, when ``onnx_names`` lists them.
        wanted = set(onnx_names)

        def name(port: Any) -> str:
            return next((n for n in sorted(port.get_names()) if n in wanted), port.get_any_name())

        self._inputs = [_Port(name(port)) for port in self.compiled.inputs]
        self._outputs = [_Port(name(port)) for port in self.compiled.outputs]
        self._by_port = {port.get_any_name(): out.name for port, out in zip(self.compiled.outputs, self._outputs)}

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feed: Mapping[str, Any]) -> list[np.ndarray]:
        results = self.request.infer({name: np.asarray(value) for name, value in feed.items()})
        by_name = {
            self._by_port.get(port.get_any_name(), port.get_any_name()): value for port, value in results.items()
        }
        # Copies: the request's output buffers are reused by the next run.
        return [np.array(by_name[name]) for name in (names or [o.name for o in self._outputs])]

    def describe(self) -> str:
        return f"OpenVINO {self.version} on {self.device}, inference precision {self.precision}"
