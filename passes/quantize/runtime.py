"""ONNX Runtime sessions for the quantize pass: one thread, intermediate tensors as outputs, models over 2 GB."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxkit import modelio

# One thread: calibration and timing must not fight whatever else runs on the machine, and single-thread
# timings compare FP32 and INT8 kernels without the noise of thread scheduling.
SESSION_THREADS = 1


def make_session(proto: onnx.ModelProto, *, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session for ``proto``; models past protobuf's 2 GB limit go through a temporary file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = SESSION_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not exceeds_protobuf_limit(proto):
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory(prefix="onnxkit-quantize-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.save_model(proto, str(path), save_as_external_data=True, location="model.onnx.data")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exceeds_protobuf_limit(proto: onnx.ModelProto) -> bool:
    """Whether the weights alone come near protobuf's 2 GB limit. Summing tensor payloads is ~5x faster than
    ``ByteSize()`` on a large model, and the graph around the weights is small."""
    payload = sum(len(t.raw_data) if t.HasField("raw_data") else t.ByteSize() for t in proto.graph.initializer)
    return payload >= modelio.EXTERNAL_DATA_THRESHOLD


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
        self.session = make_session(with_outputs(proto, self.names, types))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feed = {name: sample[name] for name in self.input_names}
        return dict(zip(self.names, self.session.run(self.names, feed)))

    def stream(self, samples: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        for sample in samples:
            yield self.run(sample)
