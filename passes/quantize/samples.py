"""The run's samples read once and replayed from memory: calibration, the ranking, each judgement and the timing
all walk the same dataset again, and a folder of ``.npz`` files is read from disk and unzipped on every walk
(digits-cnn's 64 samples: 795 file reads and 0.6 s of a 0.8 s pass)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

# Past this many bytes of samples the dataset streams from its source again, as calibration promises bounded
# memory: 160 samples of a 224×224 image take 96 MB.
KEEP_BYTES = 256 * 2**20


def sample_bytes(sample: Mapping[str, Any]) -> int:
    """The bytes of a sample's arrays (a sequence input: of its elements)."""
    total = 0
    for value in sample.values():
        for array in value if isinstance(value, (list, tuple)) else (value,):
            total += int(getattr(array, "nbytes", 0))
    return total


class KeptSamples:
    """A re-iterable dataset whose samples are kept as they are first read, up to ``keep_bytes``, and replayed.

    A walk past what is kept reads on from the source (after skipping what is kept); only the walk that reaches
    a new sample first keeps it, so walks interleaved with each other keep each sample once, in order. Once the
    samples outgrow ``keep_bytes`` none is kept and every walk streams from the source, as it would without
    this class. The samples are the source's own objects: nothing that reads them may write to them (calibration,
    parity and timing only feed them to ONNX Runtime and read them)."""

    def __init__(self, dataset: Any, keep_bytes: int = KEEP_BYTES) -> None:
        self.dataset = dataset
        self.keep_bytes = keep_bytes
        self._kept: list[dict[str, Any]] | None = []
        self._bytes = 0
        self._complete = False  # every sample of the source is kept

    @property
    def specs(self) -> Any:
        """The model inputs the source is bound to (``CalibrationSplit`` validates samples against them)."""
        return getattr(self.dataset, "specs", None)

    @property
    def kept(self) -> int:
        """How many samples are kept in memory."""
        return len(self._kept) if self._kept is not None else 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index = 0
        while self._kept is not None and index < len(self._kept):
            yield self._kept[index]
            index += 1
        if self._complete:
            return
        for sample in itertools.islice(iter(self.dataset), index, None):
            self._keep(index, sample)
            index += 1
            yield sample
        if self._kept is not None and len(self._kept) == index:
            self._complete = True

    def _keep(self, index: int, sample: dict[str, Any]) -> None:
        if self._kept is None or len(self._kept) != index:
            return  # streaming, or another walk kept this sample first
        self._bytes += sample_bytes(sample)
        if self._bytes > self.keep_bytes:
            self._kept = None  # too large to hold: every walk streams from now on
        else:
            self._kept.append(sample)
