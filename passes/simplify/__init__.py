"""``simplify``: constant folding that never bloats the model, then removal of everything that computes nothing.

Built from onnxscript's constant folder and onnx_ir's passes. onnxkit adds what they lack:

- a size limit in bytes, so Tile/Expand/ConstantOfShape folds cannot inflate the model (``folder``);
- shape arithmetic: Shape → Gather/Slice → Unsqueeze → Concat chains fold, and a Reshape whose target is
  computed at run time gets a constant one (0 copies a dynamic dim), so dynamic models shed their shape
  subgraphs while their dims stay dynamic (``shape_values``);
- exact no-op rules (x*1, x+0, ... match only exact identity elements; onnxscript's match within 1e-5 and
  would drop an epsilon), no-op Pad and Slice without optional inputs, zero LSTM/GRU/RNN initial states
  (``no_op``);
- common-subexpression elimination inside If/Loop/Scan bodies and functions (``merge``);
- Identity elimination that keeps every output name, also where an output aliases another output or an
  outer-scope value;
- output valid at the model's opset and IR version, whatever onnxscript's rewrites would write;
- a name for every rewrite rule, the sites where each fired (``PassResult.sites``), and ``PassContext.allows``
  asked before each, so the pipeline can narrow a failing run to one rule or node (``rewrites``);
- a guard that keeps declared output shapes out of every decision: a model whose declared output shape
  is wrong keeps computing the real one, and keeps its declaration (``rounds``).

``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead, imported only then (``peers``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx_ir as ir

from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes.simplify.peers import run_peer
from onnxkit.passes.simplify.rounds import simplify

Backend = Literal["onnxkit", "onnxsim", "onnxoptimizer", "onnxslim"]

# The names of simplify's rewrite rules, for ``PassContext.disabled``. Folder replacements that onnxscript
# makes op by op are named ``no-op-<op>`` (a node that copies its input) or ``simplify-<op>`` (any other).
RULES = (
    "fold-constants",
    "fold-shape-values",
    "materialize-reshape",
    "inline-constant-if",
    "remove-dropout",
    "no-op-cast",
    "no-op-transpose",
    "no-op-expand",
    "no-op-slice",
    "no-op-pad",
    "no-op-scatternd",
    "no-op-arithmetic",
    "drop-zero-initial-state",
    "remove-identity",
    "constant-to-initializer",
    "merge-initializers",
    "cse",
    "merge-transposes",
    "merge-reshapes",
    "flatten-concats",
    "transpose-into-reshape",
    "merge-constant-arithmetic",
)


@dataclasses.dataclass(frozen=True)
class SimplifyOptions:
    # A folded constant may exceed this many bytes only when folding frees at least as many (a Transpose
    # of a weight does; a Tile or Expand of a small tensor does not).
    max_constant_bytes: int = 1 << 20
    backend: Backend = "onnxkit"

    def __post_init__(self) -> None:
        if self.max_constant_bytes < 0:
            raise ValueError("max_constant_bytes must be >= 0")


class SimplifyPass(Pass):
    """Fold constants (size-limited), infer shapes, remove dead, Identity and no-op nodes, merge duplicates.

    Folding never creates a constant larger than ``max_constant_bytes`` unless it frees at least as much.
    No-op Cast/Reshape/Transpose/Pad/Slice/Expand, inference-mode Dropout, x*1, x+0 and the like become
    nothing; duplicate initializers and common subexpressions are merged; Constant nodes become
    initializers. All of it also runs inside If/Loop/Scan bodies and local functions. Graph input and
    output names, order and declared shapes are kept; dynamic dimensions stay dynamic.
    ``backend=onnxsim|onnxoptimizer|onnxslim`` runs that tool instead (it must be installed).
    """

    name = "simplify"
    kind = "exact"
    Options = SimplifyOptions

    @property
    def in_place(self) -> bool:
        # The peers work on protobufs and hand back a new model.
        return self.options.backend == "onnxkit"

    @property
    def changes_input(self) -> bool:
        return self.in_place

    def call(self, model: ir.Model) -> PassResult:
        if self.options.backend != "onnxkit":
            return run_peer(self.options.backend, model)
        return simplify(model, self.options.max_constant_bytes, self.context)


__all__ = ["RULES", "SimplifyOptions", "SimplifyPass", "run_peer"]
