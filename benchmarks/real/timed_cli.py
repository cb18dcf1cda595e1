"""``python -m benchmarks.real.timed_cli optimize ...``: the onnxkit CLI, exactly as ``onnxkit`` runs it, with the
seconds from after its imports to its exit written to ``$ONNXKIT_TIMED_CLI_OUT``.

The sweep times every peer from after the import of its package (``onnxkit.bench.peers.RUNNER_IMPORTS``: onnxsim's
import brings in onnx and onnxruntime too), so onnxkit is treated the same way: the
modules the command will import anyway are imported before the clock starts, namely the CLI and the pipeline,
the classes of the passes named by ``--passes`` (onnxscript comes with simplify and fuse), the parity and data
modules with onnxruntime, and rich, which renders the report. Only imports: no model is loaded, no session
made and nothing run before the clock, so every first-call cost of a run (ORT's first session, the checker's
first call) stays inside it. Interpreter start-up and imports are in the wall time, which the sweep records for
every tool too.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import onnxkit.cli
import onnxkit.pipeline
from onnxkit.errors import OnnxkitError

# What ``optimize`` imports on every run, besides its passes.
RUN_IMPORTS = ("onnxkit.parity", "onnxkit.data", "onnxkit.report", "onnxruntime", "rich.console", "rich.table")


def spec_argument(args: list[str]) -> str | None:
    """The value of ``--passes`` in ``args``, if given."""
    for index, arg in enumerate(args):
        if arg == "--passes" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--passes="):
            return arg.partition("=")[2]
    return None


def import_run_modules(args: list[str]) -> None:
    """Import what the command will import: the run's modules and the classes of the passes in its spec. A
    spec that does not parse is left for the command itself to report, inside the clock."""
    for module in RUN_IMPORTS:
        importlib.import_module(module)
    spec = spec_argument(args)
    if spec is not None:
        try:
            onnxkit.pipeline.Pipeline.parse(spec)
        except OnnxkitError:
            pass


if __name__ == "__main__":
    import_run_modules(sys.argv[1:])
    started = time.perf_counter()
    try:
        onnxkit.cli.main(args=sys.argv[1:], prog_name="onnxkit")
    finally:
        Path(os.environ["ONNXKIT_TIMED_CLI_OUT"]).write_text(f"{time.perf_counter() - started:.6f}")
