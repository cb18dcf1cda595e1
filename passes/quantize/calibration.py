"""Streaming calibration: activation ranges in memory that does not grow with the number of samples.

ONNX Runtime's calibrators keep every batch's outputs (memory linear in samples) and, called through
``quantize_static``, never receive the histogram settings, so entropy silently equals MinMax. Here one pass over
the data keeps, per tensor, its running min and max (this is MinMax) and, for entropy and percentile, a
``StreamingHistogram``: bins of a power-of-two width anchored at zero, widened by exact merging when a value
falls outside, covering ``[min(lo, 0), max(hi, 0)]`` (the range the quantizer will cover, since it always
includes zero) in fine bins. Thresholds are searched on those histograms re-binned to ``num_bins`` bins over that range.

Memory is one batch of intermediate tensors plus ``FINE_BINS × num_bins`` counts per tensor. The final grid depends
only on the final range, so every element lands in the same bin however the samples are grouped or ordered,
and the results do not depend on batching. The ranges go to ORT's quantizer as ``TensorsData``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    TensorData,
    TensorsData,
    load_tensors_data,
    save_tensors_data,
)

from onnxkit.passes.quantize.runtime import TensorTap

# auto: entropy's ranges, or minmax's where the all-INT8 model comes out closer to float with them (``run``).
CalibMethod = Literal["auto", "minmax", "entropy", "percentile"]
ORT_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})

# Activations are quantized to 8 bits: 256 levels.
QUANTIZED_LEVELS = 256
# The entropy search tries this many clipping thresholds between "keep 256 bins" and "keep everything".
ENTROPY_CANDIDATES = 128
# Divergences closer than this (nats) count as a tie, decided for the narrower window.
KL_TIE = 1e-12
CACHE_FORMAT = 3  # 3: probabilities keep their observed range (``probability_tensors``)
# A streaming histogram keeps up to this many times ``num_bins`` fine bins (more than half of them spanning the
# range), so that re-binning to ``num_bins`` over the exact range moves each count by at most 1/4 of a bin.
FINE_BINS = 4
# Values binned at a time: 1 MB of float32.
_CHUNK = 1 << 18

Progress = Callable[[int], None]

# Ops that only move, select or re-type their input's values: a probability stays one through them (MiniLM's
# TorchScript export reads its attention probabilities through ``Where(IsNaN(p), 0, p)``).
_VALUE_PRESERVING_OPS = frozenset(
    {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Dropout", "Where", "Expand"}
)


def probability_tensors(proto: onnx.ModelProto) -> set[str]:
    """Softmax outputs, and the tensors made from them by ``_VALUE_PRESERVING_OPS``.

    These keep their observed range rather than an entropy or percentile one. Attention probabilities are
    mostly near zero, with the few large ones carrying what a token attends to: the entropy search, which
    matches the distribution's shape, clipped MiniLM's at 0.125 (each head's largest weights flattened, 50-65%
    relative rounding noise, 16 of 51 nodes kept float to make up for it); their full [0, 1] range costs
    1/255 steps instead, and all 51 then met the target in INT8 (held-out cosine 0.9966)."""
    found: set[str] = set()
    for node in proto.graph.node:  # in topological order, as ONNX requires
        if node.op_type == "Softmax" or (
            node.op_type in _VALUE_PRESERVING_OPS and any(name in found for name in node.input)
        ):
            found.update(node.output)
    return found


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    method: CalibMethod = "minmax"
    num_bins: int = 2048
    percentile: float = 99.999

    def describe(self) -> str:
        if self.method == "minmax":
            return "minmax"
        detail = f"{self.num_bins} bins" + (f", {self.percentile}th percentile" if self.method == "percentile" else "")
        if self.method == "auto":
            return f"auto: entropy ({detail}), or minmax where all-INT8 comes out closer to float with it"
        return f"{self.method} ({detail})"


def calibration_tensors(
    proto: onnx.ModelProto,
    op_types: Iterable[str] | None,
    types: Mapping[str, int],
    float_outputs: Iterable[str] = (),
) -> list[str]:
    """The float activations that the quantizer may need ranges for: inputs and outputs of main-graph nodes
    of ``op_types`` (all nodes when None), initializers excluded, in graph order. Nodes of ``float_outputs``
    op types give float results (the quantizer puts no QDQ pair on their outputs): only their inputs, unless
    another node's input is their output (MiniLM: 97 tensors tapped instead of 148)."""
    wanted = None if op_types is None else set(op_types)
    float_results = set(float_outputs)
    initializers = {i.name for i in proto.graph.initializer}
    names: dict[str, None] = {}
    for node in proto.graph.node:
        if wanted is not None and node.op_type not in wanted:
            continue
        for name in node.input if node.op_type in float_results else (*node.input, *node.output):
            if name and name not in initializers and types.get(name) in FLOAT_TYPES:
                names[name] = None
    return list(names)


def _finite_values(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The array's finite values, flat, with their minimum and maximum (nan, nan when there are none).

    Minimum and maximum come first: both finite means every value is (a NaN makes both NaN, an infinity
    shows as one), so the usual tensor needs no pass of its own to find its non-finite values."""
    flat = np.asarray(array, dtype=np.float32).ravel()
    if flat.size == 0:
        return flat, math.nan, math.nan
    low, high = float(flat.min()), float(flat.max())
    if math.isfinite(low) and math.isfinite(high):
        return flat, low, high
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return flat, math.nan, math.nan
    return flat, float(flat.min()), float(flat.max())


@dataclasses.dataclass
class StreamingHistogram:
    """A histogram on the grid of bins ``[k·w, (k+1)·w)`` with ``w`` a power of two and ``k`` an integer,
    covering every value seen and zero, in at most ``capacity`` bins (``FINE_BINS`` × ``num_bins``).

    When a value falls outside, the bin width doubles and neighbouring bins merge, which is exact on this grid
    (a value in bin ``k`` at width ``w`` is in bin ``k // 2`` at ``2w``). The final grid depends only on the
    final range, so the counts do not depend on how the samples were grouped or ordered, and one pass over the
    data is enough: the range need not be known before counting. The range then spans more than
    ``capacity / 2`` fine bins, which ``rebinned`` turns into the ``num_bins`` bins the thresholds are searched on.
    """

    capacity: int
    exponent: int | None = None  # bin width 2**exponent; None until a nonzero value is seen
    first: int = 0  # the grid index of counts[0]
    counts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    zeros: int = 0  # zeros seen before any nonzero value fixed a grid

    def add(self, values: np.ndarray, low: float, high: float) -> None:
        """Count ``values`` (finite), whose minimum and maximum are ``low`` and ``high``."""
        low, high = min(low, 0.0), max(high, 0.0)
        if high == low:  # only zeros
            if self.exponent is None:
                self.zeros += values.size
            else:
                self.counts[-self.first] += values.size
            return
        self._cover(low, high)
        assert self.exponent is not None
        # Scaling by a power of two is exact, so floor(value / width) is the value's grid bin whatever the width.
        # In chunks that stay in cache, with no range checks (the grid covers [low, high]): four times faster
        # than np.histogram, which was most of the calibration time on a 224×224 CNN.
        scale = np.float32(2.0**-self.exponent)
        # With no negative value truncation is the floor, and on a grid starting at zero the bin is the index:
        # two passes fewer over the chunk (a Relu's output, half of a CNN's tensors).
        nonnegative = low >= 0.0
        scaled = np.empty(min(values.size, _CHUNK), dtype=np.float32)
        for start in range(0, values.size, _CHUNK):
            part = values[start : start + _CHUNK]
            chunk = scaled[: part.size]
            np.multiply(part, scale, out=chunk)
            if not nonnegative:
                np.floor(chunk, out=chunk)
            index = chunk.astype(np.int32)
            if self.first:
                index -= self.first
            self.counts += np.bincount(index, minlength=self.counts.size)

    def _cover(self, low: float, high: float) -> None:
        """Widen the grid (merging bins) until it covers ``[low, high]`` and zero."""
        if self.exponent is not None:
            low = min(low, self.first * 2.0**self.exponent)
            high = max(high, (self.first + self.counts.size - 1) * 2.0**self.exponent)
        exponent = math.frexp((high - low) / self.capacity)[1] - 1 if self.exponent is None else self.exponent
        while math.floor(high / 2.0**exponent) - math.floor(low / 2.0**exponent) + 1 > self.capacity:
            exponent += 1
        first, last = math.floor(low / 2.0**exponent), math.floor(high / 2.0**exponent)
        counts = np.zeros(last - first + 1, dtype=np.int64)
        if self.exponent is None:
            counts[-first] += self.zeros
        elif exponent == self.exponent and first == self.first and counts.size == self.counts.size:
            return
        else:
            old = np.arange(self.first, self.first + self.counts.size, dtype=np.int64)
            np.add.at(counts, (old >> (exponent - self.exponent)) - first, self.counts)
        self.exponent, self.first, self.counts = exponent, first, counts

    def rebinned(self, num_bins: int, low: float, high: float) -> np.ndarray:
        """The counts in ``num_bins`` equal bins over ``histogram_range(low, high)``, from the cumulative counts
        interpolated at those bins' edges (a fine bin across an edge is split in proportion)."""
        assert self.exponent is not None
        width = 2.0**self.exponent
        fine_edges = (self.first + np.arange(self.counts.size + 1)) * width
        cumulative = np.concatenate(([0.0], np.cumsum(self.counts, dtype=np.float64)))
        return np.diff(np.interp(np.linspace(*histogram_range(low, high), num_bins + 1), fine_edges, cumulative))


def collect(
    tap: TensorTap,
    samples: Iterable[Mapping[str, Any]],
    num_bins: int | None,
    progress: Progress | None = None,
    observe: Callable[[Mapping[str, np.ndarray]], None] | None = None,
) -> tuple[dict[str, tuple[float, float]], dict[str, StreamingHistogram]]:
    """In one pass, one sample at a time: each tapped tensor's running min and max (finite values only) and,
    when ``num_bins`` is given, its streaming histogram. ``observe`` sees each sample's tapped tensors too."""
    ranges: dict[str, tuple[float, float]] = {}
    histograms: dict[str, StreamingHistogram] = {}
    for outputs in tap.stream(samples):
        if observe is not None:
            observe(outputs)
        for name, value in outputs.items():
            values, low, high = _finite_values(value)
            if values.size == 0:
                continue
            if num_bins is not None:
                histograms.setdefault(name, StreamingHistogram(FINE_BINS * num_bins)).add(values, low, high)
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = (low, high)
        if progress:
            progress(1)
    return ranges, histograms


def histogram_range(low: float, high: float) -> tuple[float, float]:
    """The range a tensor's histogram covers: its values and zero, as the quantizer's range will."""
    return min(low, 0.0), max(high, 0.0)


def percentile_range(histogram: np.ndarray, low: float, high: float, percentile: float) -> tuple[float, float]:
    """Cut ``(100 - percentile) / 2`` percent of the values off each tail, clamped to the observed range."""
    edges = np.linspace(*histogram_range(low, high), histogram.size + 1)
    cdf = np.cumsum(histogram) / histogram.sum()
    tail = (100.0 - percentile) / 200.0
    first = int(np.searchsorted(cdf, tail, side="right"))
    last = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return max(low, float(edges[first])), min(high, float(edges[min(last + 1, histogram.size)]))


def _kl_divergences(histogram: np.ndarray, starts: np.ndarray, stops: np.ndarray, levels: int) -> np.ndarray:
    """KL(P‖Q) of clipping the histogram to bins [start, stop) and quantizing that window to ``levels``, for
    every window at once.

    P is the window with the clipped-off counts added to its edge bins; Q spreads each level's in-window
    count evenly over that level's non-empty bins (TensorRT's calibration, for an asymmetric window). Q is
    constant over a level, so the sum over its bins needs only the level's count, non-empty bins and
    ``sum(h·log h)``: prefix sums over the histogram give all three, in O(levels) per window instead of a pass
    over the window's bins (MiniLM: 97 histograms × 128 windows were 0.6 s of the pass's 12). Only the two
    edge bins, where P adds the tails, are summed on their own.
    """
    counts = histogram.astype(np.float64)
    total = counts.sum()
    before = np.concatenate(([0.0], np.cumsum(counts)))  # before[k] = counts[:k].sum()
    nonempty = np.concatenate(([0], np.cumsum(counts > 0)))
    positive = np.where(counts > 0, counts, 1.0)
    xlogx = np.concatenate(([0.0], np.cumsum(counts * np.log(positive))))
    starts, stops = starts[:, None], stops[:, None]
    width = stops - starts
    # Level j covers the window's bins [ceil(j·W/L), ceil((j+1)·W/L)): bin i is in level floor(i·L/W).
    edges = starts + -((-np.arange(levels + 1) * width) // levels)
    level_count = np.diff(before[edges], axis=1)
    level_filled = np.diff(nonempty[edges], axis=1)
    window_count = before[stops] - before[starts]
    # Each non-empty bin's share of Q; a bin P fills but Q leaves empty would make the divergence infinite, so a
    # tiny floor ranks it last instead.
    share = np.maximum(level_count / np.maximum(level_filled, 1) / np.maximum(window_count, 1e-300), 1e-12)
    log_share = np.log(share)
    first_bin, last_bin = counts[starts[:, 0]], counts[stops[:, 0] - 1]
    # Interior bins (all but the window's first and last): P = counts / total where counts > 0.
    interior = level_count.copy()
    interior[:, 0] -= first_bin
    interior[:, -1] -= last_bin
    interior_xlogx = (xlogx[stops[:, 0] - 1] - xlogx[starts[:, 0] + 1]) / total
    divergence = (
        interior_xlogx
        - np.log(total) * interior.sum(axis=1) / total
        - np.sum(np.where(interior > 0, interior * log_share, 0.0), axis=1) / total
    )
    # The edge bins, with the tails clipped off added to P.
    for bin_count, tail, level in (
        (first_bin, before[starts[:, 0]], 0),
        (last_bin, total - before[stops[:, 0]], -1),
    ):
        p = (bin_count + tail) / total
        log_q = np.where(bin_count > 0, log_share[:, level], np.log(1e-12))
        divergence += np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - log_q), 0.0)
    return divergence


def entropy_range(
    histogram: np.ndarray, low: float, high: float, levels: int = QUANTIZED_LEVELS
) -> tuple[float, float]:
    """The clipping range with the least KL divergence between the float and quantized distributions.

    Candidate windows shrink the range ``[min(lo,0), max(hi,0)]`` towards zero by a common factor, so the
    zero point stays where the quantizer will put it; the narrowest keeps ``levels`` bins.
    """
    bins = histogram.size
    range_low, range_high = histogram_range(low, high)
    if bins <= levels or histogram.sum() == 0:
        return low, high
    zero_bin = round(-range_low / (range_high - range_low) * bins)
    scales = np.linspace(levels / bins, 1.0, ENTROPY_CANDIDATES)
    # Python's round (half to even), as np.round: the same windows as one at a time.
    starts = zero_bin - np.round(zero_bin * scales).astype(np.int64)
    stops = zero_bin + np.round((bins - zero_bin) * scales).astype(np.int64)
    wide_enough = stops - starts >= levels
    if not wide_enough.any():
        return low, high
    scales, starts, stops = scales[wide_enough], starts[wide_enough], stops[wide_enough]
    divergences = _kl_divergences(histogram, starts, stops, levels)
    # The first of the windows tied for least, as rounding in the prefix sums decides no tie (a tensor of a few
    # integers: several windows with no divergence at all).
    best = int(np.flatnonzero(divergences <= divergences.min() + KL_TIE)[0])
    return max(low, range_low * float(scales[best])), min(high, range_high * float(scales[best]))


def calibrate(
    proto: onnx.ModelProto,
    tensor_names: Sequence[str],
    types: Mapping[str, int],
    samples: Iterable[Mapping[str, Any]],
    settings: CalibrationSettings,
    progress: Progress | None = None,
    observe: Callable[[Mapping[str, np.ndarray]], None] | None = None,
) -> TensorsData:
    """Ranges of ``tensor_names`` over ``samples`` by ``settings``, streamed in one pass (``measure``)."""
    return measure(proto, tensor_names, types, samples, settings, progress, observe).ranges(settings)


@dataclasses.dataclass
class Measured:
    """What one calibration pass saw: each tensor's min and max, and its histogram where one was kept. Ranges by
    any method the histograms allow come from it without running the model again (calib=auto: entropy and
    minmax from the same pass)."""

    tensor_names: Sequence[str]
    extremes: dict[str, tuple[float, float]]
    histograms: dict[str, StreamingHistogram]
    # Tensors that keep their observed range whatever the method (``probability_tensors``)
    unclipped: frozenset[str] = frozenset()

    def ranges(self, settings: CalibrationSettings) -> TensorsData:
        method = histogram_method(settings.method)
        ranges = dict(self.extremes)
        if method != "minmax":
            for name, histogram in self.histograms.items():
                low, high = ranges[name]
                if histogram.exponent is None or name in self.unclipped:
                    continue  # only zeros: the range [0, 0] stays; a probability keeps its observed range
                counts = histogram.rebinned(settings.num_bins, low, high)
                if method == "entropy":
                    ranges[name] = entropy_range(counts, low, high)
                else:
                    ranges[name] = percentile_range(counts, low, high, settings.percentile)
        return to_tensors_data({name: ranges[name] for name in self.tensor_names if name in ranges}, method)


def histogram_method(method: CalibMethod) -> Literal["minmax", "entropy", "percentile"]:
    """The method whose ranges ``method`` starts from: auto starts from entropy's."""
    return "entropy" if method == "auto" else method


def measure(
    proto: onnx.ModelProto,
    tensor_names: Sequence[str],
    types: Mapping[str, int],
    samples: Iterable[Mapping[str, Any]],
    settings: CalibrationSettings,
    progress: Progress | None = None,
    observe: Callable[[Mapping[str, np.ndarray]], None] | None = None,
) -> Measured:
    """Min, max and (but for minmax) histogram of ``tensor_names`` over ``samples``, streamed in one pass;
    ``observe`` sees each sample's tensors that vary from sample to sample (SmoothQuant's channel maxima, in
    the same pass).

    A tensor no graph input reaches (a weight computed from constants at run time, as in models whose weights
    are ``ConstantOfShape`` placeholders) is the same on every sample: it is read on the first sample only.
    Its histogram over all samples would be that one scaled, and scaling changes neither the entropy nor the
    percentile threshold, so the ranges are the same. Probabilities (``probability_tensors``) keep their
    observed min and max whatever the method.
    """
    bins = None if settings.method == "minmax" else settings.num_bins
    constant = sample_independent(proto, tensor_names)
    varying = [name for name in tensor_names if name not in constant]
    ranges: dict[str, tuple[float, float]] = {}
    histograms: dict[str, StreamingHistogram] = {}
    if varying:
        ranges, histograms = collect(TensorTap(proto, varying, types), samples, bins, progress, observe)
    if constant:
        first = list(itertools.islice(iter(samples), 1))
        constant_ranges, constant_histograms = collect(
            TensorTap(proto, [n for n in tensor_names if n in constant], types), first, bins
        )
        ranges.update(constant_ranges)
        histograms.update(constant_histograms)
    return Measured(list(tensor_names), ranges, histograms, frozenset(probability_tensors(proto)))


# Operators whose outputs differ from run to run without any input.
_RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "Dropout"}
)


def sample_independent(proto: onnx.ModelProto, names: Iterable[str]) -> set[str]:
    """The named main-graph tensors that no graph input reaches, computed from initializers and constants only.
    A node with a subgraph (which may read any outer value) or a random op counts as reached."""
    reached = {i.name for i in proto.graph.input}
    for node in proto.graph.node:  # in topological order, as ONNX requires
        if (
            node.op_type in _RANDOM_OPS
            or any(name in reached for name in node.input)
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        ):
            reached.update(node.output)
    produced = {name for node in proto.graph.node for name in node.output}
    return {name for name in names if name in produced and name not in reached}


def to_tensors_data(
    ranges: Mapping[str, tuple[float, float]], method: Literal["minmax", "entropy", "percentile"]
) -> TensorsData:
    return TensorsData(
        ORT_METHODS[method],
        {name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()},
    )


# ---------------------------------------------------------------------------------------------------------
# Cache


def dataset_fingerprint(samples: Iterable[Mapping[str, Any]]) -> str:
    """A hash of every sample's names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(
    proto: onnx.ModelProto, data_fingerprint: str, settings: CalibrationSettings, tensor_names: Sequence[str]
) -> str:
    """Model bytes + data + settings + the tensors calibrated: any change gives a new key."""
    digest = hashlib.sha256()
    # Part by part: a model past protobuf's 2 GB limit cannot be serialized whole.
    for part in (
        *proto.opset_import,
        *proto.graph.input,
        *proto.graph.output,
        *proto.graph.node,
        *proto.graph.initializer,
    ):
        digest.update(hashlib.sha256(part.SerializeToString(deterministic=True)).digest())
    digest.update(data_fingerprint.encode())
    digest.update(
        json.dumps(
            {"format": CACHE_FORMAT, **dataclasses.asdict(settings), "tensors": list(tensor_names)}, sort_keys=True
        ).encode()
    )
    return digest.hexdigest()[:32]


class CalibrationCache:
    """A folder of ``<key>.json`` files in ONNX Runtime's calibration-cache format (``save_tensors_data``)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> TensorsData | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_tensors_data(path)
        except (ValueError, KeyError, TypeError):  # a damaged entry is recomputed, not trusted
            return None

    def store(self, key: str, tensors: TensorsData) -> None:
        save_tensors_data(tensors, self.path(key))  # atomic: a temporary file, then os.replace
