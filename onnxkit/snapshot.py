"""What the pipeline checks a pass's output with: the model serialized once (``Snapshot``: verification, parity
and rollback all read the same bytes), its graph signature, onnx.checker and strict shape inference (each held
against a pass only where the pipeline's input passes it: ``Baseline``), the operator domains a pass added, and
the clock that splits a pass's time by step.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import modelio, runtime
from onnxkit.pass_base import Pass
from onnxkit.passes import shape_inference


@dataclasses.dataclass(frozen=True)
class Signature:
    """Graph inputs and outputs as (name, dtype, rank); dtype or rank is None where the model leaves it open."""

    inputs: tuple[tuple[str, int | None, int | None], ...]
    outputs: tuple[tuple[str, int | None, int | None], ...]

    @classmethod
    def of(cls, proto: onnx.ModelProto) -> Signature:
        initializer_names = {i.name for i in proto.graph.initializer}

        def describe(values: Iterable[onnx.ValueInfoProto]) -> tuple[tuple[str, int | None, int | None], ...]:
            described = []
            for value in values:
                tensor_type = value.type.tensor_type
                dtype = tensor_type.elem_type if value.type.HasField("tensor_type") and tensor_type.elem_type else None
                rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
                described.append((value.name, dtype, rank))
            return tuple(described)

        inputs = [v for v in proto.graph.input if v.name not in initializer_names]
        return cls(describe(inputs), describe(proto.graph.output))

    def differences(self, other: Signature) -> list[str]:
        problems = []
        for side, mine, theirs in (("input", self.inputs, other.inputs), ("output", self.outputs, other.outputs)):
            if [m[0] for m in mine] != [t[0] for t in theirs]:
                problems.append(f"graph {side}s changed from {[m[0] for m in mine]} to {[t[0] for t in theirs]}")
                continue
            for (name, dtype, rank), (_, new_dtype, new_rank) in zip(mine, theirs):
                if dtype is not None and new_dtype is not None and dtype != new_dtype:
                    problems.append(
                        f"{side} '{name}' changed dtype from "
                        f"{onnx.TensorProto.DataType.Name(dtype)} to {onnx.TensorProto.DataType.Name(new_dtype)}"
                    )
                if rank is not None and new_rank is not None and rank != new_rank:
                    problems.append(f"{side} '{name}' changed rank from {rank} to {new_rank}")
        return problems


@dataclasses.dataclass
class Snapshot:
    """A model serialized once: verification, parity and rollback all read the same bytes, because each
    serialization of a weight-heavy proto (``ByteSize`` included) costs about a copy of every weight.

    Tensors still in external data files (a model over the in-memory limit is loaded lazily) are serialized as
    references to those files, never read: the snapshot of a model of gigabytes is then a few hundred KB, its
    parity sessions map the weights from the files, and ``size`` still counts them."""

    signature: Signature
    model: bytes | onnx.ModelProto  # bytes below the in-memory limit; the proto itself above it
    size: int  # the serialized model and the external data it refers to, as saved
    # Where the external data the model refers to lives, relative to which a restored copy or an ONNX Runtime
    # session must resolve it (not the current folder).
    model_dir: str | os.PathLike[str] | None = None
    # The model without its large weights, for shape inference (below the limit only; see ``_weightless``).
    shapes: bytes | None = None
    external_bytes: int = 0  # of tensors left in external data files

    @property
    def checked(self) -> bytes | onnx.ModelProto:
        """What onnx.checker reads: the model, or its weightless form when it refers to external data files,
        which the checker would look for in the current folder (loading found them in place, and a reference
        has no bytes in the model to check)."""
        return self.shapes if self.external_bytes and self.shapes is not None else self.model

    @classmethod
    def of(cls, model: ir.Model, model_dir: str | os.PathLike[str] | None = None) -> Snapshot:
        proto = modelio.to_proto(model)
        signature = Signature.of(proto)
        layout = modelio.tensor_layout(model)
        if model_dir is None:
            model_dir = layout.folder
        external = layout.external_bytes
        # The tensors in memory alone at the limit put the proto over it: skip serializing what could not be used.
        if not layout.needs_external_data:
            data = proto.SerializeToString()
            if len(data) < modelio.EXTERNAL_DATA_THRESHOLD:
                return cls(signature, data, len(data) + external, model_dir, _weightless(proto), external)
        return cls(signature, proto, modelio.proto_bytes(proto) + external, model_dir, external_bytes=external)

    def restore(self) -> ir.Model:
        return modelio.as_ir_model(self.model, model_dir=self.model_dir)


def _checker_error(model: bytes | onnx.ModelProto) -> str | None:
    if not isinstance(model, bytes):
        return None  # over the limit: checked on disk by save; the in-memory checker cannot take >2 GB messages
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # the checker raises several unrelated exception types
        return f"onnx.checker: {runtime.error_line(e)}"
    return None


# Initializers larger than this are left out of the model shape inference checks (as onnx_ir does for its own
# inference): inference reads the values of shape-like inputs only (Reshape's shape, Slice's starts, ...).
_SHAPE_INPUT_MAX_BYTES = 1024


def _weightless(proto: onnx.ModelProto) -> bytes:
    """``proto`` serialized with each main-graph initializer over ``_SHAPE_INPUT_MAX_BYTES`` turned into a graph
    input of the same type and shape: what shape inference needs, without the copies of every weight that
    parsing and re-serializing the whole model cost it (most of a check's time on a weight-heavy model)."""
    stripped = onnx.ModelProto()
    for field, value in proto.ListFields():
        if field.name != "graph":
            _copy_field(stripped, field, value)
    graph = stripped.graph
    for field, value in proto.graph.ListFields():
        if field.name == "node":
            graph.node.extend(_for_inference(node) for node in value)
        elif field.name != "initializer":
            _copy_field(graph, field, value)
    listed = {value.name for value in graph.input}
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL and _data_bytes(tensor) <= _SHAPE_INPUT_MAX_BYTES:
            graph.initializer.append(tensor)
        elif tensor.name not in listed:  # before IR 4 it is listed among the inputs already
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return stripped.SerializeToString()


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a tensor's values, from its dims and type: upb's ``ByteSize`` encodes the whole message to
    measure it, a copy of every weight (a tenth of a second per check on a 50 MB model)."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:  # an undefined or unknown type: the checker reports it, the measure need not be exact
        return tensor.ByteSize()
    if tensor.data_type == onnx.TensorProto.STRING:  # variable-length values
        return tensor.ByteSize()
    return math.prod(tensor.dims) * itemsize


_LIST_FIELDS = {
    onnx.AttributeProto.INTS: "ints",
    onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.STRINGS: "strings",
}


def _for_inference(node: onnx.NodeProto) -> onnx.NodeProto:
    """``node``, or for an ai.onnx.ml node with list attributes over ``shape_inference.LONG_ML_LIST`` values a
    copy with those cut to their first element, as the shape inference pass sends them: ONNX infers a tree ensemble's outputs
    from which attributes are present and the short ones, never the tree arrays (36M values on a 190 MB LightGBM
    model, which each check otherwise copied and parsed again)."""

    def long(attribute: onnx.AttributeProto) -> bool:
        field = _LIST_FIELDS.get(attribute.type)
        return field is not None and len(getattr(attribute, field)) > shape_inference.LONG_ML_LIST

    if node.domain != "ai.onnx.ml" or not any(long(attribute) for attribute in node.attribute):
        return node
    shortened = onnx.NodeProto()
    for field, value in node.ListFields():
        if field.name != "attribute":
            _copy_field(shortened, field, value)
    for attribute in node.attribute:
        if long(attribute):
            cut = shortened.attribute.add(name=attribute.name, type=attribute.type)
            getattr(cut, _LIST_FIELDS[attribute.type]).append(getattr(attribute, _LIST_FIELDS[attribute.type])[0])
        else:
            shortened.attribute.append(attribute)
    return shortened


def _copy_field(message: Any, field: Any, value: Any) -> None:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def _shape_inference_error(model: bytes | None) -> str | None:
    """Strict shape inference's complaint about a snapshot's ``shapes``; None when it has none or is over the
    in-memory limit (no ``shapes``)."""
    if model is None:
        return None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        return f"shape inference: {runtime.error_line(e)}"
    return None


class Clock:
    """Adds the seconds spent in each step to a dict: ``with clock("checker"): ...``."""

    def __init__(self, timings: dict[str, Any]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - started


@dataclasses.dataclass
class Baseline:
    """Which checks the pipeline's input itself passes: a check the input already fails is not held against a pass."""

    signature: Signature
    checker_ok: bool
    shape_inference_ok: bool

    @classmethod
    def of(cls, snapshot: Snapshot) -> Baseline:
        return cls(
            snapshot.signature,
            _checker_error(snapshot.checked) is None,
            _shape_inference_error(snapshot.shapes) is None,
        )

    def problems(self, snapshot: Snapshot, clock: Clock) -> list[str]:
        problems = self.signature.differences(snapshot.signature)
        if self.checker_ok:
            with clock("checker"):
                if error := _checker_error(snapshot.checked):
                    problems.append(error)
        if self.shape_inference_ok:
            with clock("shape_inference"):
                if error := _shape_inference_error(snapshot.shapes):
                    problems.append(error)
        return problems


def histogram_delta(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in set(before) | set(after)}
    return {op: change for op, change in sorted(delta.items()) if change}


def _op_domains(histogram: collections.Counter[str]) -> set[str]:
    return {op.partition("::")[0] if "::" in op else "" for op in histogram}


def undeclared_domains(pass_: Pass, before: collections.Counter[str], after: collections.Counter[str]) -> list[str]:
    """Operator domains a pass added without declaring them: a portable pass must not tie a model to a runtime."""
    added = _op_domains(after) - _op_domains(before) - pass_.allowed_domains()
    return [f"it added ops of domain '{domain}', which it does not declare" for domain in sorted(added)]
