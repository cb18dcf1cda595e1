"""Entropy calibration's threshold search computes every window's KL divergence at once from prefix sums
(``calibration._kl_divergences``); it must choose the window the direct computation, one window at a time over
its bins, chooses."""

from __future__ import annotations

import numpy as np
import pytest

from onnxkit.passes.quantize import calibration

LEVELS = calibration.QUANTIZED_LEVELS


def _kl_one_window(histogram: np.ndarray, start: int, stop: int, levels: int) -> float:
    """The divergence as the definition reads: P is the window with the tails added to its edge bins, Q each
    level's count spread evenly over its non-empty bins."""
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
    q = np.maximum(candidate[present] / max(candidate.sum(), 1e-300), 1e-12)
    return float(np.sum(p * np.log(p / q)))


def _histograms() -> list[tuple[str, np.ndarray, float, float]]:
    """Histograms as calibration makes them (``StreamingHistogram.rebinned``) of tensors of several shapes."""
    rng = np.random.default_rng(3)
    tensors = {
        "gaussian": rng.standard_normal(200_000),
        "relu": np.maximum(rng.standard_normal(200_000), 0.0),
        "heavy tails": rng.standard_t(2, 200_000),
        "negative": -np.abs(rng.laplace(size=200_000)) - 0.5,
        "few integers": rng.integers(11, 21, 50_000).astype(np.float64),  # many windows tie at no divergence
        "outlier": np.concatenate([rng.standard_normal(100_000) * 0.01, [40.0]]),
    }
    made = []
    for name, values in tensors.items():
        values = values.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        streaming = calibration.StreamingHistogram(calibration.FINE_BINS * 2048)
        streaming.add(values, low, high)
        made.append((name, streaming.rebinned(2048, low, high), low, high))
    return made


@pytest.mark.parametrize(
    ("name", "histogram", "low", "high"), _histograms(), ids=lambda v: v if isinstance(v, str) else "h"
)
def test_all_windows_at_once_match_one_window_at_a_time(
    name: str, histogram: np.ndarray, low: float, high: float
) -> None:
    bins = histogram.size
    range_low, range_high = calibration.histogram_range(low, high)
    zero_bin = round(-range_low / (range_high - range_low) * bins)
    scales = np.linspace(LEVELS / bins, 1.0, calibration.ENTROPY_CANDIDATES)
    windows = [(zero_bin - round(zero_bin * s), zero_bin + round((bins - zero_bin) * s), s) for s in scales]
    windows = [(start, stop, s) for start, stop, s in windows if stop - start >= LEVELS]
    direct = np.array([_kl_one_window(histogram, start, stop, LEVELS) for start, stop, _ in windows])
    at_once = calibration._kl_divergences(
        histogram, np.array([w[0] for w in windows]), np.array([w[1] for w in windows]), LEVELS
    )
    assert at_once == pytest.approx(direct, rel=1e-9, abs=1e-12)
    # The chosen window is the first with the least divergence, as a loop keeping strict improvements finds.
    first_least = windows[int(np.argmin(direct))][2]
    expected = (max(low, range_low * first_least), min(high, range_high * first_least))
    assert calibration.entropy_range(histogram, low, high) == pytest.approx(expected, rel=1e-12)


def test_a_histogram_counts_each_value_in_its_grid_bin_with_or_without_negative_values() -> None:
    """``StreamingHistogram.add`` skips the floor for values that are all non-negative (truncation is the
    floor there); every value must still land in bin floor(value / width), before and after negatives widen
    the grid below zero."""
    rng = np.random.default_rng(5)
    histogram = calibration.StreamingHistogram(calibration.FINE_BINS * 2048)
    batches = [np.maximum(rng.standard_normal(50_000), 0.0), rng.standard_normal(50_000) * 3, rng.random(50_000)]
    seen = []
    for batch in batches:
        batch = batch.astype(np.float32)
        histogram.add(batch, float(batch.min()), float(batch.max()))
        seen.append(batch)
        assert histogram.exponent is not None
        values = np.concatenate(seen).astype(np.float64)
        expected = np.bincount(
            (np.floor(values / 2.0**histogram.exponent) - histogram.first).astype(np.int64),
            minlength=histogram.counts.size,
        )
        np.testing.assert_array_equal(histogram.counts, expected)
