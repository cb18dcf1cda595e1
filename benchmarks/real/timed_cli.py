"""``python -m benchmarks.real.timed_cli optimize ...``: the onnxkit CLI, exactly as ``onnxkit`` runs it, with the
seconds from after its imports (its passes' included) to its exit written to ``$ONNXKIT_TIMED_CLI_OUT``.

The sweep times every peer from after its imports (``onnxkit.bench``), so onnxkit's command is timed the same
way; interpreter start-up and imports are in the wall time, which the sweep records for every tool too.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import onnxkit.cli
import onnxkit.pipeline

started = time.perf_counter()
try:
    onnxkit.cli.main(args=sys.argv[1:], prog_name="onnxkit")
finally:
    Path(os.environ["ONNXKIT_TIMED_CLI_OUT"]).write_text(f"{time.perf_counter() - started:.6f}")
