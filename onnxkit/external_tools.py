"""The external tools onnxkit runs, one runner each, used by the passes and by ``onnxkit bench`` alike:
onnxsim, onnxslim and onnxoptimizer (``simplify{backend=...}`` and the bench's exact peers), and ONNX Runtime's
quantizer (the ``quantize`` pass and the bench's ``ort-quantize`` peer). ORT's offline graph optimizer is
``runtime.optimize_offline``, beside the session factory it drives.

A runner takes a model in memory (``onnx.ModelProto``) or a file. Without ``output`` it returns the result
in memory; with ``output`` it writes it there as a user of the tool would (the tool's own writer where it has
one, else one file, or external data when protobuf cannot hold it). Each tool's package is imported only when
its runner is called: ``TOOL_IMPORTS`` names what to import beforehand where import time must not count (the
bench times the tool's work, not its imports). Tool failures propagate as the tool raised them: a pass words
them for its user, the bench records them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from onnxkit import modelio, runtime

ModelSource = onnx.ModelProto | str | os.PathLike[str]
OutputPath = str | os.PathLike[str]

# Imported before a timed run starts: import time is the same for every model and is not transform time.
TOOL_IMPORTS = {
    "onnxsim": ["onnxsim"],
    "onnxslim": ["onnxslim"],
    "onnxoptimizer": ["onnxoptimizer"],
    "ort-quantize": ["onnxruntime.quantization"],
}


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a tool gave back: the model, unless it wrote ``output`` itself and returned none, and what the
    tool said about its own run that a reader should know."""

    model: onnx.ModelProto | None
    notes: tuple[str, ...] = ()


def save_as_tool_user(model: onnx.ModelProto, output: OutputPath) -> None:
    """Save as a user of a tool would: in one file, or with external data when protobuf cannot hold it."""
    large = sum(t.ByteSize() for t in model.graph.initializer) >= modelio.EXTERNAL_DATA_THRESHOLD
    name = Path(output).name
    onnx.save(model, str(output), save_as_external_data=large, location=name + ".data" if large else None)


def _as_given(source: ModelSource) -> onnx.ModelProto | str:
    """What the tools' own entry points take: a proto as it is, a path as a string."""
    return source if isinstance(source, onnx.ModelProto) else str(source)


def run_onnxsim(source: ModelSource, output: OutputPath | None = None) -> ToolResult:
    """``onnxsim.simplify`` with its defaults; with ``output``, onnxsim writes the model itself (its
    ``output_path`` handles external data), and where it did not, it is saved as a user would."""
    import onnxsim

    if output is None:
        model, check_ok = onnxsim.simplify(_as_given(source))
    else:
        model, check_ok = onnxsim.simplify(_as_given(source), output_path=str(output))
        if not Path(output).exists():
            save_as_tool_user(model, output)
    return ToolResult(model, () if check_ok else ("onnxsim's own output check failed",))


def run_onnxslim(source: ModelSource, output: OutputPath | None = None) -> ToolResult:
    """``onnxslim.slim`` with its defaults; with ``output``, onnxslim writes the model and returns none."""
    import onnxslim

    if output is None:
        return ToolResult(onnxslim.slim(_as_given(source)))
    onnxslim.slim(_as_given(source), str(output))
    return ToolResult(None)


def run_onnxoptimizer(source: ModelSource, output: OutputPath | None = None) -> ToolResult:
    """``onnxoptimizer.optimize`` with its default pass list (it takes only a proto, in memory)."""
    import onnxoptimizer

    model = onnxoptimizer.optimize(source if isinstance(source, onnx.ModelProto) else onnx.load(str(source)))
    if output is not None:
        save_as_tool_user(model, output)
    return ToolResult(model)


SIMPLIFIERS: dict[str, Callable[[ModelSource, OutputPath | None], ToolResult]] = {
    "onnxsim": run_onnxsim,
    "onnxslim": run_onnxslim,
    "onnxoptimizer": run_onnxoptimizer,
}


def needs_external_data(source: ModelSource) -> bool:
    """Whether the model must be written with external data: a file that has it, or a proto whose weights
    come near protobuf's 2 GB limit."""
    if isinstance(source, onnx.ModelProto):
        return runtime.exceeds_protobuf_limit(source)
    proto = onnx.load(str(source), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in modelio.iter_all_tensors(proto.graph))


def run_ort_quantize(
    source: ModelSource,
    output: OutputPath,
    mode: Literal["dynamic", "static"],
    *,
    samples: Iterable[Mapping[str, np.ndarray]] | None = None,
    **options: Any,
) -> ToolResult:
    """ONNX Runtime's ``quantize_dynamic`` or ``quantize_static`` from ``source`` into the file ``output``, with
    external data where the model needs it. Static mode calibrates on ``samples`` (one pass), or on the
    calibration cache that ``options`` name, with ``samples`` None. ``options`` go to ORT's function as given."""
    from onnxruntime import quantization

    options["use_external_data_format"] = needs_external_data(source)
    if mode == "dynamic":
        quantization.quantize_dynamic(source, output, **options)
    else:
        quantization.quantize_static(source, output, None if samples is None else _sample_reader(samples), **options)
    return ToolResult(None)


def _sample_reader(samples: Iterable[Mapping[str, np.ndarray]]) -> Any:
    """ORT's calibration reader (``get_next`` until None) over an iterable of samples, read once."""
    from onnxruntime.quantization import CalibrationDataReader

    class SampleReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(samples)

        def get_next(self) -> Mapping[str, np.ndarray] | None:
            return next(self.remaining, None)

    return SampleReader()
