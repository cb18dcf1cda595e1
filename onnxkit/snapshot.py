"""What the pipeline checks a pass's output with: the model serialized once (``Snapshot``: verification, parity
and rollback all read the same bytes), its graph signature, onnx.checker and strict shape inference (each held
against a pass only where the pipeline's input passes it: ``Baseline``), the operator domains a pass added, and
the clock that splits a pass's time by step.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import model_bytes, modelio, runtime
from onnxkit.model_bytes import TensorEncodings
from onnxkit.pass_base import Pass


@dataclasses.dataclass(frozen=True)
class Signature:
    """Graph inputs and outputs as (name, dtype, rank); dtype or rank is None where the model leaves it open."""

    inputs: tuple[tuple[str, int | None, int | None], ...]
    outputs: tuple[tuple[str, int | None, int | None], ...]

    @classmethod
    def of(cls, graph: onnx.GraphProto, initializer_names: Iterable[str]) -> Signature:
        """The signature of ``graph``, whose initializers are named ``initializer_names`` (they may be
        serialized apart from it: ``model_bytes``); before IR 4 they are listed among its inputs too."""
        initializer_names = set(initializer_names)

        def describe(values: Iterable[onnx.ValueInfoProto]) -> tuple[tuple[str, int | None, int | None], ...]:
            described = []
            for value in values:
                tensor_type = value.type.tensor_type
                dtype = tensor_type.elem_type if value.type.HasField("tensor_type") and tensor_type.elem_type else None
                rank = len(tensor_type.shape.dim) if tensor_type.HasField("shape") else None
                described.append((value.name, dtype, rank))
            return tuple(described)

        inputs = [v for v in graph.input if v.name not in initializer_names]
        return cls(describe(inputs), describe(graph.output))

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
    serialization of a weight-heavy proto (``ByteSize`` included) costs about a copy of every weight. Made
    through a run's ``TensorEncodings``, it reuses the bytes of the tensors an earlier snapshot encoded, and
    its parts are joined only when something reads ``model`` (a snapshot between two passes of a segment is
    often only checked: its checks read the weightless form).

    Tensors still in external data files (a model over the in-memory limit is loaded lazily) are serialized as
    references to those files, never read: the snapshot of a model of gigabytes is then a few hundred KB, its
    parity sessions map the weights from the files, and ``size`` still counts them."""

    signature: Signature
    # bytes below the in-memory limit (in parts until first read: see ``model``); the proto itself above it
    content: bytes | tuple[bytes, ...] | onnx.ModelProto
    size: int  # the serialized model and the external data it refers to, as saved
    # Where the external data the model refers to lives, relative to which a restored copy or an ONNX Runtime
    # session must resolve it (not the current folder).
    model_dir: str | os.PathLike[str] | None = None
    # The model with its weights declared as graph inputs, for shape inference and the checker (below the limit
    # only; see ``model_bytes``).
    shapes: bytes | None = None
    external_bytes: int = 0  # of tensors left in external data files
    # ``shapes`` has ai.onnx.ml list attributes cut short (for shape inference): the checker reads ``model``.
    lists_cut: bool = False
    # Weights encoded for the first time in this snapshot: ``shapes`` declares them as inputs, so the checker's
    # tensor checks are made on them one by one (``_checker``), which then lets them go.
    new_weights: tuple[Any, ...] = ()

    @property
    def model(self) -> bytes | onnx.ModelProto:
        if isinstance(self.content, tuple):
            self.content = b"".join(self.content)
        return self.content

    @property
    def checked(self) -> bytes | onnx.ModelProto:
        """What onnx.checker reads for the whole model: the model, or its weightless form when it refers to
        external data files, which the checker would look for in the current folder (loading found them in
        place, and a reference has no bytes in the model to check)."""
        return self.shapes if self.external_bytes and self.shapes is not None else self.model

    @classmethod
    def of(
        cls,
        model: ir.Model,
        model_dir: str | os.PathLike[str] | None = None,
        encodings: TensorEncodings | None = None,
    ) -> Snapshot:
        layout = modelio.tensor_layout(model)
        if model_dir is None:
            model_dir = layout.folder
        external = layout.external_bytes
        # The tensors in memory alone at the limit put the proto over it: skip serializing what could not be used.
        if not layout.needs_external_data:
            serialized = (encodings or TensorEncodings()).serialize(model)
            if serialized.size < modelio.EXTERNAL_DATA_THRESHOLD:
                return cls(
                    Signature.of(serialized.graph, serialized.initializer_names),
                    serialized.parts,
                    serialized.size + external,
                    model_dir,
                    serialized.weightless,
                    external,
                    serialized.lists_cut,
                    serialized.new_weights,
                )
        proto = modelio.to_proto(model)
        signature = Signature.of(proto.graph, {i.name for i in proto.graph.initializer})
        return cls(signature, proto, modelio.proto_bytes(proto) + external, model_dir, external_bytes=external)

    @classmethod
    def of_input(
        cls,
        model: ir.Model,
        loaded: modelio.LoadedModel | None,
        model_dir: str | os.PathLike[str] | None,
        encodings: TensorEncodings,
    ) -> Snapshot:
        """The snapshot of a pipeline's input ``model``: ``of_loaded`` where ``loaded`` is ``model`` as read from
        its file, unedited since (its weights are then checked with the file: not new to the checker when
        ``encodings`` first encodes them), else ``of``."""
        snapshot = cls.of_loaded(loaded, model_dir) if loaded is not None else None
        if snapshot is None:
            return cls.of(model, model_dir, encodings)
        encodings.checked_already(value.const_value for value in model.graph.initializers.values())
        return snapshot

    @classmethod
    def of_loaded(cls, loaded: modelio.LoadedModel, model_dir: str | os.PathLike[str] | None = None) -> Snapshot | None:
        """The snapshot of a model just read from its file, made of the file's bytes and the proto they parsed to
        (no serialization through onnx_ir: on a model of a thousand nodes that is most of the cost of a
        snapshot); None where the bytes are not the whole model (external data, a text format) or over the
        in-memory limit."""
        content = loaded.content
        if content is None or len(content) >= modelio.EXTERNAL_DATA_THRESHOLD:
            return None
        proto = loaded.proto
        weightless, lists_cut = model_bytes.weightless_of(proto)
        signature = Signature.of(proto.graph, {tensor.name for tensor in proto.graph.initializer})
        return cls(signature, content, len(content), model_dir, weightless, 0, lists_cut)

    def restore(self) -> ir.Model:
        return modelio.as_ir_model(self.model, model_dir=self.model_dir)


def _checker_error(model: bytes | onnx.ModelProto, new_weights: Iterable[Any] = ()) -> str | None:
    """onnx.checker's complaint about ``model``, and about each of ``new_weights`` (tensors the model holds
    that ``model``, a weightless form, declares as inputs)."""
    if not isinstance(model, bytes):
        return None  # over the limit: checked on disk by save; the in-memory checker cannot take >2 GB messages
    try:
        onnx.checker.check_model(model)
        for tensor in new_weights:
            onnx.checker.check_tensor(
                tensor.raw if isinstance(tensor, ir.serde.TensorProtoTensor) else ir.serde.serialize_tensor(tensor)
            )
    except Exception as e:  # the checker raises several unrelated exception types
        return f"onnx.checker: {runtime.error_line(e)}"
    return None


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
    # The input's snapshot when it is its file's bytes (``Snapshot.of_loaded``). The checks held against passes
    # are those the input passes as onnx_ir writes it, as every pass's output is written; the file's results
    # stand for them while they pass, until a pass's output fails a check, which then asks (``_rebase``).
    as_read: Snapshot | None = None

    @classmethod
    def of(cls, snapshot: Snapshot, *, as_read: bool = False) -> Baseline:
        checker_ok = _checker_error(snapshot.checked) is None  # the whole model once: every tensor of it is checked
        snapshot.new_weights = ()  # so checked already; held no longer (a pass may replace them)
        shape_inference_ok = _shape_inference_error(snapshot.shapes) is None
        baseline = cls(snapshot.signature, checker_ok, shape_inference_ok, snapshot if as_read else None)
        if as_read and not (checker_ok and shape_inference_ok):
            baseline._rebase()  # a check the file fails may be one onnx_ir's writing passes
        return baseline

    def problems(self, snapshot: Snapshot, clock: Clock) -> list[str]:
        problems = self.signature.differences(snapshot.signature)
        checker_error = shape_error = None
        if self.checker_ok:
            with clock("checker"):
                checker_error = _checker(snapshot)
        if self.shape_inference_ok:
            with clock("shape_inference"):
                shape_error = _shape_inference_error(snapshot.shapes)
        if (checker_error or shape_error) and self.as_read is not None:
            self._rebase()
            checker_error = checker_error if self.checker_ok else None
            shape_error = shape_error if self.shape_inference_ok else None
        return problems + [error for error in (checker_error, shape_error) if error]

    def _rebase(self) -> None:
        """The input's checks once more, on the input as onnx_ir writes it (read again from its file's bytes),
        as they are made when the input is serialized through onnx_ir from the start."""
        assert self.as_read is not None
        rewritten = Snapshot.of(self.as_read.restore(), self.as_read.model_dir)
        self.as_read = None
        self.checker_ok = _checker_error(rewritten.checked) is None
        self.shape_inference_ok = _shape_inference_error(rewritten.shapes) is None


def _checker(snapshot: Snapshot) -> str | None:
    """onnx.checker's complaint about a pass's output. Its weightless form says what the whole model says to the
    checker but for the weights' own tensor checks (type, data fields, their size against the dims), so the
    checker reads it and checks only the weights new since the last snapshot, each whole: the others, the same
    objects, passed before (a pass replaces a tensor, never edits one). Where ``shapes`` has tree arrays cut
    short the whole model is read."""
    if snapshot.lists_cut or snapshot.shapes is None:
        return _checker_error(snapshot.checked)
    new_weights, snapshot.new_weights = snapshot.new_weights, ()  # checked once, then held no longer
    return _checker_error(snapshot.shapes, new_weights)


def histogram_delta(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in set(before) | set(after)}
    return {op: change for op, change in sorted(delta.items()) if change}


def _op_domains(histogram: collections.Counter[str]) -> set[str]:
    return {op.partition("::")[0] if "::" in op else "" for op in histogram}


def undeclared_domains(pass_: Pass, before: collections.Counter[str], after: collections.Counter[str]) -> list[str]:
    """Operator domains a pass added without declaring them: a portable pass must not tie a model to a runtime."""
    added = _op_domains(after) - _op_domains(before) - pass_.allowed_domains()
    return [f"it added ops of domain '{domain}', which it does not declare" for domain in sorted(added)]
