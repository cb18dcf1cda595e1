"""``python -m benchmarks.quantize_speed``: INT8 accuracy and speed, onnxkit's quantize pass against plain ORT.

Models: MiniLM-L6 on the zoo's 64 real sentences (one per sample), a CNN trained on scikit-learn's digits
(8x8 images: too small for INT8 to pay off), and a wider untrained CNN at 32x32 where it does.
For each: FP32, ORT's ``quantize_dynamic``/``quantize_static`` called plainly (QDQ, per-channel,
reduce_range as this CPU needs), and onnxkit's ``quantize`` pass in both modes with its defaults (parity
target, latency gate). Latency is the median of interleaved rounds against FP32 in the same process, one
thread; figures are ratios, since the machine is shared. ``--out results.json`` keeps the numbers.

``--transform resnet18,minilm-torchscript,...`` measures only static INT8 transform time on the suite's models
against ORT's ``quantize_static`` (issue 13's target: at most 2x), with the float nodes and cosines onnxkit kept.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np
import onnx

Sample = dict[str, np.ndarray]


def _session(model: onnx.ModelProto):
    from onnxkit.passes.quantize.runtime import make_session

    return make_session(model)


def _ort_plain(model_path: Path, mode: str, samples: list[Sample]) -> onnx.ModelProto:
    """What a user gets from ORT's quantizers called directly, with the CPU-appropriate reduce_range."""
    from onnxruntime.quantization import QuantFormat

    from onnxkit import external_tools
    from onnxkit.passes.quantize.cpu import detect_cpu

    reduce_range = detect_cpu().needs_reduce_range
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "int8.onnx"
        if mode == "dynamic":
            external_tools.run_ort_quantize(model_path, output, "dynamic", per_channel=True, reduce_range=reduce_range)
        else:
            external_tools.run_ort_quantize(
                model_path,
                output,
                "static",
                samples=samples,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
            )
        return onnx.load(str(output))


def _onnxkit(
    model_path: Path, spec: str, samples: list[Sample], check: Literal["each", "end", "off"] = "off"
) -> tuple[onnx.ModelProto, dict[str, Any], float]:
    from onnxkit.modelio import to_proto
    from onnxkit.pipeline import Pipeline

    started = time.perf_counter()
    result = Pipeline.parse(spec).run(str(model_path), data=samples, check=check)
    return to_proto(result.model), result.report.passes[0].details, time.perf_counter() - started


def _row(
    name: str,
    float_model: onnx.ModelProto,
    candidate: onnx.ModelProto,
    samples: list[Sample],
    score: Callable[[Any], dict[str, float]],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from onnxkit.passes.quantize.latency import compare

    timing = compare(float_model, candidate, samples[:4])
    return {
        "variant": name,
        **score(_session(candidate)),
        "latency_ratio": round(timing.ratio, 3),
        "size_ratio": round(candidate.ByteSize() / float_model.ByteSize(), 3),
        **(extra or {}),
    }


def bench_minilm(folder: Path) -> list[dict[str, Any]]:
    from benchmarks.minilm import export_minilm

    minilm = export_minilm(folder)
    path, float_model, samples = minilm.path, minilm.float_model, minilm.samples

    def score(session: Any) -> dict[str, float]:
        cosines = minilm.cosines(session)
        return {"cosine_mean": round(float(np.mean(cosines)), 4), "cosine_min": round(float(np.min(cosines)), 4)}

    rows = [_row("fp32", float_model, float_model, samples, score)]
    for mode in ("dynamic", "static"):
        rows.append(_row(f"ort {mode} (plain)", float_model, _ort_plain(path, mode, samples), samples, score))
        quantized, details, seconds = _onnxkit(path, f"quantize{{mode={mode},samples=64}}", samples)
        rows.append(
            _row(
                f"onnxkit {mode}",
                float_model,
                quantized,
                samples,
                score,
                {
                    "kept_float": len(details.get("kept_float", {})),
                    "pass_seconds": round(seconds, 1),
                    "gate_ratio": (details.get("latency") or {}).get("ratio"),
                },
            )
        )
    return rows


def bench_digits_cnn(folder: Path) -> list[dict[str, Any]]:
    from onnxkit.pytorch import zoo

    path = folder / "digits_cnn.onnx"
    splits = zoo.export_trained_digits_cnn(path)
    samples = [{"image": splits.val.images[i : i + 8]} for i in range(0, len(splits.val), 8)]
    float_model = onnx.load(str(path))

    def score(session: Any) -> dict[str, float]:
        top1 = np.mean(session.run(None, {"image": splits.test.images})[0].argmax(-1) == splits.test.labels)
        return {"top1": round(float(top1), 4)}

    rows = [_row("fp32", float_model, float_model, samples, score)]
    for mode in ("dynamic", "static"):
        rows.append(_row(f"ort {mode} (plain)", float_model, _ort_plain(path, mode, samples), samples, score))
    for spec in ("quantize{mode=static}", "quantize{mode=static,max_slowdown=none}"):
        quantized, details, seconds = _onnxkit(path, spec, samples)
        rows.append(
            _row(
                f"onnxkit {spec}",
                float_model,
                quantized,
                samples,
                score,
                {
                    "gate_ratio": (details.get("latency") or {}).get("ratio"),
                    "pass_seconds": round(seconds, 1),
                    "kept_whole_model_float": bool((details.get("latency_gate") or {}).get("kept_whole_model_float")),
                },
            )
        )
    return rows


def bench_wide_cnn(folder: Path) -> list[dict[str, Any]]:
    """Three 3x3 convolutions of 64-128 channels at 32x32 (untrained): big enough for INT8 kernels to pay off."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    ).eval()
    path = folder / "wide_cnn.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
    )
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(20)]
    float_model = onnx.load(str(path))
    reference = _session(float_model)
    expected = [reference.run(None, s)[0] for s in samples]

    def score(session: Any) -> dict[str, float]:
        got = [session.run(None, s)[0] for s in samples]
        agree = np.mean([e.argmax() == g.argmax() for e, g in zip(expected, got)])
        return {"top1_agreement": round(float(agree), 4)}

    rows = [_row("fp32", float_model, float_model, samples, score)]
    for mode in ("dynamic", "static"):
        rows.append(_row(f"ort {mode} (plain)", float_model, _ort_plain(path, mode, samples), samples, score))
    quantized, details, seconds = _onnxkit(path, "quantize{mode=static}", samples)
    rows.append(
        _row(
            "onnxkit quantize{mode=static}",
            float_model,
            quantized,
            samples,
            score,
            {"gate_ratio": (details.get("latency") or {}).get("ratio"), "pass_seconds": round(seconds, 1)},
        )
    )
    return rows


# The suite's calibration: the same samples for ORT's quantize_static and onnxkit (onnxkit.bench.plan).
TRANSFORM_SAMPLES = 64


def bench_transform(name: str, folder: Path, repeats: int) -> dict[str, Any]:
    """Static INT8 transform time on a suite model (``benchmarks.models``): ORT's ``quantize_static`` as the
    suite's peer runs it (defaults) and onnxkit's ``quantize{mode=static}`` pass (its defaults, the parity
    check of the pipeline off, so only the pass is timed), on the same samples of batch one, one after the other
    in this process ``repeats`` times; medians, and their ratio."""
    from benchmarks.models import BUILDERS
    from onnxkit import external_tools

    model = BUILDERS[name](folder, False)
    with np.load(model.data, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files if key not in ("labels", "label")}
    count = len(next(iter(arrays.values())))
    samples = [{k: v[i % count : i % count + 1] for k, v in arrays.items()} for i in range(TRANSFORM_SAMPLES)]
    ort_seconds, onnxkit_seconds, ort_cpu, onnxkit_cpu = [], [], [], []
    details: dict[str, Any] = {}
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        external_tools.run_ort_quantize(model.path, folder / f"{name}.ort-int8.onnx", "static", samples=samples)
        ort_seconds.append(time.perf_counter() - started)
        ort_cpu.append(time.process_time() - cpu)
        cpu = time.process_time()
        _, details, seconds = _onnxkit(model.path, "quantize{mode=static}", samples, check="off")
        onnxkit_seconds.append(seconds)
        onnxkit_cpu.append(time.process_time() - cpu)
    parity = details.get("parity") or {}
    ort_median, onnxkit_median = float(np.median(ort_seconds)), float(np.median(onnxkit_seconds))
    return {
        "model": name,
        "ort_s": round(ort_median, 2),
        "onnxkit_s": round(onnxkit_median, 2),
        "ratio": round(onnxkit_median / ort_median, 2),
        # CPU seconds of this process (every thread): steadier than wall time on a loaded machine, though ORT's
        # calibrator's threads spin-wait between runs (counted) where onnxkit's sessions do not.
        "cpu_ratio": round(float(np.median(onnxkit_cpu)) / float(np.median(ort_cpu)), 2),
        "float_nodes": len(details.get("kept_float") or {}),
        "quantized_nodes": sum((details.get("quantized_nodes") or {}).values()),
        # The pass's own target check (held-out samples), then the pipeline's (ORT optimizations off).
        "cosine": " / ".join(f"{v['min_cosine']:.4f}" for v in parity.values() if v.get("min_cosine") is not None),
        "kept_whole_model_float": (details.get("latency_gate") or {}).get("kept_whole_model_float"),
        # The latency gate of the last run: its seconds, its ratio, and whether it timed or the op speed table decided.
        "gate": _gate_summary(details),
        "runs": {
            "ort_s": [round(t, 2) for t in ort_seconds],
            "onnxkit_s": [round(t, 2) for t in onnxkit_seconds],
            "ort_cpu_s": [round(t, 2) for t in ort_cpu],
            "onnxkit_cpu_s": [round(t, 2) for t in onnxkit_cpu],
        },
    }


def _gate_summary(details: dict[str, Any]) -> str:
    gate, timing = details.get("latency_gate") or {}, details.get("latency") or {}
    if not timing:
        return "off"
    how = "timed" if timing.get("timed", True) else "predicted"
    predicted = timing.get("predicted_ratio")
    return f"{gate.get('seconds', '?')} s, {how} {timing.get('ratio')}x" + (
        f" (predicted {predicted}x)" if predicted is not None and how == "timed" else ""
    )


def _print_rows(console: Any, title: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    columns = list(dict.fromkeys(key for row in rows for key in row if key != "runs"))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    console.print(table)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), help="Also write the rows as JSON here.")
@click.option(
    "--transform",
    "transform",
    default="",
    help="Comma-separated suite models (benchmarks/models.py): measure only static INT8 transform time against "
    "ORT's quantize_static, e.g. --transform resnet18,mobilenetv2,minilm-torchscript",
)
@click.option("--repeats", default=1, show_default=True, help="With --transform: runs of each tool (medians).")
def main(out: Path | None, transform: str, repeats: int) -> None:
    """Measure and print INT8 accuracy, latency and size ratios for MiniLM and two CNNs."""
    from rich.console import Console

    from onnxkit.passes.quantize.cpu import detect_cpu

    if transform:
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for name in [n for n in transform.split(",") if n]:
                (Path(folder) / name).mkdir()
                rows.append(bench_transform(name, Path(folder) / name, repeats))
        _print_rows(Console(), f"static INT8 transform time on {detect_cpu().describe()}", rows)
        if out is not None:
            out.write_text(json.dumps({"cpu": detect_cpu().describe(), "transform": rows}, indent=2))
        return

    results: dict[str, Any] = {"cpu": detect_cpu().describe()}
    with tempfile.TemporaryDirectory() as folder:
        results["minilm"] = bench_minilm(Path(folder))
        results["digits_cnn"] = bench_digits_cnn(Path(folder))
        results["wide_cnn"] = bench_wide_cnn(Path(folder))
    console = Console()
    for name in ("minilm", "digits_cnn", "wide_cnn"):
        title = f"{name} on {results['cpu']} (latency ratio: INT8/FP32, median of interleaved rounds)"
        _print_rows(console, title, results[name])
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
