"""The deployment commands, ``deploy-check`` and ``to-ort``, and the piece of ``optimize --target`` that runs
after the pipeline. Each is a thin shell over ``onnxkit.deploy``; ``onnxkit.cli`` registers them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from onnxkit.cli import (
    load_data_option,
    main,
    parse_dims,
    tolerance_options,
    tolerance_overrides,
    verbose_option,
)
from onnxkit.deploy import TARGET_NAMES

TARGET_CHOICE = click.Choice(TARGET_NAMES)


def target_spec(target: str | None, spec: str | None, config: Path | None) -> str | None:
    """The pipeline spec ``optimize --target`` runs when neither --passes nor --config is given; it is
    printed (on stderr, so ``--json`` stays clean) and recorded with the run like any spec."""
    if target is None or spec is not None or config is not None:
        return spec
    from onnxkit.deploy.targets import get_target

    chosen = get_target(target).default_spec
    click.echo(f"target {target}: passes {chosen}", err=True)
    return chosen


def report_target(target: str | None, model: Any, as_json: bool, payload: dict[str, Any]) -> bool:
    """Check the optimized model's operators against the target; print the report, or add it to ``payload``.
    Returns whether the target runs every node: ``optimize`` exits 1 when it does not, as ``deploy-check`` does
    (the model is saved all the same, so that it can be inspected)."""
    if target is None:
        return True
    from onnxkit.deploy.targets import get_target

    report = get_target(target).check_support(model)
    if as_json:
        payload["deployment"] = report.to_dict()
    else:
        for line in report.lines():
            click.echo(line)
        if not report.supported:
            click.echo(
                f"FAILED: {target} would refuse the saved model; its pipeline does not rewrite these nodes away "
                "(start from a model without them, e.g. before ONNX Runtime's com.microsoft fusions)"
            )
    return report.supported


@main.command(name="deploy-check")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", required=True, type=TARGET_CHOICE, help="Where the model will run.")
@click.option("--data", "data_path", help="Inputs for the run on the target (default: probed synthetic inputs).")
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. batch=4,seq=128.")
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    help="How many samples: the synthetic count (default 4), or a cap on --data.",
)
@click.option(
    "--precision",
    type=click.Choice(["f32", "bf16", "f16"]),
    default="f32",
    show_default=True,
    help="OpenVINO's inference precision (its CPU plugin runs bf16 by default where the CPU has it).",
)
@tolerance_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@verbose_option
def deploy_check_command(
    model: Path,
    target: str,
    data_path: str | None,
    dims: str | None,
    samples: int | None,
    precision: str,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    as_json: bool,
) -> None:
    """Check that MODEL loads, runs and agrees on a deployment target.

    Lists the nodes the target does not support (asking ONNX Runtime's kernel registry or OpenVINO where
    installed, TensorRT's published matrix otherwise). Where the runtime is installed it runs the model there
    and compares the outputs with ONNX Runtime's. Prints the trtexec line for TensorRT and the reduced
    build's operator configuration for ONNX Runtime Mobile. Exit status: 0 supported and in agreement, 1 not,
    2 on a usage error.

    \b
    Examples:
      onnxkit deploy-check model.onnx --target openvino
      onnxkit deploy-check model.onnx --target tensorrt --json
    """
    from onnxkit import parity
    from onnxkit.deploy.check import deploy_check

    overrides = tolerance_overrides(atol=atol, rtol=rtol, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1)
    # Without tolerance options, deploy_check picks float32's or the --precision's defaults.
    tolerance = parity.tolerance_from_options(None, overrides) if overrides else None
    report = deploy_check(
        model,
        target,
        data=load_data_option(data_path),
        dims=parse_dims(dims),
        num_samples=samples,
        tolerance=tolerance,
        precision=precision,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    if not report.passed:
        raise SystemExit(1)


@main.command(name="to-ort")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="The .ort file (default: <stem>.ort beside MODEL)."
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Load the .ort file in ONNX Runtime and compare its outputs with MODEL's.",
)
@click.option("--data", "data_path", help="Inputs for the comparison (default: probed synthetic inputs).")
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. batch=4,seq=128.")
@verbose_option
def to_ort_command(model: Path, output: Path | None, check: bool, data_path: str | None, dims: str | None) -> None:
    """Convert MODEL to ONNX Runtime's format (.ort) for ONNX Runtime Mobile, and write the operator
    configuration of a reduced build beside it (<stem>.required_operators.config).

    \b
    Example:
      onnxkit to-ort model.onnx -o model.ort
    """
    from onnxkit import parity, runtime
    from onnxkit.cli import check_output_path
    from onnxkit.deploy.ort_format import to_ort

    if output is not None:
        check_output_path(output, [model], in_place=None)
    converted = to_ort(model, output)
    for note in converted.notes:
        click.echo(f"note: {note}")
    click.echo(f"saved {converted.ort_path}")
    click.echo(f"saved {converted.config_path} ({len(converted.operator_lines())} operator lines)")
    if check:
        report = parity.compare_models(
            model, runtime.make_session(converted.ort_path), load_data_option(data_path), dims=parse_dims(dims)
        )
        click.echo(f"{converted.ort_path.name} vs {model.name}: {report.summary()}")
        if not report.passed:
            raise SystemExit(1)
