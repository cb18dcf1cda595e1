"""A zero constant Pad of the spatial axes folded into the pads of the Conv after it."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from onnxkit.passes.fuse._base import FusionContext, constant_array, matched_node


class PadIntoConv(RewriteRuleClassBase):
    """``Conv(Pad(x, pads, mode=constant, value=0))`` → ``Conv(x)`` with the spatial pads added to its own,
    when the Pad leaves the batch and channel axes alone and only adds (never crops)."""

    def __init__(self) -> None:
        super().__init__(name="pad-into-conv")

    def pattern(self, op: Any, x: ir.Value) -> Any:
        padded = op.Pad(x, _allow_other_inputs=True, _outputs=["padded"])
        return op.Conv(padded, _allow_other_inputs=True, _outputs=["out"])

    def check(self, context: Any, x: ir.Value, padded: ir.Value, out: ir.Value) -> MatchResult:
        result = MatchResult()
        pad, conv = matched_node(padded), matched_node(out)
        if any(value is padded for value in conv.inputs[1:]):
            return result.fail("the padded value is also the Conv's weights or bias")
        if pad.attributes.get_string("mode", "constant") != "constant":
            return result.fail("the Pad is not constant padding")
        if conv.attributes.get_string("auto_pad", "NOTSET") != "NOTSET":
            return result.fail("the Conv computes its own padding")
        if "pads" in pad.attributes:  # Pad before opset 11
            pads, value = list(pad.attributes.get_ints("pads")), pad.attributes.get_float("value", 0.0)
        else:
            array = constant_array(pad.inputs[1]) if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
            if array is None or (len(pad.inputs) > 3 and pad.inputs[3] is not None):
                return result.fail("the pads are not constant, or name axes")
            fill = constant_array(pad.inputs[2]) if len(pad.inputs) > 2 and pad.inputs[2] is not None else np.zeros(1)
            if fill is None or fill.size != 1:
                return result.fail("the padding value is not a constant scalar")
            pads, value = [int(p) for p in array.reshape(-1)], float(fill.reshape(-1)[0])
        rank = len(pads) // 2
        begins, ends = pads[:rank], pads[rank:]
        if value != 0.0 or rank < 3 or any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
            return result.fail("the Pad fills with a non-zero value, pads batch or channels, or crops")
        spatial = rank - 2
        conv_pads = list(conv.attributes.get_ints("pads", [0] * (2 * spatial)))
        if len(conv_pads) != 2 * spatial:
            return result.fail("the Conv's pads do not fit the Pad's rank")
        self._pads = [conv_pads[i] + begins[2 + i] for i in range(spatial)] + [
            conv_pads[spatial + i] + ends[2 + i] for i in range(spatial)
        ]
        return result

    def rewrite(self, op: Any, x: ir.Value, out: ir.Value, **_: Any) -> ir.Value:
        conv = matched_node(out)
        attributes = {name: attr for name, attr in conv.attributes.items() if name != "pads"}
        return op.Conv(x, *conv.inputs[1:], pads=self._pads, **attributes)


def pad_conv_rules(context: FusionContext) -> list[Any]:
    return [PadIntoConv.rule()]
