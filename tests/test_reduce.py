"""onnxkit.reduce and `onnxkit reduce`: a failing pair shrunk to the node that broke, in real ONNX Runtime runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxkit import parity
from onnxkit.cli import main
from onnxkit.errors import OnnxkitError
from onnxkit.reduce import reduce_pair

OPS = ("Add", "Mul", "Sub", "Add", "Mul", "Relu", "Add", "Mul", "Sub", "Tanh", "Add", "Mul", "Add", "Sigmoid")


def chain(broken: int | None = None, *, branch: bool = False) -> onnx.ModelProto:
    """x → 14 elementwise ops in a row, each binary one with its own constant (half initializers, half Constant
    nodes); ``broken`` alters that node's constant, as a faulty rewrite would. ``branch`` adds a side branch
    from the input that joins at the end, so a topological order interleaves unrelated nodes."""
    nodes, initializers, previous = [], [], "x"
    for index, op in enumerate(OPS):
        out = f"t{index}"
        if op in ("Relu", "Tanh", "Sigmoid"):
            nodes.append(helper.make_node(op, [previous], [out], name=f"{op.lower()}_{index}"))
        else:
            value = np.full((4,), 0.5 + index / 10, np.float32) + (1.0 if index == broken else 0.0)
            if index % 2:
                nodes.append(
                    helper.make_node(
                        "Constant", [], [f"c{index}"], name=f"const_{index}", value=numpy_helper.from_array(value)
                    )
                )
            else:
                initializers.append(numpy_helper.from_array(value, f"c{index}"))
            nodes.append(helper.make_node(op, [previous, f"c{index}"], [out], name=f"{op.lower()}_{index}"))
        previous = out
        if branch and index == 2:  # the side branch's nodes sit between the chain's in topological order
            nodes += [
                helper.make_node("Neg", ["x"], ["side0"], name="side_neg"),
                helper.make_node("Abs", ["side0"], ["side1"], name="side_abs"),
            ]
    if branch:
        nodes.append(helper.make_node("Add", [previous, "side1"], ["y"], name="join"))
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("broken", [0, 4, 7, 12])
def test_a_chain_with_one_altered_constant_reduces_to_that_node(broken):
    result = reduce_pair(chain(), chain(broken))
    assert [n.name for n in result.reduced.nodes] == [f"{OPS[broken].lower()}_{broken}"]
    assert not result.reduced.report.passed
    # Bisection, not one check per node: far fewer checks than the 14 nodes would take one by one twice.
    assert result.checks < 14
    # The extracted pair is a model each, fed from the original's own intermediate values.
    assert len(result.reduced.original.graph.node) in (1, 2)  # the node, and its Constant when it has one
    assert result.reduced.inputs == (["x"] if broken == 0 else [f"t{broken - 1}"])


def test_a_side_branch_is_dropped_by_the_linear_step():
    result = reduce_pair(chain(branch=True), chain(7, branch=True))
    assert [n.name for n in result.reduced.nodes] == ["mul_7"]


def test_the_reduced_pair_written_out_fails_onnxkit_check_on_its_inputs(tmp_path):
    original, candidate = tmp_path / "model.onnx", tmp_path / "model.bad.onnx"
    onnx.save(chain(), original)
    onnx.save(chain(10), candidate)
    before = original.read_bytes()
    out = tmp_path / "reduced.onnx"
    result = CliRunner().invoke(main, ["reduce", str(original), str(candidate), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "reduced 14 nodes to 1: Add 'add_10'" in result.output
    assert original.read_bytes() == before
    assert {p.name for p in tmp_path.iterdir()} >= {"reduced.onnx", "reduced.original.onnx", "reduced.inputs.npz"}
    # What a bug report carries reproduces the failure on its own.
    report = parity.compare_models(tmp_path / "reduced.original.onnx", out, str(tmp_path / "reduced.inputs.npz"))
    assert not report.passed and report.samples == 4
    check = CliRunner().invoke(
        main,
        ["check", str(tmp_path / "reduced.original.onnx"), str(out), "--data", str(tmp_path / "reduced.inputs.npz")],
    )
    assert check.exit_code == 1


def test_a_pair_that_agrees_is_a_user_error(tmp_path):
    with pytest.raises(OnnxkitError, match="nothing to reduce"):
        reduce_pair(chain(), chain())
    onnx.save(chain(), tmp_path / "a.onnx")
    result = CliRunner().invoke(
        main, ["reduce", str(tmp_path / "a.onnx"), str(tmp_path / "a.onnx"), "-o", str(tmp_path / "r.onnx")]
    )
    assert result.exit_code == 2 and "nothing to reduce" in result.output
    assert not (tmp_path / "r.onnx").exists()


def test_a_fused_candidate_is_cut_only_where_its_names_exist():
    """The candidate computes t3..t5 in one node (a fusion, say) and got it wrong: cuts inside the fusion
    cannot be checked, and the result is the smallest checkable span around it."""
    original = chain()
    candidate = chain()
    graph = candidate.graph
    # Replace Add_3 (t2→t3) + Mul_4 (t3→t4) by one Mul with a wrong constant: t3 no longer exists.
    kept = [n for n in graph.node if n.name not in ("add_3", "mul_4", "const_3")]
    fused = helper.make_node("Mul", ["t2", "c4"], ["t4"], name="fused_3_4")
    position = next(i for i, n in enumerate(kept) if n.name == "relu_5")
    kept.insert(position, fused)
    del graph.node[:]
    graph.node.extend(kept)
    result = reduce_pair(original, candidate)
    assert [n.name for n in result.reduced.nodes] == ["add_3", "mul_4"]
    assert result.untestable >= 1
