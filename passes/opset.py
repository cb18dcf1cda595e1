"""``opset``: convert a model to a newer ONNX opset with ``onnx.version_converter``.

Some rewrites need a recent opset: the standard LayerNormalization exists from opset 17, Gelu from 20.
Without ``version``, the target is the newest opset that both onnx's converter and the installed ONNX
Runtime support. Only upgrades are offered: the converter's downgrades silently drop or approximate
attributes for many ops.

The model goes to the converter with its weights in an external-data file, so models over protobuf's
2 GB limit convert too; the converter only rewrites nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxkit import modelio
from onnxkit.errors import PassFailedError
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import all_nodes

# The version converter's adapters start at opset 1, but models older than 7 rarely convert cleanly
# and ONNX Runtime no longer runs them.
OLDEST_OPSET = 7


@dataclasses.dataclass(frozen=True)
class OpsetOptions:
    version: int | None = None  # None: the newest opset both onnx and the installed ONNX Runtime support

    def __post_init__(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        if self.version is not None and not OLDEST_OPSET <= self.version <= newest:
            raise ValueError(f"version must be between {OLDEST_OPSET} and {newest} (onnx {onnx.__version__})")


class OpsetPass(Pass):
    """Upgrade the model's ONNX opset with onnx.version_converter (default: newest ONNX Runtime supports)."""

    name = "opset"
    kind = "exact"
    Options = OpsetOptions
    in_place_pass = False

    @classmethod
    def describe_extra(cls) -> list[str]:
        return [f"without version: opset {newest_runtime_opset()} (onnx {onnx.__version__} and this ONNX Runtime)"]

    def call(self, model: ir.Model) -> PassResult:
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        if current is None:
            raise PassFailedError("the model imports no ONNX opset to convert",
                                  hint="only the default ONNX domain's opset can be converted")
        target = self.options.version if self.options.version is not None else newest_runtime_opset()
        if target == current:
            return PassResult(modelio.clone_model(model), False, [])
        if target < current:
            raise PassFailedError(
                f"the model is at opset {current}; converting down to {target} is not supported",
                hint="the converter's downgrades drop or approximate attributes; export the model at the opset you need",
            )
        converted = _convert(model, target)
        converted.metadata_props.update(model.metadata_props)
        return PassResult(converted, True, [f"converted opset {current} → {target}", *_op_changes(model, converted)])


def _convert(model: ir.Model, target: int) -> ir.Model:
    with tempfile.TemporaryDirectory(prefix="onnxkit-opset-") as folder:
        path = Path(folder) / "model.onnx"
        modelio.save_model(model, path, external_data=True)
        proto = onnx.load(path, load_external_data=False)
        try:
            converted = onnx.version_converter.convert_version(proto, target)
        except Exception as e:  # the converter raises RuntimeError, ValueError and its own C++ errors
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise PassFailedError(f"onnx.version_converter cannot convert this model to opset {target}: {reason}",
                                  hint="an op may lack an adapter for that version; try an older target") from e
        result = ir.serde.deserialize_model(converted)
        # The weights stayed in the data file beside the model; bring them into memory before it goes.
        for graph in result.graphs():
            ir.external_data.set_base_dir(graph, folder)
        ir.external_data.load_to_model(result)
    return result


def _op_changes(before: ir.Model, after: ir.Model) -> list[str]:
    old = collections.Counter(n.op_type for n in all_nodes(before))
    new = collections.Counter(n.op_type for n in all_nodes(after))
    lines = []
    if added := new - old:
        lines.append("added " + ", ".join(f"{n} {op}" for op, n in added.most_common()))
    if removed := old - new:
        lines.append("removed " + ", ".join(f"{n} {op}" for op, n in removed.most_common()))
    return lines


@functools.cache
def newest_runtime_opset() -> int:
    """The newest opset that onnx's converter targets and the installed ONNX Runtime loads."""
    import onnxruntime as ort

    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    options = ort.SessionOptions()
    options.log_severity_level = 4
    for version in range(onnx.defs.onnx_opset_version(), OLDEST_OPSET, -1):
        probe = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)])
        try:
            ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # ORT refuses opsets newer than it knows with its own exception type
            continue
        return version
    return OLDEST_OPSET
