"""``onnxkit demo``: the whole workflow on built-in data, in about a minute on two CPU cores.

1. train ``UpsampledCNN`` on scikit-learn's digits with bf16 autocast and gradient accumulation;
2. export it to ONNX and verify ONNX Runtime against torch at two batch sizes;
3. run ``simplify,fuse,quantize{mode=static,calib=percentile}``, calibrated on training images, with the parity guard and the
   latency gate: INT8 is kept only if it is faster than FP32 on this CPU, and the demo says which in one line;
4. measure FP32 and INT8 test accuracy, latency, size and parity, in ONNX Runtime;
5. write the models, ``report.json`` and ``report.md`` into the output folder.

    report = run_demo("onnxkit-demo")
    print(report.int8.accuracy)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

# The latency gate is on. The network upsamples each 8x8 digit to 16x16 and runs 16-32 channel convolutions
# there (~1.8M multiply-adds per image): enough work for ONNX Runtime's INT8 Conv kernels to beat FP32 (0.6x
# at the gate's batch of 8 with AVX-512 VNNI), where SimpleCNN's ~20k at 8x8 cost about what INT8's
# quantize/dequantize steps do and came out 1.3x slower. The model stays small, so training takes seconds.
# Percentile calibration: entropy's clipping of the trained ReLU outputs cost so much accuracy that the parity
# target kept most of the network float (and the rest was no faster); percentile keeps every node INT8 within it.
DEMO_SPEC = "simplify,fuse,quantize{mode=static,calib=percentile}"
EPOCHS = 15
MICRO_BATCH = 32
ACCUMULATION_STEPS = 2
CALIBRATION_BATCH = 8
LATENCY_RUNS = 200


@dataclasses.dataclass
class ModelFigures:
    """One ONNX model on the test set, in ONNX Runtime with one thread."""

    path: str
    bytes: int
    accuracy: float
    latency_ms: float  # median over LATENCY_RUNS single-image runs
    test_set_ms: float  # median time to run the whole test set as one batch
    int8_ops: list[str]  # compute ops that run in INT8: QLinear*/*Integer, or fed by DequantizeLinear (QDQ)


@dataclasses.dataclass
class DemoReport:
    out_dir: str
    spec: str  # what ran
    missing_passes: list[str]
    training: dict[str, Any]
    export: dict[str, Any]
    pipeline: dict[str, Any]
    fp32: ModelFigures
    int8: ModelFigures
    parity: dict[str, Any]  # INT8 against FP32 on the test set
    seconds: dict[str, float]
    int8_verdict: str = ""  # one line: INT8 kept by the latency gate and how much faster, or why it was not

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str, str]]:
        """(figure, FP32, INT8) rows of the summary table."""
        fp32, int8 = self.fp32, self.int8
        return [
            (
                "test accuracy",
                f"{fp32.accuracy:.2%}",
                f"{int8.accuracy:.2%} ({(int8.accuracy - fp32.accuracy) * 100:+.2f} pt)",
            ),
            (
                "latency, 1 image",
                f"{fp32.latency_ms:.3f} ms",
                f"{int8.latency_ms:.3f} ms ({_speed(fp32.latency_ms, int8.latency_ms)})",
            ),
            (
                "test set, 1 batch",
                f"{fp32.test_set_ms:.2f} ms",
                f"{int8.test_set_ms:.2f} ms ({_speed(fp32.test_set_ms, int8.test_set_ms)})",
            ),
            (
                "size",
                f"{fp32.bytes / 1024:.1f} KiB",
                f"{int8.bytes / 1024:.1f} KiB ({fp32.bytes / int8.bytes:.2f}x smaller)",
            ),
            (
                "INT8 compute ops",
                ", ".join(fp32.int8_ops) or "none",
                ", ".join(int8.int8_ops) or "none: the model stayed float",
            ),
            (
                "parity",
                f"export vs torch: max abs {self.export['max_abs_error']:.1e}",
                f"vs FP32: cosine {self.parity['min_cosine']:.4f}, top-1 {self.parity['top1_agreement']:.1%}",
            ),
        ]

    def to_markdown(self) -> str:
        lines = [
            "# onnxkit demo",
            "",
            (
                f"UpsampledCNN on scikit-learn digits: trained {self.training['epochs']} epochs "
                f"({self.training['steps']} optimizer steps, {self.training['amp']} autocast, "
                f"{self.training['accumulation_steps']} micro-batches per step), exported with the "
                f"{self.export['exporter']} exporter, optimized with `{self.spec}`."
            ),
            "",
        ]
        if self.int8_verdict:
            lines += [f"**{self.int8_verdict}**", ""]
        if self.missing_passes:
            lines += [f"**Warning:** passes not available, left out: {', '.join(self.missing_passes)}.", ""]
        lines += ["| | FP32 | INT8 |", "|---|---|---|"]
        lines += [f"| {name} | {a} | {b} |" for name, a, b in self.rows()]
        lines += ["", "Pipeline:", ""] + [
            f"- `{p['spec']}`: {p['status'] if p['modified'] or p['status'] != 'ok' else 'unchanged'}"
            + "".join(f"; {stat}" for stat in p["stats"])
            for p in self.pipeline["passes"]
        ]
        lines += ["", "Export:", ""] + [f"- {line}" for line in self.export["lines"]]
        lines += ["", "Seconds: " + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in self.seconds.items()), ""]
        return "\n".join(lines)

    def render(self, console: Any) -> None:
        from rich.table import Table

        table = Table(title=f"onnxkit demo: UpsampledCNN on digits, {self.spec}", title_justify="left")
        for header in ("", "FP32", "INT8"):
            table.add_column(header)
        for row in self.rows():
            table.add_row(*row)
        console.print(table)
        if self.int8_verdict:
            console.print(self.int8_verdict)


def _speed(before_ms: float, after_ms: float) -> str:
    ratio = before_ms / after_ms
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def run_demo(out_dir: str | Path = "onnxkit-demo", *, seed: int = 0, say: Callable[[str], None] = print) -> DemoReport:
    """Run the workflow, write everything into ``out_dir``, and return the report. ``say`` receives one
    line per stage as it starts."""
    import torch

    from onnxkit.modelio import save_model
    from onnxkit.pytorch import zoo
    from onnxkit.pytorch.export import export_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    splits = zoo.load_digits_splits(seed)
    # The batches are tiny: one thread beats two that spend their time synchronising.
    with _torch_threads(1):
        with _timed(seconds, "train"):
            say(
                f"training UpsampledCNN on {len(splits.train)} digit images ({EPOCHS} epochs, bf16 autocast, "
                f"{ACCUMULATION_STEPS} micro-batches of {MICRO_BATCH} per step)"
            )
            model, training = _train(splits, out / "checkpoints", seed)
            torch.save(model.state_dict(), out / "model.pt")
        with _timed(seconds, "export"):
            say("exporting to ONNX and checking ONNX Runtime against torch")
            example = torch.from_numpy(splits.test.images[:1])
            exported, export_report = export_model(
                model, example, input_names=("image",), output_names=("logits",), dynamic_batch=True
            )
            fp32_path = save_model(exported, out / "model.fp32.onnx")

    spec, missing = _available_spec(DEMO_SPEC)
    if missing:
        say(f"WARNING: passes {', '.join(missing)} are not available; running '{spec}' instead of '{DEMO_SPEC}'")
    with _timed(seconds, "optimize"):
        say(f"running {spec} (calibrated on training images, parity checked after each pass)")
        from onnxkit.pipeline import Pipeline

        result = Pipeline.parse(spec).run(
            exported,
            data=_samples(splits.val.images, 16),
            calibration_data=_samples(splits.train.images, CALIBRATION_BATCH),
            on_fail="rollback",
        )
        int8_path = result.save(out / "model.int8.onnx")
    if result.report.rolled_back:
        say(f"WARNING: rolled back {', '.join(result.report.rolled_back)}: see report.md")
    int8_verdict = _int8_verdict(result.report.passes)
    say(int8_verdict)

    with _timed(seconds, "evaluate"):
        say("measuring accuracy, latency and parity on the test set")
        fp32, int8 = _measure(fp32_path, int8_path, splits.test.images, splits.test.labels)
        from onnxkit.parity import Tolerance, compare_models

        parity = compare_models(
            fp32_path, int8_path, _samples(splits.test.images, 30), tolerance=Tolerance.for_kind("lossy")
        )
    worst = parity.worst()
    report = DemoReport(
        out_dir=str(out),
        spec=spec,
        missing_passes=missing,
        training=training,
        export={
            **export_report.to_dict(),
            "lines": export_report.lines(),
            "max_abs_error": export_report.max_abs_error,
        },
        pipeline=result.report.to_dict(),
        fp32=fp32,
        int8=int8,
        parity={
            "passed": parity.passed,
            "summary": parity.summary(),
            "min_cosine": parity.min_cosine,
            "top1_agreement": worst.top1_agreement if worst and worst.top1_agreement is not None else math.nan,
        },
        seconds=seconds,
        int8_verdict=int8_verdict,
    )
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    (out / "report.md").write_text(report.to_markdown())
    return report


def _train(splits: Any, checkpoint_dir: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from onnxkit.pytorch import zoo
    from onnxkit.pytorch.train import TrainConfig, Trainer, seed_everything

    seed_everything(seed)
    model = zoo.UpsampledCNN(splits.image_size)
    train_loader = DataLoader(TensorDataset(*splits.train.tensors()), batch_size=MICRO_BATCH, shuffle=True)
    val_loader = DataLoader(TensorDataset(*splits.val.tensors()), batch_size=512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    steps = EPOCHS * math.ceil(len(train_loader) / ACCUMULATION_STEPS)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    # Label smoothing keeps the tiny model from over-confident logits: about 2 points of test accuracy here.
    config = TrainConfig(
        amp=True,
        accumulation_steps=ACCUMULATION_STEPS,
        metrics=("loss", "accuracy"),
        monitor="accuracy",
        checkpoint_dir=checkpoint_dir,
        seed=seed,
    )
    trainer = Trainer(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(label_smoothing=0.1),
        scheduler,
        config=config,
        log=lambda line: None,
    )
    result = trainer.fit(train_loader, epochs=EPOCHS, val_loader=val_loader)
    final = result.history[-1]
    return model, {
        "epochs": EPOCHS,
        "steps": result.steps,
        "amp": str(trainer.amp_dtype).removeprefix("torch."),
        "accumulation_steps": ACCUMULATION_STEPS,
        "micro_batch": MICRO_BATCH,
        "val_accuracy": final["accuracy"],
        "val_loss": final["loss"],
    }


def _int8_verdict(passes: list[Any]) -> str:
    """One line from the quantize pass's report: INT8 kept, at what speed-up on this CPU, or why not."""
    quantize = next((p for p in passes if p.name == "quantize"), None)
    if quantize is None:
        return "INT8: the quantize pass did not run"
    details = quantize.details
    cpu = details.get("cpu", "this CPU")
    timing = details.get("latency") or {}
    kept_float = (details.get("latency_gate") or {}).get("kept_whole_model_float")
    if quantize.modified and timing and timing.get("timed") is False:  # the op speed table was clear enough
        return (
            f"INT8 kept by the latency gate: its INT8 ops predicted at {timing['ratio']:.2f}x FP32's latency "
            f"by this {cpu}'s op speed table (batches of {CALIBRATION_BATCH})"
        )
    if quantize.modified and timing:
        return (
            f"INT8 kept by the latency gate: {timing['ratio']:.2f}x FP32's latency on this {cpu} "
            f"(batches of {CALIBRATION_BATCH})"
        )
    reason = kept_float or "; ".join(quantize.stats[-2:]) or quantize.status
    return f"INT8 not used on this {cpu}: {reason}"


def _available_spec(spec: str) -> tuple[str, list[str]]:
    """``spec`` without the passes that are not registered, and their names."""
    from onnxkit.pipeline import parse_pass_text, split_top_level
    from onnxkit.registry import list_passes

    available = {entry.name for entry in list_passes() if entry.pass_class is not None}
    pieces = split_top_level(spec)
    kept = [piece for piece in pieces if parse_pass_text(piece)[0] in available]
    missing = [parse_pass_text(piece)[0] for piece in pieces if piece not in kept]
    return ",".join(kept), missing


def _samples(images: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    return [{"image": images[start : start + batch]} for start in range(0, len(images), batch)]


def _measure(
    fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray
) -> tuple[ModelFigures, ModelFigures]:
    """Accuracy, and latencies timed in alternation so both models see the same machine load."""
    from onnxkit import runtime

    # ORT's graph optimizations on, as a deployed model runs; one thread, so both models get the same share.
    sessions = [runtime.make_session(path, optimize=True, threads=1) for path in (fp32_path, int8_path)]
    single = {"image": images[:1]}
    whole = {"image": images}
    accuracies = [float((session.run(None, whole)[0].argmax(1) == labels).mean()) for session in sessions]
    single_times: list[list[float]] = [[], []]
    whole_times: list[list[float]] = [[], []]
    for run in range(LATENCY_RUNS + 10):
        for index, session in enumerate(sessions):
            started = time.perf_counter()
            session.run(None, single)
            if run >= 10:  # the first runs warm caches and allocators
                single_times[index].append(time.perf_counter() - started)
            if run % 10 == 0:
                started = time.perf_counter()
                session.run(None, whole)
                whole_times[index].append(time.perf_counter() - started)
    return tuple(
        ModelFigures(
            str(path),
            path.stat().st_size,
            accuracy,
            float(np.median(single)) * 1e3,
            float(np.median(batch)) * 1e3,
            _int8_compute_ops(path),
        )
        for path, accuracy, single, batch in zip((fp32_path, int8_path), accuracies, single_times, whole_times)
    )  # type: ignore[return-value]  # exactly two


def _int8_compute_ops(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}

    def computes_in_int8(node: onnx.NodeProto) -> bool:
        # QOperator ops (QLinearConv, MatMulInteger, ...), or a float op fed by DequantizeLinear (QDQ format).
        if node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            return True
        return node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and set(node.input[:2]) <= dequantized

    return sorted({node.op_type for node in graph.node if computes_in_int8(node)})


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - started


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
