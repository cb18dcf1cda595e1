"""Assertions the test modules share (import them from here, not from another test module)."""

from __future__ import annotations

import numpy as np
import onnx

from tests.conftest import run_model


def assert_same_outputs(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    atol_scales: bool = False,
) -> None:
    """``after`` keeps ``before``'s output names and, on ``feeds`` in ONNX Runtime, its output shapes and values
    within ``rtol``/``atol``. ``atol_scales``: the absolute tolerance grows with each output's largest magnitude
    (a rewrite that reorders float sums rounds relative to the output's scale)."""
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    expected, actual = run_model(before, feeds), run_model(after, feeds)
    for e, a in zip(expected, actual):
        assert e.shape == a.shape
        tolerance = atol * max(1.0, float(np.abs(e).max(initial=0))) if atol_scales else atol
        np.testing.assert_allclose(a, e, rtol=rtol, atol=tolerance)
