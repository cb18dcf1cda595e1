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
- ``SyntheticDataset``: seeded random inputs built from the model's input specs.

``load_dataset`` picks the adapter for a path or an object; ``as_dataset`` also binds it to a model (or makes
synthetic data when there is none), which is what parity and calibration call. ``validate_sample`` checks a
sample against the model's inputs. No pickle is ever loaded.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import itertools
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from onnxkit.errors import DataError

Sample = dict[str, Any]  # input name -> np.ndarray (a list of arrays for sequence inputs)

DEFAULT_SYNTHETIC_SAMPLES = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
        shape = tuple(d if isinstance(d, int) else d.value for d in value.shape)
    return InputSpec(value.name, _type_kind(value.type), _numpy_dtype(value.dtype), shape)


ModelLike = Any  # str | os.PathLike | bytes | onnx.ModelProto | ir.Model


def _ir_model(model: ModelLike) -> ir.Model:
    from onnxkit.modelio import as_ir_model

    return as_ir_model(model)


def input_specs(model: ModelLike | Sequence[InputSpec]) -> list[InputSpec]:
    """The graph inputs a caller must feed (initializer-backed inputs excluded), in graph order."""
    if isinstance(model, Sequence) and not isinstance(model, (str, bytes)) and all(isinstance(s, InputSpec) for s in model):
        return list(model)
    graph = _ir_model(model).graph
    return [_spec_of(v) for v in graph.inputs if v.name not in graph.initializers]


def output_specs(model: ModelLike) -> list[InputSpec]:
    """The graph outputs, described like inputs."""
    return [_spec_of(v) for v in _ir_model(model).graph.outputs]


# ---------------------------------------------------------------------------------------------------------
# Validation


def validate_sample(sample: Mapping[str, Any], model_inputs: ModelLike | Sequence[InputSpec], *,
                    allow_nonfinite: bool = False, index: int | None = None) -> Sample:
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
        raise DataError(f"{where}missing input{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
                        hint=f"the model takes {[s.name for s in specs]}; the data has {sorted(sample)}")
    symbolic_sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        value = sample[spec.name]
        if spec.kind != "tensor":
            continue  # sequences, optionals and maps are passed to ONNX Runtime as they are
        if not isinstance(value, np.ndarray):
            raise DataError(f"{where}input '{spec.name}' is a {type(value).__name__}, not a numpy array")
        if spec.dtype is not None and value.dtype != spec.dtype:
            raise DataError(f"{where}input '{spec.name}' has dtype {value.dtype}, the model takes {spec.dtype}",
                            hint=f"convert it with .astype(np.{spec.dtype})")
        if spec.shape is not None:
            if value.ndim != len(spec.shape):
                raise DataError(f"{where}input '{spec.name}' has rank {value.ndim} (shape {value.shape}), "
                                f"the model takes rank {len(spec.shape)} {_shape_text(spec.shape)}")
            for axis, (size, dim) in enumerate(zip(value.shape, spec.shape)):
                if isinstance(dim, int) and size != dim:
                    raise DataError(f"{where}input '{spec.name}' has size {size} on axis {axis}, the model takes "
                                    f"{dim} (shape {_shape_text(spec.shape)}, data {tuple(value.shape)})")
                if isinstance(dim, str):
                    seen = symbolic_sizes.setdefault(dim, (size, spec.name))
                    if seen[0] != size:
                        raise DataError(f"{where}dim '{dim}' is {seen[0]} in input '{seen[1]}' but {size} in "
                                        f"input '{spec.name}'", hint="inputs that share a dim name must agree on it")
        if not allow_nonfinite and value.dtype.kind in "fc":
            bad = np.count_nonzero(~np.isfinite(value))
            if bad:
                raise DataError(f"{where}input '{spec.name}' holds {bad} NaN or infinite value{'s' if bad > 1 else ''}")
    return {s.name: sample[s.name] for s in specs}


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


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

    def _spec(self, name: str) -> InputSpec | None:
        return next((s for s in self._specs or () if s.name == name), None)

    def _single_input_name(self, what: str) -> str:
        if self._specs is None:
            raise DataError(f"{what} cannot be named without the model", hint="bind the dataset with .for_model(model)")
        if len(self._specs) != 1:
            raise DataError(f"{what} can only feed a single-input model; this one takes {[s.name for s in self._specs]}",
                            hint="use one .npz per sample, or one subfolder per sample holding <input name>.npy files")
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
            bound.inner = self.inner.for_model(bound._specs or ())  # type: ignore[attr-defined]
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
    sizes = {name: value.shape[0] if isinstance(value, np.ndarray) and value.ndim else None
             for name, value in sample.items()}
    if None in sizes.values() or len(set(sizes.values())) > 1:
        raise DataError(f"sample {index} cannot be batched: its inputs differ on axis 0 or have none ({sizes})",
                        hint="batching needs every input to have the batch on axis 0")
    for row in range(next(iter(sizes.values()), 0)):
        yield {name: value[row:row + 1] for name, value in sample.items()}


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


# ---------------------------------------------------------------------------------------------------------
# .npz / .npy files


Layout = Literal["auto", "samples", "batch"]


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, or ``{"": array}`` for an .npy. Never unpickles."""
    try:
        if path.suffix == ".npy":
            return {"": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"{path} holds Python objects (pickle), which onnxkit never loads",
                            hint="save plain numeric arrays with np.save / np.savez") from e
        raise DataError(f"cannot read {path}: {e}") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}", hint="is it a file written by np.save / np.savez?") from e


def _array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes in an .npz (or ``{"": shape}`` for an .npy) from the array headers, without the data."""

    def header_shape(file: Any) -> tuple[int, ...]:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return tuple(read_header(file)[0])

    try:
        if path.suffix == ".npy":
            with open(path, "rb") as file:
                return {"": header_shape(file)}
        with zipfile.ZipFile(path) as archive:
            return {name[:-len(".npy")]: header_shape(archive.open(name)) for name in archive.namelist() if name.endswith(".npy")}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}: {e}", hint="is it a file written by np.save / np.savez?") from e


class NpzDataset(Dataset):
    """One ``.npz`` keyed by input name, or one ``.npy`` for a single-input model.

    ``layout`` says what the first axis is: ``samples`` (``x[i]`` is sample i), ``batch`` (the file is one
    sample, arrays of the model's own rank), or ``auto``: an array with one axis more than the model's input
    stacks samples, and one of the model's rank is a batch, read row by row (``x[i:i+1]``) when the model's
    batch axis is dynamic, or else as a single sample. Where the model is not known,
    ``default_layout`` decides: ``samples``, the usual meaning of an .npz's first axis.
    """

    def __init__(self, path: str | Path, *, layout: Layout = "auto", batch_size: int | None = None,
                 default_layout: Literal["samples", "batch"] = "samples") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"no such data file: {self.path}")
        self.layout = layout
        self.default_layout = default_layout
        self.batch_size = _check_batch_size(batch_size)

    def _samples(self) -> Iterator[Sample]:
        arrays = self._named(_load_arrays(self.path))
        shapes = {name: array.shape for name, array in arrays.items()}
        layout = self._resolve_layout(shapes)
        if layout == "batch":
            yield arrays
        elif layout == "rows":
            for i in range(self._stack_count(shapes)):
                yield {name: array[i:i + 1] for name, array in arrays.items()}
        else:
            for i in range(self._stack_count(shapes)):
                yield {name: array[i] for name, array in arrays.items()}

    def _count(self) -> int:
        shapes = self._named(_array_shapes(self.path))
        return 1 if self._resolve_layout(shapes) == "batch" else self._stack_count(shapes)

    def _splits_into_rows(self, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Whether arrays of the model's own rank can be read as one sample per row of their batch axis.

        An .npz of ``x: (32, 16)`` for a model taking ``x: [batch, 16]`` means 32 samples to most users, and
        calibration, held-out checks and parity all count samples; so when every input's first dim is
        dynamic (or 1) and the arrays agree on their first axis, each row becomes a sample of batch 1.
        """
        if self.layout != "auto":
            return False
        firsts = set()
        for name, shape in shapes.items():
            spec = self._spec(name)
            if spec is None or not spec.shape or not shape or isinstance(spec.shape[0], int) and spec.shape[0] != 1:
                return False
            firsts.add(shape[0])
        return len(firsts) == 1 and firsts.pop() > 1

    def _named(self, by_name: dict[str, Any]) -> dict[str, Any]:
        if "" in by_name:
            return {self._single_input_name(f"{self.path.name} (an .npy file)"): by_name[""]}
        return by_name

    def _resolve_layout(self, shapes: dict[str, tuple[int, ...]]) -> str:
        if self.layout != "auto":
            return self.layout
        votes = set()
        for name, shape in shapes.items():
            spec = self._spec(name)
            if spec is None or spec.rank is None:
                continue
            if len(shape) == spec.rank + 1:
                votes.add("samples")
            elif len(shape) == spec.rank:
                votes.add("batch")
            else:
                raise DataError(f"{self.path.name}: input '{name}' has shape {shape} but the model takes rank "
                                f"{spec.rank}", hint=f"give {spec.rank + 1} axes (samples first) or {spec.rank} (one sample)")
        if len(votes) > 1:
            raise DataError(f"{self.path.name}: some arrays stack samples on their first axis and others do not",
                            hint="give every input one axis more than the model takes (samples first), or none")
        layout = votes.pop() if votes else self.default_layout
        return "rows" if layout == "batch" and self._splits_into_rows(shapes) else layout

    def _stack_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        counts = {name: (shape[0] if shape else None) for name, shape in shapes.items()}
        if None in counts.values():
            raise DataError(f"{self.path.name}: a scalar cannot stack samples on its first axis ({counts})")
        if len(set(counts.values())) > 1:
            raise DataError(f"{self.path.name}: inputs hold different numbers of samples: {counts}")
        return next(iter(counts.values()), 0)


class FolderDataset(Dataset):
    """A folder of samples, in natural name order.

    - each ``.npz`` is read like ``NpzDataset`` (one sample, or a stack when it has the extra axis);
    - each ``.npy`` file is one sample (or a stack) of a single-input model;
    - each subfolder holding ``<input name>.npy`` files is one sample of a model with several inputs.
    """

    def __init__(self, folder: str | Path, *, batch_size: int | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"no such data folder: {self.folder}")
        self.batch_size = _check_batch_size(batch_size)
        self.entries = [p for p in sorted(self.folder.iterdir(), key=_natural_key) if not p.name.startswith(".")
                        and (p.suffix in (".npz", ".npy") or (p.is_dir() and any(p.glob("*.npy"))))]
        if not self.entries:
            raise DataError(f"{self.folder} holds no .npz or .npy files, nor subfolders of .npy files")

    def _file(self, path: Path) -> NpzDataset:
        file = NpzDataset(path, default_layout="batch")  # without the model, a file in a folder is one sample
        file._specs = self._specs
        return file

    def _samples(self) -> Iterator[Sample]:
        for entry in self.entries:
            if entry.is_file():
                yield from self._file(entry)._samples()
            else:
                yield {p.stem: _load_arrays(p)[""] for p in sorted(entry.glob("*.npy"))}

    def _count(self) -> int:
        return sum(len(self._file(entry)) if entry.is_file() else 1 for entry in self.entries)


# ---------------------------------------------------------------------------------------------------------
# The ONNX test layout


def _read_pb(path: Path, spec: InputSpec | None) -> tuple[str, Any]:
    """A serialized value as (its stored name, its numpy form); the spec's kind picks the proto type."""
    kind = spec.kind if spec is not None else "tensor"
    proto: Any = {"sequence": onnx.SequenceProto, "optional": onnx.OptionalProto, "map": onnx.MapProto}.get(
        kind, onnx.TensorProto)()
    try:
        proto.ParseFromString(path.read_bytes())
        value = {"sequence": numpy_helper.to_list, "optional": numpy_helper.to_optional,
                 "map": numpy_helper.to_dict}.get(kind, numpy_helper.to_array)(proto)
    except Exception as e:  # protobuf and numpy_helper raise several types for a bad file
        raise DataError(f"cannot read {path} as a {type(proto).__name__}: {e}") from e
    return proto.name, value


class OnnxTestDataset(Dataset):
    """The ONNX test layout: ``test_data_set_*/input_*.pb``, one sample per ``test_data_set_*`` folder.

    ``folder`` is a model's test folder (holding the sets) or a single set. Each input is named by its
    TensorProto name when the model takes that name, else by its position among the model's inputs.
    ``expected_outputs()`` reads ``output_*.pb`` the same way.
    """

    def __init__(self, folder: str | Path, *, batch_size: int | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"no such data folder: {self.folder}")
        self.batch_size = _check_batch_size(batch_size)
        if any(self.folder.glob("input_*.pb")):
            self.sets = [self.folder]
        else:
            self.sets = sorted((p for p in self.folder.glob("test_data_set_*") if p.is_dir()), key=_natural_key)
        if not self.sets:
            raise DataError(f"{self.folder} has no test_data_set_* folders or input_*.pb files")
        self._output_specs: tuple[InputSpec, ...] | None = None

    @staticmethod
    def is_test_layout(folder: Path) -> bool:
        return any(folder.glob("input_*.pb")) or any(folder.glob("test_data_set_*/input_*.pb"))

    def for_model(self, model: ModelLike | Sequence[InputSpec]) -> Dataset:
        bound = super().for_model(model)
        if not isinstance(model, Sequence) or isinstance(model, (str, bytes)):
            bound._output_specs = tuple(output_specs(model))  # type: ignore[attr-defined]
        return bound

    def _read_set(self, folder: Path, prefix: str, specs: Sequence[InputSpec] | None) -> Sample:
        sample: Sample = {}
        for position, path in enumerate(sorted(folder.glob(f"{prefix}_*.pb"), key=_natural_key)):
            spec = specs[position] if specs is not None and position < len(specs) else None
            stored_name, value = _read_pb(path, spec)
            if specs is not None and any(s.name == stored_name for s in specs):
                name = stored_name
            elif spec is not None:
                name = spec.name
            elif stored_name:
                name = stored_name
            else:
                raise DataError(f"{path} has no tensor name, and the model is not known to name it by position",
                                hint="bind the dataset with .for_model(model)")
            sample[name] = value
        return sample

    def _samples(self) -> Iterator[Sample]:
        for folder in self.sets:
            yield self._read_set(folder, "input", self._specs)

    def _count(self) -> int:
        return len(self.sets)

    def expected_outputs(self) -> list[Sample]:
        """The stored ``output_*.pb`` of each set, named like the inputs (needs ``for_model`` for nameless ones)."""
        return [self._read_set(folder, "output", self._output_specs) for folder in self.sets]


# ---------------------------------------------------------------------------------------------------------
# Images


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How to turn an image into a model input, in the order applied.

    ``resize``: an int resizes the shorter side to it, a (height, width) pair resizes exactly; ``crop``: a
    center crop (int or pair). With neither, images are resized to the model's static height and width.
    Integer pixels are multiplied by ``scale``, then ``(x - mean) / std`` per channel. ``layout`` and
    ``color`` default to what the model's input shape says (channels first or last; 1 channel is "L").
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1 / 255
    layout: Literal["NCHW", "NHWC"] | None = None
    color: Literal["RGB", "BGR", "L"] | None = None


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError("reading or resizing images needs Pillow, which is not installed",
                        hint="pip install 'onnxkit[images]', or give .npy images already at the model's size") from e
    return Image


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HWC array: uint8 through Pillow's image modes, other dtypes channel by channel."""
    if image.shape[:2] == (height, width):
        return image
    Image = _pillow()
    if image.dtype == np.uint8 and image.shape[2] in (1, 3, 4):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(height, width, image.shape[2])
    channels = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize(
        (width, height), Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(channels, axis=2)


class ImageFolderDataset(Dataset):
    """Image files (Pillow) or ``.npy`` HWC/HW arrays in a folder tree, preprocessed into one input.

    Each image is one sample with a batch axis of 1; ``batch_size`` stacks several.
    """

    def __init__(self, folder: str | Path, preprocess: ImagePreprocess | None = None, *, input_name: str | None = None,
                 batch_size: int | None = None) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"no such image folder: {self.folder}")
        self.preprocess = preprocess or ImagePreprocess()
        self.input_name = input_name
        self.batch_size = _check_batch_size(batch_size)
        self.files = sorted((p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + (".npy",)),
                            key=lambda p: [_natural_key(Path(part)) for part in p.relative_to(self.folder).parts])
        if not self.files:
            raise DataError(f"{self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")

    @staticmethod
    def is_image_folder(folder: Path) -> bool:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))

    def _count(self) -> int:
        return len(self.files)

    def _target(self) -> tuple[str, InputSpec | None]:
        name = self.input_name or self._single_input_name("an image folder")
        return name, self._spec(name)

    def _plan(self, spec: InputSpec | None) -> tuple[str, str, tuple[int, int] | None, np.dtype]:
        """Layout, color mode, the model's static (height, width) if any, and the input dtype."""
        plan = self.preprocess
        shape = spec.shape if spec is not None and spec.rank == 4 else None
        layout = plan.layout or ("NHWC" if shape is not None and shape[3] in (1, 3, 4) and shape[1] not in (1, 3) else "NCHW")
        channels, spatial = (None, None) if shape is None else (
            (shape[1], shape[2:4]) if layout == "NCHW" else (shape[3], shape[1:3]))
        color = plan.color or ("L" if channels == 1 else "RGB")
        static = tuple(spatial) if spatial is not None and all(isinstance(d, int) for d in spatial) else None
        dtype = spec.dtype if spec is not None and spec.dtype is not None else np.dtype(np.float32)
        return layout, color, static, dtype  # type: ignore[return-value]

    def _read(self, path: Path, color: str) -> np.ndarray:
        if path.suffix == ".npy":
            image = _load_arrays(path)[""]
            if image.ndim == 2:
                image = image[:, :, None]
            if image.ndim != 3:
                raise DataError(f"{path} has shape {image.shape}; an image array is HxW or HxWxC")
            return image[:, :, ::-1] if color == "BGR" else image
        Image = _pillow()
        try:
            with Image.open(path) as pil:
                image = np.asarray(pil.convert("L" if color == "L" else "RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        image = image[:, :, None] if image.ndim == 2 else image
        return image[:, :, ::-1] if color == "BGR" else image

    def _samples(self) -> Iterator[Sample]:
        name, spec = self._target()
        layout, color, static_size, dtype = self._plan(spec)
        plan = self.preprocess
        for path in self.files:
            image = self._read(path, color)
            if plan.resize is not None:
                if isinstance(plan.resize, int):
                    height, width = image.shape[:2]
                    ratio = plan.resize / min(height, width)
                    image = _resize(image, max(1, round(height * ratio)), max(1, round(width * ratio)))
                else:
                    image = _resize(image, *_pair(plan.resize))
            if plan.crop is not None:
                crop_h, crop_w = _pair(plan.crop)
                top, left = round((image.shape[0] - crop_h) / 2), round((image.shape[1] - crop_w) / 2)
                if top < 0 or left < 0:
                    raise DataError(f"{path}: crop {crop_h}x{crop_w} is larger than the image {image.shape[:2]}")
                image = image[top:top + crop_h, left:left + crop_w]
            if plan.resize is None and plan.crop is None and static_size is not None:
                image = _resize(image, *static_size)
            pixels = image.astype(np.float32) * (plan.scale if image.dtype.kind in "ui" else 1.0)
            if plan.mean is not None:
                pixels = pixels - np.asarray(plan.mean, dtype=np.float32)
            if plan.std is not None:
                pixels = pixels / np.asarray(plan.std, dtype=np.float32)
            if layout == "NCHW":
                pixels = pixels.transpose(2, 0, 1)
            yield {name: np.ascontiguousarray(pixels[None]).astype(dtype, copy=False)}


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
            raise DataError("the DataLoader shuffles, so two passes over it would see different samples",
                            hint="build it with shuffle=False for calibration and parity")
        if not self.is_loader and not (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            raise DataError(f"{type(source).__name__} is neither a map-style torch Dataset nor a DataLoader",
                            hint="wrap an iterable-style dataset in a DataLoader, or pass a list of dicts")

    def _names(self, count: int) -> list[str]:
        names = self.input_names or ([s.name for s in self._specs] if self._specs is not None else None)
        if names is None:
            raise DataError("tuple items from a torch dataset cannot be named without the model",
                            hint="give input_names=[...] or bind the dataset with .for_model(model)")
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
        if not isinstance(value, np.ndarray) or (spec is not None and spec.rank is not None and value.ndim == spec.rank):
            return value
        return value[None]

    def _count(self) -> int:
        return len(self.source)


class IterableDataset(Dataset):
    """A list (or other re-iterable) of dicts, or a function that returns a fresh iterator of dicts."""

    def __init__(self, source: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]], *,
                 batch_size: int | None = None) -> None:
        if not callable(source) and iter(source) is source:  # type: ignore[arg-type]
            raise DataError(f"a {type(source).__name__} can be iterated only once, and calibration and parity need "
                            "several passes", hint="pass a list, or a function that returns a new iterator")
        self.source = source
        self.batch_size = _check_batch_size(batch_size)

    def _samples(self) -> Iterator[Sample]:
        items = self.source() if callable(self.source) else self.source  # type: ignore[operator]
        for index, item in enumerate(items):
            yield _as_sample(item, index)

    def _count(self) -> int:
        if callable(self.source):
            raise TypeError("the length of a dataset made by a function is not known")
        return len(self.source)  # type: ignore[arg-type]


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
            raise DataError(f"no such data file or folder: {path}")
        if path.is_dir():
            if OnnxTestDataset.is_test_layout(path):
                return OnnxTestDataset(path, batch_size=batch_size)
            if ImageFolderDataset.is_image_folder(path):
                return ImageFolderDataset(path, batch_size=batch_size)
            return FolderDataset(path, batch_size=batch_size)
        if path.suffix in (".npz", ".npy"):
            return NpzDataset(path, batch_size=batch_size)
        raise DataError(f"cannot read data from {path}",
                        hint="give an .npz, an .npy, or a folder of them, of images, or in the ONNX test layout")
    if type(source).__module__.startswith("torch.utils.data") or _is_torch_dataset(source):
        return TorchDataset(source, batch_size=batch_size)
    if isinstance(source, Mapping):
        return IterableDataset([source], batch_size=batch_size)
    if callable(source) or isinstance(source, Iterable):
        return IterableDataset(source, batch_size=batch_size)
    raise DataError(f"cannot use a {type(source).__name__} as a dataset",
                    hint="give a path, a list of {input name: array} dicts, or a torch Dataset/DataLoader")


def _is_torch_dataset(source: Any) -> bool:
    return any(cls.__module__.startswith("torch.utils.data") for cls in type(source).__mro__)


def describe_data(data: Any) -> str:
    """A few words on where samples come from, for reports: ``NpzDataset calib.npz``, ``list``."""
    if isinstance(data, (str, Path)):
        return str(data)
    location = getattr(data, "path", None) or getattr(data, "folder", None)
    return f"{type(data).__name__} {location}" if location is not None else type(data).__name__


def as_dataset(data: Any, model: ModelLike, *, dims: Mapping[str, int] | None = None, num_samples: int | None = None,
               seed: int = 0) -> Dataset:
    """A dataset bound to ``model``: ``data`` through ``load_dataset``, or synthetic inputs when it is None.

    ``num_samples`` is the synthetic sample count, or a cap on the samples taken from ``data``.
    """
    if data is None:
        return SyntheticDataset(model, dims=dims, num_samples=num_samples or DEFAULT_SYNTHETIC_SAMPLES, seed=seed)
    dataset = load_dataset(data).for_model(model)
    return take(dataset, num_samples) if num_samples is not None else dataset
