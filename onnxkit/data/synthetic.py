"""Seeded synthetic inputs built from a model's input specs and from what its graph says about them.

Each dynamic dim is bound by ``dims.bind_shape`` (keys, roles, sizes); what the graph says is read once by
``graph_hints.read_graph`` (stated and pinned dims, index limits, compared values). Beyond those, an integer
input named like a length (``waveforms_lens``) takes the length of the other inputs. Sizes the graph leaves
open start at the first rung of each role's ladder (``DIM_DEFAULTS``); ``onnxkit.data.probe`` climbs the
ladders until ONNX Runtime runs the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from onnxkit.data.base import Dataset, _check_batch_size
from onnxkit.data.dims import bind_shape, dim_role, is_dynamic
from onnxkit.data.graph_hints import GraphHints, read_graph
from onnxkit.data.specs import InputSpec, ModelLike, Sample
from onnxkit.errors import DataError

DEFAULT_SYNTHETIC_SAMPLES = 4
# Samples drawn once and handed out again as copies while they fit in this many bytes: every comparison of a run
# reads the parity samples anew, and drawing one 1x3x624x624 image costs 15 ms, copying it 1 ms.
DRAWN_SAMPLES_BYTES = 256 * 2**20

_PLAIN_WORD = "word"
_LENGTH_NAME = re.compile(r"len(s|gths?)?$|_len(s|gths?)?_|^lengths?", re.IGNORECASE)


class SyntheticDataset(Dataset):
    """Seeded random inputs built from the model's input specs; sample i is the same on every pass.

    Dynamic dims are bound by ``bind_shape``: ``dims`` (the user's ``--dim``) first, then what the graph pins,
    then ``sizes`` (what a probe chose), then the role's default. Floats are standard normal. Integers that
    index a table stay below its size; other integers and strings the graph compares with constants (or looks
    up) take those values in turn; an integer input named like a length takes the longest non-batch size of
    the other inputs; inputs whose name contains "mask" are all ones (or True); uint8 inputs, usually pixels,
    span 0..255; other integers are 1; other bools are random; other strings are a plain word.

    ``probe`` describes how the sizes were found, when ``onnxkit.data.probe`` found them.
    """

    def __init__(
        self,
        model: ModelLike,
        *,
        dims: Mapping[str, int] | None = None,
        num_samples: int = DEFAULT_SYNTHETIC_SAMPLES,
        seed: int = 0,
        batch_size: int | None = None,
        sizes: Mapping[str, int] | None = None,
        hints: GraphHints | None = None,
    ) -> None:
        hints = hints if hints is not None else read_graph(model)
        self._specs: tuple[InputSpec, ...] = hints.specs  # known from the graph: never None here
        self.hints = hints
        self.dims = dict(dims or {})
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = _check_batch_size(batch_size)
        self.limits = dict(hints.limits)
        self.probe: str | None = None
        self.probe_run: Any = None  # a probe's session and first outputs, when asked to keep them (probe.ProbeRun)
        # Samples drawn so far, by index, for the settings they were drawn with (``_drawing``).
        self._drawn: dict[int, tuple[Any, Sample]] = {}
        for spec in self._specs:
            if spec.kind != "tensor":
                raise DataError(
                    f"input '{spec.name}' is a {spec.kind}, which synthetic data cannot fill",
                    hint="give real inputs with --data",
                )
            if spec.dtype is None or spec.dtype.kind not in "fciubOUS":
                raise DataError(
                    f"input '{spec.name}' has type {spec.dtype}, which synthetic data cannot fill",
                    hint="give real inputs with --data",
                )
        self.sizes = {**dict(sizes or {}), **hints.pinned}
        self.shapes = {spec.name: bind_shape(spec, self.dims, self.sizes) for spec in self._specs}

    def for_model(self, model: ModelLike | Sequence[InputSpec]) -> Dataset:
        return self  # built from its model already

    def describe(self) -> str:
        """The inputs it makes, for reports: ``probed: x float32[1,3,64,64] (H=64, W=64; 3 tries)``."""
        if self.probe is not None:
            return f"probed: {self.shapes_text()} ({self.probe})"
        return f"synthetic, seed {self.seed}: {self.shapes_text()}"

    def shapes_text(self) -> str:
        """``x float32[1,3,64,64], mask bool[1,64]``"""
        return ", ".join(
            f"{spec.name} {_dtype_name(spec.dtype)}[{','.join(map(str, self.shapes[spec.name]))}]"
            for spec in self._specs
        )

    def _count(self) -> int:
        return self.num_samples

    def _samples(self) -> Iterator[Sample]:
        drawing = self._drawing()
        for index in range(self.num_samples):
            drawn = self._drawn.get(index)
            if drawn is not None and drawn[0] == drawing:
                yield {name: array.copy() for name, array in drawn[1].items()}  # a consumer may write into its own
                continue
            rng = np.random.default_rng([self.seed, index])
            sample = {spec.name: self._fill(spec, rng, index) for spec in self._specs}
            kept = sum(array.nbytes for _, one in self._drawn.values() for array in one.values())
            if kept + sum(array.nbytes for array in sample.values()) <= DRAWN_SAMPLES_BYTES:
                self._drawn[index] = (drawing, {name: array.copy() for name, array in sample.items()})
            yield sample

    def _drawing(self) -> tuple:
        """What a sample's values follow from besides its index (callers may change the sizes between reads)."""
        shapes = tuple((name, tuple(shape)) for name, shape in self.shapes.items())
        return (self.seed, shapes, tuple(sorted(self.limits.items())))

    def _fill(self, spec: InputSpec, rng: np.random.Generator, index: int) -> np.ndarray:
        shape, dtype = self.shapes[spec.name], spec.dtype
        assert dtype is not None
        choices = self.hints.values.get(spec.name)
        if dtype.kind in "OUS":
            words = [c for c in choices or () if isinstance(c, str)] or [_PLAIN_WORD]
            return np.array(rng.choice(words, size=shape), dtype=object)
        if choices and dtype.kind in "iub" and spec.name not in self.limits:
            # One compared value per sample, in turn, so a few samples take every branch. Not for token ids
            # (they index a table), which are compared only to find padding: all-padding input says little.
            return np.full(shape, choices[index % len(choices)], dtype)
        is_mask = "mask" in spec.name.lower()
        if dtype.kind == "b":
            return np.ones(shape, dtype) if is_mask else rng.integers(0, 2, shape).astype(dtype)
        if dtype.kind in "iu":
            if is_mask:
                return np.ones(shape, dtype)
            length = self._length(spec) if _LENGTH_NAME.search(spec.name) else None
            if length is not None:
                return np.full(shape, length, dtype)
            if spec.name in self.limits or dtype == np.uint8:  # ids of a table; pixels
                return rng.integers(0, self.limits.get(spec.name, 256), shape).astype(dtype)
            return np.ones(shape, dtype)  # a count or an id that exists: a zero often makes an empty tensor
        if dtype.kind == "c":
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    def _length(self, length_input: InputSpec) -> int | None:
        """The longest non-batch dynamic size among the other inputs: what a ``lengths`` input counts."""
        sizes = [
            self.shapes[spec.name][axis]
            for spec in self._specs
            if spec is not length_input
            for axis, dim in enumerate(spec.shape or ())
            if is_dynamic(dim) and dim_role(spec, axis) != "batch"
        ]
        return max(sizes, default=None)


def _dtype_name(dtype: np.dtype | None) -> str:
    return "string" if dtype is not None and dtype.kind in "OUS" else str(dtype)
