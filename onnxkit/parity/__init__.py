"""Run two models on the same inputs in ONNX Runtime and say whether their outputs agree.

    report = compare_models("model.onnx", "model.opt.onnx", tolerance=Tolerance.for_kind("exact"))
    print(report.summary())

Both models run with identical session options. ORT's graph optimizations are off by default, so its own
fusions cannot hide a difference between the two graphs. Sessions are made once and reused for every sample,
and each sample is compared as soon as both models have run on it, so memory holds one sample's outputs.

Per output, names, dtypes and shapes are checked first, each mismatch its own error. Then, over all samples:
max absolute error, max relative error (over elements whose reference is not zero), mean absolute error,
cosine similarity (the worst sample's), SQNR in dB (signal and noise power summed over samples), and
argmax agreement where the output looks like class scores (float, rank 2 or 3, last axis of 2 or more).

Verdicts follow a ``Tolerance``:
- ``atol``/``rtol``: an element fails only if it exceeds both, as in ``numpy.isclose``:
  ``|candidate - reference| > atol + rtol * |reference|``. NaN against NaN and inf against the same inf agree.
- ``min_cosine``, ``min_sqnr``, ``min_top1``: budgets for lossy passes; ``None`` leaves a check out.
- Integer, bool and string outputs (labels, indices, masks) must be equal, or agree on at least ``min_top1``
  of their elements when that is set.
On failure each output reports the smallest atol (at the given rtol) and the smallest rtol (at the given atol)
that would have passed, and the budget values it reached.

The pieces live in this package's modules, all re-exported here: ``tolerance`` (``Tolerance`` and its
presets), ``report`` (metrics and reports), ``runs`` (running or replaying both sides), ``chain``
(``ParityChain``, the pipeline's comparisons along a chain of models). The package sits in the shared layer
under the passes: it imports only ``runtime``, ``data``, ``modelio`` and ``errors``, so a lossy pass may judge
its own candidates with it (tests/test_layers.py).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Mapping
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import modelio, runtime
from onnxkit.data import as_dataset, describe_data, input_specs
from onnxkit.errors import ModelLoadError, SpecError
from onnxkit.parity.chain import RECORDING_BUDGET, ParityChain
from onnxkit.parity.report import OutputComparison, OutputReport, ParityReport, compare_outputs
from onnxkit.parity.runs import Compared, Live, Recording, compare_runs, make_report
from onnxkit.parity.tolerance import PRESETS, Precision, Tolerance, parse_output_tolerance, tolerance_from_options

__all__ = [
    "PRESETS",
    "RECORDING_BUDGET",
    "OutputComparison",
    "OutputReport",
    "ParityChain",
    "ParityReport",
    "Precision",
    "Recording",
    "Tolerance",
    "compare_models",
    "compare_outputs",
    "parse_output_tolerance",
    "tolerance_from_options",
]


@dataclasses.dataclass
class _Model:
    """A model as the user gave it: what ORT loads (a path or the model itself) and its ``ir.Model``."""

    source: Any
    label: str
    loaded: ir.Model | None = None

    @classmethod
    def of(cls, model: Any, role: str) -> _Model:
        if _is_session(model):
            return cls(model, f"the {role} model")
        if isinstance(model, (str, os.PathLike)):
            # Loaded here for its clear errors (missing, empty, unsafe external data) before ORT sees the file.
            return cls(str(model), str(model), modelio.load_model(model))
        if isinstance(model, (bytes, bytearray, onnx.ModelProto, ir.Model)):
            return cls(model, f"the {role} model")
        raise SpecError(
            f"cannot compare a {type(model).__name__} as the {role} model",
            hint="give an .onnx path, bytes, an onnx.ModelProto or an onnx_ir.Model",
        )

    def ir(self) -> ir.Model:
        # Not cached: a model given as bytes is parsed again, weights included, and keeping that copy would
        # hold the weights once more while both ORT sessions run.
        return self.loaded if self.loaded is not None else modelio.as_ir_model(self.source)

    def session(self, options: Any, model_dir: str | os.PathLike[str] | None = None) -> Any:
        if _is_session(self.source):
            return self.source
        return runtime.make_session(self.source, options=options, model_dir=model_dir)


def _is_session(model: Any) -> bool:
    """A model already loaded for running (an ORT session, or another runtime's model behind its interface)."""
    return all(callable(getattr(model, name, None)) for name in ("get_inputs", "get_outputs", "run"))


def compare_models(
    reference: Any,
    candidate: Any,
    data: Any = None,
    *,
    tolerance: Tolerance | Mapping[str, Any] | None = None,
    dims: Mapping[str, int] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    ort_optimizations: bool = False,
    threads: int = 1,
    model_dir: str | os.PathLike[str] | None = None,
) -> ParityReport:
    """Run ``reference`` and ``candidate`` on the same inputs and compare every output.

    Models are paths, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``. ``data`` is anything
    ``onnxkit.data.load_dataset`` takes, or None for seeded synthetic inputs built from the reference's
    input specs with ``dims`` binding dynamic dimensions. ``num_samples`` is the synthetic count or a cap on
    the data. ``tolerance`` defaults to the exact kind's; a dict overrides fields of that default.
    ``model_dir`` is where the external data of models given in memory lives (the original model's folder).
    ``candidate`` may also be a model already loaded for running: anything with ONNX Runtime's session
    interface (``get_inputs``, ``get_outputs``, ``run``), such as a model compiled by another runtime.

    Raises ``ModelLoadError`` if ORT cannot load the reference and ``DataError`` if the data does not fit it
    or the reference fails on it. A candidate that ORT cannot load or run fails the comparison instead.
    """
    if tolerance is None or isinstance(tolerance, Mapping):
        tolerance = dataclasses.replace(Tolerance.for_kind("exact"), **dict(tolerance or {}))
    ref_model, cand_model = _Model.of(reference, "reference"), _Model.of(candidate, "candidate")
    ref_ir = ref_model.ir()
    specs = input_specs(ref_ir)
    dataset = as_dataset(data, ref_ir, dims=dims, num_samples=num_samples, seed=seed, model_dir=model_dir)
    prepack = runtime.packs_weights(ref_ir)  # as ParityChain: packed as users run it, unless weights stay in files
    # The specs and dataset keep what they need. An ir.Model is full of reference cycles, so it is collected
    # now, before the sessions load the weights again, rather than whenever the collector next runs.
    del ref_ir
    gc.collect()
    description = describe_data(dataset if data is None else data)

    def options(packs: bool) -> Any:  # one per session: make_session records model_dir in the options it is given
        return runtime.session_options(optimize=ort_optimizations, threads=threads, prepack=packs)

    try:
        ref_session = ref_model.session(options(prepack), model_dir)
    except Exception as e:  # ORT raises its own exception types for invalid graphs and unsupported ops
        raise ModelLoadError(
            f"ONNX Runtime cannot load {ref_model.label}: {runtime.error_line(e)}",
            hint="the reference model must run in ONNX Runtime",
        ) from e
    try:
        cand_packs = prepack or (not _is_session(cand_model.source) and runtime.packs_weights(cand_model.ir()))
        cand_session = cand_model.session(options(cand_packs), model_dir)
    except Exception as e:
        return make_report(
            Compared([], [f"ONNX Runtime cannot load {cand_model.label}: {runtime.error_line(e)}"], 0, None, None),
            tolerance,
            description,
            ort_optimizations,
        )
    compared = compare_runs(
        Live(ref_session), Live(cand_session), dataset, specs, tolerance, data_given=data is not None
    )
    return make_report(compared, tolerance, description, ort_optimizations)
