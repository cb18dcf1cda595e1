"""``python -m benchmarks``: the whole suite, one command. ``--quick`` is the CI smoke subset.

The full run writes ``benchmarks/results.json``, ``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png``;
the quick run writes the same files under ``benchmarks/results/quick/`` (ignored by git), so a CI run
never overwrites the published figures.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).parent


def _step(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one suite step; a step that breaks becomes an error entry in the results, not a dead suite."""
    from onnxkit.bench import first_error_line

    try:
        return run()
    except Exception as e:
        return {"error": f"{name} failed: {first_error_line(e)}"}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Small models, few repeats, one thread: the CI smoke test.")
@click.option(
    "--scale",
    is_flag=True,
    help="Also run the >2 GB external-data model: the simplifiers and dynamic "
    "INT8 (each tool needs 3.5-5.5x the 2.3 GB of weights free in RAM, else it is skipped; ~8 GB disk).",
)
@click.option(
    "--model", "only", multiple=True, help="Only these models (repeatable; 'none' for none); see benchmarks/models.py."
)
@click.option("--skip-extras", is_flag=True, help="Skip calibration memory and training-loop overhead.")
@click.option(
    "--quant-only",
    is_flag=True,
    help="Only the quantizing pipelines and ORT's quantizers, their rows replacing the old ones in each model's "
    "entry while the float rows stay (implies --update and --skip-extras; e.g. --quant-only --model resnet18).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Where to write results (default: see above).")
@click.option("--report-only", is_flag=True, help="Measure nothing: regenerate RESULTS.md and plots from results.json.")
@click.option(
    "--update",
    is_flag=True,
    help="Keep the other entries of the existing results.json and replace only "
    "the steps run now (e.g. --update --model lstm --skip-extras).",
)
@click.option(
    "--real",
    is_flag=True,
    help="Sweep the real-world corpus instead (benchmarks/real/): public "
    "pretrained models and our own exports, fetched into the cache first; writes RESULTS.md's "
    "real-world section. With --quick: a small subset, results under benchmarks/results/real-quick/.",
)
@click.option(
    "--corpus",
    type=click.Choice(["public", "holdout"]),
    default="public",
    show_default=True,
    help="With --real: the tuned corpus, or the holdout of models onnxkit was never tuned on "
    "(benchmarks/real/holdout.tsv and the public models above 30 MB; results under "
    "benchmarks/results/real-holdout/, never into RESULTS.md).",
)
@click.option(
    "--only",
    "real_only",
    default="",
    help="With --real: only these corpus models (comma-separated); "
    "with --update, rerun them into the published results.",
)
def main(
    quick: bool,
    scale: bool,
    only: tuple[str, ...],
    skip_extras: bool,
    quant_only: bool,
    out: Path | None,
    report_only: bool,
    update: bool,
    real: bool,
    corpus: str,
    real_only: str,
) -> None:
    """Benchmark onnxkit against onnxsim, onnxslim, onnxoptimizer and ONNX Runtime on the suite's models."""
    if real:
        from benchmarks.real.sweep import sweep

        os.environ.setdefault("OMP_NUM_THREADS", "1")
        sweep(only=[n for n in real_only.split(",") if n] or None, quick=quick, out=out, update=update, corpus=corpus)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from benchmarks import measure
    from benchmarks.models import BUILDERS, EXPENSIVE_MODELS, QUICK_MODELS
    from benchmarks.peers import peer_versions
    from onnxkit.bench import machine_description

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch export and training: stay off the other core
    names = [] if only == ("none",) else list(only) or list(QUICK_MODELS if quick else BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise click.BadParameter(f"unknown model(s) {unknown}; choose from {list(BUILDERS)}", param_hint="--model")
    out = out or (HERE / "results" / "quick" if quick else HERE)
    if report_only:  # e.g. after a cause is added to report.GAP_CAUSES
        _publish(json.loads((out / "results.json").read_text()), out)
        click.echo(f"wrote {out / 'RESULTS.md'} and plots from {out / 'results.json'}")
        return
    out.mkdir(parents=True, exist_ok=True)
    skip_extras, update = skip_extras or quant_only, update or quant_only  # never a page of quantizing rows alone
    settings = measure.SuiteSettings.for_run(quick)
    started = time.perf_counter()
    not_reached = "not measured: the run stopped before this step"
    run_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results: dict[str, Any] = {
        "date": run_date,
        "settings": {
            "quick": quick,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "min_seconds": settings.min_seconds,
            "timeout_s": settings.timeout,
        },
        "machine": machine_description(),
        "peer_versions": peer_versions(),
        "pipelines": list(measure.QUANTIZE_PIPELINES if quant_only else measure.PIPELINES),
        "models": [{"name": name, "error": not_reached} for name in names],
        "complete": False,
    }
    if not skip_extras:
        results["calibration"] = results["training"] = {"error": not_reached}
    if scale:
        results["scale"] = {"error": not_reached}
    previous_entries: dict[str, dict[str, Any]] = {}
    if update and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        previous_entries = {entry["name"]: entry for entry in previous["models"]}
        if quant_only:  # the float rows, and the page's machine and pipelines, stay those of the earlier run
            results = {k: v for k, v in results.items() if k not in ("machine", "pipelines", "settings")}
        rerun = {entry["name"]: entry for entry in results["models"]}
        if quant_only:  # a run cut short leaves the earlier entries whole
            rerun = {name: entry for name, entry in rerun.items() if name not in previous_entries}
        models = [rerun.pop(entry["name"], entry) for entry in previous["models"]] + list(rerun.values())
        results = {
            **previous,
            **{k: v for k, v in results.items() if k != "models"},
            "models": models,
            "date": previous["date"] + ", updated " + results["date"],
            "seconds": previous.get("seconds", 0.0),
        }
    previous_seconds = results.get("seconds", 0.0)

    with tempfile.TemporaryDirectory(prefix="onnxkit-suite-") as scratch:
        work = Path(scratch)

        def bench(name: str, say: Callable[[str], None]) -> None:
            index = next(i for i, entry in enumerate(results["models"]) if entry["name"] == name)
            entry = measure.bench_model(name, work / name, settings, progress=say, quant_only=quant_only)
            if quant_only and name in previous_entries:
                entry = measure.merge_quant_rows(previous_entries[name], entry, run_date)
            results["models"][index] = entry

        def extra(key: str, title: str, run: Callable[[], dict[str, Any]]) -> None:
            results[key] = _step(title, run)

        # The costliest models run last, after everything else is on disk: a run cut short still publishes.
        steps: list[tuple[str, Callable[[Callable[[str], None]], None]]] = [
            (name, functools.partial(bench, name)) for name in names if name not in EXPENSIVE_MODELS
        ]
        if not skip_extras:
            steps += [
                (
                    "calibration memory",
                    lambda say: extra(
                        "calibration",
                        "calibration memory",
                        lambda: measure.calibration_memory(work / "calibration", settings, say),
                    ),
                ),
                (
                    "training-loop overhead",
                    lambda say: extra(
                        "training", "training-loop overhead", lambda: measure.training_overhead(settings)
                    ),
                ),
            ]
        if scale:
            steps.append(
                ("scale", lambda say: extra("scale", "scale", lambda: measure.scale_test(work / "scale", progress=say)))
            )
        steps += [(name, functools.partial(bench, name)) for name in names if name in EXPENSIVE_MODELS]

        with Progress(
            TextColumn("{task.description:<48}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task("benchmarks", total=len(steps))

            def say(line: str) -> None:
                progress.update(task, description=line[:48])

            for title, run in steps:
                say(title)
                run(say)
                progress.advance(task)
                results["seconds"] = previous_seconds + time.perf_counter() - started
                _publish(results, out)
    results["complete"] = True
    _publish(results, out)
    minutes = (time.perf_counter() - started) / 60
    click.echo(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'} and plots; this run took {minutes:.1f} min")


def _publish(results: dict[str, Any], out: Path) -> None:
    """Write JSON, plots and RESULTS.md for what has been measured so far."""
    from benchmarks import report

    report.write_json(results, out / "results.json")
    plots = report.write_plots(results, out / "plots")
    report.write_markdown(results, out / "RESULTS.md", [str(p.relative_to(out)) for p in plots])


main()
