"""What ``onnxkit debug quant`` found, for people and for tools: a console table that folds to 80 columns,
``quant-debug.json``, ``quant-debug.md`` and ``quant-debug.png`` (matplotlib, imported only to draw)."""

from __future__ import annotations

import json
import math
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxkit.quant_debug import LayerError, QuantDebugResult, TensorError
from onnxkit.tables import print_table

FILE_STEM = "quant-debug"
# Layers the Markdown file lists; the JSON has them all.
MARKDOWN_LAYERS = 50
PLOT_HINT = "pip install 'onnxkit[bench]' (matplotlib) to get quant-debug.png"

ORDER = {"added": "by the noise each adds (all INT8)", "alone": "by the output error each causes alone"}
TABLE_HEADERS = ("#", "layer", "op", "SQNR dB", "cosine", "adds", "own rounding", "alone: output dB", "pass result")


# ---------------------------------------------------------------------------------------------------------
# JSON


def _number(value: float | None, digits: int = 6) -> float | str | None:
    """JSON has no infinity: inf stays readable as a string, as the quantize report writes it."""
    if value is None or math.isnan(value):
        return None
    return round(value, digits) if math.isfinite(value) else str(value)


def _shares(result: QuantDebugResult) -> dict[str, float]:
    """Each layer's share of all the noise the ranked layers add."""
    total = sum(
        layer.added_nsr
        for layer in result.worst
        if layer.added_nsr is not None and math.isfinite(layer.added_nsr) and layer.added_nsr > 0
    )
    return {
        layer.node: layer.added_nsr / total
        for layer in result.worst
        if total > 0 and layer.added_nsr is not None and math.isfinite(layer.added_nsr) and layer.added_nsr > 0
    }


def _tensor_dict(tensor: TensorError) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "producer": tensor.producer,
        "op_type": tensor.op_type,
        "sqnr_db": _number(tensor.sqnr_db, 3),
        "cosine": _number(tensor.cosine),
    }


def to_dict(result: QuantDebugResult) -> dict[str, Any]:
    shares = _shares(result)
    return {
        "model": result.model,
        "spec": result.spec,
        "settings": result.settings,
        "samples": result.samples,
        "samples_from": result.samples_from,
        "ranked_by": result.ranked_by,
        "layers": [
            {
                "rank": rank,
                "node": layer.node,
                "op_type": layer.op_type,
                "position": layer.position,
                "output": layer.output,
                "sqnr_db": _number(layer.sqnr_db, 3),
                "cosine": _number(layer.cosine),
                "added_nsr": _number(layer.added_nsr),
                "share_of_added_noise": _number(shares.get(layer.node), 4),
                "rounding_nsr": _number(layer.rounding_nsr),
                "alone_output_sqnr_db": _number(layer.alone_sqnr_db, 3),
                "alone_output_cosine": _number(layer.alone_cosine),
                "int8_when_all_quantized": layer.int8_when_all_quantized,
                "pass_result": "float" if layer.pass_kept_float else "int8",
                "why_float": layer.pass_kept_float,
            }
            for rank, layer in enumerate(result.layers, start=1)
        ],
        "outputs": {
            "all_int8": [_tensor_dict(t) for t in result.outputs_all_int8],
            "pass_result": [_tensor_dict(t) for t in result.outputs_pass_result],
        },
        "tensors": [_tensor_dict(t) for t in result.tensors],
        "pass": {"stats": list(result.pass_stats), "report": result.pass_report},
        "notes": list(result.notes),
    }


def to_json(result: QuantDebugResult) -> str:
    # default=str: the pass's report may hold values (a parity verdict's extras) that only print.
    return json.dumps(to_dict(result), indent=2, default=str)


# ---------------------------------------------------------------------------------------------------------
# Text: the console and Markdown


def _db(value: float) -> str:
    return "n/a" if math.isnan(value) else "inf" if value == math.inf else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else "inf" if value == math.inf else f"{value:.2%}"


def _row(rank: int, layer: LayerError) -> list[str]:
    passed = "INT8" if layer.pass_kept_float is None else f"float: {layer.pass_kept_float}"
    return [
        str(rank),
        layer.node,
        layer.op_type,
        _db(layer.sqnr_db),
        "n/a" if math.isnan(layer.cosine) else f"{layer.cosine:.4f}",
        _ratio(layer.added_nsr),
        _ratio(layer.rounding_nsr),
        "-" if layer.alone_sqnr_db is None else _db(layer.alone_sqnr_db),
        passed,
    ]


def _outputs_line(label: str, outputs: Sequence[TensorError]) -> str:
    return f"{label}: " + "; ".join(f"{t.name} SQNR {_db(t.sqnr_db)} dB, cosine {t.cosine:.4f}" for t in outputs)


def summary_lines(result: QuantDebugResult) -> list[str]:
    lines = [
        f"{result.model}: {result.spec}",
        result.settings,
        f"errors on {result.samples} {result.samples_from}, float against INT8 tensors",
    ]
    if result.outputs_all_int8:
        lines.append(_outputs_line("every candidate in INT8", result.outputs_all_int8))
    if result.outputs_pass_result:
        lines.append(_outputs_line("the pass's result", result.outputs_pass_result))
    lines.extend(line for line in result.pass_stats[1:] if not line.startswith("calibrated"))
    lines.extend(f"note: {note}" for note in result.notes)
    return lines


def render(console: Any, result: QuantDebugResult, top: int) -> None:
    """The summary and the ``top`` worst layers, folded into blocks below the table's width."""
    for line in summary_lines(result):
        console.print(line, highlight=False, markup=False)  # wrapped at the width, unlike long table cells
    shown = result.layers[:top]
    title = f"worst {len(shown)} of {len(result.layers)} layers, {ORDER[result.ranked_by]}"
    print_table(console, title, TABLE_HEADERS, [_row(rank, layer) for rank, layer in enumerate(shown, start=1)], lead=3)


def to_markdown(result: QuantDebugResult) -> str:
    shown = result.layers[:MARKDOWN_LAYERS]
    lines = [f"# Quantization debug: {Path(result.model).name}", ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    lines += [
        "",
        f"## Layers, worst first ({len(shown)} of {len(result.layers)}, {ORDER[result.ranked_by]})",
        "",
        (
            "SQNR (powers over all samples) and cosine (the worst sample's, as the parity check reports it): "
            "the layer's output with every candidate node in INT8, against float. *adds*: the "
            "noise power the layer adds on top of its inputs', relative to its output's power (the pass's "
            "sensitivity ranking). *own rounding*: its INT8 rounding alone, on float inputs. *alone: output dB*: "
            "the model's output SQNR with only this layer in INT8 (measured for the worst `--isolate` layers)."
        ),
        "",
        "| " + " | ".join(TABLE_HEADERS) + " |",
        "|" + "---|" * len(TABLE_HEADERS),
    ]
    return "\n".join([*lines, *markdown_rows(shown)]) + "\n"


def markdown_rows(layers: Sequence[LayerError]) -> list[str]:
    """The table's rows in Markdown, ranked from 1."""
    return [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in _row(rank, layer)) + " |"
        for rank, layer in enumerate(layers, start=1)
    ]


# ---------------------------------------------------------------------------------------------------------
# The plot


def write_plot(result: QuantDebugResult, path: Path, top: int) -> bool:
    """Each layer's output SQNR and share of the added noise, in graph order, the ``top`` worst named.
    False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    layers = sorted(result.layers, key=lambda layer: layer.position)
    finite = [
        value
        for layer in layers
        for value in (layer.sqnr_db, layer.alone_sqnr_db)
        if value is not None and math.isfinite(value)
    ]
    ceiling = (max(finite) if finite else 0.0) + 10.0  # where an error-free layer (inf dB) is drawn
    measured = [layer for layer in layers if not math.isnan(layer.sqnr_db)]
    shares = _shares(result)

    def colour(layer: LayerError) -> str:
        return (
            "tab:blue"
            if layer.pass_kept_float is None
            else "tab:orange"
            if layer.int8_when_all_quantized
            else "tab:gray"
        )

    isolated = [layer for layer in layers if layer.alone_sqnr_db is not None]
    figure, axes = plt.subplots(
        3 if isolated else 2, 1, sharex=True, figsize=(max(8.0, len(layers) * 0.12), 9.0 if isolated else 6.5)
    )
    upper, lower = axes[0], axes[1]
    # Points, not bars: a ruined layer sits at 0 dB, where a bar would vanish.
    sqnr = [min(layer.sqnr_db, ceiling) for layer in measured]
    upper.plot([layer.position for layer in measured], sqnr, color="lightgray", linewidth=0.8, zorder=1)
    upper.scatter([layer.position for layer in measured], sqnr, c=[colour(layer) for layer in measured], s=16, zorder=2)
    upper.xaxis.set_major_locator(MaxNLocator(integer=True))
    upper.set_ylabel("output SQNR, all INT8 (dB)")
    upper.set_title(f"{Path(result.model).name}: {result.spec}", fontsize=10)
    lower.bar(
        [layer.position for layer in layers],
        [100 * shares.get(layer.node, 0.0) for layer in layers],
        color=[colour(layer) for layer in layers],
    )
    lower.set_ylabel("share of added noise (%)")
    axes[-1].set_xlabel(
        "quantizable layers in graph order (blue: INT8 in the pass's result, orange: kept float "
        "by the pass, gray: never INT8)",
        fontsize=8,
    )
    if isolated:
        axes[2].scatter(
            [layer.position for layer in isolated],
            [min(typing.cast(float, layer.alone_sqnr_db), ceiling) for layer in isolated],
            c=[colour(layer) for layer in isolated],
            s=16,
        )
        axes[2].set_ylabel("output SQNR, only it INT8 (dB)")
    labelled = axes[2] if result.ranked_by == "alone" else lower
    # Names share their scope ("/encoder/encoder/"): the label keeps what tells the layers apart.
    prefix = os.path.commonprefix([layer.node for layer in layers])  # noqa: RUF071  (cut back to a "/" below)
    prefix = prefix[: prefix.rfind("/") + 1]
    for rank, layer in enumerate(result.worst[:top], start=1):
        height = (
            min(typing.cast(float, layer.alone_sqnr_db), ceiling)
            if result.ranked_by == "alone"
            else 100 * shares.get(layer.node, 0.0)
        )
        labelled.annotate(
            f"{rank}. {layer.node[len(prefix) :]}",
            (layer.position, height),
            rotation=45,
            fontsize=7,
            xytext=(0, 4),
            textcoords="offset points",
            ha="left",
            va="bottom",
        )
    labelled.margins(y=0.35)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return True


def save(result: QuantDebugResult, folder: Path, top: int) -> tuple[list[Path], str | None]:
    """Write the JSON, the Markdown and the plot into ``folder`` (created), each atomically. Returns the files
    written and, when the plot could not be drawn, the one line that says how to get it."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".json", to_json(result)), (".md", to_markdown(result))):
        path = folder / f"{FILE_STEM}{suffix}"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        written.append(path)
    plot = folder / f"{FILE_STEM}.png"
    if not write_plot(result, plot, top):
        return written, PLOT_HINT
    return written + [plot], None
