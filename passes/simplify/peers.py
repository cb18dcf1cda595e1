"""``simplify{backend=onnxsim|onnxoptimizer|onnxslim}``: run that tool instead, imported only then."""

from __future__ import annotations

import importlib

import onnx
import onnx_ir as ir

from onnxkit import modelio
from onnxkit.errors import PassFailedError, SpecError
from onnxkit.pass_base import PassResult


def run_peer(backend: str, model: ir.Model) -> PassResult:
    """Run onnxsim, onnxoptimizer or onnxslim with its defaults on a copy of ``model``; returns a new model."""
    try:
        module = importlib.import_module(backend)
    except ImportError as e:
        raise SpecError(
            f"simplify backend '{backend}' is not installed",
            hint=f"pip install {backend}  (or pip install 'onnxkit[peers]')",
        ) from e
    proto = modelio.to_proto(model)
    try:
        if backend == "onnxsim":
            simplified, _ = module.simplify(proto)
        elif backend == "onnxoptimizer":
            simplified = module.optimize(proto)
        else:
            simplified = module.slim(proto)
    except Exception as e:  # peers raise anything from RuntimeError to their own C++ errors
        raise PassFailedError(f"{backend} failed on this model: {type(e).__name__}: {e}",
                              hint="run simplify with the default backend=onnxkit") from e
    if not isinstance(simplified, onnx.ModelProto):
        raise PassFailedError(f"{backend} returned no model", hint="run simplify with the default backend=onnxkit")
    modified = simplified.SerializeToString(deterministic=True) != proto.SerializeToString(deterministic=True)
    return PassResult(ir.serde.deserialize_model(simplified), modified, [f"ran {backend}"] if modified else [])
