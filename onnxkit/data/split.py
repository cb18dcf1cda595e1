"""Calibration data split into samples that calibrate and samples held out to judge the result.

The quantize pass calibrates on one part and judges its parity target on the other; the pipeline's parity
check, given only calibration data, runs on the same held-out part. Both use this one split, so a pass that
reports its target met on held-out samples is judged by the pipeline on those very samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from onnxkit.data.specs import validate_sample
from onnxkit.errors import DataError

# One held-out sample for every HOLDOUT_EVERY samples read; the rest calibrate.
HOLDOUT_EVERY = 5
# How many samples calibrate unless told otherwise (quantize's ``samples``); the pipeline, given calibration
# data only, splits it the same way to run its parity check on the very samples quantize held out.
DEFAULT_CALIBRATION_SAMPLES = 128


class CalibrationSplit:
    """The first samples of a dataset, split: every ``HOLDOUT_EVERY``-th is held out, the rest (up to
    ``samples``) calibrate. Both views are re-iterable and stream; each sample is validated once read."""

    def __init__(self, dataset: Any, samples: int) -> None:
        self.dataset = dataset
        self.samples = samples
        self._has_held_out: bool | None = None
        self._calibration_count: int | None = None

    def _walk(self) -> Iterator[tuple[bool, dict[str, Any]]]:
        specs = self.dataset.specs
        calibrated = 0
        for index, sample in enumerate(self.dataset):
            if specs is not None:
                sample = validate_sample(sample, specs, index=index)
            held_out = index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
            if not held_out:
                if calibrated == self.samples:
                    return
                calibrated += 1
            yield held_out, sample

    @property
    def calibration(self) -> _View:
        return _View(lambda: (s for held_out, s in self._walk() if not held_out))

    def calibration_count(self) -> int:
        if self._calibration_count is None:
            self._calibration_count = sum(1 for _ in self.calibration)
            if self._calibration_count == 0:
                raise DataError("the calibration data holds no samples", hint="give at least one sample")
        return self._calibration_count

    def _any_held_out(self) -> bool:
        if self._has_held_out is None:
            self._has_held_out = any(held_out for held_out, _ in self._walk())
        return self._has_held_out

    @property
    def held_out(self) -> _View:
        """The held-out samples; the calibration samples when there are too few to hold any out."""
        if not self._any_held_out():
            return self.calibration
        return _View(lambda: (s for held_out, s in self._walk() if held_out))

    @property
    def all_samples(self) -> _View:
        """The calibration and held-out samples together, in the dataset's order."""
        return _View(lambda: (s for _, s in self._walk()))

    @property
    def reused_calibration_for_holdout(self) -> bool:
        return not self._any_held_out()


class _View:
    """A re-iterable view: each ``iter`` starts the underlying walk again."""

    def __init__(self, start: Callable[[], Iterator[dict[str, Any]]]) -> None:
        self.start = start

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.start()
