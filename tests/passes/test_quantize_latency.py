"""The latency gate's stopping rules (``quantize.latency``): timing stops once more rounds cannot change the answer."""

from __future__ import annotations

from onnxkit.passes.quantize import latency


def test_timing_stops_once_int8_has_settled_within_the_allowed_ratio() -> None:
    steady = [1.003] * latency.SETTLED_ROUNDS
    assert latency._settled(steady, 1.0)
    assert not latency._settled(steady[1:], 1.0)  # not yet seen settled over enough rounds
    assert not latency._settled([1.003] * (latency.SETTLED_ROUNDS - 1) + [1.05], 1.0)  # still moving
    assert not latency._settled([1.015] * latency.SETTLED_ROUNDS, 1.0)  # too close to the allowed 1.02 to call
    assert not latency._settled([1.2] * latency.SETTLED_ROUNDS, 1.0)  # "slower" is never called early
    assert not latency._settled(steady, None)
    assert latency._settled([1.6] * latency.SETTLED_ROUNDS, 2.0)  # against the allowed ratio, not against 1
