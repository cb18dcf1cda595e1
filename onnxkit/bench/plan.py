"""What a bench runs: the peers onnxkit is set beside, and the plan of tools for some pipeline specs.

Peers are compared within their class: exact simplifiers against ``simplify,fuse``-like pipelines, and ORT's
plain ``quantize_dynamic``/``quantize_static`` against the pipeline that quantizes the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence

from onnxkit.errors import OnnxkitError, SpecError

EXACT_PEERS = ("onnxsim", "onnxslim", "onnxoptimizer", "ort-basic", "ort-extended")
PEERS = (*EXACT_PEERS, "ort-quantize")
QUANTIZE_PEERS = ("ort-quantize-dynamic", "ort-quantize-static")
# The package each peer needs (the ORT peers need only onnxruntime, a core dependency): the one table, read by
# the plan (is it installed?) and by the benchmark suite (which version was measured).
PEER_PACKAGES = {
    "onnxsim": "onnxsim",
    "onnxslim": "onnxslim",
    "onnxoptimizer": "onnxoptimizer",
    "ort-basic": "onnxruntime",
    "ort-extended": "onnxruntime",
    "ort-quantize": "onnxruntime",
    "ort-quantize-dynamic": "onnxruntime",
    "ort-quantize-static": "onnxruntime",
}
# Samples written for calibration (onnxkit's static quantize and ORT's quantize_static read the same ones).
CALIBRATION_SAMPLES = 64
PARITY_SAMPLES = 16
SYNTHETIC_SAMPLES = 64


def installed_peers() -> list[str]:
    """The peers whose packages are importable here, in the order of ``PEERS``."""
    return [p for p in PEERS if importlib.util.find_spec(PEER_PACKAGES[p]) is not None]


@dataclasses.dataclass(frozen=True)
class Tool:
    """One column of the comparison: onnxkit with a spec, or a peer.

    ``klass`` groups what may fairly be compared: ``exact`` (float simplifiers and fusers), or the
    quantization mode (``dynamic``/``static``, or ``auto`` for onnxkit choosing) of a pipeline or peer.
    """

    label: str
    runner: str
    klass: str
    spec: str | None = None


def spec_quantize_mode(spec: str) -> str | None:
    """The quantization mode a spec asks for, or None when it does not quantize."""
    from onnxkit.pipeline import parse_pass_text, split_top_level

    for piece in split_top_level(spec):
        name, options = parse_pass_text(piece)
        if name == "quantize":
            return options.get("mode") or _quantize_default_mode()
    return None


def _quantize_default_mode() -> str:
    try:
        from onnxkit.registry import get_pass_class

        return str(get_pass_class("quantize").Options().mode)
    except (OnnxkitError, AttributeError, TypeError):  # no quantize pass to ask: compare with both modes
        return "auto"


def plan_tools(specs: Sequence[str], peers: Sequence[str] | None) -> tuple[list[Tool], list[str]]:
    """The tools to run for these specs and peers, and notes on peers left out (not installed, no class)."""
    if not specs:
        raise SpecError("no pipeline spec to benchmark", hint="give --passes, e.g. --passes simplify,fuse")
    modes = {spec: spec_quantize_mode(spec) for spec in specs}
    tools = [
        Tool("onnxkit" if len(specs) == 1 else f"onnxkit[{spec}]", "onnxkit", modes[spec] or "exact", spec)
        for spec in specs
    ]
    installed = set(installed_peers())
    notes: list[str] = []
    requested = list(PEERS if peers is None else peers)
    for peer in requested:
        if peer not in (*PEERS, *QUANTIZE_PEERS):
            raise SpecError(f"unknown peer {peer!r}", hint="peers: " + ", ".join((*PEERS, *QUANTIZE_PEERS)))
        if peer in PEERS and peer not in installed:
            notes.append(f"{peer}: not installed (pip install {PEER_PACKAGES[peer]})")
            continue
        if peer in EXACT_PEERS:
            tools.append(Tool(peer, peer, "exact"))
            continue
        # A pipeline that lets onnxkit choose the mode ("auto") is compared with ORT's quantizer in both.
        wanted = {m for mode in modes.values() if mode for m in (("dynamic", "static") if mode == "auto" else (mode,))}
        wanted_modes = sorted(wanted) if peer == "ort-quantize" else [peer.rsplit("-", 1)[1]]
        if not wanted_modes:
            if peers is not None:  # asked for by name: quantize the way ORT does by default
                wanted_modes = ["dynamic"]
            else:
                notes.append("ort-quantize: left out, no pipeline quantizes (name it in --peers to include it)")
        for mode in wanted_modes:
            if all(t.label != f"ort-quantize-{mode}" for t in tools):
                tools.append(Tool(f"ort-quantize-{mode}", "ort-quantize", mode))
    return tools, notes
