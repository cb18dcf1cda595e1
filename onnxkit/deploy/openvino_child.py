"""The child process that holds OpenVINO for ``onnxkit.deploy.openvino`` (``python -m onnxkit.deploy.openvino_child``).

OpenVINO's native code can take the whole process down (its ONNX frontend segfaults on the corpus's
onnxasr_wespeaker), so onnxkit never loads a model into OpenVINO in its own process: it sends requests here
and reads the answers, and a crash here is a one-line failure there.

Protocol: the parent writes pickled ``(command, args)`` tuples on stdin; each gets one pickled answer on the
original stdout, ``("ok", value)`` or ``("error", last line of the exception)``. Anything OpenVINO itself prints
goes to stderr, so it cannot corrupt the answers. This module imports only numpy and OpenVINO: it must not
load onnxkit's own modules, which would cost every check a second start-up.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import numpy as np


def last_line(error: BaseException) -> str:
    """OpenVINO's errors stack one "Exception from <file>" line per layer; the last line says what failed."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _outputs(ov_op: Any) -> list[str]:
    return sorted({name for output in ov_op.outputs() for name in output.get_names()})


def query(model_path: str, device: str) -> dict[str, Any]:
    """Convert the model with OpenVINO's ONNX frontend, partially, and ask ``device`` which operations it runs.

    The answer is plain data for the parent to map back to ONNX nodes: ``frontend_error`` (the frontend
    cannot read the model), ``unconverted`` (ops the frontend has no conversion for, with their ONNX domain
    and type), ``plugin_error`` (the device's own passes fail), ``unsupported`` (converted ops the device does
    not run). Each op is ``{"name": friendly name, "outputs": tensor names, "type": ...}``."""
    import openvino
    from openvino.frontend import FrontEndManager

    answer: dict[str, Any] = {"frontend_error": None, "unconverted": [], "plugin_error": None, "unsupported": []}
    # The frontend outlives the models it makes: a partially converted model's framework nodes live in the
    # frontend's library and read the loaded model, so the nodes go first, then the model, then the frontend.
    frontend = FrontEndManager().load_by_framework("onnx")
    try:
        loaded = frontend.load(model_path)
        converted = frontend.convert_partially(loaded)
    except Exception as e:  # OpenVINO's own exception types (sequence and map values, say)
        answer["frontend_error"] = last_line(e)
        return answer
    try:
        ops = converted.get_ordered_ops()
        for ov_op in ops:
            if "FrameworkNode" in ov_op.get_type_name():
                attributes = ov_op.get_attributes()
                answer["unconverted"].append(
                    {
                        "name": ov_op.get_friendly_name(),
                        "outputs": _outputs(ov_op),
                        "domain": attributes.get("ONNX_META_domain", ""),
                        "type": attributes.get("ONNX_META_type", ov_op.get_type_name()),
                    }
                )
        if answer["unconverted"]:
            return answer  # the plugin compiles only a fully converted model: asking it would fail
        try:
            supported = openvino.Core().query_model(converted, device)
        except RuntimeError as e:  # the plugin's passes can fail on a converted model (unknown ranks, say)
            answer["plugin_error"] = last_line(e)
            return answer
        answer["unsupported"] = [
            {"name": ov_op.get_friendly_name(), "outputs": _outputs(ov_op), "type": ov_op.get_type_name()}
            for ov_op in ops
            if ov_op.get_friendly_name() not in supported
            and ov_op.get_type_name() not in ("Parameter", "Result", "Constant")
        ]
        return answer
    finally:
        del converted
        del loaded


class _Compiled:
    """The model compiled for ``device`` at ``precision``, its ports called by their ONNX names."""

    def __init__(self, model_path: str, device: str, precision: str, onnx_names: Sequence[str]) -> None:
        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(model_path), device, {"INFERENCE_PRECISION_HINT": precision})
        self.request = self.compiled.create_infer_request()
        # A tensor can carry several names in OpenVINO (an ONNX output that is also some node's input name,
        # say); each port is called by the name the ONNX graph gives it, when ``onnx_names`` lists them.
        wanted = set(onnx_names)

        def name(port: Any) -> str:
            return next((n for n in sorted(port.get_names()) if n in wanted), port.get_any_name())

        self.inputs = [name(port) for port in self.compiled.inputs]
        self.outputs = [name(port) for port in self.compiled.outputs]
        self._by_port = {port.get_any_name(): out for port, out in zip(self.compiled.outputs, self.outputs)}

    def run(self, names: Sequence[str] | None, feed: Mapping[str, Any]) -> list[np.ndarray]:
        results = self.request.infer({name: np.asarray(value) for name, value in feed.items()})
        by_name = {
            self._by_port.get(port.get_any_name(), port.get_any_name()): value for port, value in results.items()
        }
        # Copies: the request's output buffers are reused by the next run.
        return [np.array(by_name[name]) for name in (names or self.outputs)]


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until the parent closes stdin."""
    compiled: _Compiled | None = None
    while True:
        try:
            command, args = pickle.load(requests)
        except EOFError:
            return
        try:
            if command == "query":
                value: Any = query(*args)
            elif command == "compile":
                compiled = _Compiled(*args)
                value = {"inputs": compiled.inputs, "outputs": compiled.outputs}
            elif command == "run":
                if compiled is None:
                    raise RuntimeError("no model compiled")
                value = compiled.run(*args)
            else:
                raise ValueError(f"unknown request {command!r}")
            answer: tuple[str, Any] = ("ok", value)
        except Exception as e:  # every failure goes back to the parent as one line
            answer = ("error", last_line(e))
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()


def main() -> None:
    # The answers keep the original stdout; whatever else writes to fd 1 (OpenVINO's native code) goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
