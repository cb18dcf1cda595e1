"""``fuse``'s ``space-to-depth``: YOLOv5/YOLOX's Focus block (four ``x[:, :, h0::2, w0::2]`` Slices concatenated on
channels) becomes SpaceToDepth, plus a channel Gather where the Concat's order is not SpaceToDepth's."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.conftest import run_model
from tests.passes.test_fuse import fuse, make_model, op_types, tensor, value

FOCUS_ORDER = [(0, 0), (1, 0), (0, 1), (1, 1)]  # YOLOv5/YOLOX's
BLOCKS_MAJOR = [(0, 0), (0, 1), (1, 0), (1, 1)]  # SpaceToDepth's own


def _focus(offsets, opset: int, *, also_read: bool = False, width: int = 8):
    nodes, initializers = (
        [],
        [
            tensor("ends", np.array([2**63 - 1] * 2, dtype=np.int64)),
            tensor("axes", np.array([2, 3], dtype=np.int64)),
            tensor("steps", np.array([2, 2], dtype=np.int64)),
        ],
    )
    for index, (h0, w0) in enumerate(offsets):
        initializers.append(tensor(f"starts{index}", np.array([h0, w0], dtype=np.int64)))
        nodes.append(helper.make_node("Slice", ["x", f"starts{index}", "ends", "axes", "steps"], [f"part{index}"]))
    nodes.append(helper.make_node("Concat", [f"part{i}" for i in range(len(offsets))], ["y"], axis=1))
    outputs = [value("y", ["N", 12, 4, width // 2])]
    if also_read:  # a part the graph needs besides the Concat
        nodes.append(helper.make_node("Relu", ["part0"], ["extra"]))
        outputs.append(value("extra", ["N", 3, 4, width // 2]))
    return make_model(nodes, [value("x", ["N", 3, 8, width])], outputs, initializers, opset=opset)


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("offsets", [FOCUS_ORDER, BLOCKS_MAJOR], ids=["focus-order", "blocks-major"])
def test_focus_block_becomes_space_to_depth_bit_exactly(rng, opset, offsets):
    model = _focus(offsets, opset)
    fused, stats = fuse(model)
    expected_ops = ["SpaceToDepth"] + (["Gather"] if offsets != BLOCKS_MAJOR else [])
    assert op_types(fused) == expected_ops
    assert "wrote 1 Focus blocks as SpaceToDepth (and a channel Gather)" in stats
    for batch in (2, 0):  # an empty batch too
        feeds = {"x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}
        (expected,), (actual,) = run_model(model, feeds), run_model(fused, feeds)
        assert actual.shape == expected.shape == (batch, 12, 4, 4)
        np.testing.assert_array_equal(actual, expected)  # the same elements, moved


def test_other_slices_or_shared_parts_are_left_alone():
    repeated = [(0, 0), (1, 0), (0, 1), (0, 1)]  # one 2x2 offset twice, none at (1, 1)
    assert "SpaceToDepth" not in op_types(fuse(_focus(repeated, 17))[0])
    assert "SpaceToDepth" not in op_types(fuse(_focus(FOCUS_ORDER, 17, also_read=True))[0])
