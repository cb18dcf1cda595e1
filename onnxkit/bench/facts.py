"""Facts about a model file and the machine, recorded beside every measurement."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import onnx

from onnxkit.modelio import iter_all_tensors


def model_file_bytes(path: Path) -> int:
    """The model file plus every external-data file it names."""
    proto = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value for t in iter_all_tensors(proto.graph) for entry in t.external_data if entry.key == "location"
    }
    return path.stat().st_size + sum(
        (path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file()
    )


def model_op_histogram(path: Path) -> dict[str, int]:
    """Op counts as the pipeline reports them; ``ir.load`` leaves external weights on disk."""
    import onnx_ir as ir

    from onnxkit.graph import op_histogram

    return dict(sorted(op_histogram(ir.load(path)).items()))


def machine_description() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, and the versions of every tool."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), []))
    except OSError:
        pass
    # INT8 speed and accuracy depend on these: without VNNI, ORT's u8s8 kernels can saturate.
    int8 = ", ".join(name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f")) if flag in flags) or "no AVX2"
    int8 += ", VNNI" if flags & {"avx512_vnni", "avx_vnni"} else ", no VNNI"
    memory = None
    try:
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    versions: dict[str, str | None] = {}
    for package in (
        "onnxkit",
        "onnx",
        "onnxruntime",
        "onnx-ir",
        "onnxscript",
        "onnxsim",
        "onnxslim",
        "onnxoptimizer",
        "torch",
        "transformers",
        "numpy",
    ):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {
        "cpu": cpu,
        "int8": int8,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
