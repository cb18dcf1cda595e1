"""Small built-in ONNX models, built in code (no torch, no download), for the quick start and the tests.

Each carries the clutter that real exporters leave behind, so every pass has something to do:
Identity chains, unused nodes and initializers, Conv+BatchNormalization, an If whose branches read
values of the outer graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxkit.errors import SpecError

OPSET = 17


def _weights(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxkit.examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def mlp() -> onnx.ModelProto:
    """Two-layer perceptron on [batch, 16] with Identity chains, an unused branch and an unused weight."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Identity", ["x"], ["x_copy"]),
        helper.make_node("MatMul", ["x_copy", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["a1"]),
        helper.make_node("Identity", ["a1"], ["a1_copy"]),
        helper.make_node("Sigmoid", ["a1"], ["never_used"]),
        helper.make_node("MatMul", ["a1_copy", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logits"]),
    ]
    initializers = [
        _weights(rng, "w1", 16, 32),
        _weights(rng, "b1", 32),
        _weights(rng, "w2", 32, 10),
        _weights(rng, "b2", 10),
        _weights(rng, "stale_weight", 8, 8),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    return _model(graph)


def cnn() -> onnx.ModelProto:
    """Conv+BatchNormalization+Relu twice, pooling and a classifier, on [batch, 3, 16, 16]."""
    rng = np.random.default_rng(1)
    initializers = []
    nodes = []
    channels_in, x = 3, "image"
    for i, channels_out in enumerate((8, 16)):
        initializers += [
            _weights(rng, f"conv{i}.w", channels_out, channels_in, 3, 3),
            _weights(rng, f"conv{i}.b", channels_out, scale=0.1),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, channels_out).astype(np.float32), f"bn{i}.scale"),
            _weights(rng, f"bn{i}.bias", channels_out, scale=0.1),
            _weights(rng, f"bn{i}.mean", channels_out, scale=0.1),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, channels_out).astype(np.float32), f"bn{i}.var"),
        ]
        nodes += [
            helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization",
                [f"c{i}", f"bn{i}.scale", f"bn{i}.bias", f"bn{i}.mean", f"bn{i}.var"],
                [f"n{i}"],
                epsilon=1e-5,
            ),
            helper.make_node("Relu", [f"n{i}"], [f"r{i}"]),
            helper.make_node("Identity", [f"r{i}"], [f"id{i}"]),
        ]
        channels_in, x = channels_out, f"id{i}"
    initializers += [_weights(rng, "fc.w", 10, 16), _weights(rng, "fc.b", 10, scale=0.1)]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    return _model(graph)


def branchy() -> onnx.ModelProto:
    """An If whose branches read a weight and a value of the outer graph, with Identity clutter inside."""
    rng = np.random.default_rng(2)
    then_branch = helper.make_graph(
        [
            helper.make_node("Identity", ["hidden"], ["hidden_copy"]),
            helper.make_node("MatMul", ["hidden_copy", "w"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["batch", 4])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Neg", ["hidden"], ["negated"]),
            helper.make_node("Identity", ["negated"], ["negated_copy"]),
            helper.make_node("MatMul", ["negated_copy", "w"], ["else_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["batch", 4])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["hidden"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [_weights(rng, "w", 4, 4), numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    return _model(graph)


EXAMPLES: dict[str, Callable[[], onnx.ModelProto]] = {"mlp": mlp, "cnn": cnn, "branchy": branchy}


def list_examples() -> dict[str, str]:
    """Name → one-line description of each built-in example."""
    return {name: (build.__doc__ or "").strip().splitlines()[0] for name, build in EXAMPLES.items()}


def build_example(name: str) -> onnx.ModelProto:
    """The example model called ``name``."""
    if name not in EXAMPLES:
        raise SpecError(f"unknown example '{name}'", hint=f"examples: {', '.join(EXAMPLES)}")
    return EXAMPLES[name]()
