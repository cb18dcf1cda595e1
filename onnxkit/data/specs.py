"""What a model takes: input and output specs, and checking a sample against them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxkit.errors import DataError

Sample = dict[str, Any]  # input name -> np.ndarray (a list of arrays for sequence inputs)


# ---------------------------------------------------------------------------------------------------------
# What a model expects


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: its kind ("tensor", "sequence", "optional", "map"), element dtype, and shape, where
    each dim is an int, a symbolic name, or None (unknown); shape None means the rank is unknown too."""

    name: str
    kind: str = "tensor"
    dtype: np.dtype | None = None
    shape: tuple[int | str | None, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def _numpy_dtype(dtype: ir.DataType | None) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        return np.dtype(dtype.numpy())
    except (TypeError, ValueError):  # types numpy cannot hold, e.g. float8 without ml_dtypes
        return None


def _type_kind(value_type: Any) -> str:
    if isinstance(value_type, ir.SequenceType):
        return "sequence"
    if isinstance(value_type, ir.OptionalType):
        return "optional"
    if value_type is None or isinstance(value_type, ir.TensorType):
        return "tensor"
    return "map" if "Map" in type(value_type).__name__ else "other"


def _spec_of(value: ir.Value) -> InputSpec:
    shape = None
    if value.shape is not None:
        # A dim stored as an int below 0 (paddle2onnx writes -1) is an unknown dim, not a size.
        shape = tuple((d if d >= 0 else None) if isinstance(d, int) else d.value for d in value.shape)
    return InputSpec(value.name or "", _type_kind(value.type), _numpy_dtype(value.dtype), shape)


ModelLike = Any  # str | os.PathLike | bytes | onnx.ModelProto | ir.Model


def _ir_model(model: ModelLike) -> ir.Model:
    from onnxkit.modelio import as_ir_model

    return as_ir_model(model)


def input_specs(model: ModelLike | Sequence[InputSpec]) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializer-backed inputs excluded), in graph order."""
    if (
        isinstance(model, Sequence)
        and not isinstance(model, (str, bytes))
        and all(isinstance(s, InputSpec) for s in model)
    ):
        return list(model)
    graph = _ir_model(model).graph
    return [_spec_of(v) for v in graph.inputs if v.name not in graph.initializers]


def output_specs(model: ModelLike) -> list[InputSpec]:
    """The graph outputs, described like inputs."""
    return [_spec_of(v) for v in _ir_model(model).graph.outputs]


# ---------------------------------------------------------------------------------------------------------
# Validation


def validate_sample(
    sample: Mapping[str, Any],
    model_inputs: ModelLike | Sequence[InputSpec],
    *,
    allow_nonfinite: bool = False,
    index: int | None = None,
) -> Sample:
    """Check one sample against the model's inputs and return it restricted to them.

    Checks names, dtype, rank, static dims, that a symbolic dim has one size across inputs, and (unless
    ``allow_nonfinite``) that float inputs hold no NaN or inf. Keys the model does not take (labels, say)
    are dropped. Raises ``DataError`` naming the input and the mismatch.
    """
    where = f"sample {index}: " if index is not None else ""
    if not isinstance(sample, Mapping):
        raise DataError(f"{where}expected a dict {{input name: array}}, got {type(sample).__name__}")
    specs = input_specs(model_inputs)
    missing = [s.name for s in specs if s.name not in sample]
    if missing:
        raise DataError(
            f"{where}missing input{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            hint=f"the model takes {[s.name for s in specs]}; the data has {sorted(sample)}",
        )
    symbolic_sizes: dict[str, tuple[int, str]] = {}
    converted: dict[str, np.ndarray] = {}
    for spec in specs:
        value = sample[spec.name]
        if spec.kind != "tensor":
            continue  # sequences, optionals and maps are passed to ONNX Runtime as they are
        if isinstance(value, np.generic):
            # A rank-0 input read row by row from a stacked .npz comes as a numpy scalar (``x[i]``).
            value = converted[spec.name] = np.asarray(value)
        if not isinstance(value, np.ndarray):
            raise DataError(
                f"{where}input '{spec.name}' is a {type(value).__name__}, not a numpy array",
                hint=f"the model's inputs are {describe_inputs(specs)}",
            )
        if spec.dtype == np.dtype(object) and value.dtype.kind in "US":
            # A string input: .npz files hold no object arrays without pickle, so strings come as numpy str.
            value = converted[spec.name] = value.astype(object)
        if spec.dtype is not None and value.dtype != spec.dtype:
            raise DataError(
                f"{where}input '{spec.name}' has dtype {value.dtype}, the model takes {spec.dtype}",
                hint=f"convert it with .astype(np.{spec.dtype})",
            )
        if spec.shape is not None:
            if value.ndim != len(spec.shape):
                raise DataError(
                    f"{where}input '{spec.name}' has rank {value.ndim} (shape {value.shape}), "
                    f"the model takes rank {len(spec.shape)} {_shape_text(spec.shape)}",
                    hint=f"the model's inputs are {describe_inputs(specs)}",
                )
            for axis, (size, dim) in enumerate(zip(value.shape, spec.shape)):
                if isinstance(dim, int) and size != dim:
                    raise DataError(
                        f"{where}input '{spec.name}' has size {size} on axis {axis}, the model takes "
                        f"{dim} (shape {_shape_text(spec.shape)}, data {tuple(value.shape)})",
                        hint=f"the model's inputs are {describe_inputs(specs)}",
                    )
                if (name := dim_name(dim)) is not None:
                    seen = symbolic_sizes.setdefault(name, (size, spec.name))
                    if seen[0] != size:
                        raise DataError(
                            f"{where}dim '{dim}' is {seen[0]} in input '{seen[1]}' but {size} in input '{spec.name}'",
                            hint="inputs that share a dim name must agree on it",
                        )
        if not allow_nonfinite and value.dtype.kind in "fc":
            bad = np.count_nonzero(~np.isfinite(value))
            if bad:
                raise DataError(
                    f"{where}input '{spec.name}' holds {bad} NaN or infinite value{'s' if bad > 1 else ''}",
                    hint="parity and calibration need finite inputs: drop those samples or np.nan_to_num them",
                )
    return {s.name: converted.get(s.name, sample[s.name]) for s in specs}


def dim_name(dim: int | str | None) -> str | None:
    """A dynamic dim's name, or None for a static dim or an unnamed dynamic one (None, ``""``, ``"?"``:
    paddle2onnx writes ``?`` for every unknown dim, which names no dim shared with another)."""
    return dim if isinstance(dim, str) and dim not in ("", "?") else None


def describe_inputs(specs: Sequence[InputSpec]) -> str:
    """``x: float32[batch,3,H,W], mask: bool[batch,seq]``, for messages that say what the model takes."""

    def dims(shape: Sequence[int | str | None] | None) -> str:
        return "[?]" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"

    return ", ".join(f"{s.name}: {s.dtype if s.dtype is not None else s.kind}{dims(s.shape)}" for s in specs)


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
