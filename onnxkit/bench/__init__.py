"""Benchmark onnxkit's pipeline against the tools users would otherwise pick: same model, same run, same machine.

    report = run_bench("model.onnx", "simplify,fuse", peers=["onnxsim", "ort-extended"])
    report.render(Console()); Path("bench.json").write_text(report.to_json())

The package, in the order a run goes through it:

- ``plan``: the peers and their packages, and which tools to run for some pipeline specs;
- ``inputs``: the samples (an ``.npz``, or seeded synthetic inputs);
- ``child`` and ``peers``: each tool transforms the model in its own subprocess, under a timeout;
- ``measure``: one more subprocess loads every result and measures parity, accuracy and interleaved latency;
- ``report`` and ``render``: what was found, ratios, and the table (fitted to the terminal's width);
- ``facts``: model size, op counts and the machine, recorded beside the figures;
- ``run``: the entry points ``run_bench`` and ``run_transform``.
"""

from onnxkit.bench.child import ChildOutcome, first_error_line, peak_rss_bytes, run_child
from onnxkit.bench.facts import machine_description, model_file_bytes, model_op_histogram
from onnxkit.bench.inputs import BenchInputs, load_inputs, synthetic_inputs
from onnxkit.bench.plan import (
    EXACT_PEERS,
    PEER_PACKAGES,
    PEERS,
    QUANTIZE_PEERS,
    Tool,
    installed_peers,
    plan_tools,
    spec_quantize_mode,
)
from onnxkit.bench.report import BenchReport, ToolRecord, summary_cells, summary_headers
from onnxkit.bench.run import run_bench, run_transform
from onnxkit.units import format_bytes

__all__ = [
    "EXACT_PEERS",
    "PEERS",
    "PEER_PACKAGES",
    "QUANTIZE_PEERS",
    "BenchInputs",
    "BenchReport",
    "ChildOutcome",
    "Tool",
    "ToolRecord",
    "first_error_line",
    "format_bytes",
    "installed_peers",
    "load_inputs",
    "machine_description",
    "model_file_bytes",
    "model_op_histogram",
    "peak_rss_bytes",
    "plan_tools",
    "run_bench",
    "run_child",
    "run_transform",
    "spec_quantize_mode",
    "summary_cells",
    "summary_headers",
    "synthetic_inputs",
]
