"""onnxkit: take a model from PyTorch or any .onnx file to a smaller, faster ONNX model, and prove it
still behaves like the original.

    from onnxkit import Pipeline
    result = Pipeline.parse("cleanup,shape-inference").run("model.onnx")
    result.save("model.opt.onnx")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxkit.errors import (
    DataError,
    ExportError,
    ModelLoadError,
    ModelSaveError,
    OnnxkitError,
    ParityError,
    PassFailedError,
    SpecError,
)

if TYPE_CHECKING:
    from onnxkit.data import Dataset, SyntheticDataset, load_dataset
    from onnxkit.modelio import load_model, save_model
    from onnxkit.parity import ParityReport, Tolerance, compare_models
    from onnxkit.pass_base import NoOptions, Pass, PassContext, PassKind, PassResult, Site
    from onnxkit.pipeline import Pipeline, PipelineResult
    from onnxkit.pytorch.export import export_model
    from onnxkit.pytorch.train import TrainConfig, Trainer
    from onnxkit.registry import get_pass_class, list_passes, register_pass, unregister_pass
    from onnxkit.report import PassReport, PipelineReport

# The public API is imported on first use: onnx_ir pulls in sympy (half a second), which `onnxkit --help`
# and `onnxkit passes` should not pay for.
_LAZY = {
    "load_model": "onnxkit.modelio",
    "save_model": "onnxkit.modelio",
    "NoOptions": "onnxkit.pass_base",
    "Pass": "onnxkit.pass_base",
    "PassContext": "onnxkit.pass_base",
    "PassKind": "onnxkit.pass_base",
    "PassResult": "onnxkit.pass_base",
    "Site": "onnxkit.pass_base",
    "Pipeline": "onnxkit.pipeline",
    "PipelineResult": "onnxkit.pipeline",
    "get_pass_class": "onnxkit.registry",
    "list_passes": "onnxkit.registry",
    "register_pass": "onnxkit.registry",
    "unregister_pass": "onnxkit.registry",
    "PassReport": "onnxkit.report",
    "PipelineReport": "onnxkit.report",
    "ParityReport": "onnxkit.parity",
    "Tolerance": "onnxkit.parity",
    "compare_models": "onnxkit.parity",
    "Dataset": "onnxkit.data",
    "SyntheticDataset": "onnxkit.data",
    "load_dataset": "onnxkit.data",
    "export_model": "onnxkit.pytorch.export",  # needs the torch extra
    "Trainer": "onnxkit.pytorch.train",  # needs the torch extra
    "TrainConfig": "onnxkit.pytorch.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'onnxkit' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Dataset",
    "ExportError",
    "ModelLoadError",
    "ModelSaveError",
    "NoOptions",
    "OnnxkitError",
    "ParityError",
    "ParityReport",
    "Pass",
    "PassContext",
    "PassFailedError",
    "PassKind",
    "PassReport",
    "PassResult",
    "Pipeline",
    "PipelineReport",
    "PipelineResult",
    "Site",
    "SpecError",
    "SyntheticDataset",
    "Tolerance",
    "TrainConfig",
    "Trainer",
    "__version__",
    "compare_models",
    "export_model",
    "get_pass_class",
    "list_passes",
    "load_dataset",
    "load_model",
    "register_pass",
    "save_model",
    "unregister_pass",
]
