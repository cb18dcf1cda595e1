"""``quantize{mode=weight-only}``: weights to 4 or 8 bits in blocks, activations left in float.

ONNX Runtime's ``matmul_nbits_quantizer`` does the rewriting: a MatMul with a constant weight becomes
``com.microsoft.MatMulNBits``, a Gather from a constant table (an embedding) ``GatherBlockQuantized``, which
ORT supports at 4 bits only and from opset 21 (the model is converted first; ORT's own quantizer would only
relabel the opset). ``algo=rtn`` is ORT's default block-wise round-to-nearest, ``algo=hqq`` Half-Quadratic
Quantization for MatMul weights (ORT's HQQ has no Gather, so tables are rounded to nearest).

``accuracy_level`` is the precision MatMulNBits computes in. Left unset, ORT dequantizes each weight block to
float and multiplies in fp32, about 2x slower than its int8 kernels on CPUs that have them: MLAS quantizes
activations per block to int8 and multiplies with AVX2, AVX-512 (VNNI) or ARM dot-product instructions. This
pass asks for int8 compute (level 4) on those CPUs and for fp32 (level 1) elsewhere; if the parity target fails
at level 4 it tries level 1 before giving up.

A parity target (``target_*``) holds as in INT8 mode, judged on every sample given (nothing calibrates, so
none need be held out) in sessions as users run the model: ORT's optimizations on, weights prepacked (only then
does MatMulNBits compute at its ``accuracy_level``). At 4 bits, when quantizing every node misses it, nodes leave
4 bits (MatMuls for 8, embedding tables for float) in the order ``weight_only_mix`` measures, the most output
noise per byte saved first, as few as a bisection over that order finds; the report says which.

The latency gate is INT8 mode's, with the same default (``max_slowdown=1.0``): users often choose weight-only
for memory rather than speed, but with ``accuracy_level`` set for the CPU, MatMulNBits runs int8 kernels and
is no slower than float where they exist (MiniLM and a small Llama decoder on an AVX-512 VNNI CPU: the
"Weight-only quantization" section of benchmarks/RESULTS.md), so the default costs them nothing there; where it
is slower the whole model stays float and the report says so (``on_slow=refuse`` fails instead), and
``max_slowdown=none`` keeps the smaller model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import modelio, runtime
from onnxkit.data import CalibrationSplit, as_dataset
from onnxkit.errors import PassFailedError
from onnxkit.graph import default_opset
from onnxkit.passes.quantize import judge as judging
from onnxkit.passes.quantize import latency, weight_only_mix, weight_only_rewrite
from onnxkit.passes.quantize.cpu import CpuFeatures, detect_cpu
from onnxkit.passes.quantize.float_search import Verdict
from onnxkit.passes.quantize.weight_only_report import WeightOnlyReport

BITS = (4, 8)
BLOCKS = (32, 64, 128)
ALGOS = ("rtn", "hqq")
OP_TYPES = ("MatMul", "Gather")
GATHER_OPSET = 21  # GatherBlockQuantized's int4 tables need opset 21 (and IR 10)
# MatMulNBits accuracy_level values (ORT's contrib op docs): 1 fp32 compute, 4 int8 compute.
FP32_COMPUTE, INT8_COMPUTE = 1, 4
SYNTHETIC_SAMPLES = 16
TIMING_SAMPLES = 4
# The search's aim: at most this share of the output noise the target allows, on the data given, so that
# inputs beyond it meet the target too. MiniLM-L6 searched on 32 sentences without it met cosine 0.99 at 0.9907
# on them and missed it on the 32 others (0.9895, 13% more noise); a model that meets the target only without
# the headroom is still kept, with a warning.
HEADROOM = 0.8
# The share of ``search_budget`` the INT4 mix's ranking may take (one model run per node and sample: on a large
# model it measures on fewer samples); the judged candidates take the rest.
RANKING_SHARE = 0.25


def validate(bits: int, block: int, algo: str) -> None:
    """Raise ``ValueError`` for settings ORT's quantizer would reject or silently ignore."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))} (weight-only)")
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(map(str, BLOCKS))} (weight-only)")
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {', '.join(ALGOS)}")
    if algo == "hqq" and bits != 4:
        raise ValueError("algo=hqq quantizes to 4 bits only")


def accuracy_level_for(cpu: CpuFeatures) -> tuple[int, str]:
    """The MatMulNBits compute precision for this CPU, and why."""
    if cpu.is_x86 and cpu.avx2:
        isa = "AVX-512 VNNI" if cpu.vnni and cpu.avx512 else "VNNI" if cpu.vnni else "AVX-512" if cpu.avx512 else "AVX2"
        return INT8_COMPUTE, f"int8 compute ({isa} kernels)"
    if cpu.machine in ("aarch64", "arm64"):
        return INT8_COMPUTE, "int8 compute (ARM dot-product kernels)"
    return FP32_COMPUTE, "fp32 compute (no int8 MatMulNBits kernels for this CPU)"


def describe_lines() -> list[str]:
    """The lines ``onnxkit passes`` shows for weight-only mode."""
    level, why = accuracy_level_for(detect_cpu())
    return [
        (
            "mode=weight-only: MatMul weights to MatMulNBits and embedding tables (Gather, 4 bits) to "
            "GatherBlockQuantized, activations float; bits=4|8, block=32|64|128, algo=rtn|hqq; no calibration"
        ),
        f"weight-only accuracy_level on this machine: {level}, {why} (unset, ORT multiplies in fp32: ~2x slower)",
        (
            "weight-only target: judged on every sample given (nothing calibrates), in sessions as users run the "
            "model; at 4 bits the nodes whose 4-bit weights add the most output noise per byte saved go to 8 bits "
            f"(tables: float) until the output noise is at most {HEADROOM:.0%} of what the target allows, headroom "
            "for inputs beyond the data"
        ),
        (
            "weight-only latency gate: max_slowdown, default 1.0 as for INT8: people pick weight-only mostly for "
            "memory, but with accuracy_level set for the CPU it is usually faster than float, so the default costs "
            "nothing there; where it is slower the whole model stays float and the report says so (on_slow=refuse "
            "fails instead); max_slowdown=none keeps the smaller model whatever its speed"
        ),
    ]


def quantize_weight_only(
    model: ir.Model, options: Any, context: Any
) -> tuple[ir.Model | None, list[str], dict[str, Any]]:
    """Quantize ``model``'s weights as ``options`` (the quantize pass's) say. Returns the quantized model, or
    None when the float model is kept (target not met, too slow, nothing to quantize), with the stats lines
    and the JSON-ready details."""
    cpu = detect_cpu()
    level, reason = accuracy_level_for(cpu)
    report = WeightOnlyReport(
        {
            "bits": options.bits,
            "block": options.block,
            "algo": options.algo,
            "accuracy_level": level,
            "accuracy_reason": reason,
            "cpu": cpu.describe(),
        },
        HEADROOM,
    )
    float_proto = _in_memory_proto(model)
    report.float_bytes = _bytes(float_proto)
    op_types = [t for t in (options.op_types or OP_TYPES) if t in OP_TYPES]
    if "Gather" in op_types and options.bits != 4:
        op_types.remove("Gather")
        report.warnings.append("ORT quantizes Gather tables to 4 bits only: embedding tables stay float at 8 bits")
    candidates = weight_only_rewrite.candidates(float_proto, op_types, set(options.exclude))
    if not candidates:
        report.kept_float_model = f"no {' or '.join(op_types)} node with a constant float weight"
        return None, report.stats(), report.to_dict()
    source = float_proto
    if "Gather" in candidates and default_opset(float_proto, missing=0) < GATHER_OPSET:
        converted = _to_gather_opset(model, report)
        if converted is None:
            del candidates["Gather"]
        else:
            source = converted

    data = _EverySampleJudges(_dataset(model, options, context, report), options.samples)
    accept = _judge(float_proto, data, options, context)
    report.target = accept.target

    gathers = {n.name for n in source.graph.node if n.op_type == "Gather"}

    def judge(raised: Sequence[str], accuracy_level: int) -> tuple[onnx.ModelProto, Verdict]:
        """``raised``: the MatMuls to put at 8 bits and the tables to keep float."""
        quantized = weight_only_rewrite.quantize_nbits(
            source, options, accuracy_level, list(candidates), set(options.exclude), set(raised)
        )
        verdict = accept(quantized)
        tables = sum(name in gathers for name in raised)
        report.record_try(accuracy_level, len(raised) - tables, tables, verdict, _with_headroom(verdict))
        return quantized, verdict

    samples = list(itertools.islice(data.all_samples, TIMING_SAMPLES))
    found = _search(source, samples, options, level, judge)
    if found is None:
        report.kept_float_model = (
            f"target {report.target} not met even with every MatMul at 8 bits and every table float"
        )
        return None, report.stats(), report.to_dict()
    quantized, report.settings["accuracy_level"], raised = found
    report.eight_bit = [name for name in raised if name not in gathers]
    report.float_tables = [name for name in raised if name in gathers]
    report.chosen = next(
        t
        for t in reversed(report.tries)
        if t["passed"]
        and t["eight_bit"] == len(report.eight_bit)
        and t["float_tables"] == len(report.float_tables)
        and t["accuracy_level"] == report.settings["accuracy_level"]
    )
    if not report.chosen["headroom"]:
        report.warnings.append(
            f"the target holds on the data given but without the headroom the search aims for (at most "
            f"{HEADROOM:.0%} of the noise it allows): inputs unlike these may miss it"
        )
    report.quantized_nodes = weight_only_rewrite.quantized_nodes(quantized)

    report.timing = latency.compare(float_proto, quantized, samples[:TIMING_SAMPLES])
    if options.max_slowdown is not None and not report.timing.within(options.max_slowdown):
        # Load on a shared machine only ever adds time, and a burst of it during one comparison has made
        # MiniLM's INT4 come out 1.2x where it is 0.6-0.85x: a model is refused only if a second timing agrees.
        again = latency.compare(float_proto, quantized, samples[:TIMING_SAMPLES])
        report.timing = min(report.timing, again, key=lambda timing: timing.ratio)
    if options.max_slowdown is None:
        report.gate = "latency gate off (max_slowdown=none)"
    elif report.timing.within(options.max_slowdown):
        report.gate = f"within max_slowdown {options.max_slowdown}"
    else:
        message = (
            f"weight-only is slower than allowed on this CPU: {report.timing.describe()}, above max_slowdown "
            f"{options.max_slowdown}"
        )
        if options.on_slow == "refuse":
            raise PassFailedError(message, hint="max_slowdown=none keeps the smaller model whatever its speed")
        report.gate = f"above max_slowdown {options.max_slowdown}"
        report.kept_float_model = f"{message} (max_slowdown=none keeps the smaller model)"
        return None, report.stats(), report.to_dict()
    report.quantized_bytes = _bytes(quantized)
    return ir.serde.deserialize_model(quantized), report.stats(), report.to_dict()


def _search(
    source: onnx.ModelProto, samples: Sequence[Mapping[str, Any]], options: Any, level: int, judge: Any
) -> tuple[onnx.ModelProto, int, list[str]] | None:
    """The quantized model meeting the target with headroom (``HEADROOM``) with the fewest nodes above 4 bits
    (MatMuls at 8 bits, tables float), its accuracy_level and those nodes. Where no candidate has the headroom,
    the first that meets the target itself; None when even all nodes up (and fp32 compute) miss it.

    Nodes go up in ``weight_only_mix.rank``'s order, the most output noise per byte saved first, as few as a
    bisection over that order finds: each prefix holds the one before, so more nodes up means less noise. Its
    first probes are the prefix the measured noises predict (``_predicted_prefix``) and a neighbour, which
    usually close the bracket at once."""
    without_headroom: tuple[onnx.ModelProto, int, list[str]] | None = None
    ranking_budget = options.search_budget * RANKING_SHARE if options.search_budget is not None else None

    def meets(raised: list[str], accuracy_level: int) -> tuple[onnx.ModelProto, bool, float | None]:
        nonlocal without_headroom
        quantized, verdict = judge(raised, accuracy_level)
        if verdict.passed and not _with_headroom(verdict) and without_headroom is None:
            without_headroom = quantized, accuracy_level, raised
        return quantized, _with_headroom(verdict), verdict.excess

    quantized, passed, none_up = meets([], level)
    if passed:
        return quantized, level, []
    order = weight_only_mix.rank(source, quantized, samples, options.bits, budget_s=ranking_budget)
    ranked = [n.node for n in order] if options.bits == 4 else []
    if ranked:
        everything, passed, all_up = meets(ranked, level)
        if passed:
            low, high, best = 0, len(ranked), everything  # meets(ranked[:low]) fails, meets(ranked[:high]) passes
            guess = _predicted_prefix([n.noise for n in order], none_up, all_up)
            neighbour_probed = False
            while high - low > 1:
                middle = guess if guess is not None and low < guess < high else (low + high) // 2
                candidate, passed, _ = meets(ranked[:middle], level)
                low, high, best = (low, middle, candidate) if passed else (middle, high, best)
                # After the prediction, its neighbour on the far side: one more probe usually closes the bracket.
                guess = None if neighbour_probed or middle != guess else (middle - 1 if passed else middle + 1)
                neighbour_probed = neighbour_probed or guess is not None
            return best, level, ranked[:high]
    if level != FP32_COMPUTE:  # int8 compute quantizes activations too; fp32 compute does not
        quantized, passed, _ = meets(ranked, FP32_COMPUTE)
        if passed:
            return quantized, FP32_COMPUTE, ranked
    return without_headroom


def _predicted_prefix(noises: Sequence[float], none_up: float | None, all_up: float | None) -> int | None:
    """How many of the ranked nodes must go up for the output noise to fall to ``HEADROOM`` of what the target
    allows, if each node's measured noise adds to the others': the judged excess with none up and with all up
    (noise over the target's allowance) fixes the scale. None where the judge states no excess (a top-1 or
    metric target) or a node's noise is unknown."""
    total = sum(noises)
    if none_up is None or all_up is None or not math.isfinite(total) or total <= 0:
        return None
    remaining = total
    for count, noise in enumerate(noises):
        if all_up + (none_up - all_up) * remaining / total <= HEADROOM:
            return count
        remaining -= noise
    return len(noises)


def _with_headroom(verdict: Verdict) -> bool:
    """Whether ``verdict`` passed with its output noise at most ``HEADROOM`` of what the target allows (a
    target that cannot say, a top-1 rate or a user metric, only has to pass)."""
    return verdict.passed and (verdict.excess is None or verdict.excess <= HEADROOM)


def _to_gather_opset(model: ir.Model, report: WeightOnlyReport) -> onnx.ModelProto | None:
    from onnxkit.passes.opset import OpsetPass

    try:
        converted = OpsetPass(version=GATHER_OPSET).call(model).model
    except PassFailedError as e:
        report.warnings.append(
            f"embedding tables stay float: the model does not convert to opset {GATHER_OPSET} ({e.message})"
        )
        return None
    report.warnings.append(f"converted to opset {GATHER_OPSET} for GatherBlockQuantized's int4 tables")
    return _in_memory_proto(converted)


def _in_memory_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto with every weight in memory: ORT's quantizer reads initializers as arrays."""
    proto = modelio.to_proto(model)
    folder = modelio.external_data_folder(model)
    if folder is not None:
        onnx.load_external_data_for_model(proto, str(folder))
    return proto


def _dataset(model: ir.Model, options: Any, context: Any, report: WeightOnlyReport) -> Any:
    """The given data, else synthetic inputs probed from the graph (with a warning: no real data, no trust)."""
    if context.data is None:
        report.data = f"synthetic ({SYNTHETIC_SAMPLES} probed samples)"
        report.warnings.append("no data: judged on synthetic inputs; give --data for results you can trust")
        return as_dataset(None, model, dims=context.dims, num_samples=SYNTHETIC_SAMPLES)
    report.data = "the given data"
    return as_dataset(context.data, model, dims=context.dims)


class _EverySampleJudges(CalibrationSplit):
    """The data as weight-only mode reads it: it calibrates nothing, so every sample read judges the target, the
    ones the pipeline's check holds out and the rest alike. The judge's worst sample is then the worst of all
    the data given, not of a fifth of it (MiniLM's 64 sentences: 0.9895 worst of 64 where 12 read 0.9911)."""

    @property
    def held_out(self) -> Any:
        return self.all_samples


def _judge(float_proto: onnx.ModelProto, data: CalibrationSplit, options: Any, context: Any) -> judging.Judge:
    """INT8 mode's judge: the user's metric if given, else the parity target as the pipeline checks it."""
    evaluate = context.metric
    if evaluate is not None:
        return judging.by_metric(float_proto, evaluate, options.max_metric_drop)
    return judging.by_parity(
        float_proto,
        data,
        min_cosine=options.target_cosine,
        min_sqnr=options.target_sqnr,
        min_top1=options.target_top1,
        pipeline_checks_held_out=context.parity_on_held_out,
    )


def _bytes(proto: onnx.ModelProto) -> int:
    if runtime.exceeds_protobuf_limit(proto):
        return sum(len(t.raw_data) for t in proto.graph.initializer)
    return proto.ByteSize()
