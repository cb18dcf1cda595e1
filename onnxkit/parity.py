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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxkit import modelio, runtime
from onnxkit.data import as_dataset, describe_data, input_specs, validate_sample
from onnxkit.errors import DataError, ModelLoadError, SpecError

Precision = Literal["fp32", "fp16", "int8"]


# ---------------------------------------------------------------------------------------------------------
# Tolerances


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """What counts as "the same output". ``None`` leaves a check out.

    ``per_output`` maps an output name to overrides of these fields, e.g. ``{"logits": {"atol": 1e-3}}``.
    """

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    min_cosine: float | None = None
    min_sqnr: float | None = None
    min_top1: float | None = None
    per_output: Mapping[str, Mapping[str, float | None]] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "min_sqnr"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise SpecError(f"{name} must be a non-negative number, not {value}")
        for name in ("min_cosine", "min_top1"):
            value = getattr(self, name)
            if value is not None and not -1 <= value <= 1:
                raise SpecError(f"{name} must lie between -1 and 1 (0 and 1 for min_top1), not {value}")
        fields = {f.name for f in dataclasses.fields(self)} - {"per_output"}
        for output, overrides in self.per_output.items():
            unknown = set(overrides) - fields
            if unknown:
                raise SpecError(f"unknown tolerance field {sorted(unknown)} for output '{output}'",
                                hint=f"use {', '.join(sorted(fields))}")

    @classmethod
    def for_kind(cls, kind: str = "exact", precision: Precision | None = None) -> Tolerance:
        """Defaults by pass kind and precision.

        - exact (fp32): atol 1e-4, rtol 1e-3: real fp32 rewrites such as Conv+BatchNormalization folding
          or a MatMul+Add reassociation reorder float sums, which moves results by a few ulps per op;
          a changed weight or a dropped op moves them far more.
        - fp16: cosine >= 0.999 (fp16 keeps ~3 decimal digits, so elementwise bounds would flag every model).
        - int8 (the default for lossy): cosine >= 0.99.
        """
        if kind not in ("exact", "lossy"):
            raise SpecError(f"tolerance kind must be exact or lossy, not {kind!r}")
        precision = precision or ("fp32" if kind == "exact" else "int8")
        if precision == "fp32":
            return cls(atol=1e-4, rtol=1e-3)
        if precision == "fp16":
            return cls(atol=None, rtol=None, min_cosine=0.999)
        if precision == "int8":
            return cls(atol=None, rtol=None, min_cosine=0.99)
        raise SpecError(f"precision must be fp32, fp16 or int8, not {precision!r}")

    def for_output(self, name: str) -> Tolerance:
        """The tolerance that applies to output ``name``, its overrides applied."""
        return dataclasses.replace(self, **dict(self.per_output.get(name, {})), per_output={})

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None

    def describe(self) -> str:
        parts = []
        if self.elementwise:
            parts.append(f"atol {_num(self.atol or 0)}, rtol {_num(self.rtol or 0)}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.min_sqnr is not None:
            parts.append(f"SQNR >= {self.min_sqnr:g} dB")
        if self.min_top1 is not None:
            parts.append(f"top-1 >= {self.min_top1:.1%}")
        return ", ".join(parts) or "no checks"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["per_output"] = {name: dict(overrides) for name, overrides in self.per_output.items()}
        return data


# Named tolerance presets: (pass kind, precision).
PRESETS: dict[str, tuple[str, Precision]] = {"exact": ("exact", "fp32"), "fp16": ("lossy", "fp16"), "int8": ("lossy", "int8")}


def tolerance_from_options(preset: str | None = None, overrides: Mapping[str, float | None] | None = None,
                           per_output: Mapping[str, Mapping[str, float | None]] | None = None) -> Tolerance:
    """The tolerance a user asked for: a preset (exact, fp16, int8), then field overrides and per-output ones.

    Without a preset, giving only budgets (``min_cosine``, ``min_sqnr``, ``min_top1``) turns the elementwise
    atol/rtol check off, since a user who states a budget is comparing a lossy model; otherwise the exact
    defaults apply.
    """
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    if preset is not None:
        if preset not in PRESETS:
            raise SpecError(f"unknown tolerance preset {preset!r}", hint=f"use {', '.join(PRESETS)}")
        base = Tolerance.for_kind(*PRESETS[preset])
    elif overrides and not {"atol", "rtol"} & set(overrides):
        base = Tolerance(atol=None, rtol=None)
    else:
        base = Tolerance.for_kind("exact")
    return dataclasses.replace(base, **overrides, per_output=dict(per_output or {}))


def parse_output_tolerance(text: str) -> tuple[str, dict[str, float | None]]:
    """``logits:atol=1e-3,min-cosine=0.99`` → ``("logits", {"atol": 0.001, "min_cosine": 0.99})``; ``none``
    turns a check off. The name is everything before the last ``:``, so ``output:0:atol=1e-3`` works."""
    name, colon, body = text.rpartition(":")
    if not colon or not name or not body:
        raise SpecError(f"bad per-output tolerance {text!r}", hint="write NAME:KEY=VALUE[,KEY=VALUE], e.g. logits:atol=1e-3")
    fields = {f.name for f in dataclasses.fields(Tolerance)} - {"per_output"}
    overrides: dict[str, float | None] = {}
    for piece in body.split(","):
        key, equals, value = piece.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or key not in fields:
            raise SpecError(f"bad per-output tolerance entry {piece!r} in {text!r}", hint=f"keys: {', '.join(sorted(fields))}")
        try:
            overrides[key] = None if value.strip().lower() in ("none", "off") else float(value)
        except ValueError as e:
            raise SpecError(f"per-output tolerance {key} must be a number or 'none', not {value!r}") from e
    return name, overrides


# ---------------------------------------------------------------------------------------------------------
# Reports


@dataclasses.dataclass
class OutputReport:
    """One output's comparison over all samples.

    ``min_atol`` is the smallest atol that passes at the given rtol (0 if none), ``min_rtol`` the smallest
    rtol that passes at the given atol (inf when no rtol can: the reference is 0 where they differ).
    """

    name: str
    passed: bool = True
    dtype: str | None = None
    shape: list[int] | None = None
    elements: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    mean_abs_error: float = 0.0
    cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    mismatched_elements: int = 0
    nonfinite_mismatches: int = 0
    equality: bool = False  # integer, bool and string outputs are compared for equality, not within a tolerance
    min_atol: float | None = None
    min_rtol: float | None = None
    tolerance: str = ""
    failures: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def metrics_text(self) -> str:
        """``max abs 2.4e-07, max rel 1.1e-06, mean abs 6e-08, cosine 1.000000, SQNR 128.3 dB, top-1 100.0%``."""
        parts = [f"max abs {_num(self.max_abs_error)}", f"max rel {_num(self.max_rel_error)}",
                 f"mean abs {_num(self.mean_abs_error)}"]
        if self.cosine is not None:
            parts.append(f"cosine {self.cosine:.6f}")
        if self.sqnr_db is not None:
            parts.append(f"SQNR {self.sqnr_db:.1f} dB")
        if self.top1_agreement is not None:
            parts.append(f"top-1 {self.top1_agreement:.1%}")
        if self.nonfinite_mismatches:
            parts.append(f"{self.nonfinite_mismatches} NaN/inf in one model only")
        return ", ".join(parts)

    def would_pass_text(self, tolerance: Tolerance) -> str:
        """The loosest settings this output needed, e.g. ``atol >= 0.013 (at rtol 0.001) or rtol >= 2.1 (at
        atol 0.0001)``; budgets it missed are joined with "and". Empty when no setting would pass."""
        if self.equality or self.nonfinite_mismatches:
            return ""
        needs = []
        if tolerance.elementwise and self.mismatched_elements:
            alternatives = [f"atol >= {_ceil_num(self.min_atol or 0)} (at rtol {_num(tolerance.rtol or 0)})"]
            if self.min_rtol is not None and math.isfinite(self.min_rtol):
                alternatives.append(f"rtol >= {_ceil_num(self.min_rtol)} (at atol {_num(tolerance.atol or 0)})")
            needs.append(" or ".join(alternatives))
        if tolerance.min_cosine is not None and self.cosine is not None and self.cosine < tolerance.min_cosine:
            needs.append(f"min_cosine <= {math.floor(self.cosine * 1e6) / 1e6:.6f}")
        if tolerance.min_sqnr is not None and self.sqnr_db is not None and self.sqnr_db < tolerance.min_sqnr:
            needs.append(f"min_sqnr <= {math.floor(self.sqnr_db * 10) / 10:.1f}")
        if tolerance.min_top1 is not None and self.top1_agreement is not None and self.top1_agreement < tolerance.min_top1:
            needs.append(f"min_top1 <= {math.floor(self.top1_agreement * 1e4) / 1e4:.4f}")
        return " and ".join(needs)

    def to_dict(self) -> dict[str, Any]:
        return {key: _json_safe(value) for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class ParityReport:
    """The comparison of two models: a verdict, per-output metrics, and the errors found."""

    passed: bool
    outputs: list[OutputReport]
    errors: list[str]
    samples: int
    tolerance: Tolerance
    data: str = ""
    ort_optimizations: bool = False

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((o.cosine for o in self.outputs if o.cosine is not None), default=1.0)

    def worst(self) -> OutputReport | None:
        """The failed output with the largest error, else the output with the largest error."""
        candidates = [o for o in self.outputs if not o.passed] or self.outputs
        return max(candidates, key=lambda o: (o.nonfinite_mismatches, o.max_abs_error), default=None)

    def summary(self) -> str:
        """One line: the verdict, the worst output's metrics, and the tolerance that would have passed."""
        verdict = "PASSED" if self.passed else "FAILED"
        scope = f"{len(self.outputs)} output{'s' if len(self.outputs) != 1 else ''}, {self.samples} sample{'s' if self.samples != 1 else ''}"
        global_errors = [e for e in self.errors if not any(e in o.errors for o in self.outputs)]
        if global_errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{verdict}: {global_errors[0]}{more}"
        worst = self.worst()
        if worst is None:
            return f"{verdict}: no outputs compared"
        if worst.errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"{verdict}: {worst.errors[0]}{more}"
        line = f"{verdict} ({scope}, {self.tolerance.for_output(worst.name).describe()}): worst output '{worst.name}': {worst.metrics_text()}"
        if not worst.passed:
            line += f"; {'; '.join(worst.failures)}"
            needs = worst.would_pass_text(self.tolerance.for_output(worst.name))
            if needs:
                line += f"; would pass with {needs}"
        return line

    def lines(self) -> list[str]:
        """Human output: one PASSED/FAILED line per output with its metrics and, on failure, what failed and
        the tolerance that would have passed; an ERROR line per error; then the summary."""
        lines = []
        for output in self.outputs:
            if output.errors:
                continue
            shape = f"{output.dtype}{output.shape}" if output.dtype is not None else "(no values)"
            line = f"{'PASSED' if output.passed else 'FAILED'}  {output.name}  {shape}  {output.metrics_text()}"
            if not output.passed:
                line += f"  | {'; '.join(output.failures)}"
                needs = output.would_pass_text(self.tolerance.for_output(output.name))
                if needs:
                    line += f"; would pass with {needs}"
            lines.append(line)
        lines += [f"ERROR   {error}" for error in self.errors]
        failed = sum(1 for o in self.outputs if not o.passed)
        scope = f"{self.samples} sample{'s' if self.samples != 1 else ''} ({self.data})"
        if self.passed:
            outputs = f"all {len(self.outputs)} outputs" if len(self.outputs) > 1 else "1 output"
            lines.append(f"PASSED: {outputs} within tolerance ({self.tolerance.describe()}) over {scope}")
        else:
            problems = [f"{failed} of {len(self.outputs)} outputs outside tolerance ({self.tolerance.describe()})"] if failed else []
            problems += [f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}"] if self.errors else []
            lines.append(f"FAILED: {', '.join(problems)} over {scope}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_error": _json_safe(self.max_abs_error),
            "min_cosine": _json_safe(self.min_cosine),
            "samples": self.samples,
            "data": self.data,
            "ort_optimizations": self.ort_optimizations,
            "tolerance": self.tolerance.to_dict(),
            "summary": self.summary(),
            "outputs": [o.to_dict() for o in self.outputs],
            "errors": list(self.errors),
        }


def _json_safe(value: Any) -> Any:
    """Strict JSON has no inf or NaN: they become null (``min_rtol`` inf means no rtol would pass)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: float) -> str:
    return f"{value:.3g}"


def _ceil_num(value: float) -> str:
    """``value`` rounded up to two significant digits, so that the printed figure itself passes."""
    if value == 0 or not math.isfinite(value):
        return _num(value)
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return f"{math.ceil(value * (1 + 1e-9) / scale) * scale:.2g}"


# ---------------------------------------------------------------------------------------------------------
# Comparing one output


class _StructureMismatch(Exception):
    pass


def _paired_arrays(reference: Any, candidate: Any, where: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Walk two ORT values (arrays, sequences as lists, maps as dicts, empty optionals as None) in step."""
    if isinstance(reference, np.ndarray) and isinstance(candidate, np.ndarray):
        yield reference, candidate
    elif isinstance(reference, list) and isinstance(candidate, list):
        if len(reference) != len(candidate):
            raise _StructureMismatch(f"{where} is a sequence of {len(reference)} in the reference but {len(candidate)} in the candidate")
        for i, (r, c) in enumerate(zip(reference, candidate)):
            yield from _paired_arrays(r, c, f"{where}[{i}]")
    elif isinstance(reference, dict) and isinstance(candidate, dict):
        if set(reference) != set(candidate):
            raise _StructureMismatch(f"{where} has keys {sorted(reference)} in the reference but {sorted(candidate)} in the candidate")
        for key in sorted(reference):
            yield from _paired_arrays(np.asarray(reference[key]), np.asarray(candidate[key]), f"{where}[{key!r}]")
    elif reference is None and candidate is None:
        return
    else:
        raise _StructureMismatch(f"{where} is {_describe_value(reference)} in the reference but "
                                 f"{_describe_value(candidate)} in the candidate")


def _describe_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} tensor"
    if value is None:
        return "empty (None)"
    return f"a {type(value).__name__}"


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind in "fc"


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not np.dot: a 1-D dot goes to a multithreaded BLAS, which costs milliseconds per call on a busy
    # machine where einsum's own loop takes microseconds.
    return float(np.einsum("i,i->", a, b))


def _as_real(array: np.ndarray) -> np.ndarray:
    """float64, flat; complex numbers as (real, imag) pairs."""
    if array.dtype.kind == "c":
        return np.ascontiguousarray(array, dtype=np.complex128).view(np.float64).ravel()
    return np.asarray(array, dtype=np.float64).ravel()


class _OutputComparison:
    """Accumulates one output's metrics sample by sample."""

    def __init__(self, name: str, tolerance: Tolerance) -> None:
        self.report = OutputReport(name, tolerance=tolerance.describe())
        self.tolerance = tolerance
        self.sum_abs = 0.0
        self.finite_elements = 0
        self.signal = 0.0
        self.noise = 0.0
        self.argmax_agree = 0
        self.argmax_total = 0
        self.equal_elements = 0

    def error(self, message: str) -> None:
        if message not in self.report.errors:
            self.report.errors.append(message)

    def add(self, reference: Any, candidate: Any, sample: int) -> None:
        name = self.report.name
        try:
            pairs = list(_paired_arrays(reference, candidate, f"output '{name}'"))
        except _StructureMismatch as e:
            self.error(f"{e} (sample {sample})")
            return
        for ref, cand in pairs:
            if self.report.dtype is None:
                self.report.dtype, self.report.shape = str(ref.dtype), list(ref.shape)
            if ref.dtype != cand.dtype:
                self.error(f"output '{name}' has dtype {ref.dtype} in the reference but {cand.dtype} in the candidate")
            if ref.shape != cand.shape:
                self.error(f"output '{name}' has shape {list(ref.shape)} in the reference but {list(cand.shape)} in "
                           f"the candidate (sample {sample})")
                continue
            self.report.elements += ref.size
            if _is_float(ref) or _is_float(cand):
                self._add_float(ref, cand)
            else:
                self.report.equality = True
                self.equal_elements += int(np.count_nonzero(ref == cand))
                if ref.dtype.kind not in "OSU" and cand.dtype.kind not in "OSU":
                    self._add_float(ref, cand)  # the error figures still say how far apart they are

    def _add_float(self, ref: np.ndarray, cand: np.ndarray) -> None:
        report, tol = self.report, self.tolerance
        if ref.dtype == cand.dtype and np.array_equal(ref, cand):
            self._add_identical(ref)
            return
        a, b = _as_real(ref), _as_real(cand)
        finite = np.isfinite(a) & np.isfinite(b)
        if not finite.all():
            same = (np.isnan(a) & np.isnan(b)) | (a == b)  # equal infinities compare equal
            report.nonfinite_mismatches += int(np.count_nonzero(~finite & ~same))
            a, b = a[finite], b[finite]
        if a.size == 0:
            return
        diff = np.abs(a - b)
        magnitude = np.abs(a)
        atol, rtol = tol.atol or 0.0, tol.rtol or 0.0
        report.max_abs_error = max(report.max_abs_error, float(diff.max()))
        nonzero = magnitude > 0
        if nonzero.any():
            report.max_rel_error = max(report.max_rel_error, float((diff[nonzero] / magnitude[nonzero]).max()))
        self.sum_abs += float(diff.sum())
        self.finite_elements += a.size
        if tol.elementwise:
            report.mismatched_elements += int(np.count_nonzero(diff > atol + rtol * magnitude))
        report.min_atol = max(report.min_atol or 0.0, float(np.maximum(diff - rtol * magnitude, 0).max()))
        over = diff > atol
        if over.any():
            with np.errstate(divide="ignore"):
                needed = float(((diff[over] - atol) / magnitude[over]).max())
            report.min_rtol = max(report.min_rtol or 0.0, needed)
        elif report.min_rtol is None:
            report.min_rtol = 0.0
        signal = _dot(a, a)
        self.signal += signal
        self.noise += _dot(a - b, a - b)
        norms = math.sqrt(signal) * math.sqrt(_dot(b, b))
        if norms > 0:
            cosine = _dot(a, b) / norms
        else:
            cosine = 1.0 if not a.any() and not b.any() else 0.0
        report.cosine = cosine if report.cosine is None else min(report.cosine, cosine)
        self._add_argmax(ref, cand)

    def _add_identical(self, values: np.ndarray) -> None:
        """Bit-identical outputs (what most exact rewrites give): every error is 0 and cosine 1, without the
        float64 copies and the dozen passes over the data that the general case takes."""
        report = self.report
        a = _as_real(values)
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return
        self.finite_elements += finite.size
        report.min_atol = report.min_atol or 0.0
        report.min_rtol = report.min_rtol or 0.0
        self.signal += _dot(finite, finite)
        report.cosine = 1.0 if report.cosine is None else min(report.cosine, 1.0)
        self._add_argmax(values, values)

    def _add_argmax(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if _is_float(ref) and ref.ndim in (2, 3) and ref.shape[-1] >= 2:
            agree = ref.size // ref.shape[-1] if ref is cand else int(np.count_nonzero(ref.argmax(-1) == cand.argmax(-1)))
            self.argmax_agree += agree
            self.argmax_total += ref.size // ref.shape[-1]

    def finish(self) -> OutputReport:
        report, tol = self.report, self.tolerance
        if self.finite_elements:
            report.mean_abs_error = self.sum_abs / self.finite_elements
            report.sqnr_db = math.inf if self.noise == 0 else (
                10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf)
        if self.argmax_total:
            report.top1_agreement = self.argmax_agree / self.argmax_total
        failures = report.failures
        if report.nonfinite_mismatches:
            failures.append(f"{report.nonfinite_mismatches} elements are NaN or inf in one model only")
        if self.report.equality:
            agreement = self.equal_elements / report.elements if report.elements else 1.0
            report.mismatched_elements = report.elements - self.equal_elements
            if tol.min_top1 is not None:
                report.top1_agreement = agreement
                if agreement < tol.min_top1:
                    failures.append(f"{agreement:.2%} of elements equal, below {tol.min_top1:.2%}")
            elif report.mismatched_elements:
                failures.append(f"{report.mismatched_elements} of {report.elements} elements differ "
                                f"({report.dtype} outputs must be equal)")
        else:
            if tol.elementwise and report.mismatched_elements:
                failures.append(f"{report.mismatched_elements} of {report.elements} elements beyond "
                                f"atol {_num(tol.atol or 0)} + rtol {_num(tol.rtol or 0)} * |reference|")
            if tol.min_cosine is not None and report.cosine is not None and report.cosine < tol.min_cosine:
                failures.append(f"cosine {report.cosine:.6f} below {tol.min_cosine:g}")
            if tol.min_sqnr is not None and report.sqnr_db is not None and report.sqnr_db < tol.min_sqnr:
                failures.append(f"SQNR {report.sqnr_db:.1f} dB below {tol.min_sqnr:g} dB")
            if tol.min_top1 is not None and report.top1_agreement is not None and report.top1_agreement < tol.min_top1:
                failures.append(f"top-1 agreement {report.top1_agreement:.2%} below {tol.min_top1:.2%}")
        report.passed = not failures and not report.errors
        return report


# ---------------------------------------------------------------------------------------------------------
# Running models


def compare_outputs(name: str, reference: Any, candidate: Any, tolerance: Tolerance | None = None, *,
                    sample: int = 0) -> OutputReport:
    """Compare one output's values from one sample (an array, or a sequence of arrays), with the metrics and
    verdict ``compare_models`` gives; for outputs that do not come from two ONNX models (torch vs ORT)."""
    comparison = _OutputComparison(name, (tolerance or Tolerance.for_kind("exact")).for_output(name))
    comparison.add(reference, candidate, sample)
    return comparison.finish()


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
        raise SpecError(f"cannot compare a {type(model).__name__} as the {role} model",
                        hint="give an .onnx path, bytes, an onnx.ModelProto or an onnx_ir.Model")

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


@dataclasses.dataclass
class Recording:
    """A model's values of ``outputs`` on each sample of a comparison, in order, and what they weigh.
    ``complete`` when the samples ran out before any limit on them did."""

    outputs: list[str]
    values: list[list[Any]] = dataclasses.field(default_factory=list)
    nbytes: int = 0
    complete: bool = False

    def covers(self, limit: int | None) -> bool:
        return self.complete or (limit is not None and len(self.values) >= limit)

    def add(self, values: list[Any]) -> None:
        self.values.append(values)
        self.nbytes += sum(_nbytes(v) for v in values)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, list):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values()) + 64 * len(value)
    return 64


class _Live:
    """A model loaded once in ONNX Runtime, run sample by sample."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]

    def run(self, names: list[str], sample: Mapping[str, Any], index: int) -> list[Any]:
        return self.session.run(names, {name: sample[name] for name in self.inputs})


class _Replay:
    """A model's recorded outputs, handed back sample by sample instead of running the model again."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.outputs = recording.outputs

    def run(self, names: list[str], sample: Mapping[str, Any], index: int) -> list[Any]:
        values = self.recording.values[index]
        return [values[self.outputs.index(name)] for name in names]


def _reference_failure(index: int, error: Exception, data_given: bool) -> DataError:
    return DataError(f"the reference model fails on sample {index}: {runtime.error_line(error)}",
                     hint="check the data" if data_given else "give real inputs with --data")


def _add_time(timings: dict[str, float] | None, key: str, started: float) -> float:
    now = time.perf_counter()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + now - started
    return now


@dataclasses.dataclass
class _Compared:
    outputs: list[OutputReport]
    errors: list[str]
    samples: int
    reference: Recording | None  # each side's values, when asked for, complete and within the budget
    candidate: Recording | None


def _timed(run: Any, *args: Any) -> tuple[list[Any], float]:
    started = time.perf_counter()
    return run(*args), time.perf_counter() - started


def _compare_runs(reference: _Live | _Replay, candidate: _Live, dataset: Any, specs: Any, tolerance: Tolerance, *,
                  data_given: bool, timings: dict[str, float] | None = None, record_budget: int = 0,
                  limit: int | None = None) -> _Compared:
    """Run (or replay) both sides sample by sample, on the first ``limit`` samples if given, and compare each
    output as soon as both have it.

    Two runs go side by side in threads (ONNX Runtime lets go of the GIL), so a comparison takes about half
    the time on a machine with a core to spare: the reference's and the candidate's run of a sample, or, when
    the reference is replayed, the candidate's runs of two samples (the chain's candidates are ORT sessions,
    whose ``run`` may be called from several threads). ``timings`` gets the reference's own seconds as
    ``reference_runs`` (``replayed``) and what the candidate added beyond them as ``candidate_runs``, so that
    the parts add up to the time spent. With ``record_budget`` each live side's values are also kept, while
    they weigh at most that many bytes."""
    errors = [f"output '{name}' is missing from the candidate" for name in reference.outputs
              if name not in candidate.outputs]
    errors += [f"the candidate has output '{name}' that the reference lacks" for name in candidate.outputs
               if name not in reference.outputs]
    shared = [name for name in reference.outputs if name in candidate.outputs]
    comparisons = {name: _OutputComparison(name, tolerance.for_output(name)) for name in shared}
    live_reference = isinstance(reference, _Live)
    recordings: dict[str, Recording | None] = {
        "reference": Recording(shared) if record_budget and live_reference else None,
        "candidate": Recording(shared) if record_budget else None,
    }
    samples = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as side_by_side:
        runs = _SampleRuns(reference, candidate, shared, dataset, specs, limit, side_by_side)
        for index, started, ref_run, cand_run in runs:
            candidate_error = None
            try:
                cand_values, _ = cand_run.result()
            except Exception as e:  # ORT raises its own exception types
                candidate_error = e
            try:  # a reference that fails is the data's fault, whatever the candidate did
                ref_values, ref_seconds = ref_run.result()
            except Exception as e:
                raise _reference_failure(index, e, data_given) from e
            if timings is not None:
                spent = time.perf_counter() - started
                side = "reference_runs" if live_reference else "replayed"
                timings[side] = timings.get(side, 0.0) + ref_seconds
                timings["candidate_runs"] = timings.get("candidate_runs", 0.0) + max(spent - ref_seconds, 0.0)
            if candidate_error is not None:
                errors.append(f"the candidate model fails on sample {index}: {runtime.error_line(candidate_error)}")
                break
            started = time.perf_counter()
            for name, ref_value, cand_value in zip(shared, ref_values, cand_values):
                comparisons[name].add(ref_value, cand_value, index)
            _add_time(timings, "comparison", started)
            for side, values in (("reference", ref_values), ("candidate", cand_values)):
                recording = recordings[side]
                if recording is not None:
                    recording.add(values)
                    if recording.nbytes > record_budget:
                        recordings[side] = None
            samples += 1
        errors += runs.errors
    if samples == 0 and not errors:
        raise DataError("the data holds no samples", hint="give at least one sample, or drop --data for synthetic inputs")
    if errors:
        recordings = {"reference": None, "candidate": None}
    for recording in recordings.values():
        if recording is not None:
            recording.complete = limit is None or samples < limit
    return _Compared([c.finish() for c in comparisons.values()], errors, samples, recordings["reference"],
                     recordings["candidate"])


class _SampleRuns:
    """The runs of both sides, sample by sample and in order: ``(index, started, reference run, candidate
    run)``, each run a future of ``(values, seconds)``; ``started`` is when the caller began waiting for it.

    Two runs are in flight at a time: both sides of one sample, or, with a replayed reference, the candidate's
    runs of this sample and the next. What goes wrong with a sample (it does not fit the specs, it lacks an
    input the candidate takes) is raised or recorded in ``errors`` only when that sample's turn comes, so the
    samples before it are compared first, as one at a time would."""

    def __init__(self, reference: _Live | _Replay, candidate: _Live, names: list[str], dataset: Any, specs: Any,
                 limit: int | None, executor: concurrent.futures.Executor) -> None:
        self.reference, self.candidate, self.names, self.specs = reference, candidate, names, specs
        self.samples = enumerate(itertools.islice(dataset, limit))
        self.executor = executor
        self.ahead = 1 if isinstance(reference, _Live) else 2
        self.errors: list[str] = []

    def _start(self) -> Any:
        """The next sample's runs, started; an exception or an error text to report at its turn; None at the end."""
        item = next(self.samples, None)
        if item is None:
            return None
        index, sample = item
        try:
            sample = validate_sample(sample, self.specs, index=index)
        except Exception as e:  # raised at its turn
            return e
        missing = [name for name in self.candidate.inputs if name not in sample]
        if missing:
            return (f"the candidate takes input{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(map(repr, missing))} that the reference does not")
        if isinstance(self.reference, _Live):
            ref_run = self.executor.submit(_timed, self.reference.run, self.names, sample, index)
        else:
            ref_run = concurrent.futures.Future()
            ref_run.set_result(_timed(self.reference.run, self.names, sample, index))
        return index, ref_run, self.executor.submit(_timed, self.candidate.run, self.names, sample, index)

    def __iter__(self) -> Iterator[tuple[int, float, Any, Any]]:
        in_flight: list[Any] = []
        while True:
            while len(in_flight) < self.ahead and (not in_flight or isinstance(in_flight[-1], tuple)):
                started = self._start()
                if started is None:
                    break
                in_flight.append(started)
            if not in_flight:
                return
            turn = in_flight.pop(0)
            if isinstance(turn, Exception):
                raise turn
            if isinstance(turn, str):
                self.errors.append(turn)
                return
            index, ref_run, cand_run = turn
            yield index, time.perf_counter(), ref_run, cand_run


def _report(compared: _Compared, tolerance: Tolerance, description: str, ort_optimizations: bool) -> ParityReport:
    errors = compared.errors + [e for o in compared.outputs for e in o.errors]
    passed = not errors and all(o.passed for o in compared.outputs)
    return ParityReport(passed, compared.outputs, errors, compared.samples, tolerance, description, ort_optimizations)


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
    # The specs and dataset keep what they need. An ir.Model is full of reference cycles, so it is collected
    # now, before the sessions load the weights again, rather than whenever the collector next runs.
    del ref_ir
    gc.collect()
    description = describe_data(dataset if data is None else data)

    def options() -> Any:  # one per session: make_session records model_dir in the options it is given
        return runtime.session_options(optimize=ort_optimizations, threads=threads)

    try:
        ref_session = ref_model.session(options(), model_dir)
    except Exception as e:  # ORT raises its own exception types for invalid graphs and unsupported ops
        raise ModelLoadError(f"ONNX Runtime cannot load {ref_model.label}: {runtime.error_line(e)}",
                             hint="the reference model must run in ONNX Runtime") from e
    try:
        cand_session = cand_model.session(options(), model_dir)
    except Exception as e:
        return _report(_Compared([], [f"ONNX Runtime cannot load {cand_model.label}: {runtime.error_line(e)}"], 0,
                                 None, None), tolerance, description, ort_optimizations)
    compared = _compare_runs(_Live(ref_session), _Live(cand_session), dataset, specs, tolerance,
                             data_given=data is not None)
    return _report(compared, tolerance, description, ort_optimizations)


# ---------------------------------------------------------------------------------------------------------
# A chain of comparisons


# The most bytes of outputs kept per model for the next comparison; past it that model is run again.
RECORDING_BUDGET = 256 * 2**20


class ParityChain:
    """Comparisons along a chain of models on one fixed dataset, running each model once.

    The pipeline compares each pass's output with its input. The candidate of one comparison is the
    reference of the next (or, after a rollback, the same reference comes back), so the outputs of the last
    models compared are kept, up to ``RECORDING_BUDGET`` bytes each, and replayed instead of run again.
    ``compare`` adds to ``timings`` the seconds spent making sessions, running each side, and comparing.
    """

    def __init__(self, dataset: Any, specs: Any, description: str, *, data_given: bool,
                 model_dir: str | os.PathLike[str] | None = None, threads: int = 1,
                 ort_optimizations: bool = False) -> None:
        self.dataset = dataset
        self.specs = specs
        self.description = description
        self.data_given = data_given
        self.model_dir = model_dir
        self.threads = threads
        self.ort_optimizations = ort_optimizations
        self._recordings: list[tuple[Any, Recording]] = []  # (model source, its outputs), by identity
        self._prefetch: _Prefetch | None = None

    def recorded(self, model: Any) -> Recording | None:
        return next((recording for source, recording in self._recordings if source is model), None)

    def prefetch(self, reference: Any, *, limit: int | None = None) -> None:
        """Start running ``reference`` on the first ``limit`` samples in a background thread, so that the
        next comparison against it replays its outputs instead of waiting for them: the pipeline starts the
        original model here before its first pass, and ONNX Runtime runs it on a spare core while the passes
        work (``Session.run`` lets go of the GIL). Only on synthetic inputs, which onnxkit makes itself: a
        dataset the caller gave may not be safe to read from two threads (quantize calibrates on it).

        Should the background run fail, the comparison runs the reference itself, and reports what fails
        exactly as it would have."""
        self.close()
        if not self.data_given:
            self._prefetch = _Prefetch(self, reference, limit)

    def close(self) -> None:
        """Stop a background run that is no longer wanted (between samples; a sample running finishes)."""
        if self._prefetch is not None:
            self._prefetch.cancel()
            self._prefetch = None

    def _take_prefetched(self, reference: Any, timings: dict[str, float] | None) -> None:
        """Wait for the background run of ``reference``, if one was started, and keep what it recorded."""
        prefetch = self._prefetch
        if prefetch is None or prefetch.reference is not reference:
            return
        self._prefetch = None
        started = time.perf_counter()
        recording = prefetch.result()
        _add_time(timings, "reference_wait", started)
        if recording is not None and self.recorded(reference) is None:
            self._recordings.append((reference, recording))

    def _session(self, model: Any) -> Any:
        return runtime.make_session(model, optimize=self.ort_optimizations, threads=self.threads,
                                    model_dir=self.model_dir)

    def compare(self, reference: Any, candidate: Any, tolerance: Tolerance,
                timings: dict[str, float] | None = None, *, limit: int | None = None) -> ParityReport:
        """Compare ``candidate`` with ``reference`` (bytes, ``ModelProto`` or ``ir.Model``; recordings are
        found by object identity, so pass the very object compared before), on the first ``limit`` samples
        if given."""
        self._take_prefetched(reference, timings)
        started = time.perf_counter()
        recorded = self.recorded(reference)
        if recorded is not None and not recorded.covers(limit):
            recorded = None
        if recorded is not None:
            ref_side: _Live | _Replay = _Replay(recorded)
        else:
            try:
                ref_side = _Live(self._session(reference))
            except Exception as e:  # ORT raises its own exception types for invalid graphs and unsupported ops
                raise ModelLoadError(f"ONNX Runtime cannot load the model: {runtime.error_line(e)}",
                                     hint="parity checks run the model in ONNX Runtime; --check off skips them") from e
        try:
            cand_side = _Live(self._session(candidate))
        except Exception as e:
            _add_time(timings, "sessions", started)
            failed = _Compared([], [f"ONNX Runtime cannot load the candidate model: {runtime.error_line(e)}"], 0,
                               None, None)
            return _report(failed, tolerance, self.description, self.ort_optimizations)
        _add_time(timings, "sessions", started)
        compared = _compare_runs(ref_side, cand_side, self.dataset, self.specs, tolerance, data_given=self.data_given,
                                 timings=timings, record_budget=RECORDING_BUDGET, limit=limit)
        kept = [(reference, recorded or compared.reference)]
        if compared.candidate is not None:
            kept.append((candidate, compared.candidate))
        self._recordings = [(source, recording) for source, recording in kept if recording is not None]
        return _report(compared, tolerance, self.description, self.ort_optimizations)


class _Prefetch:
    """A chain's reference run on its samples in a thread of its own; ``result`` waits for its ``Recording``
    (None when it failed, was cancelled, or outgrew ``RECORDING_BUDGET``)."""

    def __init__(self, chain: ParityChain, reference: Any, limit: int | None) -> None:
        self.reference = reference
        self._chain, self._limit = chain, limit
        self._cancelled = threading.Event()
        self._recording: Recording | None = None
        self._thread = threading.Thread(target=self._run, name="onnxkit-parity-reference", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chain = self._chain
        try:
            live = _Live(chain._session(self.reference))
            recording = Recording(live.outputs)
            for index, sample in enumerate(itertools.islice(chain.dataset, self._limit)):
                if self._cancelled.is_set():
                    return
                recording.add(live.run(live.outputs, validate_sample(sample, chain.specs, index=index), index))
                if recording.nbytes > RECORDING_BUDGET:
                    return
        except Exception:  # the comparison runs the reference again and reports the failure
            return
        recording.complete = self._limit is None or len(recording.values) < self._limit
        self._recording = recording

    def result(self) -> Recording | None:
        self._thread.join()
        return self._recording

    def cancel(self) -> None:
        self._cancelled.set()
