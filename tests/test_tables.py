"""Tables at any width: whole cells in a table when it fits, one block per row when it does not."""

from __future__ import annotations

import io

from rich.console import Console

from onnxkit.bench import BenchReport, ToolRecord
from onnxkit.tables import natural_width, print_table

HEADERS = ["tool", "result", "nodes", "size", "transform", "p50 b1-t1 ms", "p50 b8-t1 ms", "max abs err"]
ROWS = [
    ["onnxkit[simplify,fuse]", "ok", "81", "4.4 MB", "0.52 s", "0.123", "0.877", "1.2e-07"],
    ["onnxsim", "parity FAILED", "83", "4.4 MB", "1.90 s", "0.131", "0.901", "3.0e-01"],
]


def _printed(width: int, headers=HEADERS, rows=ROWS) -> str:
    out = io.StringIO()
    print_table(Console(file=out, width=width, color_system=None), "onnxkit bench: m.onnx", headers, rows, lead=2)
    return out.getvalue()


def test_a_table_that_fits_is_a_table_with_every_cell_whole():
    text = _printed(natural_width(HEADERS, ROWS))
    assert "┃ tool" in text
    assert all(cell in text for row in ROWS for cell in row)


def test_a_table_too_wide_for_the_console_becomes_one_block_per_row():
    text = _printed(80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "┃" not in text
    assert lines[1] == "onnxkit[simplify,fuse]  ok" and "onnxsim  parity FAILED" in lines
    # every header and value stays whole, next to each other
    for row in ROWS:
        for header, cell in zip(HEADERS[2:], row[2:]):
            assert f"{header} {cell}" in text


def test_markup_like_cells_are_printed_as_text():
    text = _printed(200, ["tool", "note"], [["onnxkit[simplify]", "[bold]x[/]"]])
    assert "onnxkit[simplify]" in text and "[bold]x[/]" in text


def test_bench_report_renders_fifteen_columns_into_80_readable_columns():
    record = ToolRecord(
        "onnxsim",
        "onnxsim",
        "exact",
        nodes=81,
        file_bytes=4_600_000,
        transform_seconds=0.52,
        peak_rss_bytes=190_000_000,
        latency={"b1-t1": {"p50_ms": 0.123}, "b8-t1": {"p50_ms": 0.9}},
        parity={"passed": True, "max_abs_error": 1.2e-7, "min_cosine": 1.0},
    )
    report = BenchReport("m.onnx", ["simplify,fuse"], {"threads": [1], "batch_sizes": [1, 8]}, {}, [record])
    out = io.StringIO()
    report.render(Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "onnxsim  ok" in text and "nodes 81" in text and "p50 b8-t1 ms 0.9" in text and "size 4.4 MB" in text
