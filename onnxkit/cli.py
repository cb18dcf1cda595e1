"""The ``onnxkit`` command. Each command is a thin shell over the Python API.

User errors (``OnnxkitError``) print ``error: ...`` and a ``Note:`` hint on stderr, without a traceback,
and exit 2 (1 for a failed parity or pass). Any other exception is a bug in onnxkit and keeps its traceback.
``optimize`` exits 0 when every pass did its job within tolerance, 1 when a pass failed, was rolled back, or
was kept by ``--on-fail warn`` although it failed parity, and 2 on a user error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

import click

from onnxkit.deploy import TARGET_NAMES
from onnxkit.errors import ModelSaveError, OnnxkitError, SpecError


class OnnxkitGroup(click.Group):
    """A click group that turns ``OnnxkitError`` into one clean line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxkitError as e:
            if ctx.meta.get(_VERBOSE) and e.__cause__ is not None:
                click.echo("".join(traceback.format_exception(e.__cause__)).rstrip(), err=True)
            click.echo(f"error: {e.message}", err=True)
            if e.hint:
                click.echo(f"Note: {e.hint}", err=True)
            if os.environ.get("ONNXKIT_DEBUG"):
                raise
            ctx.exit(e.exit_code)


@click.group(cls=OnnxkitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="onnxkit")
def main() -> None:
    """onnxkit: optimize, quantize and verify ONNX models.

    Every step is a pass; `onnxkit passes` lists them. A parity check compares each pass's output with its
    input in ONNX Runtime, so an optimized model that gives different answers is never reported as success.
    """


# ---------------------------------------------------------------------------------------------------------
# Shared option parsing


_VERBOSE = "onnxkit.verbose"


def verbose_option(func: Any) -> Any:
    """``--verbose``: ONNX Runtime's own log lines, and the traceback of a pass's internal error."""

    def enable(ctx: click.Context, _param: Any, verbose: bool) -> bool:
        if verbose:
            from onnxkit import runtime

            runtime.set_verbose(True)
            ctx.meta[_VERBOSE] = True
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
        if not equals or not value.strip().isdigit() or int(value) <= 0:
            raise SpecError(f"bad --dim entry {piece!r}", hint="write --dim name=SIZE,other=SIZE with positive sizes")
        dims[name.strip()] = int(value)
    return dims


def tolerance_overrides(**values: float | None) -> dict[str, float]:
    """The tolerance options the user actually gave."""
    return {key: value for key, value in values.items() if value is not None}


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


def check_output_path(output: Path, inputs: list[Path], in_place: bool) -> None:
    """Refuse to overwrite an input, and fail before any work when the output cannot be written."""
    from onnxkit.modelio import same_file

    if not in_place and any(same_file(output, i) for i in inputs):
        raise ModelSaveError(
            f"refusing to overwrite the input model {output}", hint="give -o OUT, or --in-place to replace it"
        )
    folder = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise ModelSaveError(f"cannot write {output}: it is a folder", hint="give a file name ending in .onnx")
    if not folder.is_dir():
        raise ModelSaveError(
            f"cannot write {output}: folder {folder} does not exist",
            hint="create the folder first, or give another -o path",
        )
    if not os.access(folder, os.W_OK):
        raise ModelSaveError(
            f"cannot write {output}: folder {folder} is not writable",
            hint="give -o a path in a folder you can write to",
        )


# ---------------------------------------------------------------------------------------------------------
# Commands


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
    from onnxkit.modelio import save_model
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
    check_output_path(output, inputs, in_place)

    data = load_data_option(data_path)
    calibration = load_data_option(calib_path) if calib_path else data
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
    # The model as the run left it, unedited since: its bytes are at hand.
    save_model(result.model, output, external_data=external_data, serialized=result.serialized)
    result.report.output_path = str(output)
    if report_path is not None:
        report_path.write_text(result.report.to_markdown() if report_path.suffix == ".md" else result.report.to_json())
    if as_json:
        payload = result.report.to_dict()
        target_supported = deploy_cli.report_target(target, result.model, as_json, payload)
        click.echo(json.dumps(payload, indent=2))
    else:
        from rich.console import Console

        console = Console()
        result.report.render(console)
        if click.get_current_context().meta.get(_VERBOSE):
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


@main.command(name="passes")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_passes_command(as_json: bool) -> None:
    """List every pass: name, kind, what it does, and its options with defaults."""
    from onnxkit.pass_base import option_type_name
    from onnxkit.registry import list_passes

    described = []
    for entry in list_passes():
        record: dict[str, Any] = {"name": entry.name, "source": entry.source}
        if entry.pass_class is None:
            record["error"] = entry.error
        else:
            cls = entry.pass_class
            hints = typing.get_type_hints(cls.Options)
            record.update(
                kind=cls.kind,
                doc=cls.doc(),
                options=[
                    {"name": f.name, "type": option_type_name(hints[f.name]), "default": _default_text(f)}
                    for f in dataclasses.fields(cls.Options)
                ],
            )
            notes = cls.describe_extra()
            if notes:
                record["notes"] = notes
        described.append(record)
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for record in described:
        if "error" in record:
            click.echo(f"{record['name']}  [failed to load, {record['source']}]\n    {record['error']}\n")
            continue
        source = "" if record["source"] == "builtin" else f"  [{record['source']}]"
        click.echo(f"{record['name']}  ({record['kind']}){source}\n    {record['doc']}")
        for option in record["options"]:
            click.echo(f"    {option['name']}: {option['type']} = {option['default']}")
        for line in record.get("notes", []):
            click.echo(f"    {line}")
        click.echo("")


def _default_text(field: Any) -> str:
    from onnxkit.pass_base import format_option_value

    if field.default is not dataclasses.MISSING:
        return format_option_value(field.default) or "(empty)"
    if field.default_factory is not dataclasses.MISSING:
        return format_option_value(field.default_factory())
    return "(required)"


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--passes",
    "specs",
    required=True,
    multiple=True,
    help="Pipeline spec for onnxkit; repeat to compare several pipelines in one run.",
)
@click.option(
    "--data",
    "data_path",
    type=click.Path(path_type=Path),
    help=".npz with one array per model input (samples along axis 0) and optional 'labels' for accuracy.",
)
@click.option(
    "--peers",
    help="Comma-separated peers (default: every installed one of "
    "onnxsim, onnxslim, onnxoptimizer, ort-basic, ort-extended, ort-quantize); 'none' for none.",
)
@click.option("--batch", "batch_sizes", default="1,8", show_default=True, help="Batch sizes to time.")
@click.option("--threads", help="Thread counts to time (default: 1 and all cores).")
@click.option("--repeats", default=20, show_default=True, help="Timed runs per tool and setting (median reported).")
@click.option("--warmup", default=3, show_default=True, help="Untimed runs first.")
@click.option(
    "--min-seconds",
    default=1.0,
    show_default=True,
    help="Keep timing fast models past --repeats until this long (at most 10× --repeats).",
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds allowed to each tool.")
@click.option("--dim", "dims", help="Bind dynamic dimensions for synthetic inputs, e.g. sequence=128.")
@click.option(
    "--check",
    type=click.Choice(["each", "end", "off"]),
    default="each",
    show_default=True,
    help="onnxkit's own parity checks while it optimizes (their cost counts in its transform time).",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full results as JSON.")
def bench(
    model: Path,
    specs: tuple[str, ...],
    data_path: Path | None,
    peers: str | None,
    batch_sizes: str,
    threads: str | None,
    repeats: int,
    warmup: int,
    min_seconds: float,
    timeout: float,
    dims: str | None,
    check: str,
    json_path: Path | None,
) -> None:
    """Compare onnxkit's pipeline with other tools on MODEL: size, nodes, speed, memory, parity.

    Each tool runs in its own subprocess with a timeout; then all results are timed side by side
    in interleaved rounds. Quote the ratios, not lone times: a shared machine is noisy.

    \b
    Example:
      onnxkit bench model.onnx --passes simplify,fuse --peers onnxsim,ort-extended --json bench.json
    """
    from rich.console import Console

    from onnxkit.bench import run_bench

    def integers(text: str, option: str) -> list[int]:
        try:
            values = [int(piece) for piece in text.split(",") if piece.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise SpecError(f"bad {option} {text!r}", hint=f"write {option} 1,8 with positive integers")
        return values

    console = Console(stderr=True)
    peer_list = (
        None if peers is None else [] if peers.strip() == "none" else [p.strip() for p in peers.split(",") if p.strip()]
    )
    report = run_bench(
        model,
        list(specs),
        data=data_path,
        peers=peer_list,
        batch_sizes=integers(batch_sizes, "--batch"),
        threads=integers(threads, "--threads") if threads else None,
        repeats=repeats,
        warmup=warmup,
        min_seconds=min_seconds,
        timeout=timeout,
        dims=parse_dims(dims),
        check=check,
        progress=lambda line: console.print(f"[dim]{line}[/]"),
    )
    report.render(Console())
    if json_path is not None:
        json_path.write_text(report.to_json())
        click.echo(f"wrote {json_path}")


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
    check_output_path(output, [], in_place=False)
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


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("onnxkit-demo"),
    show_default=True,
    help="Folder for the models and the report.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the data split, initialisation and shuffling."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def demo(out_dir: Path, seed: int, as_json: bool) -> None:
    """Train a CNN on built-in digits, export it, optimize and quantize it, and compare FP32 with INT8.

    Takes about a minute on two CPU cores; writes the models, report.json and report.md into --out.
    """
    from onnxkit.pytorch.demo import run_demo

    report = run_demo(out_dir, seed=seed, say=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    from rich.console import Console

    report.render(Console())
    click.echo(f"wrote {out_dir}/report.md, report.json, model.fp32.onnx and model.int8.onnx")


# Commands registered on main by their own modules: check, reduce and inspect (which look at models without
# changing them), debug quant, and the deployment commands (deploy-check, to-ort) with optimize's --target.
from onnxkit import debug_cli, diagnose_cli  # noqa: E402, F401  (register their commands on main)
from onnxkit.deploy import cli as deploy_cli  # noqa: E402  (registers its commands on main)

if __name__ == "__main__":  # pragma: no cover
    main()
