"""``opset``: convert a model to a newer ONNX opset with ``onnx.version_converter``.

Some rewrites need a recent opset: the standard LayerNormalization exists from opset 17, Gelu from 20.

- ``version=N`` converts to exactly N, up or down, or fails with a clear error when the converter cannot
  do it or gets it wrong (it changes the graph's inputs or outputs). Many ops have no down adapter (Reshape,
  Relu, Add at 13 → 12, ...): a downgrade through one fails naming the op. Some down adapters approximate
  (Softmax 13 → 12 keeps ``axis`` though opset 12 flattens to 2-D first); the pass is ``exact``, so the
  pipeline's parity check rejects such a result rather than shipping it.
- Without ``version``, the target is the newest opset at which ONNX Runtime still runs this model: onnx
  knows opsets before ONNX Runtime has kernels for them. A model that cannot move up is left as it is.

The model goes to the converter with its weights in an external-data file, so models over protobuf's
2 GB limit convert too; the converter only rewrites nodes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxkit import modelio, runtime
from onnxkit.errors import PassFailedError
from onnxkit.graph import default_opset
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes._graph_utils import all_nodes, signature_changes

# The version converter's adapters start at opset 1, but models older than 7 rarely convert cleanly
# and ONNX Runtime no longer runs them.
OLDEST_OPSET = 7

# How the converter names the op it has no adapter for: "No Adapter To Version $12 for Reshape".
_MISSING_ADAPTER = re.compile(r"No Adapter (?:To|From) Version \$\d+ for (\w+)")
# And an op that did not exist yet at the target: "No Previous Version of LayerNormalization exists".
_NO_EARLIER_OP = re.compile(r"No Previous Version of (\w+) exists")


@dataclasses.dataclass(frozen=True)
class OpsetOptions:
    version: int | None = None  # None: the newest opset at which ONNX Runtime runs the model

    def __post_init__(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        if self.version is not None and not OLDEST_OPSET <= self.version <= newest:
            raise ValueError(f"version must be between {OLDEST_OPSET} and {newest} (onnx {onnx.__version__})")


class _CannotConvert(Exception):
    """The converter failed or produced a different signature; the message says which."""


class OpsetPass(Pass):
    """Convert the ONNX opset with onnx.version_converter (default: up to the newest ONNX Runtime runs the model at)."""

    name = "opset"
    kind = "exact"
    Options = OpsetOptions
    in_place_pass = False

    @classmethod
    def describe_extra(cls) -> list[str]:
        return [
            f"version=N converts to exactly N, up or down (onnx {onnx.__version__} knows up to {onnx.defs.onnx_opset_version()});",
            "a downgrade fails naming an op without a down adapter, and one an adapter approximates fails parity;",
            "without version, up to the newest opset ONNX Runtime has kernels for, for the model's ops",
        ]

    def call(self, model: ir.Model) -> PassResult:
        current = default_opset(model, missing=None)
        if current is None:
            # Only ai.onnx.ml or custom domains: there is no ONNX opset to move.
            return PassResult(modelio.clone_model(model), False, [])
        if self.options.version is None:
            return self._newest_runtime_opset(model, current)
        target = self.options.version
        if target == current:
            return PassResult(modelio.clone_model(model), False, [])
        try:
            converted = _convert(model, target, runtime_check=False)
        except _CannotConvert as e:
            if target < current and (missing := _MISSING_ADAPTER.search(str(e))):
                raise PassFailedError(
                    f"cannot convert down from opset {current} to {target}: onnx.version_converter has no down "
                    f"adapter for {missing.group(1)}",
                    hint="export the model at the opset you need",
                ) from e
            if target < current and (newer := _NO_EARLIER_OP.search(str(e))):
                op_type = newer.group(1)
                raise PassFailedError(
                    f"cannot convert down from opset {current} to {target}: {op_type} does not exist at opset "
                    f"{target} (ONNX added it at opset {_first_version(op_type)})",
                    hint=f"export the model at opset {_first_version(op_type)} or later, or without {op_type}",
                ) from e
            raise PassFailedError(
                f"onnx.version_converter cannot convert this model to opset {target}: {e}",
                hint="an op may lack an adapter for that version; try another target",
            ) from e
        assert converted is not None  # None only where ONNX Runtime is asked to load the result
        return _result(model, converted, current, target)

    def _newest_runtime_opset(self, model: ir.Model, current: int) -> PassResult:
        """Try the newest opset ONNX Runtime has kernels for, then older ones until ORT runs the result."""
        for target in range(_newest_kernel_opset(model), current, -1):
            try:
                converted = _convert(model, target, runtime_check=True)
            except _CannotConvert:
                break  # converter failures do not depend on how far up the model goes
            if converted is not None:
                return _result(model, converted, current, target)
        return PassResult(modelio.clone_model(model), False, [])


def _result(model: ir.Model, converted: ir.Model, current: int, target: int) -> PassResult:
    converted.metadata_props.update(model.metadata_props)
    return PassResult(converted, True, [f"converted opset {current} → {target}", *_op_changes(model, converted)])


def _convert(model: ir.Model, target: int, runtime_check: bool) -> ir.Model | None:
    """The model at ``target``; None if ``runtime_check`` and ONNX Runtime cannot load the result."""
    with tempfile.TemporaryDirectory(prefix="onnxkit-opset-") as folder:
        path, converted_path = Path(folder) / "model.onnx", Path(folder) / "converted.onnx"
        modelio.save_model(model, path, external_data=True)
        proto = onnx.load(path, load_external_data=False)
        try:
            converted = onnx.version_converter.convert_version(proto, target)
        except Exception as e:  # the converter raises RuntimeError, ValueError and its own C++ errors
            raise _CannotConvert(" ".join(str(e).split())[:300] or type(e).__name__) from e
        if runtime_check:
            # The weights stay in model.onnx.data beside it, where the converted model points too.
            onnx.save(converted, converted_path)
            if not _onnxruntime_loads(converted_path):
                return None
        result = ir.serde.deserialize_model(converted)
        for graph in result.graphs():
            ir.external_data.set_base_dir(graph, folder)
        # Bring the weights into memory before the folder goes.
        ir.external_data.load_to_model(result)
    if changes := signature_changes(model, result):
        raise _CannotConvert(f"the converter changed the model's {changes[0]}")
    return result


def _onnxruntime_loads(path: Path) -> bool:
    try:
        runtime.make_session(path)
    except Exception:  # ORT's own exception types: no kernel for an op at that version, mostly
        return False
    return True


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
def _newest_kernel_versions() -> dict[str, int]:
    """ONNX op type → the newest version ONNX Runtime's CPU kernels implement."""
    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return {}
    newest: dict[str, int] = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider" and kernel.domain in ("", "ai.onnx"):
            newest[kernel.op_name] = max(newest.get(kernel.op_name, 0), kernel.version_range[0])
    return newest


def _newest_kernel_opset(model: ir.Model) -> int:
    """The newest opset at which every op of the model that ORT implements still has a kernel there."""
    kernels = _newest_kernel_versions()
    op_types = {n.op_type for n in all_nodes(model) if n.domain in ("", "ai.onnx") and n.op_type in kernels}
    for opset in range(onnx.defs.onnx_opset_version(), OLDEST_OPSET, -1):
        if all(_since_version(op_type, opset) <= kernels[op_type] for op_type in op_types):
            return opset
    return OLDEST_OPSET


def _first_version(op_type: str) -> int:
    """The opset at which ONNX added ``op_type``."""
    return min(
        schema.since_version
        for schema in onnx.defs.get_all_schemas_with_history()
        if schema.name == op_type and schema.domain == ""
    )


def _since_version(op_type: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, opset).since_version
    except onnx.defs.SchemaError:
        return 0  # the op does not exist at that opset; the converter will say so
