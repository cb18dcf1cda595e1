"""``python -m benchmarks.quant_debug``: ``onnxkit debug quant`` on MiniLM-L6, the plot for RESULTS.md.

MiniLM-L6 is set up as every quantization benchmark sets it up (``benchmarks.minilm``: real weights, exported at
opset 17, the zoo's 64 sentences); each of the zoo's 64 sentences is one calibration
sample (its own length, batch 1), written as one ``.npz`` per sentence into ``OUT/calib`` so that the command
printed at the end reruns the same debugging from the shell. The report goes to ``OUT`` (a temporary folder
unless ``--out`` is given), the plot is copied to ``benchmarks/plots/quant-debug-minilm.png``, and RESULTS.md's
"Quantization debugger (MiniLM)" block (between ``<!-- quant-debug:start -->`` and ``<!-- quant-debug:end -->``)
is rewritten with the worst layers.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from benchmarks.real.render import RESULTS_MD, replace_section

PLOT = Path(__file__).resolve().parent / "plots" / "quant-debug-minilm.png"
SPEC = "quantize{mode=static,samples=64}"
SECTION = "quant-debug"
ISOLATE = "all"  # every layer also quantized alone: ordered by the output error each causes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the model, the calibration data and the report")
    parser.add_argument("--spec", default=SPEC, help=f"the quantize pass to debug (default {SPEC})")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--isolate", default=ISOLATE, help="a count of layers, or all (default)")
    arguments = parser.parse_args()
    out = arguments.out or Path(tempfile.mkdtemp(prefix="quant-debug-minilm-"))
    out.mkdir(parents=True, exist_ok=True)

    from rich.console import Console

    from benchmarks.minilm import export_minilm
    from onnxkit import quant_debug_report
    from onnxkit.quant_debug import debug_quant

    minilm = export_minilm(out)
    calib = out / "calib"
    calib.mkdir(exist_ok=True)
    for index, sample in enumerate(minilm.samples):
        np.savez(calib / f"{index:02d}.npz", **sample)  # type: ignore[arg-type]  # numpy's stub: **kwds as bools

    isolate: int | Literal["all"] = "all" if arguments.isolate == "all" else int(arguments.isolate)
    result = debug_quant(minilm.path, calib, arguments.spec, isolate=isolate)
    written, missing = quant_debug_report.save(result, out / "report", arguments.top)
    quant_debug_report.render(Console(), result, arguments.top)
    if missing is None:
        shutil.copyfile(out / "report" / "quant-debug.png", PLOT)
        print(f"plot copied to {PLOT}")
    print("wrote " + ", ".join(str(p) for p in written))
    RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), "\n".join(section_lines(result, arguments)), SECTION))
    print(f"rewrote the {SECTION} block of {RESULTS_MD}")
    print(
        f"same from the shell: onnxkit debug quant {minilm.path} --calib-data {calib} --spec '{arguments.spec}' "
        f"--out {out / 'report'}"
    )


def section_lines(result: Any, arguments: argparse.Namespace) -> list[str]:
    """RESULTS.md's block: the command, the outputs with everything INT8 and as the pass leaves them, the worst
    layers and the plot."""
    from onnxkit.quant_debug_report import ORDER, TABLE_HEADERS, markdown_rows, summary_lines

    top = min(arguments.top, len(result.layers))
    return [
        "## Quantization debugger (MiniLM)",
        "",
        (
            f"`python -m benchmarks.quant_debug` ({datetime.date.today()}): `onnxkit debug quant` on MiniLM-L6 "
            f"(opset 17, the zoo's 64 sentences as calibration data, `--spec '{arguments.spec}'`, "
            f"`--isolate {arguments.isolate}`). SQNR (powers over all samples) and cosine (the worst sample's): "
            "each layer's output with every candidate node in INT8, against FP32, on the samples calibration held "
            "out; *adds*: the noise the layer adds on top "
            "of its inputs' (how the pass ranks nodes); *alone*: the model's output SQNR with only that layer "
            "in INT8."
        ),
        "",
        *[f"- {line}" for line in summary_lines(result)[2:]],
        "",
        f"Worst {top} of {len(result.layers)} layers, {ORDER[result.ranked_by]}:",
        "",
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|" + "---|" * len(TABLE_HEADERS),
        *markdown_rows(result.layers[:top]),
        "",
        "![per-layer SQNR and added noise](plots/quant-debug-minilm.png)",
    ]


if __name__ == "__main__":
    main()
