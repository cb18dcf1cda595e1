"""Deployment targets: the default pipeline for each, and how its operator support is checked.

target = get_target("openvino")
spec = target.default_spec            # simplify,fuse
report = target.check_support(model)  # SupportReport: unsupported nodes and why
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir

from onnxkit import modelio
from onnxkit.deploy import TARGET_NAMES, support
from onnxkit.errors import SpecError


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    # The pipeline `optimize --target` runs when no --passes is given. ONNX Runtime's targets take its
    # contrib-op fusions (com.microsoft); every other runtime gets standard ONNX only.
    default_spec: str
    check: Callable[[ir.Model, Path], support.SupportReport]

    def check_support(self, model: ir.Model | str | os.PathLike[str]) -> support.SupportReport:
        """Every node of ``model`` (an ``ir.Model`` or a path) against what this target runs."""
        if isinstance(model, (str, os.PathLike)):
            return self.check(modelio.load_model(model), Path(model))
        if self.name != "openvino":  # only OpenVINO reads the model from a file
            return self.check(model, Path())
        with tempfile.TemporaryDirectory(prefix="onnxkit-deploy-") as folder:
            path = Path(folder) / "model.onnx"
            modelio.save_model(model, path)
            return self.check(model, path)


def _ort_check(name: str) -> Callable[[ir.Model, Path], support.SupportReport]:
    def check(model: ir.Model, _path: Path) -> support.SupportReport:
        notes = (
            [
                (
                    "ONNX Runtime's full Android/iOS packages hold every CPU kernel; a reduced build holds only "
                    "the operators of its configuration"
                )
            ]
            if name == "ort-mobile"
            else []
        )
        return support.check_with_rule(
            model, name, f"ONNX Runtime {support.ort_version()} CPU kernel registry", support.ort_cpu_rule, notes
        )

    return check


def _tensorrt_check(model: ir.Model, _path: Path) -> support.SupportReport:
    table = support.tensorrt_table()
    report = support.check_with_rule(
        model, "tensorrt", support.tensorrt_source(), support.tensorrt_rule, [table["note"]]
    )
    report.model_problems += support.tensorrt_opset_problems(model)
    return report


def _portable_check(model: ir.Model, _path: Path) -> support.SupportReport:
    return support.check_with_rule(
        model, "portable", "the ONNX standard (ai.onnx, ai.onnx.ml) at the model's opsets", support.standard_rule
    )


def _openvino_check(model: ir.Model, path: Path) -> support.SupportReport:
    return support.check_openvino(path, model)


TARGETS: dict[str, Target] = {
    "ort-cpu": Target(
        "ort-cpu", "ONNX Runtime on a server CPU", "simplify,fuse{target=onnxruntime}", _ort_check("ort-cpu")
    ),
    "ort-mobile": Target(
        "ort-mobile",
        "ONNX Runtime Mobile (Android, iOS), as an .ort model",
        "simplify,fuse{target=onnxruntime}",
        _ort_check("ort-mobile"),
    ),
    "openvino": Target("openvino", "OpenVINO on an Intel CPU", "simplify,fuse", _openvino_check),
    "tensorrt": Target(
        "tensorrt", "TensorRT on an NVIDIA GPU (checked against its published matrix)", "simplify,fuse", _tensorrt_check
    ),
    "portable": Target("portable", "any ONNX runtime: standard ONNX domains only", "simplify,fuse", _portable_check),
}

assert tuple(TARGETS) == TARGET_NAMES, "onnxkit.deploy.TARGET_NAMES lists the targets for the command line"


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SpecError(f"unknown deployment target '{name}'", hint=f"targets: {', '.join(TARGETS)}")
    return TARGETS[name]
