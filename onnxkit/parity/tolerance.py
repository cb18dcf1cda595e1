"""What counts as "the same output" in a parity check: ``Tolerance``, its presets by pass kind and precision,
and the parsing of what a user asks for (``--tolerance``-style presets, field overrides, per-output overrides).

- ``atol``/``rtol``: an element fails only if it exceeds both, as in ``numpy.isclose``:
  ``|candidate - reference| > atol + rtol * |reference|``. NaN against NaN and inf against the same inf agree.
- ``min_cosine``, ``min_sqnr``, ``min_top1``: budgets for lossy passes; ``None`` leaves a check out.
- Integer, bool and string outputs (labels, indices, masks) must be equal, or agree on at least ``min_top1``
  of their elements when that is set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from onnxkit.errors import SpecError

Precision = Literal["fp32", "fp16", "int8"]


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
                raise SpecError(
                    f"unknown tolerance field {sorted(unknown)} for output '{output}'",
                    hint=f"use {', '.join(sorted(fields))}",
                )

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
            parts.append(f"atol {num_text(self.atol or 0)}, rtol {num_text(self.rtol or 0)}")
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
PRESETS: dict[str, tuple[str, Precision]] = {
    "exact": ("exact", "fp32"),
    "fp16": ("lossy", "fp16"),
    "int8": ("lossy", "int8"),
}


def tolerance_from_options(
    preset: str | None = None,
    overrides: Mapping[str, float | None] | None = None,
    per_output: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Tolerance:
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
        raise SpecError(
            f"bad per-output tolerance {text!r}", hint="write NAME:KEY=VALUE[,KEY=VALUE], e.g. logits:atol=1e-3"
        )
    fields = {f.name for f in dataclasses.fields(Tolerance)} - {"per_output"}
    overrides: dict[str, float | None] = {}
    for piece in body.split(","):
        key, equals, value = piece.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or key not in fields:
            raise SpecError(
                f"bad per-output tolerance entry {piece!r} in {text!r}", hint=f"keys: {', '.join(sorted(fields))}"
            )
        try:
            overrides[key] = None if value.strip().lower() in ("none", "off") else float(value)
        except ValueError as e:
            raise SpecError(f"per-output tolerance {key} must be a number or 'none', not {value!r}") from e
    return name, overrides


# Figures in reports and messages.


def num_text(value: float) -> str:
    return f"{value:.3g}"


def ceil_num_text(value: float) -> str:
    """``value`` rounded up to two significant digits, so that the printed figure itself passes."""
    if value == 0 or not math.isfinite(value):
        return num_text(value)
    scale = 10 ** (math.floor(math.log10(value)) - 1)
    return f"{math.ceil(value * (1 + 1e-9) / scale) * scale:.2g}"
