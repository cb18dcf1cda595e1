"""ONNX Runtime sessions for the quantize pass: one thread (taps: every core), intermediate tensors as outputs, models over 2 GB."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from onnxkit import runtime

# One thread for timing and checks: they must not fight whatever else runs on the machine, and single-thread
# timings compare FP32 and INT8 kernels without the noise of thread scheduling.
SESSION_THREADS = 1
# Tapping tensors (calibration, sensitivity) is throughput, not timing: ORT's default, one thread per physical
# core, as ORT's own calibrator runs. resnet18 on the idle 2-core machine: 15.2-21.5 s against 16.8-22.9 s for
# the pass, ranges identical (resnet18, mobilenetv2, MiniLM); no gain with every core busy.
TAP_THREADS = 0


def make_session(proto: onnx.ModelProto, *, optimize: bool = True, threads: int = SESSION_THREADS) -> Any:
    """A CPU session for ``proto`` (one thread unless ``threads`` says otherwise) through onnxkit's one session
    factory, which takes a model past protobuf's 2 GB limit through a temporary file without touching ``proto``. ORT's optimizations are on by
    default: calibration, sensitivity and timing see the kernels that will run.

    Its threads do not spin-wait for more work after a run: the latency gate runs two sessions in turn, and
    a spinning one takes the core the other (or any other process) needs.
    """
    options = runtime.session_options(optimize=optimize, threads=threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return runtime.make_session(proto, options=options)


class ModelNotRunnable(Exception):
    """ONNX Runtime cannot make a session of the model to quantize (an unknown op or domain, say); the message
    says why, in one line."""


def load_error(proto: onnx.ModelProto) -> str | None:
    """Why ONNX Runtime cannot load ``proto``, in one line; None if it can."""
    try:
        make_session(proto, optimize=False)
    except Exception as e:  # ORT raises its own exception types
        return runtime.error_line(e)
    return None


def check_loads(proto: onnx.ModelProto) -> None:
    """Raise ``ModelNotRunnable`` if ONNX Runtime cannot load ``proto``."""
    if (error := load_error(proto)) is not None:
        raise ModelNotRunnable(error)


@contextlib.contextmanager
def first_session_of(proto: onnx.ModelProto) -> Iterator[None]:
    """Around the first session of ``proto`` (made with no throwaway session before it to see if ORT loads the
    model): what fails in it is ``ModelNotRunnable`` where ORT cannot load ``proto`` itself, else stands."""
    try:
        yield
    except Exception as failure:
        if (error := load_error(proto)) is None:
            raise
        raise ModelNotRunnable(error) from failure


def tensor_elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element types of the main graph's typed values: inputs, value_info (from shape inference), outputs."""
    types: dict[str, int] = {}
    for value in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def with_outputs(proto: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``proto`` that also returns the named intermediate tensors (shape left open)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(proto)
    present = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, types[name], None) for name in names if name not in present
    )
    return augmented


class TensorTap:
    """Runs a model on samples and yields, per sample, the named tensors (graph outputs or intermediates)."""

    def __init__(self, proto: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> None:
        self.names = list(names)
        self.session = make_session(with_outputs(proto, self.names, types), threads=TAP_THREADS)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feed = {name: sample[name] for name in self.input_names}
        return dict(zip(self.names, self.session.run(self.names, feed)))

    def stream(self, samples: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        for sample in samples:
            yield self.run(sample)
