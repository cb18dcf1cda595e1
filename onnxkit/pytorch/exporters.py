"""torch's two exporters, run on one module: ``dynamo=True`` (``torch.export`` and onnxscript's translation of each
aten op) and ``dynamo=False`` (the TorchScript tracer), or the first then the second; the warnings they raise
about the user's model kept for the report; their failures turned into one ``ExportError`` that names the
operators neither could translate and the way past each."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import onnx
import onnx_ir as ir
import torch

from onnxkit.errors import ExportError

Exporter = Literal["dynamo", "torchscript"]

# How a user gets past an operator that an exporter cannot translate; {namespace} and {op} are filled in.
WAY_OUT: dict[Exporter, str] = {
    "dynamo": (
        "give a translation: export_model(..., custom_translation_table="
        "{{torch.ops.{namespace}.{op}.default: an_onnxscript_function}})"
    ),
    "torchscript": (
        "register a symbolic: torch.onnx.register_custom_op_symbolic('{namespace}::{op}', symbolic_fn, opset_version)"
    ),
}


class Export:
    """One module, its inputs and names, exportable by either exporter."""

    def __init__(
        self,
        module: torch.nn.Module,
        args: tuple[torch.Tensor, ...],
        input_names: list[str],
        output_names: list[str],
        axes: dict[str, dict[int, str]],
        opset: int,
        custom_translation_table: Mapping[Callable[..., Any], Callable[..., Any]] | None,
    ) -> None:
        self.module, self.args, self.opset = module, args, opset
        self.input_names, self.output_names, self.axes = input_names, output_names, axes
        self.custom_translation_table = dict(custom_translation_table) if custom_translation_table else None
        self.warnings: list[str] = []

    def run(self, dynamo: bool | None) -> tuple[ir.Model, Exporter, str | None]:
        """Export with the chosen exporter, or dynamo then TorchScript; returns the model, the exporter
        that produced it, and why dynamo was abandoned."""
        order: list[Exporter] = ["dynamo", "torchscript"] if dynamo is None else [exporter_name(dynamo)]
        failures: dict[Exporter, BaseException] = {}
        for exporter in order:
            try:
                model = self._with_captured_warnings(self.dynamo if exporter == "dynamo" else self.torchscript)
            except Exception as e:  # both exporters raise a wide range of error types from deep in torch
                failures[exporter] = e
                continue
            reason = _root_message(failures["dynamo"]) if "dynamo" in failures else None
            return model, exporter, reason
        raise _export_error(self.module, failures) from list(failures.values())[-1]

    def dynamo(self) -> ir.Model:
        # Named dims given as strings: torch.onnx turns them into dynamic dims and keeps the names.
        dynamic_shapes = (
            tuple(self.axes.get(name) or None for name in self.input_names)
            if any(self.axes.get(name) for name in self.input_names)
            else None
        )
        program = torch.onnx.export(
            self.module,
            self.args,
            None,
            dynamo=True,
            input_names=self.input_names,
            output_names=self.output_names,
            opset_version=self.opset,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=self.custom_translation_table,
            verbose=False,
        )
        if program is None:  # torch types the result as optional (None on the TorchScript path)
            raise ExportError("the dynamo exporter returned no program")
        # Through a proto, so the model owns copies of the weights rather than views of the module's.
        return ir.serde.deserialize_model(program.model_proto)

    def torchscript(self) -> ir.Model:
        buffer = io.BytesIO()
        torch.onnx.export(
            self.module,
            self.args,
            buffer,  # type: ignore[arg-type]  # TorchScript writes file objects too
            dynamo=False,
            input_names=self.input_names,
            output_names=self.output_names,
            opset_version=self.opset,
            dynamic_axes=self.axes or None,
            verbose=False,
        )
        return ir.serde.deserialize_model(onnx.load_model_from_string(buffer.getvalue()))

    def _with_captured_warnings(self, export: Callable[[], ir.Model]) -> ir.Model:
        """Run an export, keeping warnings about the user's model (TracerWarnings and the like) for the
        report and dropping torch's notes about its own internals."""
        registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration_log.level
        registration_log.setLevel(logging.ERROR)  # "torchvision is not installed" is not news to the user
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = export()
        finally:
            registration_log.setLevel(level)
        for warning in caught:
            if not issubclass(warning.category, (DeprecationWarning, FutureWarning)):
                self.warnings.append(first_line(str(warning.message)))
        self.warnings = list(dict.fromkeys(self.warnings))
        return model


def _export_error(module: torch.nn.Module, failures: Mapping[Exporter, BaseException]) -> ExportError:
    name = type(module).__name__
    tried = ", ".join(failures)
    operators = list(dict.fromkeys(op for error in failures.values() for op in unsupported_operators(error)))
    if operators:
        ways_out = []
        for operator in operators:
            namespace, op = operator.split("::")
            ways_out += [f"{exporter}: {WAY_OUT[exporter].format(namespace=namespace, op=op)}" for exporter in failures]
        return ExportError(
            f"cannot export {name}: no ONNX translation for operator(s) {', '.join(operators)} (tried {tried})",
            hint="; ".join(ways_out),
        )
    reasons = "; ".join(f"{exporter}: {_root_message(error)}" for exporter, error in failures.items())
    hint = (
        "try the other exporter (--no-dynamo / --dynamo, or dynamo=None to try both)"
        if len(failures) == 1
        else "set ONNXKIT_DEBUG=1 for the full traceback"
    )
    return ExportError(f"cannot export {name} (tried {tried}): {reasons}", hint=hint)


def unsupported_operators(error: BaseException) -> list[str]:
    """Operators an export error says it could not translate, as ``namespace::op`` (``aten::fft_fft``)."""
    names: list[str] = []
    for message in _messages(error):
        # dynamo: "No ONNX function found for <OpOverload(op='aten.fft_fft', overload='default')>"
        names.extend(f"{ns}::{op}" for ns, op in re.findall(r"OpOverload\(op='(\w+)\.(\w+)'", message))
        # TorchScript: "Exporting the operator 'aten::fft_fft' ..." or "unrecognized namespace ns::op"
        if "operator" in message:
            names.extend(re.findall(r"\b([A-Za-z_]\w*::[A-Za-z_]\w*)\b", message))
    return list(dict.fromkeys(names))


def exporter_name(dynamo: bool) -> Exporter:
    return "dynamo" if dynamo else "torchscript"


def _messages(error: BaseException) -> Iterator[str]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        current = current.__cause__ or current.__context__


def _root_message(error: BaseException) -> str:
    """The innermost cause's first line: the specific reason, not the exporter's generic advice."""
    return first_line(list(_messages(error))[-1]) or type(error).__name__


def first_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # the dynamo exporter colours its messages
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"
