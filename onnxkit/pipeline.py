"""A pipeline: passes in order, each verified, measured and parity-checked, narrowed or rolled back on failure.

Each pass in ``run`` goes through the same straight line:
1. snapshot the model (rollback and parity need the input of the pass);
2. run the pass, timed;
3. verify the result: onnx.checker, the graph signature, shape inference (each only if the input passed it);
4. check parity against the snapshot, within the tolerance of the pass's kind;
5. on failure, narrow an exact pass to the rules and sites that break it, else stop, roll back, or warn,
   as the user chose;
6. record statistics in the report.

The loop itself is ``pipeline_run.PipelineRun``; this module builds it and hands it the starting model.
Around it: ``spec`` (spec text ⇄ passes, re-exported here), ``snapshot`` (the serialized model and the checks
on it), ``narrowing`` (bisecting a failing pass's rules and sites), ``parity.chain`` (the comparisons).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import modelio, validate
from onnxkit.errors import SpecError
from onnxkit.graph import count_nodes, op_histogram
from onnxkit.pass_base import Pass, PassContext, SourcePass
from onnxkit.pipeline_run import CheckMode, OnFail, PipelineRun
from onnxkit.report import PassReport, PipelineReport
from onnxkit.snapshot import Snapshot
from onnxkit.spec import build_pass, parse_pass_text, split_top_level

# Names other modules import from here: the spec helpers, and the graph measures the pipeline reports.
__all__ = [
    "CheckMode",
    "OnFail",
    "Pipeline",
    "PipelineResult",
    "build_pass",
    "count_nodes",
    "op_histogram",
    "parse_pass_text",
    "provenance",
    "record_provenance",
    "split_top_level",
]


# ---------------------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class PipelineResult:
    """The optimized model and what happened to it."""

    model: ir.Model
    report: PipelineReport
    # ``model`` serialized as the run left it, provenance included, in parts whose concatenation is the model
    # (the last snapshot's bytes, then the provenance; joined, they would be one more copy of every weight);
    # None past the in-memory limit. What the CLI saves, rather than serializing the model once more. Stale
    # once ``model`` is edited.
    serialized: tuple[bytes, ...] | None = dataclasses.field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str], *, external_data: bool | None = None) -> Path:
        return modelio.save_model(self.model, path, external_data=external_data)


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
            config = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise SpecError(f"cannot read pipeline config {path}: {e.strerror or e}") from e
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise SpecError(
                f"pipeline config {path} is not valid TOML: {e}", hint='write passes = ["cleanup", ...]'
            ) from e
        entries = config.get("passes", [])
        if not isinstance(entries, list):
            raise SpecError(f"{path}: 'passes' must be a list", hint='write passes = ["cleanup", ...]')
        passes = []
        for item in entries:
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
        calib_cache: str | os.PathLike[str] | None = None,
        metric: Callable[[Any], float] | None = None,
    ) -> PipelineResult:
        """Run every pass on ``model`` (a path, ``ModelProto``, ``ir.Model``, ``modelio.LoadedModel``, or a torch
        module for ``export``).

        ``check`` decides when parity runs: after ``each`` pass, at the ``end`` only, or ``off``.
        ``on_fail`` decides what a failing pass costs: ``stop`` raises, ``rollback`` discards the pass's
        result and goes on, ``warn`` keeps a result that fails parity and marks the report (a result that
        fails verification, or a pass that raised, is rolled back). Either way the report's ``exit_code`` is 1.
        ``tolerance`` overrides the defaults that follow each pass's kind: a ``parity.Tolerance`` replaces
        them, a dict such as ``{"atol": 1e-3}`` overrides those fields only.

        Parity runs on ``data`` (a dataset, see ``onnxkit.data``); else, given only ``calibration_data``, on
        the samples the calibration split holds out; else on synthetic inputs probed once for sizes the model
        runs on. ``data`` also calibrates unless ``calibration_data`` is given. ``calib_cache`` and ``metric``
        go to the passes that use them (see ``PassContext``: quantize's cache folder and a user's metric).
        """
        if check not in ("each", "end", "off"):
            raise SpecError(f"check must be each, end or off, not {check!r}")
        if on_fail not in ("stop", "rollback", "warn"):
            raise SpecError(f"on_fail must be stop, rollback or warn, not {on_fail!r}")
        context = PassContext(
            data=calibration_data if calibration_data is not None else data,
            dims=dict(dims or {}),
            show_progress=progress,
            parity_on_held_out=calibration_data is not None and data is None,
            parity_checked=check != "off",
            calib_cache=Path(calib_cache) if calib_cache is not None else None,
            metric=metric,
            example_inputs=example_inputs,
        )
        if model_dir is not None:
            context.model_dir = Path(model_dir)
        elif isinstance(model, (str, os.PathLike)):
            context.model_dir = Path(model).parent

        report = PipelineReport(spec=self.to_string(), check=check, on_fail=on_fail)
        # A model read from a file here or by the caller (``modelio.load_source``) keeps the file's bytes.
        loaded = modelio.load_source(model) if isinstance(model, (str, os.PathLike)) else model
        if isinstance(loaded, modelio.LoadedModel):
            model = loaded.model
        else:
            loaded = None
        current, passes = self._starting_model(model, list(self.passes), context, report)
        validate.check_run(
            current,
            passes,
            check=check,
            data=data,
            calibration_data=calibration_data,
            model_dir=context.model_dir,
            dims=context.dims,
        )  # bad input: refused before any pass
        run = PipelineRun(
            context,
            report,
            check=check,
            on_fail=on_fail,
            tolerance=tolerance,
            verify=verify,
            data=data,
            calibration_data=calibration_data,
        )
        current = run.all(current, passes, progress=progress, loaded=loaded)
        serialized = _with_provenance(run.last_snapshot, current, report)
        record_provenance(current, report)
        return PipelineResult(current, report, serialized)

    @staticmethod
    def _starting_model(
        model: Any, passes: list[Pass], context: PassContext, report: PipelineReport
    ) -> tuple[ir.Model, list[Pass]]:
        """Turn the run's input into an ``ir.Model``; a torch module is first exported by the leading pass."""
        if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto, ir.Model)):
            return modelio.as_ir_model(model), passes
        if passes and isinstance(passes[0], SourcePass):
            export_pass = passes[0]
            export_pass.context = context
            started = time.perf_counter()
            result = export_pass.from_source(model)
            seconds = time.perf_counter() - started
            entry = PassReport(
                name=export_pass.name,
                spec=export_pass.spec(),
                kind=export_pass.kind,
                modified=True,
                stats=list(result.stats),
                seconds=seconds,
                timings={"transform": seconds},
                nodes_after=count_nodes(result.model),
            )
            report.passes.append(entry)
            return result.model, passes[1:]
        raise SpecError(
            f"cannot run a pipeline on a {type(model).__name__}",
            hint="give an .onnx path, an onnx.ModelProto or onnx_ir.Model; start the spec with 'export' for a torch module",
        )


def provenance(report: PipelineReport) -> dict[str, str]:
    """What a run records in the saved model's ``metadata_props``: version, spec, per-pass results. No
    timings, so the same run on the same model writes the same bytes."""
    import json

    from onnxkit import __version__

    return {
        "onnxkit.version": __version__,
        "onnxkit.spec": report.spec,
        "onnxkit.passes": json.dumps(report.provenance(), sort_keys=True, separators=(",", ":")),
    }


def record_provenance(model: ir.Model, report: PipelineReport) -> None:
    """Write ``provenance(report)`` into the model's ``metadata_props``."""
    model.metadata_props.update(provenance(report))


def _with_provenance(snapshot: Snapshot | None, model: ir.Model, report: PipelineReport) -> tuple[bytes, ...] | None:
    """``model`` (the run's result, of which ``snapshot`` is the serialized form) serialized with its
    provenance, from the snapshot's bytes: protobuf reads concatenated messages as one message, merged, with
    repeated fields appended, so a message holding only the provenance's ``metadata_props`` follows them.
    None past the in-memory limit (no bytes), and where the model carries provenance already (a model an
    earlier run saved), whose keys the appended entries would repeat rather than replace."""
    entries = provenance(report)
    if snapshot is None or not isinstance(snapshot.model, bytes) or any(k in model.metadata_props for k in entries):
        return None
    appended = onnx.ModelProto()
    for key, value in entries.items():
        appended.metadata_props.add(key=key, value=value)
    return snapshot.model, appended.SerializeToString()
