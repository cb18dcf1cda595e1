"""onnxkit: take a model from PyTorch or any .onnx file to a smaller, faster ONNX model, and prove it
still behaves like the original.

    from onnxkit import Pipeline
    result = Pipeline.parse("cleanup,shape-inference").run("model.onnx")
    result.save("model.opt.onnx")
"""

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
from onnxkit.modelio import load_model, save_model
from onnxkit.pass_base import NoOptions, Pass, PassContext, PassKind, PassResult
from onnxkit.pipeline import Pipeline, PipelineResult
from onnxkit.registry import get_pass_class, list_passes, register_pass, unregister_pass
from onnxkit.report import PassReport, PipelineReport

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ExportError",
    "ModelLoadError",
    "ModelSaveError",
    "NoOptions",
    "OnnxkitError",
    "ParityError",
    "Pass",
    "PassContext",
    "PassFailedError",
    "PassKind",
    "PassReport",
    "PassResult",
    "Pipeline",
    "PipelineReport",
    "PipelineResult",
    "SpecError",
    "__version__",
    "get_pass_class",
    "list_passes",
    "load_model",
    "register_pass",
    "save_model",
    "unregister_pass",
]
