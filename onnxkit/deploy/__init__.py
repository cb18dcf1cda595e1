"""Deployment targets: ONNX Runtime (server, mobile), OpenVINO, TensorRT, and portable ONNX.

- ``get_target(name)``: a target's default pipeline and its operator check (``targets.py``, ``support.py``);
- ``deploy_check(path, target)``: the operator check, a run on the target's runtime where it is installed
  compared with ONNX Runtime, and what deployment needs next (``check.py``);
- ``to_ort(path)``: ONNX Runtime's ``.ort`` format and a reduced build's operator configuration
  (``ort_format.py``).

Names are imported on first use, like ``onnxkit``'s own API, so the command line starts without onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

# The targets, in the order help texts list them; targets.TARGETS defines each.
TARGET_NAMES = ("ort-cpu", "ort-mobile", "openvino", "tensorrt", "portable")

_EXPORTS = {
    "DeployReport": "onnxkit.deploy.check",
    "deploy_check": "onnxkit.deploy.check",
    "OrtConversion": "onnxkit.deploy.ort_format",
    "to_ort": "onnxkit.deploy.ort_format",
    "SupportReport": "onnxkit.deploy.support",
    "UnsupportedNode": "onnxkit.deploy.support",
    "TARGETS": "onnxkit.deploy.targets",
    "Target": "onnxkit.deploy.targets",
    "get_target": "onnxkit.deploy.targets",
}
__all__ = [
    "TARGETS",
    "TARGET_NAMES",
    "DeployReport",
    "OrtConversion",
    "SupportReport",
    "Target",
    "UnsupportedNode",
    "deploy_check",
    "get_target",
    "to_ort",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'onnxkit.deploy' has no attribute {name!r}")
