"""ONNX Runtime's own format (``.ort``) for ONNX Runtime Mobile, and the operator configuration of a reduced
build, through ``onnxruntime.tools.convert_onnx_models_to_ort`` (the library function its command line runs).

The conversion applies ONNX Runtime's graph optimizations as its tool does by default ("Fixed" style, level
all, without the x86-only NCHWc layout), so the ``.ort`` file holds the graph a phone will run, and the
configuration lists the operators of that graph: ``<domain>;<opset>;<op>,<op>,...`` lines for
``build.py --include_ops_by_config``.

A model of IR version 3 lists its initializers among its graph inputs. ONNX Runtime treats them as constants
(they cannot be fed), but its converter's constant sharing drops the duplicates' initializers and keeps their
graph inputs, so the ``.ort`` file would demand them as inputs (the corpus's onnxlight_* models: alexnet's
``conv4_b_0__SHAPE``, the shape of a bias equal to conv3's). Such a model is converted from a copy at IR version
4 without those inputs: the same model as ONNX Runtime runs it, and the conversion says so in its notes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from onnxkit import modelio
from onnxkit.errors import ModelLoadError, ModelSaveError

CONFIG_SUFFIX = ".required_operators.config"


@dataclasses.dataclass
class OrtConversion:
    ort_path: Path
    config_path: Path
    config: str  # the reduced build's operator configuration, comment lines included
    notes: list[str] = dataclasses.field(default_factory=list)  # what was done to the model before converting

    def operator_lines(self) -> list[str]:
        return [line for line in self.config.splitlines() if line and not line.startswith("#")]


def config_path_for(ort_path: Path) -> Path:
    return ort_path.with_name(ort_path.stem + CONFIG_SUFFIX)


def to_ort(model_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None) -> OrtConversion:
    """Convert the ONNX model at ``model_path`` to ``output`` (default ``<stem>.ort`` beside it), and write the
    reduced build's configuration beside the output (``<stem>.required_operators.config``). Both files are
    written whole or not at all."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    source = Path(model_path)
    model = modelio.load_model(source)  # onnxkit's checks and clear errors (missing, unreadable, unsafe data)
    ort_path = Path(output) if output is not None else source.with_suffix(".ort")
    config_path = config_path_for(ort_path)
    folder = ort_path.parent if str(ort_path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelSaveError(f"cannot write {ort_path}: folder {folder} does not exist")
    staging = Path(tempfile.mkdtemp(prefix=f".{ort_path.name}.", suffix=".tmp", dir=folder))
    try:
        notes: list[str] = []
        converting = source
        held = _initializer_inputs(model)
        if held:
            converting = staging / "ir4" / source.name
            converting.parent.mkdir()
            for value in held:
                model.graph.inputs.remove(value)
            read_as, model.ir_version = model.ir_version, 4
            modelio.save_model(model, converting)
            notes.append(
                f"IR version {read_as}: its {len(held)} initializers listed as graph inputs were converted as constants, "
                "as ONNX Runtime runs them (its converter would otherwise leave some as inputs of the .ort file)"
            )
        # The tool prints its progress on stdout and logs each config it writes; onnxkit's commands keep
        # stdout for their own report.
        with contextlib.redirect_stdout(io.StringIO()) as said, _quiet_logger("ort_format_model.utils"):
            try:
                convert_onnx_models_to_ort(
                    converting, output_dir=staging, optimization_styles=[OptimizationStyle.Fixed]
                )
            except Exception as e:  # ORT raises its own exception types
                from onnxkit import runtime

                raise ModelLoadError(
                    f"ONNX Runtime cannot convert {source} to its format: {runtime.error_line(e)}",
                    hint=said.getvalue().strip().splitlines()[-1]
                    if said.getvalue().strip()
                    else "the model must load in ONNX Runtime",
                ) from e
        converted = staging / source.with_suffix(".ort").name
        written_config = staging / (source.stem + CONFIG_SUFFIX)
        config = written_config.read_text()
        os.replace(written_config, config_path)
        os.replace(converted, ort_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return OrtConversion(ort_path, config_path, config, notes)


def _initializer_inputs(model: ir.Model) -> list[ir.Value]:
    """The graph inputs of an IR version 3 model that are initializers (constants to ONNX Runtime)."""
    if model.ir_version >= 4:
        return []
    return [value for value in model.graph.inputs if value.name in model.graph.initializers]


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
