"""``onnxkit optimize``: a pipeline of passes run on a model, its result saved atomically."""

from __future__ import annotations

import gc
import json
import sys
import typing
from pathlib import Path
from typing import Any

import click

from onnxkit.cli import main
from onnxkit.cli.options import (
    VERBOSE,
    check_output_path,
    load_data_option,
    parse_dims,
    tolerance_options,
    tolerance_overrides,
    verbose_option,
)
from onnxkit.deploy import TARGET_NAMES
from onnxkit.deploy import cli as deploy_cli
from onnxkit.errors import SpecError


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--passes", "spec", help="Pipeline spec, e.g. 'cleanup,shape-inference{strict=true}'.")
@click.option("--config", type=click.Path(path_type=Path), help="TOML file with passes = [...] instead of --passes.")
@click.option(
    "--target",
    type=click.Choice(TARGET_NAMES),
    help="Deployment target: its default pipeline unless --passes is given, then an operator check of the result.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Output path (default: <stem>.opt.onnx beside the input)."
)
@click.option("--in-place", is_flag=True, help="Allow the output to replace the input model.")
@click.option("--example", help="Optimize a built-in example model instead of MODEL (see --example list).")
@click.option(
    "--check",
    type=click.Choice(["each", "end", "off"]),
    default="each",
    show_default=True,
    help="When to compare outputs: after each pass, once at the end, or never.",
)
@click.option(
    "--on-fail",
    type=click.Choice(["stop", "rollback", "warn"]),
    default="stop",
    show_default=True,
    help="When a pass fails parity or verification: stop, discard that pass and go on, or keep it and warn.",
)
@click.option(
    "--data", "data_path", help="Inputs for parity and calibration: .npz, a folder of .npz/.npy, or ONNX test data."
)
@click.option("--calib-data", "calib_path", help="Calibration inputs for quantization (default: --data).")
@click.option(
    "--calib-cache",
    "calib_cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that caches calibration ranges by model, data and settings (created if missing).",
)
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. batch=4,seq=128.")
@tolerance_options
@click.option(
    "--external-data/--no-external-data", default=None, help="Force or forbid external data (default: by size)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the report (.json or .md).")
@verbose_option
def optimize(
    model: Path | None,
    spec: str | None,
    config: Path | None,
    target: str | None,
    output: Path | None,
    in_place: bool,
    example: str | None,
    check: str,
    on_fail: str,
    data_path: str | None,
    calib_path: str | None,
    calib_cache: Path | None,
    dims: str | None,
    atol: float | None,
    rtol: float | None,
    min_cosine: float | None,
    min_sqnr: float | None,
    min_top1: float | None,
    external_data: bool | None,
    as_json: bool,
    report_path: Path | None,
) -> None:
    """Run a pipeline of passes on MODEL and save the result.

    Exit status: 0 when every pass did its job within tolerance (a pass narrowed to skip a rule or a site
    did); 1 when a pass failed, was rolled back (the saved model does without it) or was kept by --on-fail
    warn although it failed parity; 2 on a usage error.

    \b
    Examples:
      onnxkit optimize model.onnx --passes cleanup,shape-inference -o model.opt.onnx
      onnxkit optimize --example mlp --passes cleanup
    """
    from onnxkit import examples
    from onnxkit.modelio import save_model, write_text_atomic
    from onnxkit.pipeline import Pipeline

    if example == "list":
        for name, doc in examples.list_examples().items():
            click.echo(f"{name:12} {doc}")
        return
    if (model is None) == (example is None):
        raise SpecError("give either MODEL or --example NAME", hint="onnxkit optimize model.onnx --passes cleanup")
    spec = deploy_cli.target_spec(target, spec, config)
    if (spec is None) == (config is None):
        raise SpecError(
            "give either --passes SPEC, --config FILE or --target NAME", hint="e.g. --passes cleanup,shape-inference"
        )
    pipeline = Pipeline.parse(spec) if spec is not None else Pipeline.from_config(typing.cast(Path, config))

    if example is not None:
        source: Any = examples.build_example(example)
        output = output or Path(f"{example}.opt.onnx")
        inputs: list[Path] = []
    else:
        assert model is not None
        from onnxkit.modelio import load_source

        # Fails early, with the exact reason, before any output is planned; the file's bytes are the run's input.
        source = load_source(model)
        output = output or model.with_name(f"{model.stem}.opt.onnx")
        inputs = [model]
    # The input's external data is never a place to write: --in-place replaces the model file, not its data.
    data_files = list(source.data_files) if example is None else []
    check_output_path(output, inputs, in_place, data_files)
    if report_path is not None:  # checked now: a report that cannot be written fails the run before its work
        check_output_path(report_path, [*inputs, output], None, data_files)

    data = load_data_option(data_path)
    calibration = load_data_option(calib_path) if calib_path else data
    # What exists now (imports, the loaded model) lives for the whole run: moved out of the collector's sight,
    # the full collections inside the passes no longer walk it (simplify,fuse: about 7% less time summed over 8 corpus
    # models). Unfrozen after, so that a process that calls the command again (tests) collects it as usual.
    gc.freeze()
    try:
        result = pipeline.run(
            source,
            check=check,  # type: ignore[arg-type]  # click.Choice admits only the Literal's values
            on_fail=on_fail,  # type: ignore[arg-type]  # likewise
            data=data,
            calibration_data=calibration,
            dims=parse_dims(dims),
            tolerance=tolerance_overrides(
                atol=atol, rtol=rtol, min_cosine=min_cosine, min_sqnr=min_sqnr, min_top1=min_top1
            ),
            progress=sys.stderr.isatty() and not as_json,
            model_dir=model.parent if model is not None else None,
            calib_cache=calib_cache,
        )
    finally:
        gc.unfreeze()
    # The model as the run left it, unedited since: its bytes are at hand.
    save_model(result.model, output, external_data=external_data, serialized=result.serialized)
    result.report.output_path = str(output)
    if report_path is not None:
        write_text_atomic(
            report_path, result.report.to_markdown() if report_path.suffix == ".md" else result.report.to_json()
        )
    if as_json:
        payload = result.report.to_dict()
        target_supported = deploy_cli.report_target(target, result.model, as_json, payload)
        click.echo(json.dumps(payload, indent=2))
    else:
        from rich.console import Console

        console = Console()
        result.report.render(console)
        if click.get_current_context().meta.get(VERBOSE):
            for entry in result.report.passes:
                if entry.traceback:
                    click.echo(f"{entry.name}: {entry.traceback.rstrip()}", err=True)
        if result.report.parity_failed:
            console.print("[yellow]warning:[/] parity failed; kept because --on-fail warn was given")
        if result.report.rolled_back:
            console.print(
                f"[yellow]rolled back:[/] {', '.join(result.report.rolled_back)} (the saved model does without it)"
            )
        click.echo(f"saved {output}")  # plain echo: rich would wrap a long path
        target_supported = deploy_cli.report_target(target, result.model, as_json, {})
    if result.report.exit_code:
        raise SystemExit(result.report.exit_code)
    if not target_supported:
        raise SystemExit(1)
