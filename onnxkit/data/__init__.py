"""Re-iterable input datasets: every pass over the data yields the same samples.

Calibration, sensitivity analysis and parity each walk the data, some of them more than once, while ONNX
Runtime's ``CalibrationDataReader`` can be read only once. A dataset here is anything that can be iterated
again and again, each time yielding the same samples; a sample is ``{input name: numpy array}`` (a list of
arrays for a sequence input). ``len()`` works where the count is known without reading the data.

Adapters, all of which accept ``batch_size`` to regroup samples along axis 0, the batch axis:

- ``NpzDataset``: one ``.npz`` (or ``.npy``) keyed by input name. With the model known, an array with one
  axis more than the model's input is a stack of samples (first axis = samples); an array of the model's
  own rank is one sample (one batch). Without the model, the first axis indexes samples.
- ``FolderDataset``: ``.npz`` files (one sample each, or stacks as above), ``.npy`` files for a single-input
  model, or one subfolder per sample holding ``<input name>.npy`` files.
- ``OnnxTestDataset``: the ONNX test layout, ``test_data_set_*/input_*.pb``.
- ``ImageFolderDataset``: image files or ``.npy`` HWC arrays, resized, cropped, normalized, laid out.
- ``TorchDataset``: a torch ``Dataset`` or ``DataLoader`` (torch is imported only by this adapter).
- ``IterableDataset``: a list of dicts, or a function returning a fresh iterator of dicts.
- ``SyntheticDataset``: seeded random inputs built from the model's input specs and what its graph says;
  ``probe_dataset`` (``probe.py``) sizes its dynamic dims so that ONNX Runtime runs the model.

``load_dataset`` picks the adapter for a path or an object; ``as_dataset`` also binds it to a model (or makes
synthetic data when there is none), which is what parity and calibration call. ``validate_sample`` checks a
sample against the model's inputs. No pickle is ever loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxkit.data.base import Dataset, Limited, Rebatched, known_length, rebatch, take
from onnxkit.data.dims import DIM_DEFAULTS, bind_shape
from onnxkit.data.files import FolderDataset, Layout, NpzDataset, OnnxTestDataset
from onnxkit.data.graph_hints import GraphHints, index_limits, read_graph
from onnxkit.data.images import IMAGE_SUFFIXES, ImageFolderDataset, ImagePreprocess
from onnxkit.data.probe import probe_dataset
from onnxkit.data.python import IterableDataset, TorchDataset
from onnxkit.data.specs import (
    InputSpec,
    ModelLike,
    Sample,
    input_specs,
    output_specs,
    validate_sample,
)
from onnxkit.data.split import (
    DEFAULT_CALIBRATION_SAMPLES,
    HOLDOUT_EVERY,
    CalibrationSplit,
)
from onnxkit.data.synthetic import DEFAULT_SYNTHETIC_SAMPLES, SyntheticDataset
from onnxkit.errors import DataError

__all__ = [
    "DEFAULT_CALIBRATION_SAMPLES",
    "DEFAULT_SYNTHETIC_SAMPLES",
    "DIM_DEFAULTS",
    "HOLDOUT_EVERY",
    "IMAGE_SUFFIXES",
    "CalibrationSplit",
    "Dataset",
    "FolderDataset",
    "GraphHints",
    "ImageFolderDataset",
    "ImagePreprocess",
    "InputSpec",
    "IterableDataset",
    "Layout",
    "Limited",
    "ModelLike",
    "NpzDataset",
    "OnnxTestDataset",
    "Rebatched",
    "Sample",
    "SyntheticDataset",
    "TorchDataset",
    "as_dataset",
    "bind_shape",
    "describe_data",
    "index_limits",
    "input_specs",
    "known_length",
    "load_dataset",
    "output_specs",
    "probe_dataset",
    "read_graph",
    "rebatch",
    "take",
    "validate_sample",
]


# ---------------------------------------------------------------------------------------------------------
# Choosing an adapter


def load_dataset(source: Any, *, batch_size: int | None = None) -> Dataset:
    """The adapter for ``source``: an .npz/.npy file, a folder (ONNX test layout, images, or .npz/.npy), a
    torch Dataset or DataLoader, a dict (one sample), a list of dicts, or a function returning an iterator.
    A ``Dataset`` is returned as it is."""
    if isinstance(source, Dataset):
        return source if batch_size is None else rebatch(source, batch_size)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"no such data file or folder: {path}", hint="check the data path")
        if path.is_dir():
            if OnnxTestDataset.is_test_layout(path):
                return OnnxTestDataset(path, batch_size=batch_size)
            if ImageFolderDataset.is_image_folder(path):
                return ImageFolderDataset(path, batch_size=batch_size)
            return FolderDataset(path, batch_size=batch_size)
        if path.suffix in (".npz", ".npy"):
            return NpzDataset(path, batch_size=batch_size)
        raise DataError(
            f"cannot read data from {path}",
            hint="give an .npz, an .npy, or a folder of them, of images, or in the ONNX test layout",
        )
    if type(source).__module__.startswith("torch.utils.data") or _is_torch_dataset(source):
        return TorchDataset(source, batch_size=batch_size)
    if isinstance(source, Mapping):
        return IterableDataset([source], batch_size=batch_size)
    if callable(source) or isinstance(source, Iterable):
        return IterableDataset(source, batch_size=batch_size)
    raise DataError(
        f"cannot use a {type(source).__name__} as a dataset",
        hint="give a path, a list of {input name: array} dicts, or a torch Dataset/DataLoader",
    )


def _is_torch_dataset(source: Any) -> bool:
    return any(cls.__module__.startswith("torch.utils.data") for cls in type(source).__mro__)


def describe_data(data: Any) -> str:
    """A few words on where samples come from, for reports: ``NpzDataset calib.npz``, ``list``, or a
    synthetic dataset's own ``describe()`` (``probed: x float32[1,3,64,64] (...)``)."""
    if isinstance(data, SyntheticDataset):
        return data.describe()
    if isinstance(data, (str, Path)):
        return str(data)
    location = getattr(data, "path", None) or getattr(data, "folder", None)
    return f"{type(data).__name__} {location}" if location is not None else type(data).__name__


def as_dataset(
    data: Any,
    model: ModelLike,
    *,
    dims: Mapping[str, int] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    model_dir: str | os.PathLike[str] | None = None,
    keep_run: bool = False,
    serialized: bytes | None = None,
) -> Dataset:
    """A dataset bound to ``model``: ``data`` through ``load_dataset``, or, when it is None, synthetic inputs
    probed until ONNX Runtime runs the model (``probe_dataset``; ``model_dir`` holds the external data of an
    in-memory model; ``keep_run`` leaves the probe's session and first outputs in its ``probe_run``;
    ``serialized``, the model's bytes at hand, makes the probe's session without serializing it again).

    ``num_samples`` is the synthetic sample count, or a cap on the samples taken from ``data``.
    """
    if data is None:
        return probe_dataset(
            model,
            dims=dims,
            num_samples=num_samples or DEFAULT_SYNTHETIC_SAMPLES,
            seed=seed,
            model_dir=model_dir,
            keep_run=keep_run,
            serialized=serialized,
        )
    dataset = load_dataset(data).for_model(model)
    return take(dataset, num_samples) if num_samples is not None else dataset
