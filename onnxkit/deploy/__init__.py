"""Deployment targets: ONNX Runtime (server, mobile), OpenVINO, TensorRT, and portable ONNX.

- ``get_target(name)``: a target's default pipeline and its operator check (``targets.py``, ``support.py``);
- ``deploy_check(path, target)``: the operator check, a run on the target's runtime where it is installed
  compared with ONNX Runtime, and what deployment needs next (``check.py``);
- ``to_ort(path)``: ONNX Runtime's ``.ort`` format and a reduced build's operator configuration
  (``ort_format.py``).
"""

from onnxkit.deploy.check import DeployReport, deploy_check
from onnxkit.deploy.ort_format import OrtConversion, to_ort
from onnxkit.deploy.support import SupportReport, UnsupportedNode
from onnxkit.deploy.targets import TARGETS, Target, get_target

__all__ = ["TARGETS", "DeployReport", "OrtConversion", "SupportReport", "Target", "UnsupportedNode", "deploy_check",
           "get_target", "to_ort"]
