"""``onnxkit export``: a PyTorch model exported to ONNX and verified in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxkit.cli import main
from onnxkit.cli.options import check_output_path, tolerance_options, tolerance_overrides
from onnxkit.errors import SpecError


@main.command(name="export")
@click.argument("spec")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the .onnx model.")
@click.option(
    "--state-dict", type=click.Path(path_type=Path), help="Weights to load (torch.load with weights_only=True)."
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    help="An input as name=1x1x28x28[:dtype], once per input in forward()'s order.",
)
@click.option(
    "--sample", type=click.Path(path_type=Path), help="Example inputs instead: .npz keyed by input name, or .npy."
)
@click.option("--output-names", help="Comma-separated output names (default: output, or output_0, output_1, ...).")
@click.option("--dynamic-batch", is_flag=True, help="Make axis 0 of every input and output a dimension named batch.")
@click.option(
    "--dynamic-axis", "dynamic_axes", multiple=True, help="NAME=AXIS:DIM[,AXIS:DIM], e.g. input_ids=0:batch,1:seq."
)
@click.option(
    "--dynamo/--no-dynamo", default=None, help="Pick the exporter (default: dynamo, falling back to TorchScript)."
)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset version.")
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Compare ONNX Runtime with torch after export (default tolerance: atol 1e-4, rtol 1e-3).",
)
@tolerance_options
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_command(
    spec: str,
    output: Path,
    state_dict: Path | None,
    input_shapes: tuple[str, ...],
    sample: Path | None,
    output_names: str | None,
    dynamic_batch: bool,
    dynamic_axes: tuple[str, ...],
    dynamo: bool | None,
    opset: int,
    verify: bool,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    as_json: bool,
) -> None:
    """Export a PyTorch model, built by SPEC (package.module:factory), to ONNX and verify it in ONNX Runtime.

    \b
    Examples:
      onnxkit export onnxkit.pytorch.zoo:SimpleCNN --input-shape image=1x1x8x8 --dynamic-batch -o cnn.onnx
      onnxkit export mypkg.models:build --state-dict w.pt --sample inputs.npz --no-dynamo -o m.onnx
    """
    from onnxkit.modelio import save_model
    from onnxkit.pytorch import export as exporting
    from onnxkit.pytorch import export_inputs

    if bool(input_shapes) == (sample is not None):
        raise SpecError(
            "give either --input-shape (once per input) or --sample FILE", hint="e.g. --input-shape image=1x1x28x28"
        )
    check_output_path(output, [], in_place=None)
    module = export_inputs.load_module(spec, state_dict)
    # exactly one of the two was given (checked above)
    inputs = (
        export_inputs.example_inputs_from_shapes(input_shapes)
        if input_shapes or sample is None
        else export_inputs.load_sample(sample)
    )
    model, report = exporting.export_model(
        module,
        inputs,
        output_names=[n.strip() for n in output_names.split(",")] if output_names else None,
        dynamic_axes=dict(export_inputs.parse_dynamic_axis(text) for text in dynamic_axes),
        dynamic_batch=dynamic_batch,
        dynamo=dynamo,
        opset=opset,
        verify=verify,
        tolerance=tolerance_overrides(
            atol=atol, rtol=rtol, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1
        ),
    )
    save_model(model, output)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for line in report.lines() + [f"warning: {w}" for w in report.warnings]:
        click.echo(line)
    click.echo(f"saved {output}")
