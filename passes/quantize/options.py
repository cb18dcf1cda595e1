"""The quantize pass's options and the op types each mode quantizes."""

from __future__ import annotations

import dataclasses
from typing import Literal

from onnxkit.data import DEFAULT_CALIBRATION_SAMPLES
from onnxkit.passes.quantize import calibration
from onnxkit.passes.quantize.judge import PIPELINE_TOLERANCE

# Dynamic mode: where INT8 pays off with activations quantized on the fly, plus Gather, whose embedding
# tables are often half a transformer's size. Not Conv: ConvInteger has no fast kernel and makes CNNs 2-6x
# slower. ORT has no INT8 GRU kernel, so GRU stays float for now.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather")
# Static mode: the compute-heavy ops with INT8 kernels, Gather for embedding tables, and the ops ORT can
# keep in INT8 between them (ReLU/Clip fold into the quantization range, pooling has QLinear kernels).
STATIC_OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Gather",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
)
# The ops whose INT8 kernels are where the time and size go; a model with none of them quantized is not worth
# shipping as INT8.
HEAVY_OP_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU"})


@dataclasses.dataclass(frozen=True)
class QuantizeOptions:
    mode: Literal["auto", "dynamic", "static", "weight-only"] = "auto"
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    # auto: entropy, or minmax where the all-INT8 model misses the target with entropy and comes out closer with minmax
    calib: Literal["auto", "minmax", "entropy", "percentile"] = "auto"
    samples: int = DEFAULT_CALIBRATION_SAMPLES
    num_bins: int = 2048
    percentile: float = 99.999
    # SmoothQuant's migration strength (static mode, passes/quantize/smoothing.py); none: off. 0.5 is the paper's
    # default; MiniLM's held-out cosine with every node INT8 is 0.991 at 0.5 and 0.996-0.997 at 0.6-0.8.
    smooth_alpha: float | None = 0.7
    act_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    reduce_range: bool | None = None
    target_cosine: float | None = PIPELINE_TOLERANCE.min_cosine
    target_sqnr: float | None = None
    target_top1: float | None = None
    max_metric_drop: float = 0.01
    max_slowdown: float | None = 1.0
    search_budget: float | None = 120.0
    on_slow: Literal["keep-float", "refuse"] = "keep-float"
    # mode=weight-only (passes/quantize/weight_only.py)
    bits: int = 4
    block: int = 32
    algo: Literal["rtn", "hqq"] = "rtn"

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.calib in ("auto", "entropy") and self.num_bins < 2 * calibration.QUANTIZED_LEVELS:
            raise ValueError(
                f"calib={self.calib} needs num_bins ≥ {2 * calibration.QUANTIZED_LEVELS}, to search "
                f"clipping thresholds finer than the {calibration.QUANTIZED_LEVELS} INT8 levels"
            )
        if self.num_bins < 2:
            raise ValueError("num_bins must be at least 2")
        if self.smooth_alpha is not None and not 0 <= self.smooth_alpha <= 1:
            raise ValueError("smooth_alpha must lie in [0, 1] (or none to turn SmoothQuant off)")
        if not 0 < self.percentile <= 100:
            raise ValueError("percentile must lie in (0, 100]")
        if self.target_cosine is not None and not -1 <= self.target_cosine <= 1:
            raise ValueError("target_cosine must lie between -1 and 1")
        if self.target_top1 is not None and not 0 <= self.target_top1 <= 1:
            raise ValueError("target_top1 must lie between 0 and 1")
        if self.max_slowdown is not None and self.max_slowdown <= 0:
            raise ValueError("max_slowdown must be positive (or none to skip the latency gate)")
        if self.search_budget is not None and self.search_budget <= 0:
            raise ValueError("search_budget must be positive seconds (or none for no time limit)")
        if self.max_metric_drop < 0:
            raise ValueError("max_metric_drop must not be negative")
        if self.act_type == "int8" and self.weight_type == "uint8":
            raise ValueError("ONNX Runtime has no kernels for int8 activations with uint8 weights")
        if self.mode == "dynamic" and self.act_type != "uint8":
            raise ValueError("dynamic mode quantizes activations to uint8 only")
        if self.mode == "weight-only":
            from onnxkit.passes.quantize.weight_only import validate

            validate(self.bits, self.block, self.algo)
