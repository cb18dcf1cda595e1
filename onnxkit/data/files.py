"""Datasets from files: .npz/.npy files and folders of them, and the ONNX test layout."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from onnxkit.data.base import Dataset, _check_batch_size, _natural_key
from onnxkit.data.specs import InputSpec, ModelLike, Sample, output_specs
from onnxkit.errors import DataError

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
            raise DataError(
                f"{path} holds Python objects (pickle), which onnxkit never loads",
                hint="save plain numeric arrays with np.save / np.savez",
            ) from e
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
            return {
                name[: -len(".npy")]: header_shape(archive.open(name))
                for name in archive.namelist()
                if name.endswith(".npy")
            }
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

    def __init__(
        self,
        path: str | Path,
        *,
        layout: Layout = "auto",
        batch_size: int | None = None,
        default_layout: Literal["samples", "batch"] = "samples",
    ) -> None:
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
                yield {name: array[i : i + 1] for name, array in arrays.items()}
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
            if spec is None or not spec.shape or not shape or (isinstance(spec.shape[0], int) and spec.shape[0] != 1):
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
                raise DataError(
                    f"{self.path.name}: input '{name}' has shape {shape} but the model takes rank {spec.rank}",
                    hint=f"give {spec.rank + 1} axes (samples first) or {spec.rank} (one sample)",
                )
        if len(votes) > 1:
            raise DataError(
                f"{self.path.name}: some arrays stack samples on their first axis and others do not",
                hint="give every input one axis more than the model takes (samples first), or none",
            )
        layout = votes.pop() if votes else self.default_layout
        return "rows" if layout == "batch" and self._splits_into_rows(shapes) else layout

    def _stack_count(self, shapes: dict[str, tuple[int, ...]]) -> int:
        counts = {name: (shape[0] if shape else None) for name, shape in shapes.items()}
        if None in counts.values():
            raise DataError(f"{self.path.name}: a scalar cannot stack samples on its first axis ({counts})")
        if len(set(counts.values())) > 1:
            raise DataError(f"{self.path.name}: inputs hold different numbers of samples: {counts}")
        return next(iter(counts.values()), None) or 0


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
        self.entries = [
            p
            for p in sorted(self.folder.iterdir(), key=_natural_key)
            if not p.name.startswith(".") and (p.suffix in (".npz", ".npy") or (p.is_dir() and any(p.glob("*.npy"))))
        ]
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
        kind, onnx.TensorProto
    )()
    try:
        proto.ParseFromString(path.read_bytes())
        value = {
            "sequence": numpy_helper.to_list,
            "optional": numpy_helper.to_optional,
            "map": numpy_helper.to_dict,
        }.get(kind, numpy_helper.to_array)(proto)
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
            bound._output_specs = tuple(output_specs(model))  # type: ignore[attr-defined]  # bound is a copy of self
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
                raise DataError(
                    f"{path} has no tensor name, and the model is not known to name it by position",
                    hint="bind the dataset with .for_model(model)",
                )
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
