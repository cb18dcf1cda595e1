"""Seeded synthetic inputs built from a model's input specs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxkit.data.base import Dataset, _check_batch_size
from onnxkit.data.specs import InputSpec, ModelLike, Sample, _ir_model, input_specs
from onnxkit.errors import DataError

DEFAULT_SYNTHETIC_SAMPLES = 4


# ---------------------------------------------------------------------------------------------------------
# Synthetic inputs


_BATCH_NAMES = {"n", "b", "bs", "batch", "batch_size", "batchsize", "nbatch"}
_SEQUENCE_NAMES = {"s", "t", "l", "seq", "seq_len", "seqlen", "sequence", "sequence_length", "length", "len",
                   "time", "tokens", "num_tokens", "past_sequence_length", "total_sequence_length"}
_SPATIAL_NAMES = {"h", "w", "height", "width"}
DIM_DEFAULTS = {"batch": 1, "sequence": 16, "spatial": 32, "other": 8}
# ``--dim batch=4,seq=128`` binds every dim of that role, whatever the model calls it.
_ROLE_KEYS = {"batch": ("batch",), "sequence": ("seq", "sequence")}
# Ops that pass an index tensor on unchanged in value, so a Gather behind them still bounds it.
_INDEX_PASS_THROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}


def _dim_role(name: str | None, axis: int) -> str:
    lowered = (name or "").lower()
    if lowered in _BATCH_NAMES or "batch" in lowered or (name is None and axis == 0):
        return "batch"
    if lowered in _SEQUENCE_NAMES or "seq" in lowered:
        return "sequence"
    return "spatial" if lowered in _SPATIAL_NAMES else "other"


def bind_shape(spec: InputSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """A concrete shape for ``spec``. A symbolic dim takes its size from ``dims`` by its own name, else by its
    role (``batch`` binds every batch-like dim, ``seq`` every sequence-like one), else a default by role:
    batch 1, sequence 16, height/width 32, anything else 8. An unnamed dim on axis 0 is taken for the batch."""
    if spec.shape is None:
        raise DataError(f"input '{spec.name}' has no declared shape, so synthetic data cannot be made for it",
                        hint="give real inputs with --data")
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
            continue
        role = _dim_role(dim, axis)
        by_role = next((dims[key] for key in _ROLE_KEYS.get(role, ()) if key in dims), None)
        if dim is not None and dim in dims:
            shape.append(int(dims[dim]))
        elif by_role is not None:
            shape.append(int(by_role))
        else:
            shape.append(DIM_DEFAULTS[role])
    return tuple(shape)


def _static_size(value: ir.Value, axis: int) -> int | None:
    const = value.const_value
    producer = value.producer()
    if const is None and producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        const = producer.attributes["value"].value
    shape = const.shape if const is not None else value.shape
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    size = shape[axis]
    return size if isinstance(size, int) else None


def index_limits(model: ModelLike) -> dict[str, int]:
    """Integer inputs used as Gather indices (directly or through Cast/Reshape/...), mapped to the size of
    the gathered axis: token ids stay below the embedding table's row count."""
    graph = _ir_model(model).graph
    limits: dict[str, int] = {}
    for graph_input in graph.inputs:
        sizes, frontier, seen = [], [graph_input], {id(graph_input)}
        while frontier:
            for node, index in frontier.pop().uses():
                if node.domain not in ("", "ai.onnx"):
                    continue
                if node.op_type == "Gather" and index == 1:
                    size = _static_size(node.inputs[0], node.attributes.get_int("axis", 0))
                    if size is not None:
                        sizes.append(size)
                elif node.op_type in _INDEX_PASS_THROUGH and index == 0:
                    for output in node.outputs:
                        if id(output) not in seen:
                            seen.add(id(output))
                            frontier.append(output)
        if sizes:
            limits[graph_input.name] = min(sizes)
    return limits


class SyntheticDataset(Dataset):
    """Seeded random inputs built from the model's input specs; sample i is the same on every pass.

    Dynamic dims are bound by ``bind_shape``. Floats are standard normal. Integers that index a Gather stay
    below the gathered table's size; inputs whose name contains "mask" are all ones (or True); other integers
    are 0 or 1 (uint8 inputs, usually pixels, span 0..255); other bools are random.
    """

    def __init__(self, model: ModelLike, *, dims: Mapping[str, int] | None = None,
                 num_samples: int = DEFAULT_SYNTHETIC_SAMPLES, seed: int = 0, batch_size: int | None = None) -> None:
        ir_model = _ir_model(model)
        self._specs = tuple(input_specs(ir_model))
        self.dims = dict(dims or {})
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = _check_batch_size(batch_size)
        self.limits = index_limits(ir_model)
        for spec in self._specs:
            if spec.kind != "tensor":
                raise DataError(f"input '{spec.name}' is a {spec.kind}, which synthetic data cannot fill",
                                hint="give real inputs with --data")
            if spec.dtype is None or spec.dtype.kind not in "fciub":
                raise DataError(f"input '{spec.name}' has type {spec.dtype}, which synthetic data cannot fill",
                                hint="give real inputs with --data")
        self.shapes = {spec.name: bind_shape(spec, self.dims) for spec in self._specs}

    def for_model(self, model: ModelLike | Sequence[InputSpec]) -> Dataset:
        return self  # built from its model already

    def _count(self) -> int:
        return self.num_samples

    def _samples(self) -> Iterator[Sample]:
        for index in range(self.num_samples):
            rng = np.random.default_rng([self.seed, index])
            yield {spec.name: self._fill(spec, rng) for spec in self._specs}

    def _fill(self, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
        shape, dtype = self.shapes[spec.name], spec.dtype
        assert dtype is not None
        is_mask = "mask" in spec.name.lower()
        if dtype.kind == "b":
            return np.ones(shape, dtype) if is_mask else rng.integers(0, 2, shape).astype(dtype)
        if dtype.kind in "iu":
            if is_mask:
                return np.ones(shape, dtype)
            high = self.limits.get(spec.name, 256 if dtype == np.uint8 else 2)
            return rng.integers(0, high, shape).astype(dtype)
        if dtype.kind == "c":
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
