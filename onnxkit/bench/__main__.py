"""``python -m onnxkit.bench job.json``: the child side of a bench run (see ``onnxkit.bench.child``)."""

import sys

from onnxkit.bench.child import worker

sys.exit(worker(sys.argv[1]))
