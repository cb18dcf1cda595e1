"""The Transpose rules of ``fuse``: ``transpose-region`` cancels the Transposes around a region of elementwise ops,
which then runs in the layout the Transposes came from (channels-last exports wrap every layer in such a pair);
``shape-of-transpose`` reads a Transpose's shape from the Shape of its input."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from onnxkit.pass_base import PassContext, Site
from onnxkit.passes.fuse import FusePass
from tests.conftest import run_model
from tests.passes.test_fuse import fuse, make_model, op_types, tensor, value

NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def _channels_last_block(rng: np.random.Generator, *, leak: str | None = None) -> onnx.ModelProto:
    """Two NCHW inputs, each moved to NHWC; per-channel Add/Mul, a residual Add, Relu; back to NCHW.
    ``leak``: a region value that is also read by a non-elementwise op ("reduce") or is a graph output ("output")."""
    nodes = [
        helper.make_node("Transpose", ["a"], ["a_t"], perm=NHWC),
        helper.make_node("Transpose", ["b"], ["b_t"], perm=NHWC),
        helper.make_node("Add", ["a_t", "shift"], ["a_shifted"]),
        helper.make_node("Mul", ["a_shifted", "scale"], ["a_scaled"]),
        helper.make_node("Add", ["a_scaled", "b_t"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["act"]),
        helper.make_node("Transpose", ["act"], ["y"], perm=NCHW),
    ]
    outputs = [value("y", ["N", 4, 5, 6])]
    if leak == "reduce":
        nodes.append(helper.make_node("ReduceSum", ["act"], ["total"], keepdims=0))
        outputs.append(value("total", []))
    elif leak == "output":
        outputs.append(value("act", ["N", 5, 6, 4]))
    initializers = [
        tensor("shift", rng.standard_normal((1, 1, 1, 4)).astype(np.float32)),
        tensor("scale", rng.standard_normal(4).astype(np.float32)),
    ]
    return make_model(nodes, [value("a", ["N", 4, 5, 6]), value("b", ["N", 4, 5, 6])], outputs, initializers)


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {name: rng.standard_normal((2, 4, 5, 6)).astype(np.float32) for name in ("a", "b")}


def test_transposes_around_elementwise_ops_cancel_bit_exactly(rng):
    model = _channels_last_block(rng)
    fused, stats = fuse(model)
    assert "Transpose" not in op_types(fused)
    assert "cancelled the Transposes around 1 regions of elementwise ops" in stats
    feeds = _feeds(rng)
    for expected, actual in zip(run_model(model, feeds), run_model(fused, feeds)):
        np.testing.assert_array_equal(actual, expected)  # the same ops on the same operands


def test_region_read_by_a_layout_sensitive_op_or_a_graph_output_is_left_alone(rng):
    for leak in ("reduce", "output"):
        model = _channels_last_block(rng, leak=leak)
        result = FusePass()(ir.from_proto(model))
        assert op_types(ir.to_proto(result.model)).count("Transpose") == 3, leak


def test_a_region_with_an_input_in_another_layout_is_left_alone(rng):
    """``b`` enters without a Transpose: the region cannot change layout without a new Transpose for it."""
    nodes = [
        helper.make_node("Transpose", ["a"], ["a_t"], perm=NHWC),
        helper.make_node("Add", ["a_t", "b"], ["sum"]),
        helper.make_node("Transpose", ["sum"], ["y"], perm=NCHW),
    ]
    model = make_model(nodes, [value("a", [2, 4, 5, 6]), value("b", [2, 5, 6, 4])], [value("y", [2, 4, 5, 6])])
    assert not FusePass()(ir.from_proto(model)).modified


def test_a_disabled_site_keeps_its_transposes(rng):
    model = _channels_last_block(rng)
    first = FusePass()(ir.from_proto(model))
    site = next(s for s in first.sites if s.rule == "transpose-region")
    assert site == Site("transpose-region", "a_t")  # the first entering Transpose, unnamed: by its output
    narrowed = FusePass()
    narrowed.context = PassContext(disabled=frozenset({site}))
    assert op_types(ir.to_proto(narrowed(ir.from_proto(model)).model)).count("Transpose") == 3


# ---------------------------------------------------------------------------------------------------------
# shape-of-transpose: Shape(Transpose(x)) → Gather(Shape(x), perm) where Shape(x) exists


def _shapes_of_a_transpose(*, with_shape_of_x: bool = True, other_reader: bool = False) -> onnx.ModelProto:
    """tf2onnx's LSTM loops: x goes time-major, and the shapes of both layouts are read."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Shape", ["t"], ["shape_t"]),
        helper.make_node("Shape", ["t"], ["tail_t"], start=1),
    ]
    outputs = [value("shape_t", [3], onnx.TensorProto.INT64), value("tail_t", [2], onnx.TensorProto.INT64)]
    if with_shape_of_x:
        nodes.append(helper.make_node("Shape", ["x"], ["shape_x"]))
        outputs.append(value("shape_x", [3], onnx.TensorProto.INT64))
    if other_reader:
        nodes.append(helper.make_node("Relu", ["t"], ["r"]))
        outputs.append(value("r", ["T", "N", 7]))
    return make_model(nodes, [value("x", ["N", "T", 7])], outputs, opset=15)


def test_shapes_of_a_transpose_gather_from_the_shape_of_its_input(rng):
    model = _shapes_of_a_transpose()
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Gather", "Gather", "Shape"]
    assert stats == ["read 1 Transposes' shapes from their inputs' Shape instead"]
    feeds = {"x": rng.standard_normal((2, 5, 7)).astype(np.float32)}
    for expected, actual in zip(run_model(model, feeds), run_model(fused, feeds)):
        np.testing.assert_array_equal(actual, expected)


def test_a_transpose_stays_where_no_node_would_be_saved(rng):
    for model in (_shapes_of_a_transpose(with_shape_of_x=False), _shapes_of_a_transpose(other_reader=True)):
        assert op_types(ir.to_proto(FusePass()(ir.from_proto(model)).model)).count("Transpose") == 1


def test_a_region_inside_an_if_branch_cancels_too(rng):
    """Both branch outputs are the leaving Transposes' outputs: the region's last values take their names."""

    def branch(name: str, op: str) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Transpose", ["x"], [f"{name}_t"], perm=NHWC),
            helper.make_node(op, [f"{name}_t"], [f"{name}_a"]),
            helper.make_node("Transpose", [f"{name}_a"], [f"{name}_out"], perm=NCHW),
        ]
        return helper.make_graph(nodes, name, [], [value(f"{name}_out", [2, 4, 5, 6])])

    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg"))
    ]
    model = make_model(
        nodes, [value("flag", [], onnx.TensorProto.BOOL), value("x", [2, 4, 5, 6])], [value("y", [2, 4, 5, 6])]
    )
    fused, _ = fuse(model)
    assert "Transpose" not in op_types(fused)
    x = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)
    for flag in (True, False):
        feeds = {"flag": np.array(flag), "x": x}
        np.testing.assert_array_equal(run_model(fused, feeds)[0], run_model(model, feeds)[0])


@pytest.mark.parametrize("opset", [11, 13])
def test_a_region_through_squeeze_and_unsqueeze_cancels_with_renumbered_axes(rng, opset):
    """madmom_beats_tcn (a Keras Conv1D ported to torch): NCHW → NHWC, Squeeze the batch, Elu, Unsqueeze it,
    back to NCHW. Here the squeezed axis is H (1 in NHWC, 2 in NCHW), so the Squeeze's axes must move."""

    def axes_node(op: str, x: str, y: str, axes: list[int], name: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
        if opset < 13:
            return helper.make_node(op, [x], [y], axes=axes), []
        return helper.make_node(op, [x, name], [y]), [tensor(name, np.array(axes, dtype=np.int64))]

    squeeze, squeeze_axes = axes_node("Squeeze", "t", "s", [1], "squeeze_axes")
    unsqueeze, unsqueeze_axes = axes_node("Unsqueeze", "e", "u", [-3], "unsqueeze_axes")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=NHWC),
        squeeze,
        helper.make_node("Elu", ["s"], ["e"]),
        helper.make_node("Add", ["e", "bias"], ["b"]),
        unsqueeze,
        helper.make_node("Transpose", ["u"], ["y"], perm=NCHW),
    ]
    unsqueeze.input[0] = "b"
    initializers = [tensor("bias", rng.standard_normal(4).astype(np.float32)), *squeeze_axes, *unsqueeze_axes]
    model = make_model(nodes, [value("x", ["N", 4, 1, 6])], [value("y", ["N", 4, 1, 6])], initializers, opset=opset)
    fused, _ = fuse(model)
    assert "Transpose" not in op_types(fused)
    feeds = {"x": rng.standard_normal((2, 4, 1, 6)).astype(np.float32)}
    np.testing.assert_array_equal(run_model(fused, feeds)[0], run_model(model, feeds)[0])
