"""``onnxkit demo``: train, export, optimize and quantize a small CNN, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxkit.cli import main


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
