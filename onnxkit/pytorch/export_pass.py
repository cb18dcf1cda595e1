"""``export``: the first pass of a pipeline whose input is a PyTorch module.

A built-in pass that lives in ``onnxkit.pytorch`` rather than ``passes/``: it is the torch side of the pass API,
and passes build only on the shared layer. It imports the exporter (and so torch) only when it runs.

    Pipeline.parse("export{dynamic_batch=true},simplify,fuse").run(net, example_inputs=torch.randn(1, 1, 8, 8))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import onnx_ir as ir

from onnxkit.errors import ExportError
from onnxkit.modelio import clone_model
from onnxkit.pass_base import PassResult, SourcePass


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    dynamo: bool | None = None  # True: torch.export-based; False: TorchScript; none: dynamo, then TorchScript
    opset: int = 18
    dynamic_batch: bool = False  # axis 0 of every input and output becomes a dimension named "batch"
    input_names: tuple[str, ...] = ()  # default: the names of forward()'s parameters
    output_names: tuple[str, ...] = ()  # default: output, or output_0, output_1, ...
    verify: bool = True  # compare ONNX Runtime with torch at the example shapes and at other dynamic sizes

    def __post_init__(self) -> None:
        if self.opset < 7:
            raise ValueError(f"opset must be at least 7, not {self.opset}")


class ExportPass(SourcePass):
    """Export the pipeline's torch module to ONNX (dynamo or TorchScript exporter) and verify it in ONNX Runtime.

    The module is exported in eval mode under no_grad and left in its own mode; the export report's lines
    are the pass's stats. On an input that is already ONNX the pass does nothing.
    """

    name = "export"
    kind = "exact"
    Options = ExportOptions
    in_place_pass = False

    def call(self, model: ir.Model) -> PassResult:
        # Already ONNX: nothing to export; a not-in-place pass still hands back its own model object.
        return PassResult(clone_model(model), False, [])

    def from_source(self, source: Any) -> PassResult:
        module = source
        example_inputs = self.context.example_inputs
        if example_inputs is None:
            raise ExportError(
                "exporting a torch module needs example inputs",
                hint="Pipeline.run(module, example_inputs=torch.randn(1, 3, 224, 224))",
            )
        from .export import export_model

        options = self.options
        exported, report = export_model(
            module,
            example_inputs,
            input_names=options.input_names or None,
            output_names=options.output_names or None,
            dynamic_batch=options.dynamic_batch,
            dynamo=options.dynamo,
            opset=options.opset,
            verify=options.verify,
        )
        return PassResult(exported, True, report.lines())
