"""The bench times each tool from after the imports it would make anyway, onnxkit's passes included."""

from __future__ import annotations

import pytest

from onnxkit.bench import peers
from onnxkit.pipeline import Pipeline


def test_onnxkit_passes_are_imported_before_the_clock_as_the_peers_packages_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ORT's quantizer is imported before its clock starts, and onnxkit's quantize pass imports it too: the spec is
    parsed before onnxkit's clock (which imports its passes' classes), as the real-corpus sweep does."""
    parsed: list[str] = []
    parse = Pipeline.parse

    def recorded(spec: str) -> Pipeline:
        parsed.append(spec)
        return parse(spec)

    monkeypatch.setattr(Pipeline, "parse", recorded)
    peers.import_before_timing({"runner": "onnxkit", "spec": "simplify,quantize{mode=static}"})
    assert parsed == ["simplify,quantize{mode=static}"]
    assert "onnxruntime.quantization" in peers.RUNNER_IMPORTS["ort-quantize"]
    peers.import_before_timing({"runner": "onnxkit", "spec": "nosuchpass"})  # left for the run to report
    peers.import_before_timing({"runner": "ort-quantize", "spec": None})
    assert parsed[-1] == "nosuchpass"
