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
import contextlib
import dataclasses
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import onnx_ir as ir

from onnxkit import graph, modelio, runtime, validate
from onnxkit.errors import OnnxkitError, ParityError, PassFailedError, SpecError
from onnxkit.graph import count_nodes, op_histogram
from onnxkit.pass_base import Pass, PassContext, PassResult, Site, make_options
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
    # Where the external data of a model over the limit lives: its tensors stay on disk, referenced relative to
    # the model's folder, which a restored copy must know (not the current folder).
    model_dir: str | os.PathLike[str] | None = None
    # The model without its large weights, for shape inference (below the limit only; see ``_weightless``).
    shapes: bytes | None = None

    @classmethod
    def of(cls, model: ir.Model, model_dir: str | os.PathLike[str] | None = None) -> _Snapshot:
        proto = modelio.to_proto(model)
        signature = Signature.of(proto)
        # The tensors alone at the limit put the proto over it: skip serializing what could not be used.
        if modelio.tensor_bytes(model) < modelio.EXTERNAL_DATA_THRESHOLD:
            data = proto.SerializeToString()
            if len(data) < modelio.EXTERNAL_DATA_THRESHOLD:
                return cls(signature, data, len(data), model_dir, _weightless(proto))
        return cls(signature, proto, proto.ByteSize(), model_dir)

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
        if field.name != "initializer":
            _copy_field(graph, field, value)
    listed = {value.name for value in graph.input}
    for tensor in proto.graph.initializer:
        if tensor.ByteSize() <= _SHAPE_INPUT_MAX_BYTES:
            graph.initializer.append(tensor)
        elif tensor.name not in listed:  # before IR 4 it is listed among the inputs already
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return stripped.SerializeToString()


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


class _Clock:
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
class _Baseline:
    """Which checks the pipeline's input itself passes: a check the input already fails is not held against a pass."""

    signature: Signature
    checker_ok: bool
    shape_inference_ok: bool

    @classmethod
    def of(cls, snapshot: _Snapshot) -> _Baseline:
        return cls(snapshot.signature, _checker_error(snapshot.model) is None,
                   _shape_inference_error(snapshot.shapes) is None)

    def problems(self, snapshot: _Snapshot, clock: _Clock) -> list[str]:
        problems = self.signature.differences(snapshot.signature)
        if self.checker_ok:
            with clock("checker"):
                if error := _checker_error(snapshot.model):
                    problems.append(error)
        if self.shape_inference_ok:
            with clock("shape_inference"):
                if error := _shape_inference_error(snapshot.shapes):
                    problems.append(error)
        return problems


def _histogram_delta(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in set(before) | set(after)}
    return {op: change for op, change in sorted(delta.items()) if change}


def _op_domains(histogram: collections.Counter[str]) -> set[str]:
    return {op.partition("::")[0] if "::" in op else "" for op in histogram}


def _undeclared_domains(pass_: Pass, before: collections.Counter[str], after: collections.Counter[str]) -> list[str]:
    """Operator domains a pass added without declaring them: a portable pass must not tie a model to a runtime."""
    added = _op_domains(after) - _op_domains(before) - pass_.allowed_domains()
    return [f"it added ops of domain '{domain}', which it does not declare" for domain in sorted(added)]


# An exact pass must give the same outputs on every input, so on synthetic inputs (no data to cover) it is
# compared on this many samples; a lossy pass's budgets (cosine, SQNR) are statistics over all of them.
EXACT_SYNTHETIC_SAMPLES = 2
# Reruns of one pass while narrowing it down to the rules and sites that break it.
MAX_NARROWING_RERUNS = 32


@dataclasses.dataclass
class _Failure:
    """Why a pass's output cannot be kept as it is: ``kind`` is error (the pass raised), verification
    (checker, signature, shape inference, domains, a false claim) or parity."""

    kind: Literal["error", "verification", "parity"]
    message: str
    brief: str  # what narrowing reports beside a skipped rule or site
    cause: BaseException | None = None  # the exception a pass raised


@dataclasses.dataclass
class _Attempt:
    """One run of a pass, with its output checked."""

    result: PassResult | None
    snapshot: _Snapshot | None
    failure: _Failure | None
    parity: Any = None
    verification: list[str] = dataclasses.field(default_factory=list)


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
        result and goes on, ``warn`` keeps a result that fails parity and marks the report (a result that
        fails verification, or a pass that raised, is rolled back). Either way the report's ``exit_code`` is 1.
        ``tolerance`` overrides the defaults that follow each pass's kind: a ``parity.Tolerance`` replaces
        them, a dict such as ``{"atol": 1e-3}`` overrides those fields only.

        Parity runs on ``data`` (a dataset, see ``onnxkit.data``); else, given only ``calibration_data``, on
        the samples the calibration split holds out; else on synthetic inputs probed once for sizes the model
        runs on. ``data`` also calibrates unless ``calibration_data`` is given. ``extras`` go to
        ``PassContext.extras`` (e.g. ``{"calib_cache": folder}`` for ``quantize``).
        """
        if check not in ("each", "end", "off"):
            raise SpecError(f"check must be each, end or off, not {check!r}")
        if on_fail not in ("stop", "rollback", "warn"):
            raise SpecError(f"on_fail must be stop, rollback or warn, not {on_fail!r}")
        context = PassContext(data=calibration_data if calibration_data is not None else data, dims=dict(dims or {}),
                              show_progress=progress, parity_on_held_out=calibration_data is not None and data is None)
        context.extras.update(extras or {})
        if model_dir is not None:
            context.model_dir = Path(model_dir)
        elif isinstance(model, (str, os.PathLike)):
            context.model_dir = Path(model).parent

        report = PipelineReport(spec=self.to_string(), check=check, on_fail=on_fail)
        current, passes = self._starting_model(model, list(self.passes), context, example_inputs, report)
        validate.check_run(current, passes, check=check, data=data, calibration_data=calibration_data,
                           model_dir=context.model_dir)  # bad input is refused before the first pass
        run = _Run(context, report, check=check, on_fail=on_fail, tolerance=tolerance, verify=verify, data=data,
                   calibration_data=calibration_data)
        current = run.all(current, passes, progress=progress)
        record_provenance(current, report)
        return PipelineResult(current, report)

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
            seconds = time.perf_counter() - started
            entry = PassReport(name=export_pass.name, spec=export_pass.spec(), kind=export_pass.kind,
                               modified=True, stats=list(getattr(result, "stats", [])), seconds=seconds,
                               timings={"transform": seconds}, nodes_after=count_nodes(result.model))
            report.passes.append(entry)
            return result.model, passes[1:]
        raise SpecError(
            f"cannot run a pipeline on a {type(model).__name__}",
            hint="give an .onnx path, an onnx.ModelProto or onnx_ir.Model; start the spec with 'export' for a torch module",
        )


class _Run:
    """One run of a pipeline: what passes hand on to each other, and the straight line each pass goes through.

    For each pass:
    1. fingerprint its input (an in-place pass edits the very model it is given);
    2. run it, timed; an exception is an internal error of that pass, unless it is the user's (bad data);
    3. a pass that says it changed nothing must not have: the fingerprint after must be the same;
    4. verify the output: onnx.checker, the graph signature, shape inference (each only if the pipeline's
       input passed it), no operator domain the pass does not declare;
    5. compare outputs with the pass's input (``check=each``), within the tolerance of the pass's kind;
    6. an exact pass that reported its sites and failed 4 or 5 is narrowed: rerun with rules, then single
       sites, disabled until its output passes (``_narrow``);
    7. what still fails is handled as ``on_fail`` says: stop, roll back, or keep with a warning.
    """

    def __init__(self, context: PassContext, report: PipelineReport, *, check: CheckMode, on_fail: OnFail,
                 tolerance: Any, verify: bool, data: Any, calibration_data: Any) -> None:
        self.context = context
        self.report = report
        self.check = check
        self.on_fail = on_fail
        self.tolerance = tolerance
        self.verify = verify
        self.data = data
        self.calibration_data = calibration_data
        self.baseline: _Baseline | None = None
        self._parity: Any = None
        self.deferring = False  # parity waits for the end of a segment of exact passes

    # -- the run ----------------------------------------------------------------------------------------

    def all(self, current: ir.Model, passes: list[Pass], *, progress: bool) -> ir.Model:
        setup = self.report.timings
        clock = _Clock(setup)
        with clock("serialize"):
            original = _Snapshot.of(current, self.context.model_dir)
        if self.verify:
            with clock("baseline_checks"):
                self.baseline = _Baseline.of(original)
        self.report.input_summary = {"nodes": count_nodes(current), "bytes": original.size}
        if self.check != "off":
            with clock("parity_inputs"):
                self._parity_chain(current)  # data problems surface before the first pass runs
            if isinstance(original.model, bytes):  # a model past the in-memory limit is not held twice
                self._parity.prefetch(original.model, limit=self._sample_limit(self._first_comparison_kind(passes)))
        before = original
        try:
            with _progress(len(passes), enabled=progress) as show:
                for segment in _segments(passes, check=self.check):
                    current, before = self.segment(segment, current, before, show)
        finally:
            if self._parity is not None:
                self._parity.close()

        if self.check == "end" and before is not original:
            kind = "lossy" if any(p.kind == "lossy" for p in passes) else "exact"
            parity = self._compare(original.model, before.model, kind, setup.setdefault("final_parity", {}))
            self.report.final_parity = parity.to_dict()
            if not parity.passed:
                self.report.parity_failed = True
                if self.on_fail != "warn":
                    self.report.failed = True
                    raise ParityError(f"the optimized model's outputs drifted beyond {kind} tolerance: {parity.summary()}",
                                      hint="run with --check each to find the pass responsible")
        return current

    def segment(self, passes: list[Pass], current: ir.Model, before: _Snapshot, show: Callable[[Pass], None]
                ) -> tuple[ir.Model, _Snapshot]:
        """Run consecutive exact passes with one parity check for them all, from the first one's input to the
        last one's output: each model then runs once instead of once per pass around it. Each pass is still
        verified on its own. Should the outputs drift, the passes run again, each checked on its own, to find
        the one responsible: the price of a failure, paid only then."""
        if len(passes) == 1:
            show(passes[0])
            return self.one(passes[0], current, before)
        start, entries, rolled_back = before, len(self.report.passes), len(self.report.rolled_back)
        self.deferring = True
        try:
            for pass_ in passes:
                show(pass_)
                current, before = self.one(pass_, current, before)
        finally:
            self.deferring = False
        if before is start:
            return current, before  # nothing changed, so there is nothing to compare
        segment_entries = self.report.passes[entries:]
        covered = [e for e in segment_entries if e.modified and e.status in ("ok", "narrowed")]
        parity = self._compare(start.model, before.model, "exact",
                               (covered or segment_entries)[-1].timings.setdefault("parity", {}))
        if parity.passed:
            for entry in covered:
                entry.parity = {**parity.to_dict(), "passes": [e.name for e in covered]}
            return current, before
        # Check the passes one by one from the segment's input; what the first try cost stays on the record.
        self.report.timings["segment_retries"] = self.report.timings.get("segment_retries", 0.0) + sum(
            e.total_seconds() for e in segment_entries)
        del self.report.passes[entries:]
        del self.report.rolled_back[rolled_back:]
        current, before = start.restore(), start
        for pass_ in passes:
            current, before = self.one(pass_, current, before)
        return current, before

    def one(self, pass_: Pass, current: ir.Model, before: _Snapshot) -> tuple[ir.Model, _Snapshot]:
        """Run one pass; returns the model the next pass starts from, and its snapshot."""
        entry = PassReport(name=pass_.name, spec=pass_.spec(), kind=pass_.kind, nodes_before=count_nodes(current),
                           bytes_before=before.size)
        self.report.passes.append(entry)
        clock = _Clock(entry.timings)
        with clock("instrument"):
            fingerprint_before = graph.fingerprint(current)
            histogram_before = op_histogram(current)
        attempt = self._attempt(pass_, current, before, histogram_before, fingerprint_before, entry.timings)
        entry.seconds = entry.timings.get("transform", 0.0)
        if attempt.result is not None:
            self._record_result(entry, attempt.result)
        if attempt.result is not None and attempt.snapshot is None and attempt.failure is None:
            entry.nodes_after, entry.bytes_after = entry.nodes_before, entry.bytes_before  # unchanged, as claimed
            return current, before
        if attempt.failure is not None and attempt.result is not None and attempt.result.sites and pass_.kind == "exact":
            with clock("narrowing"):
                narrowed = self._narrow(pass_, before, histogram_before, attempt, entry)
            if narrowed is not None:
                attempt = narrowed
                self._record_result(entry, attempt.result)
                entry.status = "narrowed"
        entry.verification = attempt.verification
        if attempt.parity is not None:
            entry.parity = attempt.parity.to_dict()
        if attempt.snapshot is not None and attempt.result is not None:
            entry.bytes_after = attempt.snapshot.size
            entry.nodes_after = count_nodes(attempt.result.model)
            entry.op_delta = _histogram_delta(histogram_before, op_histogram(attempt.result.model))
        else:
            entry.nodes_after, entry.bytes_after = entry.nodes_before, entry.bytes_before
        if attempt.failure is None:
            assert attempt.result is not None
            # A narrowed pass may end up changing nothing: its input goes on, as it was.
            return attempt.result.model, attempt.snapshot or before
        return self._fail(pass_, entry, attempt, before)

    def _attempt(self, pass_: Pass, model: ir.Model, before: _Snapshot, histogram_before: collections.Counter[str],
                 fingerprint_before: tuple, timings: dict[str, Any]) -> _Attempt:
        """Run ``pass_`` on ``model`` and check its output. ``snapshot`` is None when the pass changed nothing."""
        clock = _Clock(timings)
        pass_.context = self.context
        try:
            with clock("transform"):
                result = pass_(model)
        except OnnxkitError as e:
            if e.exit_code == 2:
                raise  # the user's to fix (data that does not fit, a bad option): not a failure of the pass
            return _Attempt(None, None, _Failure("error", f"pass '{pass_.name}' failed: {e.message}", e.message, e))
        except Exception as e:  # any other exception is a bug in the pass: it costs that pass, not the run
            failure = f"{type(e).__name__}: {runtime.error_line(e)}"
            self.report.passes[-1].traceback = traceback.format_exc()
            return _Attempt(None, None, _Failure("error", f"pass '{pass_.name}' hit an internal error: {failure}",
                                                 f"internal error: {failure}", e))
        if not result.modified:
            with clock("instrument"):
                unchanged = graph.fingerprint(result.model) == fingerprint_before
            if unchanged:
                return _Attempt(result, None, None)
            problem = "it changed the model but reported modified=False"
            return _Attempt(result, None, _Failure("verification", f"pass '{pass_.name}' broke its contract: {problem}",
                                                   problem), verification=[problem])
        with clock("serialize"):
            snapshot = _Snapshot.of(result.model, self.context.model_dir)
        problems = self.baseline.problems(snapshot, clock) if self.baseline else []
        with clock("instrument"):
            problems += _undeclared_domains(pass_, histogram_before, op_histogram(result.model))
        if problems:
            return _Attempt(result, snapshot, _Failure("verification", f"pass '{pass_.name}' broke the model: "
                                                       f"{problems[0]}", problems[0]), verification=problems)
        if self.check != "each" or self.deferring:
            return _Attempt(result, snapshot, None)
        parity = self._compare(before.model, snapshot.model, pass_.kind, timings.setdefault("parity", {}))
        if parity.passed:
            return _Attempt(result, snapshot, None, parity)
        message = f"pass '{pass_.name}' changed the model's outputs beyond {pass_.kind} tolerance: {parity.summary()}"
        return _Attempt(result, snapshot, _Failure("parity", message, _parity_brief(parity)), parity)

    @staticmethod
    def _record_result(entry: PassReport, result: PassResult) -> None:
        entry.modified = bool(result.modified)
        entry.stats = list(result.stats) if isinstance(result, PassResult) else []
        entry.details = dict(getattr(result, "details", None) or {})

    def _fail(self, pass_: Pass, entry: PassReport, attempt: _Attempt, before: _Snapshot
              ) -> tuple[ir.Model, _Snapshot]:
        """Handle a pass whose output cannot be kept as it is, as ``on_fail`` says."""
        failure = attempt.failure
        assert failure is not None
        entry.error = failure.message
        if self.on_fail == "stop":
            entry.status = "parity-failed" if failure.kind == "parity" else "failed"
            self.report.failed = True
            if failure.kind == "parity":
                raise ParityError(failure.message, hint="use --on-fail rollback to skip this pass, or loosen the tolerance")
            raise PassFailedError(failure.message, hint="use --on-fail rollback to skip this pass") from failure.cause
        if self.on_fail == "warn" and failure.kind == "parity":
            entry.status = "parity-warning"
            self.report.parity_failed = True
            assert attempt.result is not None and attempt.snapshot is not None
            return attempt.result.model, attempt.snapshot
        # Rolled back: a pass that raised or broke the model is never kept, whatever on_fail says. Its input
        # comes back from the snapshot, since an in-place pass may have edited it before it failed.
        entry.status = "rolled-back"
        self.report.rolled_back.append(pass_.name)
        return before.restore(), before

    # -- narrowing --------------------------------------------------------------------------------------

    def _narrow(self, pass_: Pass, before: _Snapshot, histogram_before: collections.Counter[str], failed: _Attempt,
                entry: PassReport) -> _Attempt | None:
        """Rerun an exact pass on its input with rules, then single sites, disabled until its output passes.

        Rules are bisected in the order the pass reported them: the shortest prefix whose disabling makes the
        output pass ends in a culprit, which stays disabled; repeat until the output passes. Each culprit rule
        is then put back and bisected the same way over the sites where it fired (any further culprit site
        lies before the one found), so that only the sites that break the model are skipped (the whole rule
        stays skipped where that does not work out). At most ``MAX_NARROWING_RERUNS`` reruns. Returns the
        passing attempt, with ``entry.skipped`` saying what was skipped and why, or None when the output
        cannot be made to pass that way."""
        reruns = 0

        def attempt(disabled: set[str | Site]) -> _Attempt | None:
            nonlocal reruns
            if reruns >= MAX_NARROWING_RERUNS:
                return None
            reruns += 1
            self.context.disabled = frozenset(disabled)
            try:  # its time counts as narrowing's, whatever step it is spent in
                model = before.restore()
                return self._attempt(pass_, model, before, histogram_before, graph.fingerprint(model), {})
            finally:
                self.context.disabled = frozenset()

        def bisect(base: set[str | Site], items: list[Any], failure: _Failure, sites: list[Site]
                   ) -> tuple[Any, _Failure, list[Site]] | None:
            """The item that ends the shortest prefix of ``items`` whose disabling (with ``base``) makes the
            output pass, with the failure and the sites of the run just short of it; None when even disabling
            them all does not pass, or the reruns run out."""
            everything = attempt(base | set(items))
            if everything is None or everything.failure is not None:
                return None
            low, high = 0, len(items)
            while high - low > 1:
                middle = (low + high) // 2
                tried = attempt(base | set(items[:middle]))
                if tried is None:
                    return None
                if tried.failure is None:
                    high = middle
                else:
                    low, failure = middle, tried.failure
                    sites = tried.result.sites if tried.result is not None else []
            return items[high - 1], failure, sites

        assert failed.result is not None and failed.failure is not None
        disabled: set[str | Site] = set()
        culprits: list[tuple[str, _Failure, list[Site]]] = []
        failure, sites = failed.failure, failed.result.sites
        while True:  # rules
            rules = [rule for rule in dict.fromkeys(site.rule for site in sites) if rule not in disabled]
            found = bisect(disabled, rules, failure, sites)
            if found is None:
                return None
            rule, failure_with_rule, sites_with_rule = found
            culprits.append((rule, failure_with_rule, [site for site in sites_with_rule if site.rule == rule]))
            disabled.add(rule)
            passing = attempt(disabled)
            if passing is None:
                return None
            if passing.failure is None:
                break
            failure, sites = passing.failure, passing.result.sites if passing.result is not None else []

        skipped: list[dict[str, Any]] = []
        for rule, failure_with_rule, rule_sites in culprits:  # sites of each culprit rule
            base = disabled - {rule}
            chosen: list[tuple[Site, _Failure]] = []
            remaining, failure, sites = rule_sites, failure_with_rule, rule_sites
            narrowed = None
            while remaining and narrowed is None:
                found = bisect(base | {site for site, _ in chosen}, remaining, failure, sites)
                if found is None:
                    break
                site, failure_at_site, _ = found
                chosen.append((site, failure_at_site))
                remaining = remaining[:remaining.index(site)]  # any other culprit comes before it
                tried = attempt(base | {site for site, _ in chosen})
                if tried is None:
                    break
                if tried.failure is None:
                    narrowed = tried
                failure = tried.failure or failure
            if narrowed is not None:
                disabled, passing = base | {site for site, _ in chosen}, narrowed
                chosen.sort(key=lambda found: rule_sites.index(found[0]))
                skipped += [{"rule": rule, "node": site.node, "failure": why.brief} for site, why in chosen]
            else:
                skipped.append({"rule": rule, "node": None, "failure": failure_with_rule.brief})
        entry.skipped = skipped
        entry.narrowing_reruns = reruns
        return passing

    # -- parity -----------------------------------------------------------------------------------------

    def _compare(self, reference: Any, candidate: Any, kind: str, timings: dict[str, Any]) -> Any:
        return self._parity.compare(reference, candidate, self._tolerance(kind), timings,
                                    limit=self._sample_limit(kind))

    def _sample_limit(self, kind: str) -> int | None:
        synthetic = self.data is None and self.calibration_data is None
        return EXACT_SYNTHETIC_SAMPLES if synthetic and kind == "exact" else None

    def _first_comparison_kind(self, passes: list[Pass]) -> str:
        """The kind of the comparison most likely to be made against the pipeline's input: the first pass's
        (its segment's, for exact passes), or with ``check=end`` the whole run's."""
        if self.check == "end":
            return "lossy" if any(p.kind == "lossy" for p in passes) else "exact"
        return passes[0].kind if passes else "exact"

    def _tolerance(self, kind: str) -> Any:
        from onnxkit import parity

        if isinstance(self.tolerance, parity.Tolerance):
            return self.tolerance
        return dataclasses.replace(parity.Tolerance.for_kind(kind), **(self.tolerance or {}))

    def _parity_chain(self, model: ir.Model) -> Any:
        """The parity inputs, chosen once per run, and the chain that compares each pass's output on them."""
        if self._parity is not None:
            return self._parity
        from onnxkit import parity
        from onnxkit.data import (
            DEFAULT_CALIBRATION_SAMPLES,
            CalibrationSplit,
            as_dataset,
            describe_data,
            input_specs,
        )

        if self.data is not None:
            dataset = as_dataset(self.data, model)
            description = f"--data {describe_data(self.data)}"
        elif self.calibration_data is not None:
            # The split quantize makes with its default ``samples``: the held-out samples are the very ones it
            # judged its target on (a larger ``samples`` only makes them a subset).
            dataset = CalibrationSplit(as_dataset(self.calibration_data, model), DEFAULT_CALIBRATION_SAMPLES).held_out
            description = f"held-out samples of the calibration data ({describe_data(self.calibration_data)})"
        else:
            dataset = as_dataset(None, model, dims=self.context.dims, model_dir=self.context.model_dir)
            description = describe_data(dataset)
        self.report.parity_inputs = description
        self._parity = parity.ParityChain(dataset, input_specs(model), description,
                                          data_given=self.data is not None or self.calibration_data is not None,
                                          model_dir=self.context.model_dir)
        return self._parity


def _parity_brief(parity: Any) -> str:
    """The failure in a few words, e.g. ``parity: output 'y' max abs 0.52`` (cosine for a lossy budget)."""
    worst = parity.worst()
    if worst is None or worst.errors or not worst.failures:
        return f"parity: {parity.errors[0] if parity.errors else 'failed'}"
    return f"parity: output '{worst.name}': {worst.failures[0]}"


def _segments(passes: list[Pass], *, check: CheckMode) -> list[list[Pass]]:
    """Runs of consecutive exact passes, and each other pass alone; with ``check=each`` only (otherwise
    there is no per-pass parity to share)."""
    segments: list[list[Pass]] = []
    for pass_ in passes:
        if check == "each" and pass_.kind == "exact" and segments and segments[-1][-1].kind == "exact":
            segments[-1].append(pass_)
        else:
            segments.append([pass_])
    return segments


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[Pass], None]]:
    """A function to call as each pass starts; with ``enabled``, a progress bar on stderr names it."""
    if not enabled:
        yield lambda pass_: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("passes", total=total)
        started = 0

        def show(pass_: Pass) -> None:
            nonlocal started
            progress.update(task, description=f"running {pass_.name}", completed=min(started, total))
            started += 1

        yield show


def record_provenance(model: ir.Model, report: PipelineReport) -> None:
    """Write what was done into ``metadata_props``: version, spec, per-pass results. No timings, so the
    same run on the same model writes the same bytes."""
    import json

    from onnxkit import __version__

    model.metadata_props["onnxkit.version"] = __version__
    model.metadata_props["onnxkit.spec"] = report.spec
    model.metadata_props["onnxkit.passes"] = json.dumps(report.provenance(), sort_keys=True, separators=(",", ":"))
