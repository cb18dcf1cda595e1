"""The quantize run's samples, read once from their source and replayed from memory (``quantize.samples``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from onnxkit.data import files as data_files
from onnxkit.data import load_dataset
from onnxkit.passes.quantize.samples import KeptSamples, sample_bytes
from tests.passes.test_quantize import NO_GATE, mlp, quantize, samples


class CountingSource:
    """A re-iterable dataset that counts the samples it hands out."""

    def __init__(self, count: int, shape: tuple[int, ...] = (2, 16)) -> None:
        self.rows = samples("x", shape, count)
        self.read = 0
        self.specs = ("bound",)

    def __iter__(self) -> Iterator[dict]:
        for row in self.rows:
            self.read += 1
            yield row


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x["x"], y["x"]) for x, y in zip(a, b))


def test_samples_are_read_once_and_replayed_in_order() -> None:
    source = CountingSource(6)
    kept = KeptSamples(source)
    first = list(itertools.islice(kept, 2))  # a walk that stops early keeps what it read
    assert source.read == 2 and kept.kept == 2
    assert _same(list(kept), source.rows)  # reads on past the kept two, skipping them at the source
    reads_after_full_walk = source.read
    assert _same(list(kept), source.rows) and _same(list(kept), source.rows)
    assert source.read == reads_after_full_walk  # replayed from memory
    assert _same(first, source.rows[:2])
    assert kept.specs == ("bound",)  # CalibrationSplit validates against the source's specs


def test_interleaved_walks_keep_each_sample_once() -> None:
    source = CountingSource(5)
    kept = KeptSamples(source)
    walks = [iter(kept), iter(kept)]
    seen: list[list[dict]] = [[], []]
    for _ in range(5):
        for walk, out in zip(walks, seen):
            out.append(next(walk))
    assert _same(seen[0], source.rows) and _same(seen[1], source.rows)
    assert kept.kept == 5
    assert _same(list(kept), source.rows)


def test_samples_past_the_budget_stream_from_the_source() -> None:
    source = CountingSource(4)
    budget = 2 * sample_bytes(source.rows[0])
    kept = KeptSamples(source, keep_bytes=budget)
    assert _same(list(kept), source.rows)
    assert kept.kept == 0  # none held once they outgrew the budget: memory stays bounded
    before = source.read
    assert _same(list(kept), source.rows)
    assert source.read == before + 4


def test_static_pass_reads_each_sample_file_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration, the sensitivity ranking, every judgement and the latency gate walk the data again; a folder of
    .npz files is read from disk once."""
    for index, sample in enumerate(samples("x", (2, 16), 20)):
        np.savez(tmp_path / f"sample_{index:02d}.npz", **sample)
    loads: list[str] = []
    load_arrays = data_files._load_arrays
    monkeypatch.setattr(data_files, "_load_arrays", lambda path: loads.append(path.name) or load_arrays(path))
    result, _ = quantize(mlp(), load_dataset(tmp_path), mode="static", target_cosine=0.999, **NO_GATE)
    assert result.details["target"]  # the target was judged on held-out samples: walks beyond calibration's
    assert sorted(loads) == sorted(f"sample_{i:02d}.npz" for i in range(20))
