"""Honest calibration data for the real-world corpus: ``python -m benchmarks.real.calibration [--only a,b]``.

The corpus ships no data, so each model gets 32 samples made here from its own domain, written to
``<cache>/calib/<name>.npz`` (arrays keyed by input name, samples stacked on axis 0, each sample shaped like
the probed binding: batch 1 or the model's static batch) and described in ``<cache>/calib/KINDS.json``:

- OCR: pages of rendered text lines (detectors, layout, tables) and text-line crops (recognizers, captchas),
  with the preprocessing each family uses;
- vision: photo crops from ``sklearn.datasets.load_sample_images()``, and sklearn's bundled digits for MNIST;
- text: sentences (sklearn's dataset descriptions for English, a few lines of each other script), mapped
  character by character to ids within the vocabulary of the model's embedding table. This is approximate:
  the real tokenizers are not here;
- audio: synthesized tones, chirps, noise bursts and AM speech-like signals; log-mel features of them where a
  model takes features, and the corpus's own feature extractors chained where a model takes their output;
- the rest (graph features, tabular features of unknown meaning, string phonemes) is "synthetic only", filled
  like the probed binding, with the reason recorded.

The probed bindings of ``corpus.tsv`` shape the data; this is harness code, so reading them is fine here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.real.corpus import CORPORA, CorpusModel, ProbedInput, cache_dir, load_manifest
from benchmarks.real.recipes import RECIPES, SYNTHETIC_ONLY, Maker, probed_synthetic
from benchmarks.real.recipes_unseen import UNSEEN_RECIPES, UNSEEN_SYNTHETIC_ONLY
from benchmarks.real.sources import SEED, Sample
from onnxkit.runtime import error_line

SAMPLES = 32


# ---------------------------------------------------------------------------------------------------------
# Writing the sets


def calibration_path(name: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "calib" / f"{name}.npz"


def kinds_path(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "calib" / "KINDS.json"


def static_declared_inputs(model: CorpusModel) -> tuple[ProbedInput, ...]:
    """The declared inputs (``x.7 float[1, 3, 128, 128]``) as a binding, where every dim is static."""
    inputs = []
    for part in model.inputs_declared.split("; "):
        name, rest = part.split(" ", 1)
        dtype, dims = rest.rstrip("]").split("[")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise LookupError(f"{model.name}: input {name} has dynamic dims and no probed binding") from None
        inputs.append(ProbedInput(name, {"float": "float32"}.get(dtype, dtype), shape, "uniform01"))
    return tuple(inputs)


def build_samples(model: CorpusModel, cache: Path, count: int = SAMPLES) -> tuple[list[Sample], dict[str, Any]]:
    """``count`` samples for one model and the record of what they are; falls back to synthetic data with the
    reason when the model has no recipe or its recipe cannot run."""
    if not model.probed:  # ONNX Runtime could not run it when the list was made: shape by the declared inputs
        model = dataclasses.replace(model, probed=static_declared_inputs(model))
    maker = Maker(model, cache)
    recipe, kind = (RECIPES | UNSEEN_RECIPES).get(model.name, (None, ""))
    reason = (SYNTHETIC_ONLY | UNSEEN_SYNTHETIC_ONLY).get(model.name) or "no domain data fits its inputs"
    if recipe is not None:
        try:
            samples = [recipe(maker, np.random.default_rng([SEED, i]), i) for i in range(count)]
            return samples, {"kind": kind, "synthetic_only": False}
        except Exception as e:  # e.g. a chained model not cached, no embedding table found
            reason = f"domain recipe failed ({type(e).__name__}: {error_line(e)[:160]})"
    return probed_synthetic(model, cache, count), {"kind": "synthetic only: " + reason, "synthetic_only": True}


def write_calibration(model: CorpusModel, cache: Path, count: int = SAMPLES) -> dict[str, Any]:
    samples, record = build_samples(model, cache, count)
    # A domain recipe must fit the sizes the model is known to run on; synthetic samples come from onnxkit's own
    # probe, which ran the model on the sizes it chose.
    checked = () if record["synthetic_only"] else model.probed
    for name, probe in ((p.name, p) for p in checked):
        for sample in samples:
            if tuple(sample[name].shape) != probe.shape:
                raise ValueError(f"{model.name}: {name} shaped {sample[name].shape}, the binding has {probe.shape}")
    path = calibration_path(model.name, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    stacked = {name: np.stack([s[name] for s in samples]) for name in samples[0]}
    partial = path.with_suffix(".part.npz")
    np.savez_compressed(partial, **stacked)
    partial.replace(path)
    return {**record, "samples": count, "inputs": {k: list(v.shape[1:]) for k, v in stacked.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        choices=CORPORA,
        default="public",
        help="public: corpus.tsv; holdout: holdout.tsv and the public models above 30 MB",
    )
    parser.add_argument("--only", default="", help="comma-separated model names (default: every cached model)")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args(argv)
    cache = cache_dir()
    only = [n for n in args.only.split(",") if n]
    models = [m for m in load_manifest(only=only or None, corpus=args.corpus) if m.path(cache).exists()]
    kinds = json.loads(kinds_path(cache).read_text()) if kinds_path(cache).exists() else {}
    for model in models:
        try:
            kinds[model.name] = write_calibration(model, cache, args.samples)
        except Exception as e:  # one model without data must not stop the others
            kinds[model.name] = {
                "kind": f"none: {type(e).__name__}: {error_line(e)[:160]}",
                "synthetic_only": True,
                "samples": 0,
            }
        print(f"{model.name:36s} {kinds[model.name]['kind']}", flush=True)
    kinds_path(cache).parent.mkdir(parents=True, exist_ok=True)
    kinds_path(cache).write_text(json.dumps(kinds, indent=1, sort_keys=True))
    print(f"calibration sets for {len(models)} models in {kinds_path(cache).parent}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
