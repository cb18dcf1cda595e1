"""Calibration memory does not grow with the number of samples (ORT's histogram calibrators keep every batch).

Each measurement runs in its own subprocess: tracemalloc's peak of the Python-visible heap (numpy arrays,
histograms, ORT outputs handed to Python) while ``calibrate`` streams a lazily generated dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

MEASURE = textwrap.dedent("""
    import json, sys, tracemalloc
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxkit.passes.quantize import calibration
    from onnxkit.passes.quantize.runtime import tensor_elem_types

    method, count = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 256])],
        [numpy_helper.from_array(rng.standard_normal((256, 1024)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((1024, 256)).astype(np.float32), "w2")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    class Lazy:
        # Re-iterable and generated on the fly: the data itself takes no memory between samples.
        def __iter__(self):
            for index in range(count):
                yield {"x": np.random.default_rng(index).standard_normal((32, 256)).astype(np.float32)}

    types = tensor_elem_types(model)
    names = calibration.calibration_tensors(model, ("MatMul", "Relu"), types)
    settings = calibration.CalibrationSettings(method=method)
    tracemalloc.start()
    calibration.calibrate(model, names, types, Lazy(), settings)
    print(json.dumps({"peak": tracemalloc.get_traced_memory()[1]}))
""")


def peak_bytes(method: str, samples: int) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, method, str(samples)], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])["peak"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_peak_memory_at_1024_samples_is_within_1_2x_of_64(method: str) -> None:
    small, large = peak_bytes(method, 64), peak_bytes(method, 1024)
    # One sample's tapped tensors are ~1.3 MB: keeping every sample would take over 1 GB at 1,024 samples.
    assert small > 1_000_000
    assert large <= 1.2 * small, f"{method}: {large / 1e6:.1f} MB at 1024 samples vs {small / 1e6:.1f} MB at 64"
