"""What a pass is: a CLI name, typed options, a kind, and a ``call`` that edits an ``onnx_ir.Model``.

Passes build on ``onnx_ir.passes``: a pass is an ``onnx_ir`` pass with the extra facts the pipeline needs.

    @dataclasses.dataclass(frozen=True)
    class ScaleOptions:
        factor: float = 1.0

    class ScalePass(Pass):
        \"\"\"Multiply every initializer by a factor.\"\"\"
        name = "scale"
        kind = "lossy"
        Options = ScaleOptions

        def call(self, model):
            ...
            return PassResult(model, modified=True, stats=["scaled 3 initializers"])

Options are a frozen dataclass. Field types drive parsing of ``name{key=value,...}``: ``bool``, ``int``,
``float``, ``str``, ``Literal[...]`` choices, ``tuple[str, ...]`` lists, and ``X | None``. A dataclass
``__post_init__`` that raises ``ValueError`` rejects a bad combination; the pipeline turns that into a
``SpecError`` naming the pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import onnx_ir as ir

from onnxkit.errors import SpecError

if TYPE_CHECKING:  # only for the annotation: parity is not needed to define a pass
    from onnxkit.parity.judgement import Judgement, ParityReference

PassKind = Literal["exact", "lossy"]


@dataclasses.dataclass(frozen=True)
class Site:
    """One place a rewrite rule changed the model: the rule's name and the node it anchored on.

    An exact pass that reports its sites can be *narrowed*: when its output fails verification or parity,
    the pipeline reruns it with rules, then single sites, disabled (``PassContext.disabled``) until the
    failure is gone, and keeps everything else the pass did.
    """

    rule: str
    node: str

    def __str__(self) -> str:
        return f"{self.rule} at node {self.node or '<unnamed>'}"


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """``onnx_ir``'s result plus human-readable statistics, e.g. ``["removed 7 Identity nodes"]``.

    ``sites`` lists where the pass's rewrite rules fired (see ``Site``); a pass that leaves it empty is
    kept or dropped whole when it fails. ``details`` is the structured, JSON-ready report behind the stats
    lines (quantize's search, a precision pass's verdicts), copied into the run's JSON report.
    ``judgement`` is a lossy pass's own parity check of the model it returns (``parity.judgement.Judgement``),
    which the pipeline takes instead of its own check only where it compared exactly what the pipeline would.
    """

    stats: list[str] = dataclasses.field(default_factory=list)
    sites: list[Site] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    judgement: Judgement | None = None


@dataclasses.dataclass
class PassContext:
    """What a pass may need beyond the model, set by the pipeline before each call.

    ``data`` is a re-iterable dataset of ``{input name: array}`` samples (calibration, sensitivity);
    ``dims`` binds dynamic dimensions by name; ``model_dir`` is where the model was loaded from.
    ``calib_cache`` is a folder where a pass may keep what it measured on this model and data (quantize's
    calibration ranges and sensitivities), to reuse on the next run. ``metric`` is a user's measure of a
    candidate model (an ``onnxruntime.InferenceSession`` in, a score out, higher is better), replacing the parity
    target of a lossy pass that judges its own candidates (quantize). ``example_inputs`` are what a
    ``SourcePass`` needs beside the run's input (export: the torch module's example inputs).
    ``disabled`` holds the rules (``Site.rule`` names) and single sites the pipeline switched off while
    narrowing a failing pass; a pass that reports sites must honour it through ``allows``.
    ``parity_on_held_out`` says the pipeline checks parity on the samples of ``data`` that a
    ``CalibrationSplit`` holds out (it was given calibration data only), so a lossy pass that judges its own
    candidates can judge them on exactly those; False: on samples it cannot know (all of ``data``, say).
    ``parity_reference``, set for a lossy pass where the pipeline has recorded its input's outputs on its parity
    samples, is those samples and outputs (``parity.judgement.ParityReference``): the pass can judge its output
    exactly as the pipeline will without running its input on them again.
    ``parity_checked`` False says the pipeline compares no pass's output with its input (``check=off``): a lossy
    pass need not also judge its candidates as that check would (quantize's confirmation with ORT optimizations
    off), only against its own target.
    """

    data: Any = None
    dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    model_dir: Path | None = None
    show_progress: bool = False
    calib_cache: Path | None = None
    metric: Callable[[Any], float] | None = None
    example_inputs: Any = None
    disabled: frozenset[str | Site] = frozenset()
    parity_on_held_out: bool = False
    parity_reference: ParityReference | None = None
    parity_checked: bool = True

    def allows(self, rule: str, node: str | None = None) -> bool:
        """Whether ``rule`` may fire (at ``node``, the name of the node it anchors on, when given)."""
        if rule in self.disabled:
            return False
        return node is None or Site(rule, node) not in self.disabled


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For passes that take no options."""


class Pass(ir.passes.PassBase):
    """Base class of every onnxkit pass, built-in or plugin.

    Subclasses set ``name`` (the CLI name), ``kind`` (``exact`` keeps outputs within floating-point
    tolerance, ``lossy`` within a stated budget), ``Options`` (a frozen dataclass), and implement
    ``call(model) -> PassResult``. The first line of the class docstring is the one-line doc that
    ``onnxkit passes`` shows. Running a pass twice must change nothing the second time.
    """

    name: ClassVar[str]
    kind: ClassVar[PassKind] = "exact"
    Options: ClassVar[type] = NoOptions
    # Operator domains the pass may add to a model; "" is the standard ONNX domain.
    emits_domains: ClassVar[frozenset[str]] = frozenset({""})
    # Whether the pass runs the model in ONNX Runtime (calibration, ORT's optimizer): a model with operators
    # ORT does not know is then refused before the run starts (onnxkit.validate).
    uses_runtime: ClassVar[bool] = False
    # In-place passes edit and return the same model; proto-level tools (ORT, onnxsim, quantizers)
    # return a new one. The pipeline snapshots the model itself, so either works.
    in_place_pass: ClassVar[bool] = True

    def __init__(self, options: Any = None, **kwargs: Any) -> None:
        if options is None:
            options = make_options(self, kwargs)
        elif kwargs:
            raise TypeError("give either an options object or keyword options, not both")
        self.options = options
        self.context = PassContext()

    @property
    def in_place(self) -> bool:
        return self.in_place_pass

    @property
    def changes_input(self) -> bool:
        return self.in_place_pass

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> PassResult:
        result = super().__call__(model_or_result)
        if not isinstance(result, PassResult):
            # onnx_ir accepts its own result class; the pipeline reads ``stats`` and ``sites`` off every result
            result = PassResult(result.model, result.modified)
        return result

    def allowed_domains(self) -> frozenset[str]:
        """Operator domains this pass may add with its current options; the pipeline holds it to them."""
        return self.emits_domains

    @classmethod
    def describe_extra(cls) -> list[str]:
        """Lines ``onnxkit passes`` prints under the pass's options: defaults that need their reason."""
        return []

    @classmethod
    def doc(cls) -> str:
        """The one-line description: the first line of the class docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.Options))

    def option_string(self) -> str:
        """Canonical ``key=value`` list of the options that differ from their defaults."""
        parts = []
        defaults = type(self).Options()
        for field in self.option_fields():
            value = getattr(self.options, field.name)
            if value != getattr(defaults, field.name):
                parts.append(f"{field.name}={format_option_value(value)}")
        return ",".join(parts)

    def spec(self) -> str:
        """This pass as it appears in a canonical pipeline spec: ``name`` or ``name{k=v,...}``."""
        options = self.option_string()
        return f"{self.name}{{{options}}}" if options else self.name

    def __repr__(self) -> str:
        return f"<pass {self.spec()}>"


# ---------------------------------------------------------------------------------------------------------
# Typed options: text ⇄ values


class SourcePass(Pass):
    """A pass that makes the run's first ONNX model from an input that is not ONNX (``export``: a torch module).

    The pipeline hands such an input to ``from_source`` when the pass leads the spec; given an ONNX model, the
    pass's ``call`` has nothing to make and returns the model unchanged."""

    def from_source(self, source: Any) -> PassResult:
        raise NotImplementedError


def format_option_value(value: Any) -> str:
    """The canonical text of an option value; ``parse_option_value`` reads it back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_option_value(v) for v in value)
    if value is None:
        return "none"
    return str(value)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_option_value(annotation: Any, text: str) -> Any:
    """Convert the text of one option to the type its dataclass field declares. Raises ``ValueError``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_option_value(arg, text)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for choice in args:
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {', '.join(str(a) for a in args)}")
    if origin in (tuple, list):
        item_type = args[0] if args else str
        items = [t.strip() for t in text.split(",") if t.strip()]
        return tuple(parse_option_value(item_type, item) for item in items)
    if annotation is bool:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected true or false")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if annotation is str:
        return text
    raise TypeError(f"unsupported option type {annotation!r}")


def option_type_name(annotation: Any) -> str:
    """A short human name for an option's type, for ``onnxkit passes``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(option_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (tuple, list):
        return f"list[{option_type_name(args[0]) if args else 'str'}]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _resolved_field_types(options_cls: type) -> dict[str, Any]:
    # Options modules use ``from __future__ import annotations``, so field types are strings until resolved.
    return typing.get_type_hints(options_cls, include_extras=False)


def make_options(pass_: Pass | type[Pass], values: Mapping[str, Any]) -> Any:
    """Build a pass's options from keyword values (already typed) or raw text, validating each.

    Errors are ``SpecError``s that name the pass and the option.
    """
    pass_cls = pass_ if isinstance(pass_, type) else type(pass_)
    options_cls = pass_cls.Options
    hints = _resolved_field_types(options_cls)
    known = {f.name: f for f in dataclasses.fields(options_cls)}
    typed: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            choices = ", ".join(known) or "none"
            raise SpecError(
                f"pass '{pass_cls.name}' has no option '{key}'",
                hint=f"options of '{pass_cls.name}': {choices}",
            )
        annotation = hints[key]
        if isinstance(value, str) and annotation is not str:
            try:
                value = parse_option_value(annotation, value)
            except ValueError as e:
                raise SpecError(
                    f"pass '{pass_cls.name}', option '{key}': bad value '{value}': {e}",
                    hint=f"'{key}' takes {option_type_name(annotation)}",
                ) from None
        elif isinstance(value, list):
            value = tuple(value)
        typed[key] = value
    try:
        return options_cls(**typed)
    except (ValueError, TypeError) as e:
        raise SpecError(f"pass '{pass_cls.name}': {e}") from None
