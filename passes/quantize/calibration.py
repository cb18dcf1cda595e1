"""Streaming calibration: activation ranges in memory that does not grow with the number of samples.

ONNX Runtime's calibrators keep every batch's outputs (memory linear in samples) and, called through
``quantize_static``, never receive the histogram settings, so entropy silently equals MinMax. Here:

1. one pass over the data keeps each tensor's running min and max (this is MinMax);
2. entropy and percentile take a second pass that fills a histogram of ``num_bins`` over the now-known range
   ``[min(lo, 0), max(hi, 0)]`` (the range the quantizer will cover, since it always includes zero);
3. thresholds are computed from the merged histograms.

Memory is one batch of intermediate tensors plus ``num_bins`` counts per tensor. Because the histogram
range is fixed before any counting, every element lands in the same bin however the samples are grouped,
so the results do not depend on batching. The ranges go to ORT's quantizer as ``TensorsData``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxkit.passes.quantize.runtime import TensorTap
from onnxruntime.quantization.calibrate import (
    CalibrationMethod,
    TensorData,
    TensorsData,
    load_tensors_data,
    save_tensors_data,
)

CalibMethod = Literal["minmax", "entropy", "percentile"]
ORT_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})

# Activations are quantized to 8 bits: 256 levels.
QUANTIZED_LEVELS = 256
# The entropy search tries this many clipping thresholds between "keep 256 bins" and "keep everything".
ENTROPY_CANDIDATES = 128
CACHE_FORMAT = 1

Progress = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    method: CalibMethod = "minmax"
    num_bins: int = 2048
    percentile: float = 99.999

    def describe(self) -> str:
        if self.method == "minmax":
            return "minmax"
        detail = f"{self.num_bins} bins" + (f", {self.percentile}th percentile" if self.method == "percentile" else "")
        return f"{self.method} ({detail})"


def calibration_tensors(proto: onnx.ModelProto, op_types: Iterable[str] | None, types: Mapping[str, int]) -> list[str]:
    """The float activations that the quantizer may need ranges for: inputs and outputs of main-graph nodes
    of ``op_types`` (all nodes when None), initializers excluded, in graph order."""
    wanted = None if op_types is None else set(op_types)
    initializers = {i.name for i in proto.graph.initializer}
    names: dict[str, None] = {}
    for node in proto.graph.node:
        if wanted is not None and node.op_type not in wanted:
            continue
        for name in (*node.input, *node.output):
            if name and name not in initializers and types.get(name) in FLOAT_TYPES:
                names[name] = None
    return list(names)


def _finite_values(array: np.ndarray) -> np.ndarray:
    flat = np.asarray(array, dtype=np.float32).ravel()
    finite = np.isfinite(flat)
    return flat if finite.all() else flat[finite]


def collect_ranges(tap: TensorTap, samples: Iterable[Mapping[str, Any]], progress: Progress | None = None
                   ) -> dict[str, tuple[float, float]]:
    """Running min and max of each tapped tensor (finite values only), one sample at a time."""
    ranges: dict[str, tuple[float, float]] = {}
    for outputs in tap.stream(samples):
        for name, value in outputs.items():
            values = _finite_values(value)
            if values.size == 0:
                continue
            low, high = float(values.min()), float(values.max())
            if name in ranges:
                low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
            ranges[name] = (low, high)
        if progress:
            progress(1)
    return ranges


def histogram_range(low: float, high: float) -> tuple[float, float]:
    """The range a tensor's histogram covers: its values and zero, as the quantizer's range will."""
    return min(low, 0.0), max(high, 0.0)


def collect_histograms(tap: TensorTap, samples: Iterable[Mapping[str, Any]], ranges: Mapping[str, tuple[float, float]],
                       num_bins: int, progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Fixed-range histograms of each tapped tensor, summed over samples. Memory: ``num_bins`` counts a tensor."""
    histograms = {name: np.zeros(num_bins, dtype=np.int64) for name, (low, high) in ranges.items() if high > low}
    for outputs in tap.stream(samples):
        for name, value in outputs.items():
            if name in histograms:
                counts, _ = np.histogram(_finite_values(value), bins=num_bins, range=histogram_range(*ranges[name]))
                histograms[name] += counts
        if progress:
            progress(1)
    return histograms


def percentile_range(histogram: np.ndarray, low: float, high: float, percentile: float) -> tuple[float, float]:
    """Cut ``(100 - percentile) / 2`` percent of the values off each tail, clamped to the observed range."""
    edges = np.linspace(*histogram_range(low, high), histogram.size + 1)
    cdf = np.cumsum(histogram) / histogram.sum()
    tail = (100.0 - percentile) / 200.0
    first = int(np.searchsorted(cdf, tail, side="right"))
    last = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    return max(low, float(edges[first])), min(high, float(edges[min(last + 1, histogram.size)]))


def _kl_divergence(histogram: np.ndarray, start: int, stop: int, levels: int) -> float:
    """KL(P‖Q) of clipping the histogram to bins [start, stop) and quantizing that window to ``levels``.

    P is the window with the clipped-off counts added to its edge bins; Q spreads each level's in-window
    count evenly over that level's non-empty bins (TensorRT's calibration, for an asymmetric window).
    """
    window = histogram[start:stop].astype(np.float64)
    reference = window.copy()
    reference[0] += histogram[:start].sum()
    reference[-1] += histogram[stop:].sum()
    level_of_bin = (np.arange(window.size) * levels) // window.size
    level_total = np.bincount(level_of_bin, weights=window, minlength=levels)
    level_filled = np.bincount(level_of_bin, weights=window > 0, minlength=levels)
    candidate = np.where(window > 0, level_total[level_of_bin] / np.maximum(level_filled[level_of_bin], 1), 0.0)
    present = reference > 0
    p = reference[present] / reference.sum()
    # A bin P fills but Q leaves empty would make the divergence infinite; a tiny floor ranks it last instead.
    q = np.maximum(candidate[present] / max(candidate.sum(), 1e-300), 1e-12)
    return float(np.sum(p * np.log(p / q)))


def entropy_range(histogram: np.ndarray, low: float, high: float, levels: int = QUANTIZED_LEVELS) -> tuple[float, float]:
    """The clipping range with the least KL divergence between the float and quantized distributions.

    Candidate windows shrink the range ``[min(lo,0), max(hi,0)]`` towards zero by a common factor, so the
    zero point stays where the quantizer will put it; the narrowest keeps ``levels`` bins.
    """
    bins = histogram.size
    range_low, range_high = histogram_range(low, high)
    if bins <= levels or histogram.sum() == 0:
        return low, high
    zero_bin = round(-range_low / (range_high - range_low) * bins)
    best, best_divergence = (low, high), np.inf
    for scale in np.linspace(levels / bins, 1.0, ENTROPY_CANDIDATES):
        start = zero_bin - round(zero_bin * scale)
        stop = zero_bin + round((bins - zero_bin) * scale)
        if stop - start < levels:
            continue
        divergence = _kl_divergence(histogram, start, stop, levels)
        if divergence < best_divergence:
            best_divergence = divergence
            best = (max(low, range_low * scale), min(high, range_high * scale))
    return best


def calibrate(proto: onnx.ModelProto, tensor_names: Sequence[str], types: Mapping[str, int],
              samples: Iterable[Mapping[str, Any]], settings: CalibrationSettings,
              progress: Progress | None = None) -> TensorsData:
    """Ranges of ``tensor_names`` over ``samples`` by ``settings``, streamed; ``samples`` is iterated twice
    for entropy and percentile."""
    tap = TensorTap(proto, tensor_names, types)
    ranges = collect_ranges(tap, samples, progress)
    if settings.method != "minmax":
        histograms = collect_histograms(tap, samples, ranges, settings.num_bins, progress)
        for name, histogram in histograms.items():
            low, high = ranges[name]
            if settings.method == "entropy":
                ranges[name] = entropy_range(histogram, low, high)
            else:
                ranges[name] = percentile_range(histogram, low, high, settings.percentile)
    return to_tensors_data(ranges, settings.method)


def to_tensors_data(ranges: Mapping[str, tuple[float, float]], method: CalibMethod) -> TensorsData:
    return TensorsData(ORT_METHODS[method], {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()
    })


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


def cache_key(proto: onnx.ModelProto, data_fingerprint: str, settings: CalibrationSettings,
              tensor_names: Sequence[str]) -> str:
    """Model bytes + data + settings + the tensors calibrated: any change gives a new key."""
    digest = hashlib.sha256()
    # Part by part: a model past protobuf's 2 GB limit cannot be serialized whole.
    for part in (*proto.opset_import, *proto.graph.input, *proto.graph.output, *proto.graph.node,
                 *proto.graph.initializer):
        digest.update(hashlib.sha256(part.SerializeToString(deterministic=True)).digest())
    digest.update(data_fingerprint.encode())
    digest.update(json.dumps({"format": CACHE_FORMAT, **dataclasses.asdict(settings),
                              "tensors": list(tensor_names)}, sort_keys=True).encode())
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
