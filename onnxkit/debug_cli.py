"""``onnxkit debug``: tools for finding out why an optimized model lost accuracy. ``debug quant`` is a thin
shell over ``onnxkit.quant_debug.debug_quant``; ``onnxkit.cli`` registers the group."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from onnxkit.cli import load_data_option, main, parse_dims, verbose_option
from onnxkit.errors import SpecError


@main.group()
def debug() -> None:
    """Find where an optimized model loses accuracy."""


@debug.command(name="quant")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--calib-data",
    "calib_path",
    required=True,
    help="Calibration inputs, as for optimize; the errors are measured on the samples it holds out.",
)
@click.option(
    "--spec",
    default="quantize",
    show_default=True,
    help="The quantize pass to debug, as given to optimize, e.g. 'quantize{mode=static,calib=minmax}'.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("quant-debug"),
    show_default=True,
    help="Folder for quant-debug.json, quant-debug.md and quant-debug.png.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Worst layers printed and named on the plot.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Held-out samples the errors are measured on.",
)
@click.option(
    "--isolate",
    default="0",
    show_default=True,
    metavar="N|all",
    help="Also quantize each of the N worst layers alone and measure the model's outputs (one "
    "quantization and run each); 'all' isolates every layer and orders them by that output error.",
)
@click.option(
    "--calib-cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that caches calibration ranges and rankings, shared with optimize.",
)
@click.option("--dim", "dims", help="Bind dynamic dimensions, e.g. batch=1,seq=128.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@verbose_option
def quant(
    model: Path,
    calib_path: str,
    spec: str,
    out_dir: Path,
    top: int,
    samples: int,
    isolate: str,
    calib_cache: Path | None,
    dims: str | None,
    as_json: bool,
) -> None:
    """Where INT8 loses accuracy in MODEL, layer by layer, worst first, and why each float node stayed float.

    Runs the quantize pass exactly as `onnxkit optimize --passes SPEC --calib-data DATA` does, then compares
    the float model with the model that has every candidate node in INT8, tensor by tensor, on samples
    calibration did not see: SQNR (dB) and cosine per layer output, the noise each layer adds on top of its
    inputs' (how the pass ranks them), and its own INT8 rounding. Nodes the pass kept float carry its
    reason. Writes quant-debug.json, quant-debug.md and quant-debug.png into --out. Exit status: 0, or 2 on
    a usage error.

    \b
    Examples:
      onnxkit debug quant model.onnx --calib-data calib.npz
      onnxkit debug quant model.onnx --calib-data calib.npz --spec 'quantize{mode=static,calib=minmax}' --top 5
    """
    from onnxkit import quant_debug_report
    from onnxkit.quant_debug import debug_quant

    if isolate != "all" and not isolate.isdigit():
        raise SpecError(f"bad --isolate {isolate!r}", hint="give a count of layers, or all")
    result = debug_quant(
        model,
        load_data_option(calib_path),
        spec,
        dims=parse_dims(dims),
        samples=samples,
        isolate="all" if isolate == "all" else int(isolate),
        calib_cache=calib_cache,
        progress=sys.stderr.isatty() and not as_json,
    )
    written, missing = quant_debug_report.save(result, out_dir, top)
    if as_json:
        click.echo(quant_debug_report.to_json(result))
    else:
        from rich.console import Console

        quant_debug_report.render(Console(), result, top)
    click.echo("wrote " + ", ".join(str(path) for path in written), err=as_json)
    if missing:
        click.echo(missing, err=True)
