"""``fuse``'s ``reshape-squeeze``: a Reshape to a target gathered from Shapes, whose result shape inference
tells, becomes a Squeeze/Unsqueeze of constant axes, or a Reshape to 0-copies and known sizes (never ``-1``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.conftest import run_model
from tests.passes.test_fuse import fuse, make_model, op_types, tensor, value


def _computed_reshape(in_shape, target_parts, out_shape, opset: int = 17):
    """``Reshape(x, Concat(parts))``: an int part is that size, a str part ``"dK"`` is ``Shape(x)[K]``."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"])]
    pieces, initializers = [], []
    for index, part in enumerate(target_parts):
        name = f"part{index}"
        if isinstance(part, int):
            initializers.append(tensor(name, np.array([part], dtype=np.int64)))
        else:
            initializers.append(tensor(f"{name}_index", np.array([int(part[1:])], dtype=np.int64)))
            nodes.append(helper.make_node("Gather", ["shape", f"{name}_index"], [name], axis=0))
        pieces.append(name)
    nodes += [
        helper.make_node("Concat", pieces, ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    return make_model(nodes, [value("x", in_shape)], [value("y", out_shape)], initializers, opset=opset)


CASES = {  # YOLOv8's DFL head: [N, 1, 4, A] → [N, 4, A]
    "squeeze": (["N", 1, 4, "A"], ["d0", 4, "d3"], ["N", 4, "A"], "Squeeze"),
    "unsqueeze": (["N", 4, "A"], ["d0", 1, 4, "d2"], ["N", 1, 4, "A"], "Unsqueeze"),
    "zero-copies": (["N", 2, 3, "A"], ["d0", 6, 1, "d3"], ["N", 6, 1, "A"], "Reshape"),
}


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("case", CASES)
def test_computed_target_becomes_constant_axes_or_zero_copies_exactly(rng, case, opset):
    in_shape, parts, out_shape, op = CASES[case]
    model = _computed_reshape(in_shape, parts, out_shape, opset)
    fused, stats = fuse(model)
    assert op_types(fused) == [op]  # the Shape, Gathers and Concat went
    assert "wrote 1 Reshapes to computed shapes with constant axes or targets" in stats
    if op == "Reshape":
        (target,) = fused.graph.initializer
        assert numpy_helper.to_array(target).tolist() == [0, 6, 1, 0]  # no -1: an empty batch still reshapes
    # An empty batch too. (A run-time 0 in the original's computed target means "copy", so the original
    # fails for A = 0 where the target's 0 lands past the input's rank: no behaviour to keep there.)
    for batch, length in ((2, 5), (0, 5)):
        feeds = {
            "x": rng.standard_normal([batch if d == "N" else length if d == "A" else d for d in in_shape]).astype(
                np.float32
            )
        }
        (expected,), (actual,) = run_model(model, feeds), run_model(fused, feeds)
        assert actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)


def test_reshape_that_moves_a_symbol_keeps_its_computed_target():
    # [N, 2, A] → [N, A, 2]: A changes index, so no 0-copy can write it (ORT would need -1 beside a 0)
    model = _computed_reshape(["N", 2, "A"], ["d0", "d2", 2], ["N", "A", 2])
    assert "Concat" in op_types(fuse(model)[0])


@pytest.mark.parametrize("opset", [11, 17])
def test_symbols_that_line_up_after_an_unsqueeze_take_a_constant_target(rng, opset):
    # YOLOv8's DFL head: [N, 64, A] → [N, 4, 16, A]: Unsqueeze to [N, 64, 1, A], then [0, 4, 16, 0] (no -1,
    # which reshape-chain must not fold back in beside the 0-copies)
    model = _computed_reshape(["N", 64, "A"], ["d0", 4, 16, "d2"], ["N", 4, 16, "A"], opset)
    fused, _ = fuse(model)
    assert op_types(fused) == ["Unsqueeze", "Reshape"]
    reshape = next(node for node in fused.graph.node if node.op_type == "Reshape")
    target = [numpy_helper.to_array(t).tolist() for t in fused.graph.initializer if t.name == reshape.input[1]]
    assert target == [[0, 4, 16, 0]]
    for batch in (2, 0):
        feeds = {"x": rng.standard_normal((batch, 64, 5)).astype(np.float32)}
        (expected,), (actual,) = run_model(model, feeds), run_model(fused, feeds)
        assert actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
