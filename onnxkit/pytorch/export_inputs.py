"""What ``onnxkit export`` starts from: a factory spec (``package.module:factory``) and its state dict, and
example inputs from ``--input-shape`` texts or a sample file; ``--dynamic-axis`` texts."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from onnxkit.errors import DataError, ExportError, SpecError
from onnxkit.runtime import error_line

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


def load_module(spec: str, state_dict: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """Build a module from ``package.module:factory`` (a class or function called with no arguments) and
    load a state dict into it. The state dict is read with ``weights_only=True``: no pickle runs. A file
    holding a training checkpoint (a dict with a ``model`` entry, as ``onnxkit.pytorch.train`` writes) works too."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ExportError(
            f"bad model spec {spec!r}", hint="write package.module:factory, e.g. onnxkit.pytorch.zoo:SimpleCNN"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so a user's own module beside them imports
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ExportError(f"cannot load {spec}: {e}", hint="check the module path and the factory name") from e
    try:
        module = factory()
    except Exception as e:  # the user's factory can fail in any way
        raise ExportError(
            f"{spec}() raised {type(e).__name__}: {e}", hint="the factory must be callable with no arguments"
        ) from e
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"{spec}() returned a {type(module).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        try:
            state = torch.load(state_dict, map_location="cpu", weights_only=True)
        except Exception as e:  # missing file, not a torch file, or it holds objects that need pickle
            raise ExportError(
                f"cannot read state dict {state_dict}: {error_line(e)}",
                hint="save it with torch.save(model.state_dict(), path)",
            ) from e
        if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
            state = state["model"]
        try:
            module.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise ExportError(f"state dict {state_dict} does not fit {spec}: {error_line(e)}") from e
    return module


def example_inputs_from_shapes(specs: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded example inputs from ``name=1x1x28x28[:dtype]`` texts. Floats are standard normal; integers
    and booleans are 0 or 1 (valid token ids, masks and indices for most models; give a sample file for
    anything more particular)."""
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for text in specs:
        name, shape, dtype = parse_input_shape(text)
        if name in inputs:
            raise ExportError(f"input '{name}' given twice")
        if dtype.is_floating_point:
            inputs[name] = torch.randn(shape, generator=generator).to(dtype)
        else:
            inputs[name] = torch.randint(0, 2, shape, generator=generator).to(dtype)
    return inputs


def parse_input_shape(text: str) -> tuple[str, list[int], torch.dtype]:
    """``image=1x1x28x28`` → ``("image", [1, 1, 28, 28], torch.float32)``; ``ids=1x16:int64`` sets the dtype."""
    match = re.fullmatch(r"\s*([A-Za-z_][\w.\-]*)=(\d+(?:x\d+)*)(?::(\w+))?\s*", text)
    dtype_name = match.group(3) if match else None
    if match is None or (dtype_name is not None and dtype_name not in _DTYPES):
        raise SpecError(
            f"bad input shape {text!r}", hint=f"write name=1x1x28x28 or name=1x16:int64; dtypes: {', '.join(_DTYPES)}"
        )
    return match.group(1), [int(d) for d in match.group(2).split("x")], _DTYPES[dtype_name or "float32"]


def parse_dynamic_axis(text: str) -> tuple[str, dict[int, str]]:
    """``input_ids=0:batch,1:sequence`` → ``("input_ids", {0: "batch", 1: "sequence"})``."""
    name, equals, rest = text.partition("=")
    pairs = [piece.partition(":") for piece in rest.split(",")]
    if (
        not equals
        or not name.strip()
        or not all(axis.strip().isdigit() and colon and dim.strip() for axis, colon, dim in pairs)
    ):
        raise SpecError(
            f"bad dynamic axis {text!r}", hint="write NAME=AXIS:DIM[,AXIS:DIM], e.g. input_ids=0:batch,1:sequence"
        )
    return name.strip(), {int(axis): dim.strip() for axis, _, dim in pairs}


def load_sample(path: str | os.PathLike[str], input_name: str | None = None) -> dict[str, torch.Tensor]:
    """Example inputs from a ``.npz`` keyed by input name (in forward()'s order), or a ``.npy`` for a
    single input. Loaded without pickle."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read sample file {path}: {e}", hint="give a .npz keyed by input name, or a .npy"
        ) from e
    if isinstance(loaded, np.ndarray):
        return {input_name or "input": torch.from_numpy(loaded)}
    with loaded:
        return {name: torch.from_numpy(loaded[name]) for name in loaded.files}
