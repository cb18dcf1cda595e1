"""The ``fuse`` pass on small inline models: each fusion fires on its pattern, leaves its near-misses alone,
keeps outputs equal in real ONNX Runtime, keeps graph input/output names, and changes nothing on a second run."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxkit import Pipeline
from onnxkit.errors import SpecError
from onnxkit.passes.fuse import FUSION_NAMES, FusePass
from tests.helpers import assert_same_outputs

FLOAT = TensorProto.FLOAT


# ---------------------------------------------------------------------------------------------------------
# Helpers


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def weights(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return tensor(name, (rng.standard_normal(shape) * 0.5).astype(np.float32))


def batchnorm_params(rng: np.random.Generator, prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [
        tensor(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
        tensor(f"{prefix}_bias", rng.standard_normal(channels).astype(np.float32)),
        tensor(f"{prefix}_mean", rng.standard_normal(channels).astype(np.float32)),
        tensor(f"{prefix}_var", rng.uniform(0.5, 2.0, channels).astype(np.float32)),
    ]


def batchnorm(prefix: str, x: str, y: str, **attributes) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization",
        [x, f"{prefix}_scale", f"{prefix}_bias", f"{prefix}_mean", f"{prefix}_var"],
        [y],
        **attributes,
    )


def make_model(
    nodes, inputs, outputs, initializers=(), opset: int = 17, functions=(), extra_opsets=()
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets], functions=list(functions)
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def value(name: str, shape, dtype=FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def fuse(model: onnx.ModelProto, **options) -> tuple[onnx.ModelProto, list[str]]:
    """Run ``fuse`` through the pipeline (which checks the model, its signature and parity after the pass),
    check that a second run changes nothing, and return the fused model and the pass's statistics."""
    spec = Pipeline([FusePass(**options)]).to_string()
    result = Pipeline.parse(spec).run(model, check="each")
    fused = ir.to_proto(result.model)
    onnx.checker.check_model(fused)
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError:
        pass  # a model that declares a wrong shape fails inference before and after
    else:
        onnx.shape_inference.infer_shapes(fused, strict_mode=True)
    again = FusePass(**options)(ir.from_proto(fused))
    assert not again.modified, f"second run changed the model: {again.stats}"
    return fused, result.report.passes[0].stats


def op_types(model: onnx.ModelProto) -> list[str]:
    """Op types of every node, in subgraphs and functions too; contrib ops as ``domain::Op``."""
    found = []

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.append(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            found.append(node.op_type)
    return found


def opset_domains(model: onnx.ModelProto) -> set[str]:
    return {o.domain for o in model.opset_import}


# ---------------------------------------------------------------------------------------------------------
# BatchNormalization folding


def conv_bn_model(
    rng, *, bias: bool = True, extra_consumer: bool = False, constant_weights: bool = False
) -> onnx.ModelProto:
    conv_inputs = ["x", "w"] + (["b"] if bias else [])
    nodes = [helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1]), batchnorm("bn", "c", "y")]
    outputs = [value("y", ["N", 4, 6, 6])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
        outputs.append(value("r", ["N", 4, 6, 6]))
    initializers = batchnorm_params(rng, "bn", 4)
    layer_weights = [weights(rng, "w", 4, 3, 3, 3)] + ([weights(rng, "b", 4)] if bias else [])
    if constant_weights:  # weights held by Constant nodes, as some converters write them
        nodes = [helper.make_node("Constant", [], [w.name], value=w) for w in layer_weights] + nodes
    else:
        initializers += layer_weights
    return make_model(nodes, [value("x", ["N", 3, 6, 6])], outputs, initializers)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("constant_weights", [False, True])
def test_conv_bn_folds_into_conv(rng, bias, constant_weights):
    model = conv_bn_model(rng, bias=bias, constant_weights=constant_weights)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Conv"]
    assert stats == ["folded 1 BatchNormalization into Conv"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)})


def test_bn_whose_input_feeds_two_consumers_stays(rng):
    model = conv_bn_model(rng, extra_consumer=True)
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["BatchNormalization", "Conv", "Relu"]
    assert stats == []


def test_bn_in_training_mode_stays(rng):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), batchnorm("bn", "c", "y", training_mode=1)]
    nodes[1].output.extend(["running_mean", "running_var"])  # training mode must name them
    model = make_model(
        nodes,
        [value("x", [2, 3, 4, 4])],
        [value("y", [2, 4, 2, 2])],
        [weights(rng, "w", 4, 3, 3, 3), *batchnorm_params(rng, "bn", 4)],
        opset=15,
    )
    assert "BatchNormalization" in op_types(fuse(model)[0])


def test_conv_with_weights_fed_by_the_user_stays(rng):
    """An initializer that is also a graph input can be overridden at run time: it is not a constant."""
    model = conv_bn_model(rng)
    model.graph.input.append(value("w", [4, 3, 3, 3]))
    fused, _ = fuse(model)
    assert "BatchNormalization" in op_types(fused)


def test_conv_transpose_bn_folds_per_group(rng):
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=2, strides=[2, 2]),
        batchnorm("bn", "c", "y"),
    ]
    model = make_model(
        nodes,
        [value("x", ["N", 4, 5, 5])],
        [value("y", ["N", 6, 11, 11])],
        [weights(rng, "w", 4, 3, 3, 3), weights(rng, "b", 6), *batchnorm_params(rng, "bn", 6)],
    )
    fused, stats = fuse(model)
    assert op_types(fused) == ["ConvTranspose"]
    assert stats == ["folded 1 BatchNormalization into ConvTranspose"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 4, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folds(rng, trans_b):
    w_shape = (5, 8) if trans_b else (8, 5)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b, alpha=0.7, beta=0.5),
        batchnorm("bn", "g", "y"),
    ]
    model = make_model(
        nodes,
        [value("x", ["N", 8])],
        [value("y", ["N", 5])],
        [weights(rng, "w", *w_shape), weights(rng, "b", 5), *batchnorm_params(rng, "bn", 5)],
    )
    fused, stats = fuse(model)
    assert op_types(fused) == ["Gemm"]
    assert stats == ["folded 1 BatchNormalization into Gemm/MatMul"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 8)).astype(np.float32)})


def test_matmul_bn_becomes_gemm_in_2d_only(rng):
    params = [weights(rng, "w", 8, 5), *batchnorm_params(rng, "bn", 5)]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), batchnorm("bn", "m", "y")]
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 5])], params)
    fused, _ = fuse(model)
    assert op_types(fused) == ["Gemm"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 8)).astype(np.float32)})
    # 3-D: BatchNormalization normalizes axis 1, which is not the MatMul's output-channel axis.
    params = [weights(rng, "w", 8, 5), *batchnorm_params(rng, "bn", 4)]
    model3d = make_model(nodes, [value("x", ["N", 4, 8])], [value("y", ["N", 4, 5])], params)
    assert sorted(op_types(fuse(model3d)[0])) == ["BatchNormalization", "MatMul"]


# ---------------------------------------------------------------------------------------------------------
# Constant Mul/Add folding


def test_per_channel_mul_and_add_fold_into_conv(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"]),
        helper.make_node("Mul", ["scale", "c"], ["m"]),
        helper.make_node("Add", ["m", "shift"], ["s"]),
        helper.make_node("Div", ["s", "divisor"], ["y"]),
    ]
    initializers = [
        weights(rng, "w", 4, 3, 1, 1),
        weights(rng, "b", 4),
        tensor("scale", rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32)),
        tensor("shift", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)),
        tensor("divisor", np.float32(3.0)),
    ]
    model = make_model(nodes, [value("x", ["N", 3, 5, 5])], [value("y", ["N", 4, 5, 5])], initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Conv"]
    assert stats == ["folded 3 constant Mul/Add/Sub/Div into Conv/ConvTranspose"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})


@pytest.mark.parametrize(
    "constant_shape", [(4,), (1, 1, 1, 1, 4), (2, 4, 1, 1)], ids=["last-axis", "raises-rank", "batch-axis"]
)
def test_constant_that_broadcasts_past_the_channel_axis_stays(rng, constant_shape):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])]
    out_shape = (
        [2, 4, 4, 4] if len(constant_shape) == 4 else [1, 2, 4, 4, 4] if len(constant_shape) == 5 else [2, 4, 4, 4]
    )
    model = make_model(
        nodes,
        [value("x", [2, 3, 4, 4])],
        [value("y", out_shape)],
        [weights(rng, "w", 4, 3, 1, 1), tensor("k", rng.uniform(1, 2, constant_shape).astype(np.float32))],
    )
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Conv", "Mul"]
    assert stats == []


def test_non_constant_add_after_conv_stays(rng):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "z"], ["y"])]
    model = make_model(
        nodes,
        [value("x", [2, 3, 4, 4]), value("z", [1, 4, 1, 1])],
        [value("y", [2, 4, 4, 4])],
        [weights(rng, "w", 4, 3, 1, 1)],
    )
    assert sorted(op_types(fuse(model)[0])) == ["Add", "Conv"]


def test_shared_weights_are_not_duplicated(rng):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"]),
        helper.make_node("Conv", ["x", "w"], ["c2"]),
        helper.make_node("Mul", ["c1", "k"], ["y1"]),
    ]
    model = make_model(
        nodes,
        [value("x", [2, 3, 4, 4])],
        [value("y1", [2, 4, 4, 4]), value("c2", [2, 4, 4, 4])],
        [weights(rng, "w", 4, 3, 1, 1), tensor("k", np.full((4, 1, 1), 2.0, np.float32))],
    )
    assert sorted(op_types(fuse(model)[0])) == ["Conv", "Conv", "Mul"]


def test_equal_constants_the_fusions_create_are_one_initializer(rng):
    """Two Convs without a bias absorb the same shift: the two biases are equal, and a simplify after fuse
    would merge them, so ``simplify,fuse`` run twice would change the model. fuse keeps one."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Add", ["c1", "shift"], ["y1"]),
        helper.make_node("Conv", ["x", "w2"], ["c2"]),
        helper.make_node("Add", ["c2", "shift"], ["y2"]),
    ]
    initializers = [
        weights(rng, "w1", 4, 3, 1, 1),
        weights(rng, "w2", 4, 3, 1, 1),
        tensor("shift", rng.standard_normal((4, 1, 1)).astype(np.float32)),
    ]
    outputs = [value("y1", ["N", 4, 5, 5]), value("y2", ["N", 4, 5, 5])]
    model = make_model(nodes, [value("x", ["N", 3, 5, 5])], outputs, initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Conv", "Conv"]
    assert fused.graph.node[0].input[2] == fused.graph.node[1].input[2]
    assert len(fused.graph.initializer) == 3  # two weights, one bias
    assert stats == [
        "folded 2 constant Mul/Add/Sub/Div into Conv/ConvTranspose",
        "merged 1 equal constants the fusions created",
    ]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)})


def test_gemm_and_matmul_absorb_constant_scales(rng):
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], transB=1),
        helper.make_node("Mul", ["g", "k1"], ["gm"]),
        helper.make_node("Sub", ["gm", "k2"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["m"]),
        helper.make_node("Div", ["m", "k3"], ["y"]),
    ]
    initializers = [
        weights(rng, "w1", 6, 8),
        weights(rng, "b1", 6),
        tensor("k1", rng.uniform(1, 2, (1, 6)).astype(np.float32)),
        tensor("k2", rng.standard_normal(6).astype(np.float32)),
        weights(rng, "w2", 6, 3),
        tensor("k3", np.float32(4.0)),
    ]
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 3])], initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Gemm", "MatMul"]
    assert stats == ["folded 3 constant Mul/Add/Sub/Div into Gemm/MatMul"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((3, 8)).astype(np.float32)})


# ---------------------------------------------------------------------------------------------------------
# MatMul + Add → Gemm


def test_2d_matmul_add_becomes_gemm(rng):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["y"])]
    model = make_model(
        nodes, [value("x", ["N", 8])], [value("y", ["N", 4])], [weights(rng, "w", 8, 4), weights(rng, "b", 4)]
    )
    fused, stats = fuse(model)
    assert op_types(fused) == ["Gemm"]
    assert stats == ["fused 1 MatMul+Add into Gemm"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((5, 8)).astype(np.float32)})


@pytest.mark.parametrize(
    ("x_shape", "bias_shape", "y_shape"),
    [
        (["N", 3, 8], [4], ["N", 3, 4]),  # 3-D: Gemm is 2-D only
        ([5, 8], [2, 5, 4], [2, 5, 4]),  # the addend raises the rank
        ([5, 8], [3, 1], [3, 4]),  # wrong: would need bidirectional broadcast... ruled out by shape
    ],
    ids=["3d", "rank-raising-addend", "addend-rows-mismatch"],
)
def test_matmul_add_that_is_not_a_gemm_stays(rng, x_shape, bias_shape, y_shape):
    if bias_shape == [3, 1]:
        x_shape, y_shape = [1, 8], [3, 4]  # [1,4] + [3,1] broadcasts both ways; Gemm's C cannot
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    model = make_model(
        nodes, [value("x", x_shape)], [value("y", y_shape)], [weights(rng, "w", 8, 4), weights(rng, "b", *bias_shape)]
    )
    assert sorted(op_types(fuse(model)[0])) == ["Add", "MatMul"]


# ---------------------------------------------------------------------------------------------------------
# Layout chains


def test_reshape_chain_keeps_dynamic_dims_dynamic(rng):
    nodes = [
        helper.make_node("Squeeze", ["x", "axes"], ["s"]),
        helper.make_node("Unsqueeze", ["s", "axes2"], ["u"]),
        helper.make_node("Reshape", ["u", "shape"], ["r"]),
        helper.make_node("Flatten", ["r"], ["y"], axis=1),
    ]
    initializers = [
        tensor("axes", np.array([1], np.int64)),
        tensor("axes2", np.array([2], np.int64)),
        tensor("shape", np.array([0, 0, -1], np.int64)),
    ]
    model = make_model(nodes, [value("x", ["N", 1, 12, "T"])], [value("y", ["N", None])], initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["Flatten"]  # the chain is [N, 12*T]: Reshape [0, -1], written as Flatten(axis=1)
    assert stats == ["collapsed 3 Reshape/Squeeze/Unsqueeze/Flatten pairs and shape-keeping Reshapes"]
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for batch, time in ((1, 2), (3, 5)):
        assert_same_outputs(model, fused, {"x": rng.standard_normal((batch, 1, 12, time)).astype(np.float32)})


def test_reshape_chain_runs_on_an_empty_batch_where_the_original_does(rng):
    """A -1 beside a copied dimension fails in ORT when that dimension is 0 (an empty batch): the collapsed
    pair must not write one where the pair it replaces ran. [N,64,T] → [N,64,1,T] → [N,4,16,T] would collapse
    to Reshape [0, 4, 16, -1]."""
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Reshape", ["u", "shape"], ["y"])]
    initializers = [tensor("axes", np.array([2], np.int64)), tensor("shape", np.array([0, 4, 16, 0], np.int64))]
    model = make_model(nodes, [value("x", ["N", 64, "T"])], [value("y", ["N", 4, 16, "T"])], initializers)
    fused, _ = fuse(model)
    for batch in (0, 2):
        assert_same_outputs(model, fused, {"x": rng.standard_normal((batch, 64, 5)).astype(np.float32)})


def test_pair_that_cancels_keeps_graph_input_and_output_names(rng):
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Squeeze", ["u", "axes"], ["y"])]
    model = make_model(nodes, [value("x", ["N", 3])], [value("y", ["N", 3])], [tensor("axes", np.array([0], np.int64))])
    fused, _ = fuse(model)
    assert op_types(fused) == ["Identity"]
    assert [i.name for i in fused.graph.input] == ["x"] and [o.name for o in fused.graph.output] == ["y"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_pairs_merge_at_either_axes_form(rng, opset):
    if opset < 13:
        nodes = [
            helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
            helper.make_node("Unsqueeze", ["u"], ["y"], axes=[-1]),
        ]
        initializers = []
    else:
        nodes = [helper.make_node("Unsqueeze", ["x", "a0"], ["u"]), helper.make_node("Unsqueeze", ["u", "a1"], ["y"])]
        initializers = [tensor("a0", np.array([0], np.int64)), tensor("a1", np.array([-1], np.int64))]
    model = make_model(nodes, [value("x", ["N", 3])], [value("y", [1, "N", 3, 1])], initializers, opset=opset)
    fused, _ = fuse(model)
    assert op_types(fused) == ["Unsqueeze"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_declared_output_shape_is_not_trusted(rng):
    """The model declares a wrong output shape; the collapsed chain must compute the real one."""
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]), helper.make_node("Flatten", ["r"], ["y"], axis=1)]
    initializers = [tensor("s1", np.array([0, 3, -1], np.int64))]
    model = make_model(nodes, [value("x", [2, 12])], [value("y", [2, 99])], initializers)
    fused, _ = fuse(model)
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 12)).astype(np.float32)})
    assert fused.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 99  # the declaration is left as it was


def test_transpose_pairs_compose_or_cancel(rng):
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["t1"], ["a"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["a"], ["t2"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t2"], ["y"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["a"], ["z"]),
    ]
    model = make_model(nodes, [value("x", [2, 3, 4])], [value("y", [3, 4, 2]), value("z", [2, 3, 4])])
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Relu", "Transpose"]
    assert stats == ["collapsed 2 Transpose pairs"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


# ---------------------------------------------------------------------------------------------------------
# LayerNormalization and GELU


def decomposed_layer_norm(opset: int, *, residual_after: bool = False) -> tuple[list, list]:
    """TorchScript's decomposition of nn.LayerNorm(8), with ReduceMean axes as attribute or input by opset."""

    def reduce_mean(x: str, y: str) -> onnx.NodeProto:
        if opset >= 18:
            return helper.make_node("ReduceMean", [x, "ln_axes"], [y])
        return helper.make_node("ReduceMean", [x], [y], axes=[-1])

    nodes = [
        reduce_mean("x", "mean"),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        reduce_mean("d2", "var"),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["ns"]),
        helper.make_node("Add", ["ns", "residual" if residual_after else "beta"], ["y"]),
    ]
    rng = np.random.default_rng(1)
    initializers = [
        tensor("two", np.float32(2.0)),
        tensor("eps", np.float32(1e-5)),
        tensor("gamma", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        tensor("beta", rng.standard_normal(8).astype(np.float32)),
    ]
    if opset >= 18:
        initializers.append(tensor("ln_axes", np.array([-1], np.int64)))
    return nodes, initializers


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposed_layer_norm_becomes_layer_normalization(rng, opset):
    nodes, initializers = decomposed_layer_norm(opset)
    model = make_model(nodes, [value("x", ["N", "S", 8])], [value("y", ["N", "S", 8])], initializers, opset=opset)
    fused, stats = fuse(model)
    assert op_types(fused) == ["LayerNormalization"]
    assert stats == [
        "fused 1 decomposed layer norms into LayerNormalization",
        "folded 2 constant Mul/Add into LayerNormalization",
    ]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 8)).astype(np.float32)})


def test_layer_norm_needs_opset_17(rng):
    nodes, initializers = decomposed_layer_norm(16)
    model = make_model(nodes, [value("x", ["N", 8])], [value("y", ["N", 8])], initializers, opset=16)
    assert "LayerNormalization" not in op_types(fuse(model)[0])


def test_residual_added_after_layer_norm_is_not_its_bias(rng):
    nodes, initializers = decomposed_layer_norm(17, residual_after=True)
    model = make_model(nodes, [value("x", ["N", 8]), value("residual", ["N", 8])], [value("y", ["N", 8])], initializers)
    fused, _ = fuse(model)
    assert sorted(op_types(fused)) == ["Add", "LayerNormalization"]
    feeds = {
        "x": rng.standard_normal((3, 8)).astype(np.float32),
        "residual": rng.standard_normal((3, 8)).astype(np.float32),
    }
    assert_same_outputs(model, fused, feeds)


def test_reciprocal_form_with_squared_product_fuses(rng):
    """(x - mean) * Reciprocal(sqrt(var + eps)) with the variance of d * d, and no scale or shift."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["eps", "var"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Reciprocal", ["std"], ["inv"]),
        helper.make_node("Mul", ["inv", "d"], ["y"]),
    ]
    model = make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 6])], [tensor("eps", np.float32(1e-6))])
    fused, _ = fuse(model)
    assert op_types(fused) == ["LayerNormalization"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((4, 6)).astype(np.float32)})


def test_constant_scale_and_shift_fold_into_layer_normalization(rng):
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g"], ["n"], axis=-1),
        helper.make_node("Mul", ["n", "k"], ["m"]),
        helper.make_node("Add", ["shift", "m"], ["y"]),
        helper.make_node("Mul", ["y", "per_row"], ["z"]),
    ]
    initializers = [
        tensor("g", rng.uniform(0.5, 1.5, 6).astype(np.float32)),
        tensor("k", rng.uniform(0.5, 1.5, (1, 6)).astype(np.float32)),
        tensor("shift", rng.standard_normal(6).astype(np.float32)),
        tensor("per_row", rng.uniform(0.5, 1.5, (4, 1)).astype(np.float32)),
    ]  # varies across rows
    model = make_model(nodes, [value("x", [4, 6])], [value("z", [4, 6])], initializers)
    fused, stats = fuse(model)
    assert op_types(fused) == ["LayerNormalization", "Mul"]
    assert stats == ["folded 2 constant Mul/Add into LayerNormalization"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((4, 6)).astype(np.float32)})


def erf_gelu_nodes() -> tuple[list, list]:
    """TorchScript's GELU: (x * (erf(x / sqrt 2) + 1)) * 0.5."""
    nodes = [
        helper.make_node("Div", ["x", "sqrt2"], ["t"]),
        helper.make_node("Erf", ["t"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["x", "e1"], ["xe"]),
        helper.make_node("Mul", ["xe", "half"], ["y"]),
    ]
    return nodes, [
        tensor("sqrt2", np.float32(np.sqrt(2))),
        tensor("one", np.float32(1)),
        tensor("half", np.float32(0.5)),
    ]


def tanh_gelu_nodes() -> tuple[list, list]:
    """GELU's tanh form, grouped as HF's NewGELUActivation writes it: 0.5 * x * (1 + tanh(c * (x + 0.044715 * x^3)))."""
    nodes = [
        helper.make_node("Pow", ["x", "three"], ["x3"]),
        helper.make_node("Mul", ["k", "x3"], ["kx3"]),
        helper.make_node("Add", ["x", "kx3"], ["inner"]),
        helper.make_node("Mul", ["c", "inner"], ["arg"]),
        helper.make_node("Tanh", ["arg"], ["t"]),
        helper.make_node("Add", ["one", "t"], ["t1"]),
        helper.make_node("Mul", ["half", "x"], ["hx"]),
        helper.make_node("Mul", ["hx", "t1"], ["y"]),
    ]
    initializers = [
        tensor("three", np.float32(3)),
        tensor("k", np.float32(0.044715)),
        tensor("c", np.float32(np.sqrt(2 / np.pi))),
        tensor("one", np.float32(1)),
        tensor("half", np.float32(0.5)),
    ]
    return nodes, initializers


@pytest.mark.parametrize(
    ("form", "standard_op", "contrib_op"),
    [(erf_gelu_nodes, "Gelu", "com.microsoft::Gelu"), (tanh_gelu_nodes, "Gelu", "com.microsoft::FastGelu")],
)
def test_decomposed_gelu(rng, form, standard_op, contrib_op):
    nodes, initializers = form()
    feeds = {"x": rng.standard_normal((2, 16)).astype(np.float32) * 3}
    at_20 = make_model(nodes, [value("x", ["N", 16])], [value("y", ["N", 16])], initializers, opset=20)
    fused, stats = fuse(at_20)
    assert op_types(fused) == [standard_op]
    assert stats == ["fused 1 decomposed GELUs into Gelu"]
    assert_same_outputs(at_20, fused, feeds)
    # Below opset 20 there is no standard Gelu: the portable target leaves it, ONNX Runtime's has its own.
    at_17 = make_model(nodes, [value("x", ["N", 16])], [value("y", ["N", 16])], initializers, opset=17)
    assert op_types(fuse(at_17)[0]) == op_types(at_17)
    for_ort, _ = fuse(at_17, target="onnxruntime")
    assert op_types(for_ort) == [contrib_op]
    assert_same_outputs(at_17, for_ort, feeds)


def test_gelu_with_multiplication_by_inverse_sqrt2(rng):
    nodes = [
        helper.make_node("Mul", ["x", "inv_sqrt2"], ["t"]),
        helper.make_node("Erf", ["t"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["e1"]),
        helper.make_node("Mul", ["half", "e1"], ["he"]),
        helper.make_node("Mul", ["he", "x"], ["y"]),
    ]
    initializers = [
        tensor("inv_sqrt2", np.float32(1 / np.sqrt(2))),
        tensor("one", np.float32(1)),
        tensor("half", np.float32(0.5)),
    ]
    model = make_model(nodes, [value("x", ["N", 16])], [value("y", ["N", 16])], initializers, opset=20)
    fused, _ = fuse(model)
    assert op_types(fused) == ["Gelu"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 16)).astype(np.float32)})


def test_gelu_whose_intermediate_is_used_elsewhere_stays(rng):
    nodes, initializers = erf_gelu_nodes()
    model = make_model(
        nodes, [value("x", ["N", 16])], [value("y", ["N", 16]), value("e", ["N", 16])], initializers, opset=20
    )
    assert "Gelu" not in op_types(fuse(model)[0])


# ---------------------------------------------------------------------------------------------------------
# Conv/Gemm + activation (ONNX Runtime only)


ACTIVATIONS = {
    "Relu": ([], {}),
    "Sigmoid": ([], {}),
    "Tanh": ([], {}),
    "LeakyRelu": ([], {"alpha": 0.2}),
    "HardSigmoid": ([], {"alpha": 0.3, "beta": 0.4}),
    "Clip": (["lo", "hi"], {}),
}


def layer_activation_model(rng, layer: str, activation: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    extra_inputs, attributes = ACTIVATIONS[activation]
    initializers = [tensor("lo", np.float32(-0.5)), tensor("hi", np.float32(0.6))] if extra_inputs else []
    if layer == "Conv":
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
        initializers += [weights(rng, "w", 4, 3, 3, 3), weights(rng, "b", 4)]
        shapes, feed_shape = (["N", 3, 5, 5], ["N", 4, 5, 5]), (2, 3, 5, 5)
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["c"], transB=1)]
        initializers += [weights(rng, "w", 4, 6), weights(rng, "b", 4)]
        shapes, feed_shape = (["N", 6], ["N", 4]), (3, 6)
    nodes.append(helper.make_node(activation, ["c", *extra_inputs], ["y"], **attributes))
    model = make_model(nodes, [value("x", shapes[0])], [value("y", shapes[1])], initializers)
    return model, {"x": rng.standard_normal(feed_shape).astype(np.float32)}


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_conv_activation_becomes_fused_conv_for_onnxruntime_only(rng, activation):
    model, feeds = layer_activation_model(rng, "Conv", activation)
    standard, _ = fuse(model)
    assert op_types(standard) == ["Conv", activation] and opset_domains(standard) == {""}
    fused, stats = fuse(model, target="onnxruntime")
    assert op_types(fused) == ["com.microsoft::FusedConv"]
    assert stats == ["fused 1 activations into FusedConv"]
    assert [o.name for o in fused.graph.output] == ["y"]  # the activation's output name lives on
    assert "com.microsoft" in opset_domains(fused)
    assert_same_outputs(model, fused, feeds)


@pytest.mark.parametrize("activation", ["Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"])
def test_gemm_activation_becomes_fused_gemm(rng, activation):
    model, feeds = layer_activation_model(rng, "Gemm", activation)
    fused, _stats = fuse(model, target="onnxruntime")
    assert op_types(fused) == ["com.microsoft::FusedGemm"]
    assert_same_outputs(model, fused, feeds)


def test_activation_whose_input_is_a_graph_output_stays(rng):
    model, _ = layer_activation_model(rng, "Conv", "Relu")
    model.graph.output.append(value("c", ["N", 4, 5, 5]))
    fused, _ = fuse(model, target="onnxruntime")
    assert sorted(op_types(fused)) == ["Conv", "Relu"]
    assert opset_domains(fused) == {""}  # nothing contrib was emitted, so nothing contrib is declared


# ---------------------------------------------------------------------------------------------------------
# Subgraphs and functions


def test_fusions_reach_into_if_branches_that_read_outer_values(rng):
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), batchnorm("bn", "c", "then_y")],
        "then",
        [],
        [value("then_y", [2, 4, 3, 3])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x2d", "w2"], ["m"]),
            helper.make_node("Add", ["m", "b2"], ["m2"]),
            helper.make_node("Reshape", ["m2", "shape"], ["else_y"]),
        ],
        "else",
        [],
        [value("else_y", [2, 4, 3, 3])],
        initializer=[tensor("shape", np.array([2, 4, 3, 3], np.int64))],
    )
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x2d"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    initializers = [
        weights(rng, "w", 4, 3, 1, 1),
        *batchnorm_params(rng, "bn", 4),
        tensor("flat", np.array([2, 27], np.int64)),
        weights(rng, "w2", 27, 36),
        weights(rng, "b2", 36),
    ]
    model = make_model(
        nodes, [value("x", [2, 3, 3, 3]), value("cond", [], TensorProto.BOOL)], [value("y", [2, 4, 3, 3])], initializers
    )
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Conv", "Gemm", "If", "Reshape", "Reshape"]
    assert stats == ["folded 1 BatchNormalization into Conv", "fused 1 MatMul+Add into Gemm"]
    x = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    for cond in (True, False):
        assert_same_outputs(model, fused, {"x": x, "cond": np.array(cond)})


def test_fusions_reach_into_loop_bodies(rng):
    """A Loop body that reads the weights of the outer graph: its MatMul+Add becomes a Gemm."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["m2"]),
            helper.make_node("Tanh", ["m2"], ["next_state"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL), value("state", [2, 4])],
        [value("cond_out", [], TensorProto.BOOL), value("next_state", [2, 4])],
    )
    nodes = [helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body)]
    model = make_model(
        nodes,
        [value("x", [2, 4]), value("trip", [], TensorProto.INT64)],
        [value("y", [2, 4])],
        [weights(rng, "w", 4, 4), weights(rng, "b", 4)],
    )
    fused, stats = fuse(model)
    assert sorted(op_types(fused)) == ["Gemm", "Identity", "Loop", "Tanh"]
    assert stats == ["fused 1 MatMul+Add into Gemm"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 4)).astype(np.float32), "trip": np.array(3)})


def test_fusions_reach_into_local_functions(rng):
    """Weights inside a function are Constant nodes; the folded ones stay Constant nodes there."""
    w, b = weights(rng, "w", 4, 3, 1, 1), tensor("k", rng.uniform(1, 2, (4, 1, 1)).astype(np.float32))
    body = [
        helper.make_node("Constant", [], ["w"], value=w),
        helper.make_node("Constant", [], ["k"], value=b),
        helper.make_node("Conv", ["fx", "w"], ["c"]),
        helper.make_node("Mul", ["c", "k"], ["fy"]),
    ]
    function = helper.make_function("local", "ScaledConv", ["fx"], ["fy"], body, [helper.make_opsetid("", 17)])
    nodes = [helper.make_node("ScaledConv", ["x"], ["y"], domain="local")]
    model = make_model(
        nodes,
        [value("x", [2, 3, 4, 4])],
        [value("y", [2, 4, 4, 4])],
        functions=[function],
        extra_opsets=[helper.make_opsetid("local", 1)],
    )
    fused, _stats = fuse(model)
    assert sorted(op_types(fused)) == ["Constant", "Conv", "local::ScaledConv"]
    assert_same_outputs(model, fused, {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)})


# ---------------------------------------------------------------------------------------------------------
# Options


def test_skip_switches_fusions_off_by_name(rng):
    model, _ = layer_activation_model(rng, "Conv", "Relu")
    fused, stats = fuse(model, target="onnxruntime", skip=("conv-activation",))
    assert op_types(fused) == ["Conv", "Relu"] and stats == []
    assert (
        Pipeline.parse("fuse{target=onnxruntime,skip=conv-activation,gelu}").to_string()
        == "fuse{target=onnxruntime,skip=conv-activation,gelu}"
    )


def test_unknown_fusion_name_is_a_spec_error_listing_the_names():
    with pytest.raises(SpecError) as error:
        Pipeline.parse("fuse{skip=conv-relu}")
    assert "conv-relu" in str(error.value) and "conv-activation" in str(error.value)


def test_fusion_names_are_listed():
    listing = "\n".join(FusePass.describe_extra())
    assert all(name in listing for name in FUSION_NAMES)
