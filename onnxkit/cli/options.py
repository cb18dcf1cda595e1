"""The options several commands share: --verbose, --dim, the tolerances, --data, and the output path checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from onnxkit.errors import ModelSaveError, SpecError

VERBOSE = "onnxkit.verbose"


def verbose_option(func: Any) -> Any:
    """``--verbose``: ONNX Runtime's own log lines, and the traceback of a pass's internal error."""

    def enable(ctx: click.Context, _param: Any, verbose: bool) -> bool:
        if verbose:
            from onnxkit import runtime

            runtime.set_verbose(True)
            ctx.meta[VERBOSE] = True
        return verbose

    return click.option(
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=enable,
        is_eager=True,
        help="Show ONNX Runtime's log lines and the traceback of a pass's internal error.",
    )(func)


def parse_dims(text: str | None) -> dict[str, int]:
    """``batch=4,seq=128`` → ``{"batch": 4, "seq": 128}``."""
    dims: dict[str, int] = {}
    for piece in (text or "").split(","):
        if not piece.strip():
            continue
        name, equals, value = piece.partition("=")
        if not equals or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise SpecError(f"bad --dim entry {piece!r}", hint="write --dim name=SIZE,other=SIZE with positive sizes")
        dims[name.strip()] = int(value)
    return dims


def tolerance_overrides(**values: float | None) -> dict[str, float]:
    """The tolerance options the user actually gave, refused now when out of range (a negative --atol, a NaN):
    a run whose checks are all skipped as unneeded would otherwise never look at them."""
    from onnxkit.parity import Tolerance

    given = {key: value for key, value in values.items() if value is not None}
    Tolerance(**given)  # type: ignore[arg-type]  # the keys are Tolerance's own fields
    return given


def tolerance_options(func: Any) -> Any:
    """``--atol/--rtol/--min-cosine/--min-sqnr/--min-top1``, shared by every command that checks parity."""
    options = [
        click.option("--atol", type=float, help="Absolute tolerance per element."),
        click.option("--rtol", type=float, help="Relative tolerance per element (an element fails only past both)."),
        click.option("--min-cosine", type=float, help="Minimum cosine similarity per output."),
        click.option("--min-sqnr", type=float, help="Minimum signal-to-quantization-noise ratio in dB."),
        click.option("--min-top1", type=float, help="Minimum argmax agreement (0..1) for class scores."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_data_option(path: str | None) -> Any:
    if path is None:
        return None
    from onnxkit.data import load_dataset

    return load_dataset(path)


def check_output_path(output: Path, inputs: list[Path], in_place: bool | None, data_files: Sequence[Path] = ()) -> None:
    """Refuse to overwrite an input (its model file unless ``in_place``, its external ``data_files`` ever), and
    fail before any work when the output cannot be written. ``in_place`` is None for a command without
    ``--in-place``."""
    from onnxkit.modelio import same_file

    if not in_place and any(same_file(output, i) for i in inputs):
        raise ModelSaveError(
            f"refusing to overwrite the input model {output}",
            hint="give another -o path" + (", or --in-place to replace it" if in_place is not None else ""),
        )
    if any(same_file(output, data) for data in data_files):
        raise ModelSaveError(
            f"refusing to overwrite {output}: the input model's external data is in it", hint="give another path"
        )
    check_report_path(output)


def check_report_path(path: Path) -> None:
    """Fail before any work when ``path`` (an output model, a report) cannot be written: a folder, a missing
    folder or a file in its place, a folder without write permission."""
    from onnxkit.modelio import check_writable_path

    folder = check_writable_path(path)
    if not os.access(folder, os.W_OK):
        raise ModelSaveError(
            f"cannot write {path}: folder {folder} is not writable",
            hint="give a path in a folder you can write to",
        )
