"""``fp16`` and ``bf16``: lower-precision models that keep a parity budget.

Both start from a block list: the numerically unsafe ops (``convert.UNSAFE_OPS``: reductions, normalizations,
Pow, Exp) stay float32, and so does every node that touches a value near fp16's limits (an activation
measured near its maximum, a constant below its smallest normal). Then, if the converted model misses the
budget on the parity samples, the search quantize uses for its parity target
(``quantize.float_search.keep_sensitive_in_float``) keeps the nodes that add the most error in float32 until
the budget holds. A model that cannot meet it is left as it came, with the reason.

The report: nodes converted, nodes kept in float32 and why, size before and after, worst output error.

What the verdict measures: ONNX Runtime on the CPU has float16 kernels for few compute ops; it runs the others
in float32 behind Casts it inserts, and drops Cast pairs that would round to float16 and back, so there an fp16
model's error is mostly its weights' rounding. On a GPU, or OpenVINO with ``f16``, every intermediate is
float16 too. The fp16 pass therefore judges each candidate as such a runtime would compute it
(``convert.with_fp16_intermediates``: the float model with the candidate's float16 weights and every value its
float16 nodes read or make rounded to float16), so the verdict holds where float16 arithmetic is real; the
pipeline's own parity check after the pass runs the converted model itself. The ranking the search orders
nodes by still taps the converted model in ONNX Runtime. ``onnxkit deploy-check --target openvino --precision
f16`` measures a real float16 runtime.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import onnx
import onnx_ir as ir

from onnxkit import modelio, parity
from onnxkit.data import as_dataset, input_specs
from onnxkit.graph import default_opset
from onnxkit.pass_base import Pass, PassResult
from onnxkit.passes.precision import convert
from onnxkit.passes.quantize import float_search, sensitivity
from onnxkit.passes.quantize.judge import noise_excess
from onnxkit.passes.quantize.runtime import TensorTap, tensor_elem_types

# Samples the search judges and ranks on: enough for a stable cosine, few enough to run each candidate fast.
SEARCH_SAMPLES = 8
RANGE_SAMPLES = 2
EXCLUDED = "excluded by the user"


@dataclasses.dataclass(frozen=True)
class Fp16Options:
    target_cosine: float = 0.999  # the fp16 preset of `onnxkit check`
    exclude: tuple[str, ...] = ()  # node names to keep in float32
    search: bool = True  # keep the most sensitive nodes in float32 until target_cosine holds

    def __post_init__(self) -> None:
        if not 0 < self.target_cosine <= 1:
            raise ValueError("target_cosine must lie in (0, 1]")


@dataclasses.dataclass(frozen=True)
class Bf16Options(Fp16Options):
    target_cosine: float = 0.99  # bfloat16 keeps 8 bits of mantissa, fp16 11


@dataclasses.dataclass
class PrecisionResult(PassResult):
    """A precision pass's result; its ``details`` hold the block list and the parity verdicts."""


class _PrecisionPass(Pass):
    kind = "lossy"
    in_place_pass = False
    precision: ClassVar[str]
    stored_type: ClassVar[int]  # the element type converted weights are stored in
    # fp16 computes in float16, so values near its limits matter; bf16 weights keep float32's range.
    checks_fp16_range: ClassVar[bool] = True
    min_opset: ClassVar[int] = 1  # the opset the converted model's ops need

    def convert_model(self, proto: onnx.ModelProto, keep_float: Sequence[str]) -> onnx.ModelProto:
        """A converted copy of ``proto`` with the nodes named in ``keep_float`` in float32."""
        raise NotImplementedError

    def as_computed(self, proto: onnx.ModelProto, converted: onnx.ModelProto) -> onnx.ModelProto:
        """``converted`` as the verdict judges it: computing as the pass's target runtimes would."""
        return converted

    def already_converted(self, proto: onnx.ModelProto) -> bool:
        """A second run changes nothing: a model that already stores weights in the pass's type is left alone."""
        return any(t.data_type == self.stored_type for t in proto.graph.initializer)

    def call(self, model: ir.Model) -> PrecisionResult:
        options = self.options
        proto = onnx.shape_inference.infer_shapes(modelio.to_proto(model))
        if self.already_converted(proto):
            return self._unchanged(model, f"already in {self.precision}", {})
        if default_opset(proto) < self.min_opset:
            return self._unchanged(
                model,
                f"{self.precision} needs opset {self.min_opset} (Cast from {self.precision}); the model has opset "
                f"{default_opset(proto)}: run opset{{version={self.min_opset}}} first",
                {},
            )
        convert.name_unnamed_nodes(proto)
        types = tensor_elem_types(proto)
        candidates = convert.float_nodes(proto, types)
        if not candidates:
            return self._unchanged(model, "no float32 nodes to convert", {})
        samples = list(itertools.islice(self._dataset(model), SEARCH_SAMPLES))
        keep = dict.fromkeys(options.exclude, EXCLUDED)
        if self.checks_fp16_range:
            keep.update(self._out_of_range(proto, candidates, types, samples[:RANGE_SAMPLES]))
        before_search = set(keep)
        tolerance = parity.Tolerance(atol=None, rtol=None, min_cosine=options.target_cosine)
        chain = parity.ParityChain(samples, input_specs(proto), "the pass's parity samples", data_given=True)

        def judge(candidate: onnx.ModelProto) -> float_search.Verdict:
            report = chain.compare(proto, self.as_computed(proto, candidate), tolerance)
            return float_search.Verdict(report.passed, report, noise_excess([report], tolerance))

        def rank(candidate: onnx.ModelProto, kept: Sequence[str]) -> list[sensitivity.NodeSensitivity]:
            remaining = [n for n in candidates if n.name not in kept and n.op_type not in convert.UNSAFE_OPS]
            return added_error(proto, self.as_computed(proto, candidate), remaining, types, samples)

        def converted(kept: Sequence[str]) -> onnx.ModelProto:
            return self.convert_model(proto, kept)

        if options.search:
            search = float_search.keep_sensitive_in_float(converted, rank, judge, keep_float=keep)
            result, keep, verdict = search.model, search.keep_float, search.verdict
        else:
            result = converted(list(keep))
            verdict = judge(result)
        details = self._details(proto, result, candidates, keep, before_search, verdict.detail)
        if not verdict.passed:
            return self._unchanged(
                model,
                f"target cosine >= {options.target_cosine} not met even with "
                f"{details['kept_float']} of {len(candidates)} nodes in float32: "
                f"{verdict.detail.summary()}",
                details,
            )
        if details["converted"] == 0:  # only Casts added: the model as it came is smaller and as exact
            return self._unchanged(
                model,
                f"all {len(candidates)} nodes kept in float32 to meet target cosine >= {options.target_cosine}",
                details,
            )
        return PrecisionResult(modelio.as_ir_model(result), True, _stats(self.precision, details), details=details)

    def _dataset(self, model: ir.Model) -> Any:
        if self.context.data is not None:
            return as_dataset(self.context.data, model, dims=self.context.dims)
        return as_dataset(None, model, dims=self.context.dims, num_samples=SEARCH_SAMPLES)

    def _out_of_range(
        self, proto: onnx.ModelProto, candidates: list[onnx.NodeProto], types: Mapping[str, int], samples: list[Any]
    ) -> dict[str, str]:
        names = [name for node in candidates for name in node.output if types.get(name) == onnx.TensorProto.FLOAT]
        measured = convert.peaks(TensorTap(proto, names, types).stream(samples), names)
        return convert.out_of_range_nodes(proto, measured)

    def _details(
        self,
        proto: onnx.ModelProto,
        result: onnx.ModelProto,
        candidates: list[onnx.NodeProto],
        keep: Mapping[str, str],
        before_search: set[str],
        report: parity.ParityReport,
    ) -> dict[str, Any]:
        by_op = [n.name for n in candidates if n.op_type in convert.UNSAFE_OPS]
        kept = {name: why for name, why in keep.items() if name not in by_op}
        by_user = [name for name, why in kept.items() if why == EXCLUDED]
        by_search = [name for name in kept if name not in before_search]
        return {
            "precision": self.precision,
            "candidates": len(candidates),
            "converted": len(candidates) - len(by_op) - len(kept),
            "kept_float": len(by_op) + len(kept),
            # why the rest are kept: the user's exclude list, the fp16 range rules, the search for the target
            "kept_by": {
                "op_type": len(by_op),
                "user": len(by_user),
                "range": len(kept) - len(by_user) - len(by_search),
                "search": len(by_search),
            },
            "kept": kept,
            "weights_converted": sum(t.data_type == self.stored_type for t in result.graph.initializer),
            "bytes_before": proto.ByteSize(),
            "bytes_after": result.ByteSize(),
            "worst_cosine": report.min_cosine,
            "worst_max_abs_error": report.max_abs_error,
            "parity": report.summary(),
        }

    def _unchanged(self, model: ir.Model, reason: str, details: dict[str, Any]) -> PrecisionResult:
        # Not in place: a new model object even when nothing changed.
        return PrecisionResult(
            modelio.clone_model(model), False, [f"left in float32: {reason}"], details={**details, "unchanged": reason}
        )


def _stats(precision: str, details: Mapping[str, Any]) -> list[str]:
    kept, by = details["kept"], details["kept_by"]
    why = f"{by['op_type']} by op type, {by['range']} by range, {by['search']} by the search"
    if by["user"]:
        why += f", {by['user']} excluded by the user"
    if precision == "bf16":
        summary = (
            f"{details['weights_converted']} weights stored in bf16, computed in float32; the weights of "
            f"{details['kept_float']} of {details['candidates']} nodes kept in float32 ({why})"
        )
    else:
        summary = (
            f"{details['converted']} of {details['candidates']} nodes in {precision}; "
            f"{details['kept_float']} kept in float32 ({why}); {details['weights_converted']} weights "
            f"stored in {precision}"
        )
    lines = [
        summary,
        (
            f"size {details['bytes_before'] / 2**20:.2f} MB → {details['bytes_after'] / 2**20:.2f} MB "
            f"({details['bytes_after'] / details['bytes_before']:.2f}×)"
        ),
        f"worst output: cosine {details['worst_cosine']:.6f}, max abs error {details['worst_max_abs_error']:.3g}",
    ]
    lines += [f"kept {name}: {why}" for name, why in list(kept.items())[:5]]
    if len(kept) > 5:
        lines.append(f"... and {len(kept) - 5} more kept (the JSON report lists them)")
    return lines


def added_error(
    float_proto: onnx.ModelProto,
    converted: onnx.ModelProto,
    candidates: Sequence[onnx.NodeProto],
    types: Mapping[str, int],
    samples: Sequence[Any],
) -> list[sensitivity.NodeSensitivity]:
    """Each candidate's added error, most first: the noise-to-signal ratio of its output in the converted
    model minus the worst of its inputs', with quantize's ``NodeSensitivity`` as the ranking record.

    Quantize's ``measure_sensitivity`` taps the quantized model with the float model's types; a converted
    model holds float16 tensors under the same names, so it is tapped here with its own types. In a model
    from ``convert.with_fp16_intermediates`` a value's rounded copy is tapped where it has one.
    """
    converted_types = tensor_elem_types(convert.retyped(converted))
    present = set(converted_types)
    tapped = {name: convert.rounded_name(name) for name in present if convert.rounded_name(name) in present}
    names = sorted(
        {
            name
            for node in candidates
            for name in (*node.input, *node.output)
            if name in present and types.get(name) == onnx.TensorProto.FLOAT
        }
    )
    if not names:
        return []
    reference = TensorTap(float_proto, names, types)
    tapped = {name: tapped.get(name, name) for name in names}
    candidate = TensorTap(converted, list(tapped.values()), converted_types)
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for sample in samples:
        ref_values, cand_values = reference.run(sample), candidate.run(sample)
        for name in names:
            ref = ref_values[name].astype("float64")
            signal[name] += float((ref**2).sum())
            noise[name] += float(((ref - cand_values[tapped[name]].astype("float64")) ** 2).sum())

    def nsr(name: str) -> float:
        if name not in signal:
            return 0.0
        return noise[name] / signal[name] if signal[name] > 0 else (math.inf if noise[name] > 0 else 0.0)

    ranked = []
    for node in candidates:
        outputs = [name for name in node.output if name in signal]
        if not outputs:
            continue
        worst = max(outputs, key=nsr)
        added = nsr(worst) - max((nsr(name) for name in node.input), default=0.0)
        ranked.append(
            sensitivity.NodeSensitivity(
                node.name, node.op_type, added, sensitivity.sqnr_db(signal[worst], noise[worst])
            )
        )
    ranked.sort(key=lambda s: s.added_nsr, reverse=True)
    return ranked


class Fp16Pass(_PrecisionPass):
    """Convert to float16 (onnxconverter-common), keeping unsafe ops and the most sensitive nodes in float32."""

    name = "fp16"
    precision = "fp16"
    Options = Fp16Options
    stored_type = onnx.TensorProto.FLOAT16

    def convert_model(self, proto: onnx.ModelProto, keep_float: Sequence[str]) -> onnx.ModelProto:
        return convert.to_fp16(proto, keep_float)

    def as_computed(self, proto: onnx.ModelProto, converted: onnx.ModelProto) -> onnx.ModelProto:
        return convert.with_fp16_intermediates(proto, converted)


class Bf16Pass(_PrecisionPass):
    """Store float32 weights in bfloat16 (half the size), computing in float32, within a parity budget."""

    name = "bf16"
    precision = "bf16"
    Options = Bf16Options
    stored_type = onnx.TensorProto.BFLOAT16
    checks_fp16_range = False
    min_opset = 13  # Cast takes bfloat16 from opset 13

    def convert_model(self, proto: onnx.ModelProto, keep_float: Sequence[str]) -> onnx.ModelProto:
        return convert.to_bf16_weights(proto, keep_float)
