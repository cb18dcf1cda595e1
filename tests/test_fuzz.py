"""Fuzzing (issue 12): random valid graphs through every exact pass, and through ``simplify,fuse`` as a whole.

Hypothesis builds graphs from the ops real models are made of (elementwise ops, Conv, BatchNormalization,
MatMul, Gemm, Relu/Clip, Reshape, Transpose, Concat, Slice, Gather, ``If`` on a constant or a computed
condition), with random shapes, constant subgraphs and opsets from 11 to the newest onnx knows. Each pass
must keep ONNX Runtime's outputs within tolerance, or refuse with a user error (exit 2): a pass that fails,
hits an internal error, or drifts is a bug.

The default run tries ``FAST_EXAMPLES`` graphs; the slow run (CI) tries ``CI_EXAMPLES``. Both are
derandomized, so CI sees the same graphs every time; ``pytest tests/test_fuzz.py --hypothesis-seed=N``
(hypothesis' own plugin) explores others locally.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import hypothesis.core
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxkit import list_passes
from onnxkit.errors import OnnxkitError
from onnxkit.modelio import to_proto
from onnxkit.pass_base import SourcePass
from onnxkit.pipeline import Pipeline
from tests.conftest import run_model

FAST_EXAMPLES = 10
CI_EXAMPLES = 500
LATEST_OPSET = onnx.defs.onnx_opset_version()
ATOL, RTOL = 1e-4, 1e-3

# The exact passes that start from ONNX (``export`` starts from torch), then the usual pipeline.
SPECS = sorted(
    e.name
    for e in list_passes()
    if e.pass_class is not None and e.pass_class.kind == "exact" and not issubclass(e.pass_class, SourcePass)
) + ["simplify,fuse"]

# The same graphs on every run (CI's fixed seed) unless --hypothesis-seed asks for others: a derandomized test
# ignores that seed, and the option is read (hypothesis' pytest plugin) before this module is collected.
# Building and checking a graph takes a while: no deadline, no health check on it.
_COMMON: dict[str, Any] = {
    "deadline": None,
    "derandomize": hypothesis.core.global_force_seed is None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}


# ---------------------------------------------------------------------------------------------------------
# Building random graphs


@dataclasses.dataclass
class Builder:
    """A graph under construction: nodes, initializers, and the tensors available so far with their shapes."""

    draw: Any
    opset: int
    nodes: list[onnx.NodeProto] = dataclasses.field(default_factory=list)
    initializers: list[onnx.TensorProto] = dataclasses.field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    count: int = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "c") -> str:
        """A constant: an initializer or a Constant node, as models have both."""
        name = self.name(prefix)
        if self.draw(st.booleans()):
            self.initializers.append(numpy_helper.from_array(array, name))
        else:
            self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array)))
        return name

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], **attributes: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
        self.shapes[out] = shape
        return out

    def floats(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> np.ndarray:
        seed = self.draw(st.integers(0, 2**16))
        return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def _elementwise(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    op = b.draw(
        st.sampled_from(
            ["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Clip", "Add", "Sub", "Mul", "Div", "AddSelf", "ConstChain"]
        )
    )
    if op in ("Relu", "Sigmoid", "Tanh", "Abs", "Neg"):
        return b.add(op, [x], shape)
    if op == "Clip":
        low = float(b.draw(st.floats(-1, 0)))
        return b.add("Clip", [x, b.const(np.array(low, np.float32)), b.const(np.array(low + 1.5, np.float32))], shape)
    if op == "AddSelf":  # two paths from the same tensor meeting again
        return b.add(b.draw(st.sampled_from(["Add", "Mul", "Sub"])), [x, b.add("Relu", [x], shape)], shape)
    if op == "ConstChain":  # a constant subgraph: folding it must give the same value
        base = b.const(b.floats(shape[-1:]))
        folded = b.add(
            "Mul",
            [b.add("Add", [base, b.const(b.floats(shape[-1:]))], shape[-1:]), b.const(np.array(0.5, np.float32))],
            shape[-1:],
        )
        return b.add("Add", [x, folded], shape)
    # A binary op with a constant of a broadcastable shape: a scalar, the last axis, or the whole shape.
    kind = b.draw(st.sampled_from(["scalar", "last", "full", "channel"]))
    const_shape = {
        "scalar": (),
        "last": shape[-1:],
        "full": shape,
        "channel": (shape[1],) + (1,) * (len(shape) - 2) if len(shape) > 2 else shape[-1:],
    }[kind]
    values = b.floats(const_shape, 0.5, 2.0) if op == "Div" else b.floats(const_shape)
    return b.add(op, [x, b.const(values)], shape)


def _conv(b: Builder, x: str) -> str:
    n, c, h, w = b.shapes[x]
    out_channels = b.draw(st.integers(1, 4))
    kernel = b.draw(st.sampled_from([1, 3]))
    pad = b.draw(st.sampled_from([0, kernel // 2]))
    h2, w2 = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
    assume(h2 >= 1 and w2 >= 1)
    inputs = [x, b.const(b.floats((out_channels, c, kernel, kernel)))]
    if b.draw(st.booleans()):
        inputs.append(b.const(b.floats((out_channels,))))
    return b.add("Conv", inputs, (n, out_channels, h2, w2), kernel_shape=[kernel, kernel], pads=[pad] * 4)


def _batch_norm(b: Builder, x: str) -> str:
    channels = b.shapes[x][1]
    params = [
        b.floats((channels,), 0.5, 1.5),
        b.floats((channels,)),
        b.floats((channels,)),
        b.floats((channels,), 0.5, 2.0),
    ]
    return b.add("BatchNormalization", [x, *(b.const(p) for p in params)], b.shapes[x], epsilon=1e-5)


def _to_matrix(b: Builder, x: str) -> str:
    """Flatten to [N, rest] with a Reshape (a constant shape) or Flatten."""
    shape = b.shapes[x]
    if len(shape) == 2:
        return x
    rest = int(np.prod(shape[1:]))
    if b.draw(st.booleans()):
        return b.add("Reshape", [x, b.const(np.array([shape[0], -1], np.int64), "shape")], (shape[0], rest))
    return b.add("Flatten", [x], (shape[0], rest), axis=1)


def _matmul(b: Builder, x: str) -> str:
    x = _to_matrix(b, x)
    m, k = b.shapes[x]
    n = b.draw(st.integers(1, 6))
    if b.draw(st.booleans()):
        out = b.add("MatMul", [x, b.const(b.floats((k, n)))], (m, n))
        return b.add("Add", [out, b.const(b.floats((n,)))], (m, n)) if b.draw(st.booleans()) else out
    trans_b = b.draw(st.integers(0, 1))
    weight = b.floats((n, k) if trans_b else (k, n))
    inputs = [x, b.const(weight)] + ([b.const(b.floats((n,)))] if b.draw(st.booleans()) else [])
    return b.add(
        "Gemm",
        inputs,
        (m, n),
        transB=trans_b,
        alpha=float(b.draw(st.sampled_from([1.0, 0.5]))),
        beta=float(b.draw(st.sampled_from([1.0, 2.0]))),
    )


def _transpose(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    perm = b.draw(st.permutations(range(len(shape))))
    return b.add("Transpose", [x], tuple(shape[p] for p in perm), perm=list(perm))


def _reshape(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    if len(shape) == 4:
        target: tuple[int, ...] = (shape[0], shape[1], shape[2] * shape[3])
    elif len(shape) == 3:
        target = (shape[0], shape[1] * shape[2])
    else:
        target = (shape[0], 1, shape[1])
    spec = list(target)
    if b.draw(st.booleans()):
        spec[-1] = -1
    return b.add("Reshape", [x, b.const(np.array(spec, np.int64), "shape")], target)


def _concat(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    axis = b.draw(st.integers(0, len(shape) - 1))
    other = b.add("Sigmoid", [x], shape) if b.draw(st.booleans()) else b.const(b.floats(shape))
    out_shape = tuple(d * 2 if i == axis else d for i, d in enumerate(shape))
    return b.add("Concat", [x, other], out_shape, axis=axis - len(shape) if b.draw(st.booleans()) else axis)


def _slice(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    axis = b.draw(st.integers(0, len(shape) - 1))
    size = shape[axis]
    start = b.draw(st.integers(0, size - 1))
    end = b.draw(st.integers(start + 1, size))
    step_end = end if b.draw(st.booleans()) else 2**62  # "to the end", as exporters write it
    out_shape = tuple(
        end - start if (i == axis and step_end == end) else (size - start if i == axis else d)
        for i, d in enumerate(shape)
    )
    inputs = [
        x,
        b.const(np.array([start], np.int64)),
        b.const(np.array([step_end], np.int64)),
        b.const(np.array([axis], np.int64)),
    ]
    return b.add("Slice", inputs, out_shape)


def _gather(b: Builder, x: str) -> str:
    shape = b.shapes[x]
    axis = b.draw(st.integers(0, len(shape) - 1))
    size = shape[axis]
    count = b.draw(st.integers(1, 3))
    indices = np.array(b.draw(st.lists(st.integers(-size, size - 1), min_size=count, max_size=count)), np.int64)
    if b.draw(st.booleans()) and len(shape) > 2:  # every tensor keeps rank 2 or more
        index = b.const(np.array(indices[0], np.int64), "index")  # a scalar index drops the axis
        return b.add("Gather", [x, index], tuple(d for i, d in enumerate(shape) if i != axis), axis=axis)
    out_shape = tuple(count if i == axis else d for i, d in enumerate(shape))
    return b.add("Gather", [x, b.const(indices, "indices")], out_shape, axis=axis)


def _if(b: Builder, x: str) -> str:
    """Both branches keep the shape; the condition is a constant (foldable) or computed from the data."""
    shape = b.shapes[x]
    if b.draw(st.booleans()):
        condition = b.const(np.array(b.draw(st.booleans())), "cond")
    else:
        total = (
            b.add("ReduceSum", [x], (), keepdims=0)
            if b.opset < 13
            else b.add("ReduceSum", [x, b.const(np.array(list(range(len(shape))), np.int64), "axes")], (), keepdims=0)
        )
        condition = b.add("Greater", [total, b.const(np.array(0.0, np.float32))], ())
    branches = []
    for op in (
        b.draw(st.sampled_from(["Relu", "Neg", "Sigmoid"])),
        b.draw(st.sampled_from(["Abs", "Tanh", "Identity"])),
    ):
        out = b.name("branch")
        value = helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))
        branches.append(helper.make_graph([helper.make_node(op, [x], [out])], b.name("body"), [], [value]))
    return b.add("If", [condition], shape, then_branch=branches[0], else_branch=branches[1])


def _conv_bn(b: Builder, x: str) -> str:
    """What exporters write and ``fuse`` folds: Conv, BatchNormalization, maybe a per-channel scale."""
    out = _batch_norm(b, _conv(b, x))
    if b.draw(st.booleans()):
        channels = b.shapes[out][1]
        out = b.add("Mul", [out, b.const(b.floats((channels, 1, 1)))], b.shapes[out])
    return out


def _transpose_pair(b: Builder, x: str) -> str:
    """Two Transposes in a row: they cancel, or compose into one."""
    first = _transpose(b, x)
    if b.draw(st.booleans()):
        perm = list(b.nodes[-1].attribute[0].ints)
        inverse = [perm.index(axis) for axis in range(len(perm))]
        return b.add("Transpose", [first], b.shapes[x], perm=inverse)
    return _transpose(b, first)


def _leftovers(b: Builder, x: str) -> str:
    """What ``cleanup`` removes: an Identity on the path, and a node whose output nobody reads."""
    b.add("Relu", [x], b.shapes[x])  # dead
    return b.add("Identity", [x], b.shapes[x])


OPS = {
    "elementwise": _elementwise,
    "conv": _conv,
    "batchnorm": _batch_norm,
    "matmul": _matmul,
    "transpose": _transpose,
    "reshape": _reshape,
    "concat": _concat,
    "slice": _slice,
    "gather": _gather,
    "if": _if,
    "conv-bn": _conv_bn,
    "transpose-pair": _transpose_pair,
    "leftovers": _leftovers,
}
NEEDS_RANK4 = {"conv", "batchnorm", "conv-bn"}


@st.composite
def random_models(draw: Any) -> onnx.ModelProto:
    opset = draw(st.integers(11, LATEST_OPSET))
    b = Builder(draw, opset)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    if draw(st.booleans()):
        shape = shape[:2]
    b.shapes["x"] = shape
    current, outputs = "x", []
    for _ in range(draw(st.integers(1, 8))):
        choices = [name for name in OPS if name not in NEEDS_RANK4 or len(b.shapes[current]) == 4]
        current = OPS[draw(st.sampled_from(choices))](b, current)
        if draw(st.integers(0, 4)) == 0:
            outputs.append(current)  # an intermediate tensor that is also a graph output
    outputs = list(dict.fromkeys([*outputs, current]))
    graph = helper.make_graph(
        b.nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(b.shapes[name])) for name in outputs],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, onnx.helper.find_min_ir_version_for([model.opset_import[0]]) + 3)
    return model


# ---------------------------------------------------------------------------------------------------------
# The property


def _reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    try:
        onnx.checker.check_model(model, full_check=True)
        return run_model(model, feeds)
    except Exception:  # the generator wrote something onnx or ORT refuses at this opset (ORT lacks a kernel)
        return None


def check_passes_keep_outputs(model: onnx.ModelProto) -> None:
    feeds = {
        "x": np.random.default_rng(0)
        .standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
        .astype(np.float32)
    }
    expected = _reference(model, feeds)
    assume(expected is not None)
    note(onnx.printer.to_text(model))
    for spec in SPECS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = Pipeline.parse(spec).run(model, check="off", on_fail="stop")
        except OnnxkitError as e:
            assert e.exit_code == 2, f"{spec} failed on a valid model: {e.message}"
            continue  # a clean refusal
        actual = run_model(to_proto(result.model), feeds)
        assert len(actual) == len(expected), f"{spec} changed the number of outputs"
        for name, want, got in zip([o.name for o in model.graph.output], expected, actual):
            assert got.shape == want.shape, f"{spec}: output {name} shape {got.shape} != {want.shape}"
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL, err_msg=f"{spec}: output {name}")


@settings(max_examples=FAST_EXAMPLES, **_COMMON)
@given(random_models())
def test_exact_passes_keep_random_graphs(model: onnx.ModelProto) -> None:
    check_passes_keep_outputs(model)


@pytest.mark.slow
@settings(max_examples=CI_EXAMPLES, **_COMMON)
@given(random_models())
def test_exact_passes_keep_random_graphs_ci(model: onnx.ModelProto) -> None:
    check_passes_keep_outputs(model)
