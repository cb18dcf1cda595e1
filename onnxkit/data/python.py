"""Datasets from Python objects: torch Datasets and DataLoaders, lists of dicts, generator functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from onnxkit.data.base import Dataset, _as_sample, _check_batch_size, _to_array
from onnxkit.data.specs import Sample
from onnxkit.errors import DataError

# ---------------------------------------------------------------------------------------------------------
# torch and plain Python


class TorchDataset(Dataset):
    """A torch ``Dataset`` (items get a batch axis) or ``DataLoader`` (items are batches already).

    An item may be a tensor (single-input models), a tuple or list (the model's inputs in order; extra items
    such as labels are ignored), or a dict keyed by input name. A shuffling DataLoader is refused: iterating
    it twice would not give the same samples.
    """

    def __init__(self, source: Any, *, input_names: Sequence[str] | None = None, batch_size: int | None = None) -> None:
        import torch.utils.data as torch_data

        self.source = source
        self.input_names = list(input_names) if input_names is not None else None
        self.batch_size = _check_batch_size(batch_size)
        self.is_loader = isinstance(source, torch_data.DataLoader)
        if self.is_loader and isinstance(source.sampler, torch_data.RandomSampler):
            raise DataError(
                "the DataLoader shuffles, so two passes over it would see different samples",
                hint="build it with shuffle=False for calibration and parity",
            )
        if not self.is_loader and not (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            raise DataError(
                f"{type(source).__name__} is neither a map-style torch Dataset nor a DataLoader",
                hint="wrap an iterable-style dataset in a DataLoader, or pass a list of dicts",
            )

    def _names(self, count: int) -> list[str]:
        names = self.input_names or ([s.name for s in self._specs] if self._specs is not None else None)
        if names is None:
            raise DataError(
                "tuple items from a torch dataset cannot be named without the model",
                hint="give input_names=[...] or bind the dataset with .for_model(model)",
            )
        return names[:count]

    def _samples(self) -> Iterator[Sample]:
        items = iter(self.source) if self.is_loader else (self.source[i] for i in range(len(self.source)))
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                sample = _as_sample(item, index)
            else:
                values = list(item) if isinstance(item, (tuple, list)) else [item]
                names = self._names(len(values))
                sample = {name: _to_array(value, name) for name, value in zip(names, values)}
            if not self.is_loader:
                sample = {name: self._add_batch_axis(name, value) for name, value in sample.items()}
            yield sample

    def _add_batch_axis(self, name: str, value: Any) -> Any:
        spec = self._spec(name)
        if not isinstance(value, np.ndarray) or (
            spec is not None and spec.rank is not None and value.ndim == spec.rank
        ):
            return value
        return value[None]

    def _count(self) -> int:
        return len(self.source)


class IterableDataset(Dataset):
    """A list (or other re-iterable) of dicts, or a function that returns a fresh iterator of dicts."""

    def __init__(
        self,
        source: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
        *,
        batch_size: int | None = None,
    ) -> None:
        if not callable(source) and iter(source) is source:
            raise DataError(
                f"a {type(source).__name__} can be iterated only once, and calibration and parity need several passes",
                hint="pass a list, or a function that returns a new iterator",
            )
        self.source = source
        self.batch_size = _check_batch_size(batch_size)

    def _samples(self) -> Iterator[Sample]:
        items = self.source() if callable(self.source) else self.source
        for index, item in enumerate(items):
            yield _as_sample(item, index)

    def _count(self) -> int:
        if callable(self.source):
            raise TypeError("the length of a dataset made by a function is not known")
        return len(self.source)  # type: ignore[arg-type]  # a list or other sized iterable when not callable
