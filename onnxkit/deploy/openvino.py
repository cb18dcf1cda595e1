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

    def __init__(self, model_path: str | Path, *, device: str = "CPU", precision: str = "f32") -> None:
        openvino = import_openvino()
        core = openvino.Core()
        self.version = openvino_version()
        self.device = device
        self.precision = precision
        self.compiled = core.compile_model(core.read_model(str(model_path)), device,
                                           {"INFERENCE_PRECISION_HINT": precision})
        self.request = self.compiled.create_infer_request()
        self._inputs = [_Port(port.get_any_name()) for port in self.compiled.inputs]
        self._outputs = [_Port(port.get_any_name()) for port in self.compiled.outputs]

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, names: Sequence[str] | None, feed: Mapping[str, Any]) -> list[np.ndarray]:
        results = self.request.infer({name: np.asarray(value) for name, value in feed.items()})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        # Copies: the request's output buffers are reused by the next run.
        return [np.array(by_name[name]) for name in (names or [o.name for o in self._outputs])]

    def describe(self) -> str:
        return f"OpenVINO {self.version} on {self.device}, inference precision {self.precision}"
