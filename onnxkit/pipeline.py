"""Pipeline spec ⇄ passes, and the run loop that verifies, measures and guards each pass.

A spec is text that round-trips: ``simplify,fuse{target=standard,skip=conv-relu,gelu},quantize{mode=static}``.
Inside braces a comma-separated piece without ``=`` continues the list value of the key before it, which
is how ``skip=conv-relu,gelu`` reads. ``Pipeline.parse(s).to_string()`` is the canonical form: options in
declaration order, defaults left out.

Each pass in ``run`` goes through the same straight line:
1. snapshot the model (rollback and parity need the input of the pass);
2. run the pass, timed;
3. verify the result: onnx.checker, the graph signature, shape inference (each only if the input passed it);
4. check parity against the snapshot, within the tolerance of the pass's kind;
5. on failure, stop, roll back, or warn, as the user chose;
6. record statistics in the report.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir

from onnxkit import modelio
from onnxkit.errors import ParityError, PassFailedError, SpecError
from onnxkit.pass_base import Pass, PassContext, PassResult, make_options
from onnxkit.registry import get_pass_class
from onnxkit.report import PassReport, PipelineReport

CheckMode = Literal["each", "end", "off"]
OnFail = Literal["stop", "rollback", "warn"]


# ---------------------------------------------------------------------------------------------------------
# Spec text


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def split_top_level(text: str) -> list[str]:
    """Split ``text`` at commas that are not inside braces."""
    pieces, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth > 1:
                raise SpecError(f"nested '{{' in pipeline spec at position {i}: {text!r}")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unmatched '}}' in pipeline spec at position {i}: {text!r}")
        elif char == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise SpecError(f"unclosed '{{' in pipeline spec: {text!r}", hint="write options as name{key=value,...}")
    pieces.append(text[start:])
    return pieces


def parse_pass_text(text: str) -> tuple[str, dict[str, str]]:
    """``fuse{target=standard,skip=a,b}`` → ``("fuse", {"target": "standard", "skip": "a,b"})``."""
    text = text.strip()
    if not text:
        raise SpecError("empty pass in pipeline spec", hint="remove the doubled or trailing comma")
    name, brace, rest = text.partition("{")
    name = name.strip()
    if not _NAME.match(name):
        raise SpecError(f"bad pass name {name!r} in pipeline spec", hint="a spec looks like: cleanup,fuse{target=standard}")
    options: dict[str, str] = {}
    if not brace:
        return name, options
    if not rest.endswith("}"):
        raise SpecError(f"text after '}}' in {text!r}", hint="separate passes with commas")
    body = rest[:-1]
    last_key = None
    for piece in body.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, equals, value = piece.partition("=")
        if equals:
            key = key.strip()
            if not key:
                raise SpecError(f"pass '{name}': option without a name in {text!r}")
            if key in options:
                raise SpecError(f"pass '{name}': option '{key}' given twice")
            options[key] = value.strip()
            last_key = key
        elif last_key is not None:
            options[last_key] += "," + piece  # continues a list value: skip=conv-relu,gelu
        else:
            raise SpecError(f"pass '{name}': expected key=value, got {piece!r}")
    return name, options


def build_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    pass_class = get_pass_class(name)
    return pass_class(make_options(pass_class, options or {}))


# ---------------------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class PipelineResult:
    """The optimized model and what happened to it."""

    model: ir.Model
    report: PipelineReport

    def save(self, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
        return modelio.save_model(self.model, path, external_data=external_data)


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
class _Snapshot:
    """A model serialized once: verification, parity and rollback all read the same bytes, because each
    serialization of a weight-heavy proto (``ByteSize`` included) costs about a copy of every weight."""

    signature: Signature
    model: bytes | onnx.ModelProto  # bytes below the in-memory limit; the proto itself above it
    size: int

    @classmethod
    def of(cls, model: ir.Model) -> _Snapshot:
        proto = modelio.to_proto(model)
        signature = Signature.of(proto)
        # The tensors alone at the limit put the proto over it: skip serializing what could not be used.
        if modelio.tensor_bytes(model) < modelio.EXTERNAL_DATA_THRESHOLD:
            data = proto.SerializeToString()
            if len(data) < modelio.EXTERNAL_DATA_THRESHOLD:
                return cls(signature, data, len(data))
        return cls(signature, proto, proto.ByteSize())

    def restore(self) -> ir.Model:
        return modelio.as_ir_model(self.model)


def _checker_error(model: bytes | onnx.ModelProto) -> str | None:
    if not isinstance(model, bytes):
        return None  # over the limit: checked on disk by save; the in-memory checker cannot take >2 GB messages
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # the checker raises several unrelated exception types
        return f"onnx.checker: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return None


def _shape_inference_error(model: bytes | onnx.ModelProto) -> str | None:
    if not isinstance(model, bytes):
        return None
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        return f"shape inference: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return None


@dataclasses.dataclass
class _Baseline:
    """Which checks the pipeline's input itself passes: a check the input already fails is not held against a pass."""

    signature: Signature
    checker_ok: bool
    shape_inference_ok: bool

    @classmethod
    def of(cls, snapshot: _Snapshot) -> _Baseline:
        return cls(snapshot.signature, _checker_error(snapshot.model) is None,
                   _shape_inference_error(snapshot.model) is None)

    def problems(self, snapshot: _Snapshot) -> list[str]:
        problems = self.signature.differences(snapshot.signature)
        if self.checker_ok and (error := _checker_error(snapshot.model)):
            problems.append(error)
        if self.shape_inference_ok and (error := _shape_inference_error(snapshot.model)):
            problems.append(error)
        return problems


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph, its subgraphs, and local functions."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)) + sum(
        sum(1 for _ in ir.traversal.RecursiveGraphIterator(f)) for f in model.functions.values()
    )


def op_histogram(model: ir.Model) -> collections.Counter[str]:
    """How many nodes of each op type (``domain::Op`` outside the standard domain), subgraphs included."""
    histogram: collections.Counter[str] = collections.Counter()
    graphs: list[Any] = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            histogram[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    return histogram


def _histogram_delta(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in set(before) | set(after)}
    return {op: change for op, change in sorted(delta.items()) if change}


def _op_domains(histogram: collections.Counter[str]) -> set[str]:
    return {op.partition("::")[0] if "::" in op else "" for op in histogram}


def _undeclared_domains(pass_: Pass, before: collections.Counter[str], after: collections.Counter[str]) -> list[str]:
    """Operator domains a pass added without declaring them: a portable pass must not tie a model to a runtime."""
    added = _op_domains(after) - _op_domains(before) - pass_.allowed_domains()
    return [f"it added ops of domain '{domain}', which it does not declare" for domain in sorted(added)]


class Pipeline:
    """An ordered list of passes, built from a spec or from pass objects, run with verification and parity."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    @classmethod
    def parse(cls, spec: str) -> Pipeline:
        """Build from spec text. Unknown passes and bad options raise ``SpecError``."""
        if not spec or not spec.strip():
            raise SpecError("empty pipeline spec", hint="e.g. --passes cleanup,shape-inference")
        return cls([build_pass(*parse_pass_text(piece)) for piece in split_top_level(spec)])

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Pipeline:
        """Build from a TOML file: ``passes = ["cleanup", {name = "fuse", target = "standard"}]``."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            config = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SpecError(f"cannot read pipeline config {path}: {e}") from e
        passes = []
        for item in config.get("passes", []):
            if isinstance(item, str):
                passes.append(build_pass(*parse_pass_text(item)))
            elif isinstance(item, dict) and "name" in item:
                options = {k: v for k, v in item.items() if k != "name"}
                passes.append(build_pass(item["name"], options))
            else:
                raise SpecError(f"{path}: each entry of 'passes' is a spec string or a table with 'name'")
        if not passes:
            raise SpecError(f"{path} lists no passes", hint='write passes = ["cleanup", ...]')
        return cls(passes)

    def to_string(self) -> str:
        """The canonical spec."""
        return ",".join(p.spec() for p in self.passes)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"Pipeline({self.to_string()!r})"

    def run(
        self,
        model: Any,
        *,
        check: CheckMode = "each",
        on_fail: OnFail = "stop",
        data: Any = None,
        calibration_data: Any = None,
        dims: dict[str, int] | None = None,
        tolerance: Any = None,
        verify: bool = True,
        progress: bool = False,
        example_inputs: Any = None,
        model_dir: str | os.PathLike[str] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> PipelineResult:
        """Run every pass on ``model`` (a path, ``ModelProto``, ``ir.Model``, or a torch module for ``export``).

        ``check`` decides when parity runs: after ``each`` pass, at the ``end`` only, or ``off``.
        ``on_fail`` decides what a failing pass costs: ``stop`` raises, ``rollback`` discards the pass's
        result and goes on, ``warn`` keeps it and marks the report. ``tolerance`` overrides the defaults
        that follow each pass's kind: a ``parity.Tolerance`` replaces them, a dict such as ``{"atol": 1e-3}``
        overrides those fields only. ``data`` is a dataset (see ``onnxkit.data``) of parity inputs, and of
        calibration inputs too unless ``calibration_data`` is given. ``extras`` go to ``PassContext.extras``
        (e.g. ``{"calib_cache": folder}`` for ``quantize``).
        """
        if check not in ("each", "end", "off"):
            raise SpecError(f"check must be each, end or off, not {check!r}")
        if on_fail not in ("stop", "rollback", "warn"):
            raise SpecError(f"on_fail must be stop, rollback or warn, not {on_fail!r}")
        context = PassContext(data=calibration_data if calibration_data is not None else data, dims=dict(dims or {}), show_progress=progress)
        context.extras.update(extras or {})
        if model_dir is not None:
            context.model_dir = Path(model_dir)
        elif isinstance(model, (str, os.PathLike)):
            context.model_dir = Path(model).parent

        passes = list(self.passes)
        report = PipelineReport(spec=self.to_string(), check=check, on_fail=on_fail)
        current, passes = self._starting_model(model, passes, context, example_inputs, report)
        # The parity inputs are made once and reused, so every comparison in a run sees the same samples.
        parity_data = data
        original = _Snapshot.of(current)
        baseline = _Baseline.of(original) if verify else None
        report.input_summary = {"nodes": count_nodes(current), "bytes": original.size}
        before = original

        for pass_ in _with_progress(passes, enabled=progress):
            pass_.context = context
            histogram_before = op_histogram(current)
            nodes_before = count_nodes(current)
            entry = PassReport(name=pass_.name, spec=pass_.spec(), kind=pass_.kind, nodes_before=nodes_before,
                               bytes_before=before.size)
            report.passes.append(entry)
            started = time.perf_counter()
            try:
                result = pass_(current)
            except Exception as e:
                entry.seconds = time.perf_counter() - started
                failure = f"pass '{pass_.name}' raised {type(e).__name__}: {e}"
                entry.error = failure
                entry.traceback = traceback.format_exc()
                current = self._on_pass_failure(failure, on_fail, entry, before, e)
                continue
            entry.seconds = time.perf_counter() - started
            entry.modified = bool(result.modified)
            entry.stats = list(result.stats) if isinstance(result, PassResult) else []
            entry.details = dict(getattr(result, "details", None) or {})
            if not result.modified:
                entry.nodes_after = nodes_before
                entry.bytes_after = entry.bytes_before
                continue
            after = result.model
            after_snapshot = _Snapshot.of(after)
            entry.nodes_after = count_nodes(after)
            entry.bytes_after = after_snapshot.size
            histogram_after = op_histogram(after)
            entry.op_delta = _histogram_delta(histogram_before, histogram_after)
            problems = baseline.problems(after_snapshot) if baseline else []
            problems += _undeclared_domains(pass_, histogram_before, histogram_after)
            if problems:
                failure = f"pass '{pass_.name}' broke the model: {problems[0]}"
                entry.error = failure
                entry.verification = problems
                # A model that fails verification is never kept, whatever on_fail says.
                current = self._on_pass_failure(failure, "rollback" if on_fail == "warn" else on_fail, entry,
                                                 before)
                continue
            if check == "each":
                parity = self._compare(before.model, after_snapshot.model, parity_data, context, pass_.kind, tolerance)
                entry.parity = parity.to_dict()
                if not parity.passed:
                    message = f"pass '{pass_.name}' changed the model's outputs beyond {pass_.kind} tolerance: {parity.summary()}"
                    if on_fail == "stop":
                        entry.status = "parity-failed"
                        report.failed = True
                        raise ParityError(message, hint="use --on-fail rollback to skip this pass, or loosen the tolerance")
                    if on_fail == "rollback":
                        entry.status = "rolled-back"
                        entry.error = message
                        report.rolled_back.append(pass_.name)
                        current = before.restore()
                        continue
                    entry.status = "parity-warning"
                    entry.error = message
                    report.parity_failed = True
            current = after
            before = after_snapshot

        if check == "end" and before is not original:
            kind = "lossy" if any(p.kind == "lossy" for p in passes) else "exact"
            parity = self._compare(original.model, before.model, parity_data, context, kind, tolerance)
            report.final_parity = parity.to_dict()
            if not parity.passed:
                report.parity_failed = True
                if on_fail != "warn":
                    report.failed = True
                    raise ParityError(f"the optimized model's outputs drifted beyond {kind} tolerance: {parity.summary()}",
                                      hint="run with --check each to find the pass responsible")
        record_provenance(current, report)
        return PipelineResult(current, report)

    # -- helpers of run ---------------------------------------------------------------------------------

    @staticmethod
    def _starting_model(model: Any, passes: list[Pass], context: PassContext, example_inputs: Any,
                        report: PipelineReport) -> tuple[ir.Model, list[Pass]]:
        """Turn the run's input into an ``ir.Model``; a torch module is first exported by the leading pass."""
        if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto, ir.Model)):
            return modelio.as_ir_model(model), passes
        if passes and getattr(passes[0], "source_kind", "onnx") == "torch":
            export_pass = passes[0]
            context.extras["torch_module"] = model
            context.extras["example_inputs"] = example_inputs
            export_pass.context = context
            started = time.perf_counter()
            result = export_pass(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10))
            entry = PassReport(name=export_pass.name, spec=export_pass.spec(), kind=export_pass.kind,
                               modified=True, stats=list(getattr(result, "stats", [])),
                               seconds=time.perf_counter() - started, nodes_after=count_nodes(result.model))
            report.passes.append(entry)
            return result.model, passes[1:]
        raise SpecError(
            f"cannot run a pipeline on a {type(model).__name__}",
            hint="give an .onnx path, an onnx.ModelProto or onnx_ir.Model; start the spec with 'export' for a torch module",
        )

    @staticmethod
    def _compare(before: bytes | onnx.ModelProto, after: bytes | onnx.ModelProto, data: Any, context: PassContext, kind: str,
                 tolerance: Any) -> Any:
        from onnxkit import parity

        if not isinstance(tolerance, parity.Tolerance):
            tolerance = dataclasses.replace(parity.Tolerance.for_kind(kind), **(tolerance or {}))
        return parity.compare_models(before, after, data, tolerance=tolerance, dims=context.dims,
                                     model_dir=context.model_dir)

    @staticmethod
    def _on_pass_failure(message: str, on_fail: str, entry: PassReport, before: _Snapshot,
                         cause: BaseException | None = None) -> ir.Model:
        if on_fail == "stop":
            entry.status = "failed"
            raise PassFailedError(message, hint="use --on-fail rollback to skip this pass") from cause
        entry.status = "rolled-back"
        return before.restore()


def _with_progress(passes: list[Pass], *, enabled: bool) -> Iterable[Pass]:
    """Yield the passes, showing a progress bar on stderr that names the running pass."""
    if not enabled:
        yield from passes
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("passes", total=len(passes))
        for pass_ in passes:
            progress.update(task, description=f"running {pass_.name}")
            yield pass_
            progress.advance(task)


def record_provenance(model: ir.Model, report: PipelineReport) -> None:
    """Write what was done into ``metadata_props``: version, spec, per-pass results. No timings, so the
    same run on the same model writes the same bytes."""
    import json

    from onnxkit import __version__

    model.metadata_props["onnxkit.version"] = __version__
    model.metadata_props["onnxkit.spec"] = report.spec
    model.metadata_props["onnxkit.passes"] = json.dumps(report.provenance(), sort_keys=True, separators=(",", ":"))
