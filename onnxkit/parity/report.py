"""What a parity check found: the per-output metrics as samples come in (``OutputComparison``), one output's
result (``OutputReport``) and the verdict over all outputs (``ParityReport``).

Per output, names, dtypes and shapes are checked first, each mismatch its own error. Then, over all samples:
max absolute error, max relative error (over elements whose reference is not zero), mean absolute error,
cosine similarity (the worst sample's), SQNR in dB (signal and noise power summed over samples), and
argmax agreement where the output looks like class scores (float, rank 2 or 3, last axis of 2 or more).
On failure each output reports the smallest atol (at the given rtol) and the smallest rtol (at the given atol)
that would have passed, and the budget values it reached.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from onnxkit.parity.tolerance import Tolerance, ceil_num_text, num_text


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
        parts = [
            f"max abs {num_text(self.max_abs_error)}",
            f"max rel {num_text(self.max_rel_error)}",
            f"mean abs {num_text(self.mean_abs_error)}",
        ]
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
            alternatives = [f"atol >= {ceil_num_text(self.min_atol or 0)} (at rtol {num_text(tolerance.rtol or 0)})"]
            if self.min_rtol is not None and math.isfinite(self.min_rtol):
                alternatives.append(f"rtol >= {ceil_num_text(self.min_rtol)} (at atol {num_text(tolerance.atol or 0)})")
            needs.append(" or ".join(alternatives))
        if tolerance.min_cosine is not None and self.cosine is not None and self.cosine < tolerance.min_cosine:
            needs.append(f"min_cosine <= {math.floor(self.cosine * 1e6) / 1e6:.6f}")
        if tolerance.min_sqnr is not None and self.sqnr_db is not None and self.sqnr_db < tolerance.min_sqnr:
            needs.append(f"min_sqnr <= {math.floor(self.sqnr_db * 10) / 10:.1f}")
        if (
            tolerance.min_top1 is not None
            and self.top1_agreement is not None
            and self.top1_agreement < tolerance.min_top1
        ):
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
            problems = (
                [f"{failed} of {len(self.outputs)} outputs outside tolerance ({self.tolerance.describe()})"]
                if failed
                else []
            )
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
            raise _StructureMismatch(
                f"{where} is a sequence of {len(reference)} in the reference but {len(candidate)} in the candidate"
            )
        for i, (r, c) in enumerate(zip(reference, candidate)):
            yield from _paired_arrays(r, c, f"{where}[{i}]")
    elif isinstance(reference, dict) and isinstance(candidate, dict):
        if set(reference) != set(candidate):
            raise _StructureMismatch(
                f"{where} has keys {sorted(reference)} in the reference but {sorted(candidate)} in the candidate"
            )
        for key in sorted(reference):
            yield from _paired_arrays(np.asarray(reference[key]), np.asarray(candidate[key]), f"{where}[{key!r}]")
    elif reference is None and candidate is None:
        return
    else:
        raise _StructureMismatch(
            f"{where} is {_describe_value(reference)} in the reference but "
            f"{_describe_value(candidate)} in the candidate"
        )


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


class OutputComparison:
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
                self.error(
                    f"output '{name}' has shape {list(ref.shape)} in the reference but {list(cand.shape)} in "
                    f"the candidate (sample {sample})"
                )
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
            agree = (
                ref.size // ref.shape[-1] if ref is cand else int(np.count_nonzero(ref.argmax(-1) == cand.argmax(-1)))
            )
            self.argmax_agree += agree
            self.argmax_total += ref.size // ref.shape[-1]

    def finish(self) -> OutputReport:
        report, tol = self.report, self.tolerance
        if self.finite_elements:
            report.mean_abs_error = self.sum_abs / self.finite_elements
            report.sqnr_db = (
                math.inf
                if self.noise == 0
                else (10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf)
            )
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
                failures.append(
                    f"{report.mismatched_elements} of {report.elements} elements differ "
                    f"({report.dtype} outputs must be equal)"
                )
        else:
            if tol.elementwise and report.mismatched_elements:
                failures.append(
                    f"{report.mismatched_elements} of {report.elements} elements beyond "
                    f"atol {num_text(tol.atol or 0)} + rtol {num_text(tol.rtol or 0)} * |reference|"
                )
            if tol.min_cosine is not None and report.cosine is not None and report.cosine < tol.min_cosine:
                failures.append(f"cosine {report.cosine:.6f} below {tol.min_cosine:g}")
            if tol.min_sqnr is not None and report.sqnr_db is not None and report.sqnr_db < tol.min_sqnr:
                failures.append(f"SQNR {report.sqnr_db:.1f} dB below {tol.min_sqnr:g} dB")
            if tol.min_top1 is not None and report.top1_agreement is not None and report.top1_agreement < tol.min_top1:
                failures.append(f"top-1 agreement {report.top1_agreement:.2%} below {tol.min_top1:.2%}")
        report.passed = not failures and not report.errors
        return report


def compare_outputs(
    name: str, reference: Any, candidate: Any, tolerance: Tolerance | None = None, *, sample: int = 0
) -> OutputReport:
    """Compare one output's values from one sample (an array, or a sequence of arrays), with the metrics and
    verdict ``compare_models`` gives; for outputs that do not come from two ONNX models (torch vs ORT)."""
    comparison = OutputComparison(name, (tolerance or Tolerance.for_kind("exact")).for_output(name))
    comparison.add(reference, candidate, sample)
    return comparison.finish()
