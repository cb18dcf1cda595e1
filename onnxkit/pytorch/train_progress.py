"""How a training run shows its steps: a rich progress bar on a terminal, else a log line every ``log_every``
steps; nothing on ranks other than 0."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onnxkit.pytorch.train import StepRecord


def total_steps(
    loader: Iterable[Any], epochs: int | None, max_steps: int | None, accumulation_steps: int
) -> int | None:
    """The optimizer steps a run will take, where the loader's length says (else ``max_steps``, or None)."""
    total = max_steps
    if epochs is not None and isinstance(loader, Sized):
        per_epoch = math.ceil(len(loader) / accumulation_steps)
        total = min(total, per_epoch * epochs) if total is not None else per_epoch * epochs
    return total


@contextlib.contextmanager
def step_progress(
    total: int | None,
    first_step: int,
    *,
    bar: bool,
    log: Callable[[str], None] | None,
    log_every: int,
) -> Iterator[Callable[[StepRecord], None]]:
    """Yield a function called after each step: with ``bar``, a rich progress bar starting at ``first_step``;
    else, with ``log``, log lines every ``log_every`` steps and at the last; else nothing."""
    started = time.perf_counter()
    if log is None:
        yield lambda record: None
    elif bar:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
        ) as progress:
            task = progress.add_task("training", total=total, completed=first_step, status="")

            def advance(record: StepRecord) -> None:
                status = f"loss {record.loss:.4f}" if record.step % max(1, log_every // 10) == 0 else None
                if status:
                    progress.update(task, advance=1, status=status)
                else:
                    progress.update(task, advance=1)

            yield advance
    else:

        def log_line(record: StepRecord) -> None:
            if record.step % log_every == 0 or record.step == total:
                rate = (record.step - first_step) / max(time.perf_counter() - started, 1e-9)
                of_total = f"/{total}" if total else ""
                log(
                    f"step {record.step}{of_total} epoch {record.epoch} loss {record.loss:.4f} "
                    f"lr {record.lr:.3g} ({rate:.1f} steps/s)"
                )

        yield log_line
