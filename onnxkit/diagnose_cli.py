"""The commands that look at models rather than change them: ``check`` (parity of two models), ``reduce``
(shrink a failing pair to the smallest failing subgraph) and ``inspect`` (a model's summary). Each is a thin
shell over the Python API; ``onnxkit.cli`` registers them, as it does the deployment commands."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxkit.cli import (
    check_output_path,
    load_data_option,
    main,
    parse_dims,
    tolerance_options,
    tolerance_overrides,
    verbose_option,
)


@main.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option(
    "--data", "data_path", help="Inputs: .npz, .npy, a folder of them, images, or ONNX test data (default: synthetic)."
)
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. batch=4,seq=128.")
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    help="How many samples: the synthetic count (default 4), or a cap on --data.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic inputs.")
@click.option(
    "--preset",
    type=click.Choice(["exact", "fp16", "int8"]),
    help="Default tolerances: exact (atol 1e-4, rtol 1e-3), fp16 (cosine >= 0.999), int8 (cosine >= 0.99).",
)
@tolerance_options
@click.option(
    "--output-tolerance",
    "output_tolerances",
    multiple=True,
    metavar="NAME:KEY=VALUE[,...]",
    help="Tolerance for one output, e.g. logits:atol=1e-3,min-cosine=0.99 ('none' turns a check off). Repeatable.",
)
@click.option(
    "--ort-optimizations",
    is_flag=True,
    help="Run both models with ORT's graph optimizations (off by default, so ORT's fusions cannot mask a difference).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@verbose_option
def check(
    reference: Path,
    candidate: Path,
    data_path: str | None,
    dims: str | None,
    samples: int | None,
    seed: int,
    preset: str | None,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    output_tolerances: tuple[str, ...],
    ort_optimizations: bool,
    as_json: bool,
) -> None:
    """Run REFERENCE and CANDIDATE in ONNX Runtime on the same inputs and compare every output.

    Prints one PASSED/FAILED line per output with max abs/rel error, mean abs error, cosine, SQNR and
    top-1 agreement, and on failure the smallest tolerance that would have passed. Exit status: 0 within
    tolerance, 1 outside it, 2 on a usage error. Without --preset, giving only --min-* budgets turns the
    elementwise atol/rtol check off.

    \b
    Examples:
      onnxkit check model.onnx model.opt.onnx
      onnxkit check model.onnx model.int8.onnx --data calib.npz --preset int8
      onnxkit check a.onnx b.onnx --dim batch=4,seq=128 --atol 1e-3 --json
    """
    from onnxkit import parity

    tolerance = parity.tolerance_from_options(
        preset,
        tolerance_overrides(atol=atol, rtol=rtol, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1),
        dict(parity.parse_output_tolerance(text) for text in output_tolerances),
    )
    report = parity.compare_models(
        reference,
        candidate,
        load_data_option(data_path),
        tolerance=tolerance,
        dims=parse_dims(dims),
        num_samples=samples,
        seed=seed,
        ort_optimizations=ort_optimizations,
    )
    if as_json:
        click.echo(json.dumps({"reference": str(reference), "candidate": str(candidate), **report.to_dict()}, indent=2))
    else:
        colours = {"PASSED": "green", "FAILED": "red", "ERROR": "red"}
        for line in report.lines():
            word, _, rest = line.partition(" ")
            click.echo(click.style(word, fg=colours.get(word.rstrip(":")), bold=True) + " " + rest)
    if not report.passed:
        raise SystemExit(1)


@main.command()
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--data", "data_path", help="Inputs under which the pair fails (default: probed synthetic inputs).")
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. batch=4,seq=128.")
@click.option("--samples", type=click.IntRange(min=1), help="How many samples (default 4; every intermediate is kept).")
@click.option("--preset", type=click.Choice(["exact", "fp16", "int8"]), help="Default tolerances, as for `check`.")
@tolerance_options
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The candidate's failing subgraph; <stem>.original.onnx and <stem>.inputs.npz go beside it.",
)
@verbose_option
def reduce(
    original: Path,
    candidate: Path,
    data_path: str | None,
    dims: str | None,
    samples: int | None,
    preset: str | None,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    output: Path,
) -> None:
    """Shrink a pair that fails parity to the smallest subgraph that still fails, for a bug report.

    Bisects from the outputs, then from the inputs, then drops nodes one by one (as Polygraphy's
    `debug reduce`), checking each cut of ORIGINAL against CANDIDATE cut at the same tensor names, both fed
    the original's own values. `onnxkit check OUT.original.onnx OUT --data OUT.inputs.npz` shows the failure.
    """
    from onnxkit import parity
    from onnxkit.reduce import output_paths, reduce_pair

    for path in output_paths(output):  # the side files too: <stem>.original.onnx may be an input's name
        check_output_path(path, [original, candidate], in_place=None)
    tolerance = parity.tolerance_from_options(
        preset, tolerance_overrides(atol=atol, rtol=rtol, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1)
    )
    result = reduce_pair(
        original,
        candidate,
        load_data_option(data_path),
        tolerance=tolerance,
        dims=parse_dims(dims),
        num_samples=samples,
        progress=lambda line: click.echo(line, err=True),
    )
    for line in result.lines():
        click.echo(line)
    click.echo("wrote " + ", ".join(str(path) for path in result.save(output)))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def inspect(model: Path, as_json: bool) -> None:
    """Show a model's IR version, opsets, inputs and outputs, node count, op histogram and sizes."""
    from onnxkit.inspection import describe_model
    from onnxkit.modelio import load_model

    summary = describe_model(load_model(model))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{model}")
    click.echo(
        f"  IR version {summary['ir_version']}, opsets "
        + ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in summary["opsets"].items())
    )
    if summary["producer"]:
        click.echo(f"  producer: {summary['producer']}")
    for side in ("inputs", "outputs"):
        click.echo(f"  {side}:")
        for value in summary[side]:
            shape = "?" if value["shape"] is None else "[" + ", ".join(str(d) for d in value["shape"]) + "]"
            click.echo(f"    {value['name']}: {value['dtype']} {shape}")
    click.echo(f"  nodes: {summary['nodes']} (subgraphs: {summary['subgraphs']}, functions: {summary['functions']})")
    click.echo(f"  initializers: {summary['initializers']} ({summary['initializer_bytes']:,} bytes)")
    click.echo("  ops: " + ", ".join(f"{op} {count}" for op, count in summary["op_histogram"].items()))
