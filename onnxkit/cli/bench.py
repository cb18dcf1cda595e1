"""``onnxkit bench``: onnxkit's pipeline beside other tools on one model."""

from __future__ import annotations

from pathlib import Path

import click

from onnxkit.cli import main
from onnxkit.cli.options import check_output_path, parse_dims
from onnxkit.errors import ModelLoadError, SpecError


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
    from onnxkit.modelio import write_text_atomic

    def integers(text: str, option: str) -> list[int]:
        try:
            values = [int(piece) for piece in text.split(",") if piece.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise SpecError(f"bad {option} {text!r}", hint=f"write {option} 1,8 with positive integers")
        return values

    if json_path is not None:  # checked now, not after minutes of timing
        check_output_path(json_path, [model], in_place=None)
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
        write_text_atomic(json_path, report.to_json())
        click.echo(f"wrote {json_path}")
    original = report.tool("original")
    if not original.ok:  # nothing was measured against it: the table is all failures, which is no result
        raise ModelLoadError(f"the original model does not run: {original.error}", hint="bench runs it in ONNX Runtime")
