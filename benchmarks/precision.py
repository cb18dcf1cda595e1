"""``python -m benchmarks.precision``: the ``fp16`` and ``bf16`` passes on the suite's CNNs and MiniLM; writes the
JSON and RESULTS.md's "fp16 and bf16" section.

Models and the inputs they are judged on (never the samples the pass itself searched on):

- ``resnet18`` and ``mobilenetv2`` (``benchmarks.models``, random seeded weights, full-size images): the suite's
  own random images, the first ``CALIBRATION`` given to the pass, the rest held out; one image per sample;
- ``digits-cnn`` (trained on scikit-learn's digits by onnxkit's Trainer): the validation split given to the pass,
  the labelled test split held out (top-1 accuracy too);
- ``minilm`` (``benchmarks.minilm``: real weights, 64 real sentences): the first ``CALIBRATION`` sentences given to
  the pass, the other sentences held out; cosine of the sentence embeddings.

Each pass runs as ``Pipeline.parse(spec).run(model, data=calibration)`` with its defaults (the pipeline's own
parity check on). *cosine*: per held-out sample (one image's logits, one sentence's embedding) against FP32's, in
one-thread sessions with ORT's default optimizations (as users run the model). *latency*: converted/FP32 time on
one thread, interleaved in one process (``latency.time_models``), the median of ``--repeats`` comparisons.
``--out`` keeps the rows as JSON (default ``benchmarks/results-precision.json``); ``--only`` reruns one model into
it; ``--report-only`` measures nothing and rewrites the RESULTS.md section from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from benchmarks.real.render import RESULTS_MD, replace_section
from benchmarks.weight_only import TIMING_SAMPLES

Sample = dict[str, np.ndarray]
DEFAULT_OUT = Path(__file__).parent / "results-precision.json"
SECTION = "precision"  # RESULTS.md's block between <!-- precision:start --> and <!-- precision:end -->
MODELS = ("resnet18", "mobilenetv2", "digits-cnn", "minilm")
SPECS = (("fp16", 0.999), ("bf16", 0.99))  # each pass and the cosine the issue asks it to keep
CALIBRATION = 16  # samples handed to the pass (it searches on 8 of them); the rest are held out


@dataclasses.dataclass
class Case:
    """A float model, the samples the pass is given, and the held-out samples it is scored on."""

    description: str
    path: Path
    float_model: onnx.ModelProto
    calibration: list[Sample]
    held_out: list[Sample]
    labels: np.ndarray | None = None  # the held-out samples' classes, for top-1 (digits only)


def _one_per_sample(images: np.ndarray, name: str = "image") -> list[Sample]:
    return [{name: images[i : i + 1]} for i in range(len(images))]


def _cnn_case(name: str, folder: Path, quick: bool) -> Case:
    from benchmarks.models import BUILDERS

    model = BUILDERS[name](folder, quick)
    samples = _one_per_sample(np.load(model.data)["image"])
    return Case(model.description, model.path, onnx.load(str(model.path)), samples[:CALIBRATION], samples[CALIBRATION:])


def _digits_case(folder: Path, quick: bool) -> Case:
    from benchmarks.models import BUILDERS, SEED
    from onnxkit.pytorch import zoo

    model = BUILDERS["digits-cnn"](folder, quick)
    splits = zoo.load_digits_splits(seed=SEED)  # the split the builder trained on: same seed, same split
    return Case(
        model.description,
        model.path,
        onnx.load(str(model.path)),
        _one_per_sample(splits.val.images),
        _one_per_sample(splits.test.images),
        splits.test.labels,
    )


def _minilm_case(folder: Path, quick: bool) -> Case:
    from benchmarks.minilm import export_minilm

    minilm = export_minilm(folder)
    return Case(
        f"all-MiniLM-L6-v2, real weights, TorchScript export at opset 17, {len(minilm.samples)} real sentences",
        minilm.path,
        minilm.float_model,
        minilm.samples[:CALIBRATION],
        minilm.samples[CALIBRATION:],
    )


# Each builds its model into a folder; ``quick`` (the tests): the CNNs at 32x32, the digits CNN trained 3 epochs.
CASES: dict[str, Callable[[Path, bool], Case]] = {
    "resnet18": lambda folder, quick: _cnn_case("resnet18", folder, quick),
    "mobilenetv2": lambda folder, quick: _cnn_case("mobilenetv2", folder, quick),
    "digits-cnn": _digits_case,
    "minilm": _minilm_case,
}


def _outputs(session: Any, samples: list[Sample]) -> list[np.ndarray]:
    return [np.asarray(session.run(None, sample)[0], dtype=np.float64) for sample in samples]


def _scores(case: Case, expected: list[np.ndarray], got: list[np.ndarray]) -> dict[str, Any]:
    """Per held-out sample: cosine against FP32 and the largest absolute difference; top-1 where labelled."""
    cosines = [
        float(np.dot(e.ravel(), g.ravel()) / (np.linalg.norm(e) * np.linalg.norm(g))) for e, g in zip(expected, got)
    ]
    scores: dict[str, Any] = {
        "cosine_min": round(min(cosines), 6),
        "cosine_mean": round(float(np.mean(cosines)), 6),
        "max_abs_error": float(f"{max(float(np.abs(e - g).max()) for e, g in zip(expected, got)):.3g}"),
        "finite": bool(all(np.isfinite(g).all() for g in got)),
    }
    if case.labels is not None:
        scores["top1"] = round(float(np.mean([g.argmax() == label for g, label in zip(got, case.labels)])), 4)
    return scores


def _float16_ops_in_ort(model: onnx.ModelProto, folder: Path) -> dict[str, int]:
    """The op types (and how many nodes of each) that still read a float16 tensor in the graph ONNX Runtime's
    CPU session runs (its optimized graph, saved): the others it runs in float32, having cast their float16
    weights back at load and put Casts in front of nodes that have no float16 kernel."""
    from collections import Counter

    from onnxkit import runtime
    from onnxkit.passes.quantize.runtime import SESSION_THREADS

    saved = folder / "ort-optimized.onnx"
    options = runtime.session_options(optimize=True, threads=SESSION_THREADS)
    options.optimized_model_filepath = str(saved)
    runtime.make_session(model, options=options)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(saved))).graph
    values = (*graph.input, *graph.value_info, *graph.output)
    float16 = {v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    float16 |= {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    ops = Counter(n.op_type for n in graph.node if n.op_type != "Cast" and any(i in float16 for i in n.input))
    return dict(ops.most_common())


def _latency(float_model: onnx.ModelProto, candidate: onnx.ModelProto, samples: list[Sample], repeats: int) -> float:
    from onnxkit.passes.quantize.latency import time_models

    ratios = []
    for _ in range(repeats):
        fp32_ms, candidate_ms = time_models([float_model, candidate], samples[:TIMING_SAMPLES])
        ratios.append(candidate_ms / fp32_ms)
    return round(statistics.median(ratios), 3)


def convert_and_score(
    case: Case, spec: str, floor: float, expected: list[np.ndarray]
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Run the pass as users do and score its model on the held-out samples: what it kept and why, what it
    judged, size, and cosine as ONNX Runtime's CPU runs it and (fp16) with float16 arithmetic."""
    from onnxkit.modelio import to_proto
    from onnxkit.passes.precision.convert import with_fp16_intermediates
    from onnxkit.passes.quantize.runtime import make_session
    from onnxkit.pipeline import Pipeline

    started = time.perf_counter()
    result = Pipeline.parse(spec).run(str(case.path), data=case.calibration)
    seconds = time.perf_counter() - started
    (entry,) = result.report.passes
    details, candidate = entry.details, to_proto(result.model)
    scores = _scores(case, expected, _outputs(make_session(candidate), case.held_out))
    if spec == "fp16" and entry.modified:  # as a runtime with float16 arithmetic computes it (the pass's verdict)
        emulated = with_fp16_intermediates(case.float_model, candidate)
        arithmetic = _scores(case, expected, _outputs(make_session(emulated), case.held_out))
        scores |= {f"fp16_arithmetic_{key}": value for key, value in arithmetic.items()}
    return candidate, {
        "spec": spec,
        "target_cosine": floor,
        "status": entry.status,
        "modified": entry.modified,
        "unchanged": details.get("unchanged"),
        "candidates": details.get("candidates"),
        "converted": details.get("converted"),
        "kept_float": details.get("kept_float"),
        "kept_by": details.get("kept_by", {}),
        "kept": details.get("kept", {}),
        "pass_cosine_min": details.get("worst_cosine"),
        "pass_max_abs_error": details.get("worst_max_abs_error"),
        "pass_summary": entry.stats,
        "size_ratio": round(candidate.ByteSize() / case.float_model.ByteSize(), 3),
        **scores,
        "meets_target": min(scores["cosine_min"], scores.get("fp16_arithmetic_cosine_min", 1.0)) >= floor,
        "pass_s": round(entry.seconds, 2),
        "pipeline_s": round(seconds, 1),
    }


def _row(case: Case, spec: str, floor: float, expected: list[np.ndarray], folder: Path, repeats: int) -> dict[str, Any]:
    candidate, row = convert_and_score(case, spec, floor, expected)
    return {
        **row,
        "float16_ops_in_ort": _float16_ops_in_ort(candidate, folder),
        "latency_ratio": _latency(case.float_model, candidate, case.held_out, repeats),
    }


def reference_outputs(case: Case) -> list[np.ndarray]:
    """FP32's output on each held-out sample."""
    from onnxkit.passes.quantize.runtime import make_session

    return _outputs(make_session(case.float_model), case.held_out)


def bench(name: str, folder: Path, repeats: int) -> dict[str, Any]:
    case = CASES[name](folder, False)
    expected = reference_outputs(case)
    fp32: dict[str, Any] = {"fp32_nodes": len(case.float_model.graph.node)}
    if case.labels is not None:
        fp32["fp32_top1"] = round(float(np.mean([e.argmax() == label for e, label in zip(expected, case.labels)])), 4)
    return {
        "description": case.description,
        "calibration_samples": len(case.calibration),
        "held_out_samples": len(case.held_out),
        **fp32,
        "rows": [_row(case, spec, floor, expected, folder, repeats) for spec, floor in SPECS],
    }


# ---------------------------------------------------------------------------------------------------------
# RESULTS.md


def section_lines(results: dict[str, Any]) -> list[str]:
    """RESULTS.md's "fp16 and bf16" section from the JSON."""
    from benchmarks.report import markdown_table

    lines = [
        "## fp16 and bf16",
        "",
        (
            f"Generated by `python -m benchmarks.precision` on {results['date']}, on {results['machine']}: "
            f"{results['cpu']}. Each pass with its defaults (`fp16`: target cosine 0.999; `bf16`: 0.99; inputs "
            "and outputs kept float32), run as `Pipeline.parse(spec).run(model, data=calibration)`. *kept*: nodes "
            "left in float32, by the op-type block list (reductions, normalizations, Pow, Exp, and the converter's "
            "ops without float16 kernels), by the fp16 range rules (values near fp16's limits), or by the search "
            "for the target (for bf16, *converted* counts the nodes whose weights it may store in bfloat16; every "
            "node computes in float32). *cosine (ORT CPU)*: per held-out sample against FP32's output, worst and mean, in "
            "one-thread ONNX Runtime CPU sessions with its default optimizations, as users run the model there; "
            "*with fp16 arithmetic*: the same for the model as a runtime with float16 arithmetic computes it "
            "(`convert.with_fp16_intermediates`: its fp16 weights, and every value its fp16 nodes read or make "
            "rounded to float16, each node computing in float32 as ORT's CUDA kernels accumulate); *pass said*: "
            "the worst cosine the pass judged on its own search samples (from the calibration samples, not the "
            "held-out ones; for fp16, with fp16 arithmetic). *meets target*: both cosines. *size*: the "
            "serialized model over FP32's. *latency*: converted/FP32 time on one thread, interleaved in one "
            f"process, median of {results['repeats']} comparisons; bf16's model is FP32's again once ONNX Runtime "
            "has folded its Casts at load, so its ratio is the run's noise floor."
        ),
        "",
        (
            "What the CPU figures mean: ONNX Runtime's CPU provider has float16 kernels for few compute ops on "
            "x86; it casts float16 weights back to float32 at load and runs the others in float32 behind Casts it "
            "inserts (*fp16 nodes in ORT*: nodes of its optimized graph that still read a float16 tensor, listed "
            "below the table), so an fp16 model here is smaller but not faster, and its error is mostly the "
            "weights' rounding. On a GPU, or OpenVINO with `f16` inference precision on a CPU that has float16 "
            "arithmetic, the arithmetic itself is float16: the *with fp16 arithmetic* column stands for that "
            "(no GPU here). bf16 stores weights in bfloat16 and computes in float32 (ORT's CPU has no bfloat16 "
            "compute kernels); ORT folds the Casts back to float32 at load, so the file is half the size and the "
            "session's memory and speed are FP32's."
        ),
        "",
    ]
    headers = [
        "model",
        "pass",
        "converted / kept (block list, range, search)",
        "size",
        "cosine worst / mean (ORT CPU)",
        "with fp16 arithmetic",
        "pass said",
        "max abs error (ORT CPU / fp16 arithmetic)",
        "latency × FP32",
        "fp16 nodes in ORT",
        "pass s",
        "meets target",
    ]
    cells = []
    notes = []
    for name in MODELS:
        model = results.get(name)
        if not model:
            continue
        for row in model["rows"]:
            by = row["kept_by"] or dict.fromkeys(("op_type", "range", "search"), 0)
            top1 = f" (top-1 {row['top1']:.4f} vs FP32 {model['fp32_top1']:.4f})" if "top1" in row else ""
            if not row["modified"]:
                notes.append(f"- {name}, {row['spec']}: left in float32: {row['unchanged']}")
            cells.append(
                [
                    name,
                    row["spec"],
                    f"{row['converted']} / {row['kept_float']} ({by['op_type']}, {by['range']}, {by['search']})",
                    f"{row['size_ratio']:.2f}×",
                    f"{row['cosine_min']:.6f} / {row['cosine_mean']:.6f}{top1}",
                    _arithmetic(row),
                    f"{row['pass_cosine_min']:.6f}" if row["pass_cosine_min"] is not None else "—",
                    " / ".join(
                        f"{row[key]:.3g}" for key in ("max_abs_error", "fp16_arithmetic_max_abs_error") if key in row
                    ),
                    f"{row['latency_ratio']:.2f}×",
                    str(sum(row["float16_ops_in_ort"].values())),
                    f"{row['pass_s']:.2f}",
                    f"{'yes' if row['meets_target'] else 'NO'} (≥ {row['target_cosine']})",
                ]
            )
    lines += markdown_table(headers, cells) + [""]
    lines += [
        f"- {name}: {results[name]['description']}; {_samples(results[name])}." for name in MODELS if name in results
    ]
    lines += [""] + [
        f"- {name}, the nodes ONNX Runtime's CPU ran in float16 (fp16): {_ops(row['float16_ops_in_ort'])}."
        for name in MODELS
        if name in results
        for row in results[name]["rows"]
        if row["spec"] == "fp16"
    ]
    return lines + notes


def _ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {op}" for op, count in counts.items()) or "none"


def _arithmetic(row: dict[str, Any]) -> str:
    if "fp16_arithmetic_cosine_min" not in row:
        return "—"
    top1 = f" (top-1 {row['fp16_arithmetic_top1']:.4f})" if "fp16_arithmetic_top1" in row else ""
    return f"{row['fp16_arithmetic_cosine_min']:.6f} / {row['fp16_arithmetic_cosine_mean']:.6f}{top1}"


def _samples(model: dict[str, Any]) -> str:
    return f"{model['calibration_samples']} samples given to the pass, {model['held_out_samples']} held out"


def publish(results: dict[str, Any], markdown: Path = RESULTS_MD) -> None:
    markdown.write_text(replace_section(markdown.read_text(), "\n".join(section_lines(results)), SECTION))


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="The JSON: read by --only and --report-only, written by every run.",
)
@click.option("--repeats", default=3, show_default=True, help="Latency comparisons per row (median reported).")
@click.option("--only", help="Comma-separated models to measure; the others' rows in --out are kept.")
@click.option("--report-only", is_flag=True, help="Measure nothing: rewrite RESULTS.md's section from --out.")
@click.option("--no-report", is_flag=True, help="Do not touch RESULTS.md.")
def main(out: Path, repeats: int, only: str | None, report_only: bool, no_report: bool) -> None:
    """Measure fp16 and bf16 on the suite's CNNs and MiniLM: nodes converted and kept, size, cosine on held-out
    inputs, latency against FP32; write the JSON and RESULTS.md's "fp16 and bf16" section."""
    from benchmarks.deploy import machine
    from onnxkit.passes.quantize.cpu import detect_cpu

    if report_only:
        publish(json.loads(out.read_text()))
        click.echo(f"wrote the precision section of {RESULTS_MD}")
        return
    names = only.split(",") if only else list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise click.BadParameter(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = json.loads(out.read_text()) if only and out.is_file() else {}
    results.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        cpu=detect_cpu().describe(),
        repeats=repeats,
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            results[name] = bench(name, Path(folder), repeats)
            out.write_text(json.dumps(results, indent=2) + "\n")  # a run cut short keeps what it measured
            for row in results[name]["rows"]:
                click.echo(f"{name} {row['spec']}: " + "; ".join(row["pass_summary"]))
                click.echo(
                    f"  held-out cosine {row['cosine_min']} / {row['cosine_mean']}, max abs {row['max_abs_error']}, "
                    f"size {row['size_ratio']}x, latency {row['latency_ratio']}x, pass {row['pass_s']} s"
                )
    if not no_report:
        publish(results)


if __name__ == "__main__":
    main()
