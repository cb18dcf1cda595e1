"""Export a PyTorch module to ONNX with either of torch's exporters, and check ONNX Runtime against torch.

    model, report = export_model(net, torch.randn(1, 1, 28, 28), input_names=("image",),
                                 output_names=("logits",), dynamic_batch=True)
    for line in report.lines():
        print(line)

torch ships two exporters (run in ``exporters.py``):
- ``dynamo=True``: ``torch.export`` captures the module and onnxscript translates each aten op;
- ``dynamo=False``: the TorchScript tracer with a symbolic function per op; older, but it still covers
  some models that ``torch.export`` cannot capture.
``dynamo=None`` tries the first and falls back to the second, and the report says why.

The module is exported in ``eval()`` mode under ``no_grad`` and handed back in the mode it came in.
The export is verified by running ONNX Runtime and torch on the example inputs and, where axes are
dynamic, on inputs of other sizes, because a trace can silently bake in the example's shapes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
import torch

from onnxkit import parity, runtime
from onnxkit.errors import ExportError, ParityError
from onnxkit.pytorch.exporters import Export, Exporter, exporter_name, first_line

DEFAULT_OPSET = 18
DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]


@dataclasses.dataclass
class ExportCheck:
    """ONNX Runtime against torch on one set of input shapes, output by output, in parity's metrics."""

    shapes: dict[str, list[int]]
    outputs: list[parity.OutputReport] = dataclasses.field(default_factory=list)
    error: str | None = None  # why ONNX Runtime could not run these inputs

    @property
    def passed(self) -> bool:
        return self.error is None and all(output.passed for output in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((output.max_abs_error for output in self.outputs), default=0.0)

    def describe(self, tolerance: parity.Tolerance) -> str:
        """``parity at image[4x1x8x8]: max abs 2.4e-07, ..., cosine 1.000000 (ok)``; on failure, what failed
        and the tolerance that would have passed."""
        shapes = ", ".join(f"{name}[{'x'.join(map(str, shape))}]" for name, shape in self.shapes.items())
        if self.error is not None:
            return f"parity at {shapes}: {self.error}"
        worst = max(self.outputs, key=lambda output: (not output.passed, output.max_abs_error))
        named = f"output '{worst.name}': " if len(self.outputs) > 1 else ""
        line = f"parity at {shapes}: {named}{worst.metrics_text()}"
        if self.passed:
            return f"{line} (ok)"
        needs = worst.would_pass_text(tolerance.for_output(worst.name))
        return f"{line} (FAILED: {'; '.join(worst.errors + worst.failures)}" + (
            f"; would pass with {needs})" if needs else ")"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shapes": self.shapes,
            "passed": self.passed,
            "error": self.error,
            "outputs": [output.to_dict() for output in self.outputs],
        }


@dataclasses.dataclass
class ExportReport:
    """Which exporter ran and why, with what names and axes, and how closely ONNX Runtime matches torch."""

    exporter: Exporter
    requested: Literal["dynamo", "torchscript", "auto"]
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    seconds: float
    fallback_reason: str | None = None
    tolerance: parity.Tolerance = dataclasses.field(default_factory=lambda: parity.Tolerance.for_kind("exact"))
    checks: list[ExportCheck] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def max_abs_error(self) -> float:
        return max((check.max_abs_error for check in self.checks), default=0.0)

    def lines(self) -> list[str]:
        """Human-readable lines: exporter, fallback, and one line per parity check."""
        lines = [f"exported with the {self.exporter} exporter (opset {self.opset}) in {self.seconds:.1f} s"]
        if self.fallback_reason:
            lines.append(f"fell back to torchscript because the dynamo exporter failed: {self.fallback_reason}")
        if self.checks and not any(self.dynamic_axes.get(name) for name in self.input_names):
            lines.append("all input shapes static: verified at the example shapes only")
        lines.extend(check.describe(self.tolerance) for check in self.checks)
        return lines

    def to_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data.update(
            tolerance=self.tolerance.to_dict(),
            checks=[check.to_dict() for check in self.checks],
            verified=self.verified,
        )
        return data


def export_model(
    module: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    dynamic_batch: bool = False,
    dynamo: bool | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: parity.Tolerance | Mapping[str, float | None] | None = None,
    custom_translation_table: Mapping[Callable[..., Any], Callable[..., Any]] | None = None,
) -> tuple[ir.Model, ExportReport]:
    """Export ``module`` called on ``example_inputs`` to an ``onnx_ir.Model``.

    ``example_inputs`` is a tensor, a sequence of tensors (positional arguments), or a mapping whose keys
    become the input names and whose values are passed positionally in that order. Input names default
    to the names of ``forward``'s parameters; output names to ``output`` or ``output_0, output_1, ...``.
    ``dynamic_axes`` maps input and output names to ``{axis: dim name}`` (or a list of axes);
    ``dynamic_batch`` makes axis 0 of every input and output a dimension named ``batch``.
    ``dynamo`` picks the exporter: True, False, or None to try dynamo first and fall back to TorchScript.
    With ``verify`` the result runs in ONNX Runtime and is compared with torch within ``tolerance``
    (default: the exact kind's, atol 1e-4 and rtol 1e-3; a mapping overrides those fields); a mismatch
    raises ``ParityError``. Export failures raise ``ExportError``.
    """
    if not isinstance(tolerance, parity.Tolerance):
        overrides: dict[str, Any] = dict(tolerance or {})
        tolerance = dataclasses.replace(parity.Tolerance.for_kind("exact"), **overrides)
    args, names = _positional_inputs(module, example_inputs, input_names)
    with _eval_no_grad(module):
        try:
            expected = _flatten_outputs(module(*args))
        except Exception as e:  # the user's forward can fail in any way; most often a shape mismatch
            shapes = ", ".join(f"{n}[{'x'.join(map(str, a.shape))}]" for n, a in zip(names, args))
            raise ExportError(
                f"{type(module).__name__} fails on the example inputs {shapes}: "
                f"{type(e).__name__}: {first_line(str(e))}",
                hint="check the input shapes and dtypes the module expects",
            ) from e
    outputs = (
        list(output_names)
        if output_names
        else (["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))])
    )
    if len(outputs) != len(expected):
        raise ExportError(f"{len(outputs)} output names given, but the module returns {len(expected)} tensors")
    axes = _resolve_dynamic_axes(dynamic_axes, dynamic_batch, names, outputs)
    export = Export(module, args, names, outputs, axes, opset, custom_translation_table)
    started = time.perf_counter()
    with _eval_no_grad(module):
        model, exporter, fallback_reason = export.run(dynamo)
    report = ExportReport(
        exporter=exporter,
        requested="auto" if dynamo is None else exporter_name(dynamo),
        opset=opset,
        input_names=names,
        output_names=outputs,
        dynamic_axes=axes,
        seconds=time.perf_counter() - started,
        fallback_reason=fallback_reason,
        tolerance=tolerance,
        warnings=export.warnings,
    )
    if verify:
        report.checks = verify_export(module, model, args, names, axes, tolerance=tolerance)
        failed = next((check for check in report.checks if not check.passed), None)
        if failed is not None:
            hint = (
                "loosen the tolerance if that difference is acceptable"
                if failed.error is None
                else "check that the model supports these input sizes, or leave those axes static"
            )
            raise ParityError(f"the exported model does not match torch: {failed.describe(tolerance)}", hint=hint)
    return model, report


def verify_export(
    module: torch.nn.Module,
    model: ir.Model | onnx.ModelProto,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    tolerance: parity.Tolerance | None = None,
    seed: int = 0,
) -> list[ExportCheck]:
    """Compare ONNX Runtime with torch on ``args`` and, when inputs have dynamic axes, on seeded inputs
    whose dynamic dimensions are each 3 larger than in ``args``."""
    tolerance = tolerance or parity.Tolerance.for_kind("exact")
    session = runtime.make_session(model)
    output_names = [output.name for output in session.get_outputs()]
    input_sets = [tuple(args)]
    if any(dynamic_axes.get(name) for name in input_names):
        input_sets.append(_inputs_with_other_sizes(args, input_names, dynamic_axes, seed))
    checks = []
    for index, inputs in enumerate(input_sets):
        check = ExportCheck(shapes={name: list(t.shape) for name, t in zip(input_names, inputs)})
        checks.append(check)
        with _eval_no_grad(module):
            expected = [_to_numpy(t) for t in _flatten_outputs(module(*inputs))]
        try:
            actual = session.run(None, {name: _to_numpy(t) for name, t in zip(input_names, inputs)})
        except Exception as e:  # ORT raises its own exception types for shape and type mismatches
            check.error = f"ONNX Runtime failed: {runtime.error_line(e)}"
            continue
        if len(actual) != len(expected):
            check.error = f"the ONNX model has {len(actual)} outputs, torch gives {len(expected)}"
            continue
        # The same metrics and verdicts as every other comparison in onnxkit.
        check.outputs += [
            parity.compare_outputs(name, reference, candidate, tolerance, sample=index)
            for name, reference, candidate in zip(output_names, expected, actual)
        ]
    return checks


# ---------------------------------------------------------------------------------------------------------
# Inputs, outputs, axes


def _positional_inputs(
    module: torch.nn.Module, example_inputs: Any, input_names: Sequence[str] | None
) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    if isinstance(example_inputs, torch.Tensor):
        args, default_names = (example_inputs,), None
    elif isinstance(example_inputs, Mapping):
        args, default_names = tuple(example_inputs.values()), list(example_inputs)
    elif isinstance(example_inputs, Sequence):
        args, default_names = tuple(example_inputs), None
    else:
        raise ExportError(
            f"example inputs must be a tensor, a sequence or a mapping of tensors, not {type(example_inputs).__name__}"
        )
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise ExportError("example inputs must be one or more tensors")
    names = list(input_names) if input_names else default_names or _forward_parameter_names(module, len(args))
    if len(names) != len(args):
        raise ExportError(f"{len(names)} input names given for {len(args)} example inputs")
    return args, names


def _forward_parameter_names(module: torch.nn.Module, count: int) -> list[str]:
    parameters = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) >= count:
        return [p.name for p in parameters[:count]]
    return [f"input_{i}" for i in range(count)]


def _flatten_outputs(outputs: Any) -> list[torch.Tensor]:
    """Tensors in the order the exporters flatten them: nested tuples, lists and dicts, depth first."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in _flatten_outputs(item)]
    raise ExportError(f"the module returned a {type(outputs).__name__}; export needs tensors")


def _resolve_dynamic_axes(
    dynamic_axes: DynamicAxes | None, dynamic_batch: bool, input_names: list[str], output_names: list[str]
) -> dict[str, dict[int, str]]:
    known = input_names + output_names
    axes: dict[str, dict[int, str]] = {}
    for name, mapping in (dynamic_axes or {}).items():
        if name not in known:
            raise ExportError(
                f"dynamic axes given for '{name}', which is not an input or output",
                hint=f"inputs and outputs: {', '.join(known)}",
            )
        pairs = mapping.items() if isinstance(mapping, Mapping) else ((a, f"{name}_dim{a}") for a in mapping)
        axes[name] = {int(axis): str(dim) for axis, dim in pairs}
    if dynamic_batch:
        for name in known:
            axes.setdefault(name, {}).setdefault(0, "batch")
    return axes


def _inputs_with_other_sizes(
    args: Sequence[torch.Tensor], input_names: Sequence[str], dynamic_axes: Mapping[str, Mapping[int, str]], seed: int
) -> tuple[torch.Tensor, ...]:
    """Seeded inputs like ``args`` with every named dynamic dimension 3 larger (one size per name, so
    inputs that share a dimension still agree). Floats follow the example's mean and spread; integers and
    booleans are drawn from the values the example holds, so token ids and masks stay valid."""
    generator = torch.Generator().manual_seed(seed)
    sizes: dict[str, int] = {}
    for name, tensor in zip(input_names, args):
        for axis, dim in dynamic_axes.get(name, {}).items():
            sizes.setdefault(dim, tensor.shape[axis] + 3)
    resized = []
    for name, tensor in zip(input_names, args):
        shape = list(tensor.shape)
        for axis, dim in dynamic_axes.get(name, {}).items():
            shape[axis] = sizes[dim]
        if tensor.is_floating_point():
            spread = tensor.std().item() if tensor.numel() > 1 else 1.0
            sample = torch.randn(shape, generator=generator) * (spread or 1.0) + tensor.mean().item()
            resized.append(sample.to(tensor.dtype))
        else:
            values = tensor.flatten().unique()
            resized.append(values[torch.randint(len(values), shape, generator=generator)])
    return tuple(resized)


# ---------------------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def _eval_no_grad(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the duration; each submodule gets back its own training flag."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16; compare such outputs in float32
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().cpu().numpy()
