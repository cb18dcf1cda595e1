"""The dataset protocol: re-iterable samples, batching, and the helpers adapters share."""

from __future__ import annotations

import abc
import copy
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxkit.data.specs import InputSpec, ModelLike, Sample, input_specs
from onnxkit.errors import DataError

# ---------------------------------------------------------------------------------------------------------
# The protocol and its helpers


class Dataset(abc.ABC):
    """Base of the adapters: iterate it any number of times and get the same samples each time.

    Subclasses yield their natural samples from ``_samples``; with ``batch_size`` set, the base regroups them
    into batches of that many rows along axis 0. An adapter that needs the model to read its data (the input
    name of a ``.npy`` file, whether an array's first axis stacks samples) gets it from ``for_model``, which
    returns a bound copy.
    """

    batch_size: int | None = None
    _specs: tuple[InputSpec, ...] | None = None

    @abc.abstractmethod
    def _samples(self) -> Iterator[Sample]: ...

    def _count(self) -> int:
        """The number of natural samples, where it is known without reading the data."""
        raise TypeError(f"the length of this {type(self).__name__} is not known")

    def __iter__(self) -> Iterator[Sample]:
        if self.batch_size is None:
            return self._samples()
        return _regroup(self._samples(), self.batch_size)

    def __len__(self) -> int:
        if self.batch_size is not None:
            raise TypeError("the number of batches is not known before reading the data")
        return self._count()

    def for_model(self, model: ModelLike | Sequence[InputSpec]) -> Dataset:
        bound = copy.copy(self)
        bound._specs = tuple(input_specs(model))
        return bound

    @property
    def specs(self) -> tuple[InputSpec, ...] | None:
        """The model inputs this dataset is bound to (``for_model``), or None while unbound."""
        return self._specs

    def _spec(self, name: str) -> InputSpec | None:
        return next((s for s in self._specs or () if s.name == name), None)

    def _single_input_name(self, what: str) -> str:
        if self._specs is None:
            raise DataError(f"{what} cannot be named without the model", hint="bind the dataset with .for_model(model)")
        if len(self._specs) != 1:
            raise DataError(
                f"{what} can only feed a single-input model; this one takes {[s.name for s in self._specs]}",
                hint="use one .npz per sample, or one subfolder per sample holding <input name>.npy files",
            )
        return self._specs[0].name


def known_length(dataset: Any) -> int | None:
    """``len(dataset)`` where it is known without reading the data, else None."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _check_batch_size(batch_size: int | None) -> int | None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer, not {batch_size!r}")
    return batch_size


class _Derived(Dataset):
    """A dataset made from another; binding it to a model binds the inner one too."""

    def __init__(self, inner: Iterable[Sample]) -> None:
        self.inner = inner

    def for_model(self, model: ModelLike | Sequence[InputSpec]) -> Dataset:
        bound = super().for_model(model)
        if isinstance(self.inner, Dataset):
            bound.inner = self.inner.for_model(bound._specs or ())  # type: ignore[attr-defined]  # bound is a copy of self
        return bound


class Limited(_Derived):
    """The first ``count`` samples of a dataset."""

    def __init__(self, inner: Iterable[Sample], count: int) -> None:
        super().__init__(inner)
        self.count = count

    def _samples(self) -> Iterator[Sample]:
        return itertools.islice(iter(self.inner), self.count)

    def _count(self) -> int:
        inner = known_length(self.inner)
        if inner is None:
            raise TypeError("length unknown")
        return min(inner, self.count)


def take(dataset: Iterable[Sample], count: int) -> Dataset:
    """The first ``count`` samples, still re-iterable."""
    return Limited(dataset, count)


class Rebatched(_Derived):
    """Samples regrouped along axis 0, the batch axis, into batches of ``batch_size`` rows."""

    def __init__(self, inner: Iterable[Sample], batch_size: int) -> None:
        super().__init__(inner)
        self.batch_size = _check_batch_size(batch_size)

    def _samples(self) -> Iterator[Sample]:
        return iter(self.inner)


def rebatch(dataset: Iterable[Sample], batch_size: int) -> Dataset:
    """Regroup any dataset's samples into batches of ``batch_size`` rows along axis 0; the last may be shorter.

    Every input of a sample must have its batch on axis 0. Rows are views until a batch is assembled, so
    memory holds one batch at a time, whatever the batch size of the source.
    """
    return Rebatched(dataset, batch_size)


def _regroup(samples: Iterable[Sample], batch_size: int) -> Iterator[Sample]:
    pending: list[Sample] = []
    for index, sample in enumerate(samples):
        for row in _rows(sample, index):
            pending.append(row)
            if len(pending) == batch_size:
                yield _concat(pending)
                pending = []
    if pending:
        yield _concat(pending)


def _rows(sample: Sample, index: int) -> Iterator[Sample]:
    sizes = {
        name: value.shape[0] if isinstance(value, np.ndarray) and value.ndim else None for name, value in sample.items()
    }
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise DataError(
            f"sample {index} cannot be batched: its inputs differ on axis 0 or have none ({sizes})",
            hint="batching needs every input to have the batch on axis 0",
        )
    for row in range(next(iter(sizes.values()), 0) or 0):  # one size, checked above
        yield {name: value[row : row + 1] for name, value in sample.items()}


def _concat(samples: list[Sample]) -> Sample:
    if len(samples) == 1:
        return dict(samples[0])
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}


def _natural_key(path: Path) -> list[Any]:
    """Sort ``input_10`` after ``input_9``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _to_array(value: Any, name: str) -> Any:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (np.generic, bool, int, float)):
        return np.asarray(value)
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return [_to_array(v, name) for v in value]  # a sequence input
    if value is None:
        return None  # an empty optional input
    raise DataError(f"input '{name}' is a {type(value).__name__}; expected a numpy array")


def _as_sample(item: Any, index: int) -> Sample:
    if not isinstance(item, Mapping):
        raise DataError(f"sample {index} is a {type(item).__name__}, not a dict {{input name: array}}")
    return {str(name): _to_array(value, str(name)) for name, value in item.items()}
