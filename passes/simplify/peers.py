"""``simplify{backend=onnxsim|onnxoptimizer|onnxslim}``: run that tool instead, through its one runner in
``onnxkit.external_tools`` (the bench runs the same), imported only then."""

from __future__ import annotations

import importlib

import onnx
import onnx_ir as ir

from onnxkit import external_tools, modelio
from onnxkit.errors import PassFailedError, SpecError
from onnxkit.pass_base import PassResult


def run_peer(backend: str, model: ir.Model) -> PassResult:
    """Run onnxsim, onnxoptimizer or onnxslim with its defaults on a copy of ``model``; returns a new model."""
    try:
        importlib.import_module(backend)  # before the run, so that a missing tool is the user's to install
    except ImportError as e:
        raise SpecError(
            f"simplify backend '{backend}' is not installed",
            hint=f"pip install {backend}  (or pip install 'onnxkit[peers]')",
        ) from e
    proto = modelio.to_proto(model)
    try:
        result = external_tools.SIMPLIFIERS[backend](proto, None)
    except Exception as e:  # peers raise anything from RuntimeError to their own C++ errors
        raise PassFailedError(
            f"{backend} failed on this model: {type(e).__name__}: {e}",
            hint="run simplify with the default backend=onnxkit",
        ) from e
    if not isinstance(result.model, onnx.ModelProto):
        raise PassFailedError(f"{backend} returned no model", hint="run simplify with the default backend=onnxkit")
    modified = result.model.SerializeToString(deterministic=True) != proto.SerializeToString(deterministic=True)
    stats = [f"ran {backend}", *result.notes] if modified else list(result.notes)
    return PassResult(ir.serde.deserialize_model(result.model), modified, stats)
