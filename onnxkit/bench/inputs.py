"""The samples every tool's model is measured on: an ``.npz`` the user gives, or seeded synthetic inputs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx

from onnxkit.bench.plan import SYNTHETIC_SAMPLES
from onnxkit.errors import DataError


@dataclasses.dataclass
class BenchInputs:
    """Samples stacked along axis 0 (the batch axis), one array per model input, and labels if known."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False

    @property
    def count(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        """``size`` samples from ``start``, wrapping around when there are fewer."""
        rows = np.arange(start, start + size) % self.count
        return {name: array[rows] for name, array in self.arrays.items()}

    def save(self, path: Path) -> None:
        arrays = self.arrays if self.labels is None else {**self.arrays, "labels": self.labels}
        np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **kwds as its bool options

    def write_samples(self, folder: Path, count: int) -> None:
        """One ``.npz`` per sample, batch of one, for calibration by onnxkit and by ORT alike."""
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(min(count, self.count)):
            np.savez(folder / f"sample_{i:05d}.npz", **self.batch(i, 1))  # type: ignore[arg-type]  # as in save


_LABEL_KEYS = ("labels", "label")


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def load_inputs(path: str | os.PathLike[str], proto: onnx.ModelProto) -> BenchInputs:
    """Read an ``.npz`` of arrays named after the model's inputs, samples along axis 0, and ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as e:
        raise DataError(
            f"cannot read bench data {path}: {e}",
            hint="give an .npz with one array per model input (samples along axis 0) and optionally 'labels'",
        ) from e
    labels = next((arrays.pop(key) for key in _LABEL_KEYS if key in arrays), None)
    names = [v.name for v in graph_inputs(proto)]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"bench data {path} lacks model inputs {missing}", hint=f"the model's inputs are {names}")
    counts = {len(arrays[n]) for n in names}
    if len(counts) != 1 or (labels is not None and len(labels) not in counts):
        raise DataError(f"bench data {path}: inputs and labels must have the same number of samples along axis 0")
    from onnxkit.data import validate_sample

    # Every tool's output would fail on data the model does not take: refused once, before any tool runs.
    validate_sample({n: arrays[n][:1] for n in names}, proto, index=0)
    return BenchInputs({n: arrays[n] for n in names}, labels)


def synthetic_inputs(
    model: str | os.PathLike[str], dims: dict[str, int], count: int = SYNTHETIC_SAMPLES
) -> BenchInputs:
    """Seeded inputs that ``model`` runs on, from the one synthetic-input module (``onnxkit.data.probe``):
    ``count`` samples of batch one, stacked along axis 0; ``dims`` binds the other dynamic dims."""
    from onnxkit.data import as_dataset

    samples = list(as_dataset(None, str(model), dims={**dims, "batch": 1}, num_samples=count))
    return BenchInputs({name: np.concatenate([s[name] for s in samples]) for name in samples[0]}, synthetic=True)
