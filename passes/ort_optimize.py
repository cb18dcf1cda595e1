"""``ort-optimize``: ONNX Runtime's own graph optimizer, run offline, as a pass.

ONNX Runtime optimizes every model when it creates a session; with ``optimized_model_filepath`` set it also
writes the result out. This pass does exactly that on a temporary copy and reads the result back:

- ``level=basic`` (the default): constant folding, redundant-node removal and semantics-preserving fusions
  (Conv+BatchNormalization, Conv+Add/Mul, ...). The result uses standard ONNX ops only, so it stays
  portable to other runtimes.
- ``level=extended``: also ONNX Runtime's contrib fusions (FusedConv, Gelu, LayerNormalization variants,
  Attention, ...), which emit ``com.microsoft`` ops. The result is tied to ONNX Runtime (and its CPU
  kernels): other runtimes cannot load it.

Initializers are written to an external-data file whatever the model's size, so a model over protobuf's
2 GB limit round-trips, and are read back into memory before the temporary folder goes.
"""

from __future__ import annotations

import collections
import dataclasses
import tempfile
from pathlib import Path
from typing import Literal

import onnx_ir as ir
from onnx_ir.passes import common

from onnxkit import modelio, runtime
from onnxkit.errors import PassFailedError
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import all_nodes, signature_changes

# ORT writes initializers at least this large to the external file, the rest inline.
EXTERNAL_INITIALIZER_MIN_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class OrtOptimizeOptions:
    level: Literal["basic", "extended"] = "basic"


class OrtOptimizePass(Pass):
    """ONNX Runtime's offline graph optimizer: level=basic stays portable, level=extended emits com.microsoft ops.

    ``basic`` folds constants, removes redundant nodes and fuses Conv with BatchNormalization/Add/Mul
    using standard ONNX ops only. ``extended`` adds ONNX Runtime's contrib fusions (FusedConv, Gelu,
    Attention, SkipLayerNormalization, ...): the result runs in ONNX Runtime only.
    """

    name = "ort-optimize"
    uses_runtime = True
    kind = "exact"
    Options = OrtOptimizeOptions
    emits_domains = frozenset({"", "com.microsoft"})
    in_place_pass = False

    def allowed_domains(self) -> frozenset[str]:
        return self.emits_domains if self.options.level == "extended" else frozenset({""})

    @classmethod
    def describe_extra(cls) -> list[str]:
        return ["level=extended output is tied to ONNX Runtime (com.microsoft ops); level=basic is portable"]

    def call(self, model: ir.Model) -> PassResult:
        with tempfile.TemporaryDirectory(prefix="onnxkit-ort-") as folder:
            source, target = Path(folder) / "input.onnx", Path(folder) / "optimized.onnx"
            modelio.save_model(model, source, external_data=True)
            try:
                runtime.optimize_offline(
                    source, target, self.options.level, external_min_bytes=EXTERNAL_INITIALIZER_MIN_BYTES
                )
            except Exception as e:  # ORT raises its own exception types for models it cannot load
                raise PassFailedError(
                    f"ONNX Runtime cannot load the model to optimize it: {runtime.error_line(e)}",
                    hint="run the model in ONNX Runtime first; custom ops need their library registered",
                ) from e
            optimized = ir.load(target)
            # Read the external data into memory: the temporary folder is about to go.
            ir.external_data.load_to_model(optimized)

        if changes := signature_changes(model, optimized):
            raise PassFailedError(f"ONNX Runtime changed the model's {changes[0]}")
        if _node_multiset(optimized) == _node_multiset(model):
            # ORT renames values, reorders nodes and merges its own constants on every run; none of that
            # is worth a new model, and reporting it would make a second run never settle.
            return PassResult(modelio.clone_model(model), False, [])
        # ORT declares every domain it knows (training, nchwc, aten, ...); keep the ones used.
        common.RemoveUnusedOpsetsPass()(optimized)
        optimized.metadata_props.update(model.metadata_props)
        return PassResult(optimized, True, _stats(model, optimized))


def _node_multiset(model: ir.Model) -> collections.Counter[tuple[str, str]]:
    """The nodes by (domain, op type): what ORT's rewrites change when they do anything."""
    return collections.Counter((node.domain or "", node.op_type) for node in all_nodes(model))


def _stats(before: ir.Model, after: ir.Model) -> list[str]:
    old, new = _node_multiset(before), _node_multiset(after)
    removed = old - new
    added = new - old

    def describe(counter: collections.Counter[tuple[str, str]]) -> str:
        return ", ".join(f"{n} {f'{domain}::' if domain else ''}{op}" for (domain, op), n in counter.most_common())

    lines = [f"{sum(old.values())} → {sum(new.values())} nodes"]
    if removed:
        lines.append(f"removed {describe(removed)}")
    if added:
        lines.append(f"added {describe(added)}")
    return lines
