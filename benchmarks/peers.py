"""The tools onnxkit is set beside, as a user would run them: default settings, public entry points.

``onnxkit.bench`` runs them (each in its own subprocess); this module says what each one is, for the
results page, and which versions were measured.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from onnxkit.bench import PEER_PACKAGES, installed_peers

PEER_DESCRIPTIONS: dict[str, str] = {
    "onnxsim": "onnxsim.simplify(path, output_path=...): constant folding, shape inference and its optimizer passes",
    "onnxslim": "onnxslim.slim(path, output): pattern-based slimming and constant folding",
    "onnxoptimizer": "onnxoptimizer.optimize(model): its default fuse-and-eliminate pass list",
    "ort-basic": "ONNX Runtime session with ORT_ENABLE_BASIC, optimized_model_filepath saved (standard ops only)",
    "ort-extended": "ONNX Runtime session with ORT_ENABLE_EXTENDED, saved (may emit com.microsoft fused ops)",
    "ort-quantize-dynamic": "onnxruntime.quantization.quantize_dynamic(in, out) with default settings",
    "ort-quantize-static": "onnxruntime.quantization.quantize_static(in, out, reader) with default settings "
    "(QDQ, MinMax), calibrated on the same 64 samples as onnxkit",
}


def peer_versions() -> dict[str, str | None]:
    """Each peer's package version, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for peer, package in PEER_PACKAGES.items():
        if peer == "ort-quantize":  # measured as its two modes
            continue
        try:
            versions[peer] = version(package)
        except PackageNotFoundError:
            versions[peer] = None
    return versions


__all__ = ["PEER_DESCRIPTIONS", "installed_peers", "peer_versions"]
