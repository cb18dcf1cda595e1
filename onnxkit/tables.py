"""Tables that stay readable at any width: a rich table when every column fits the console, else one block per row.

A rich table squeezed below its natural width folds every cell into fragments a few letters wide, and that is
what a CI log, a file or an 80-column terminal gets (rich renders at 80 columns, or ``$COLUMNS``, when the
output is not a terminal). A row folded into a block keeps each value whole:

    onnxsim  ok
      nodes 81 · size 4.4 MB · transform 0.52 s · peak mem 180.2 MB
      p50 b1-t1 ms 0.12 · ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.markup import escape

# A rich table with the default box spends one border column per cell plus one, and one space of padding
# either side of every cell.
_TABLE_OVERHEAD_PER_COLUMN = 3


def natural_width(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The width of the table with no cell folded."""
    widths = [
        max(cell_len(str(cell)) for cell in (header, *(row[i] for row in rows))) for i, header in enumerate(headers)
    ]
    return sum(widths) + _TABLE_OVERHEAD_PER_COLUMN * len(widths) + 1


def fold_row(headers: Sequence[str], row: Sequence[str], width: int, lead: int = 1) -> list[str]:
    """One row as a block: its first ``lead`` cells on the first line, then ``header value`` pairs packed
    into lines no wider than ``width`` (a pair wider than that gets a line of its own)."""
    first = "  ".join(str(cell) for cell in row[:lead])
    lines, line = [first], ""
    for header, cell in zip(headers[lead:], row[lead:]):
        pair = f"{header} {cell}"
        candidate = f"{line} · {pair}" if line else f"  {pair}"
        if line and cell_len(candidate) > width:
            lines.append(line)
            candidate = f"  {pair}"
        line = candidate
    if line:
        lines.append(line)
    return lines


def print_table(
    console: Any, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, lead: int = 1
) -> None:
    """Print ``rows`` under ``headers`` on a rich ``console``: as a table when it fits ``console.width``, else
    each row folded into a block whose first line is its first ``lead`` cells."""
    if natural_width(headers, rows) <= console.width:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in rows:
            table.add_row(*(escape(str(cell)) for cell in row))
        console.print(table)
        return
    console.print(title, style="italic", highlight=False)
    for row in rows:
        block = fold_row(headers, row, console.width, lead)
        console.print(escape(block[0]), style="bold", highlight=False)
        for line in block[1:]:
            console.print(escape(line), highlight=False, soft_wrap=True)
