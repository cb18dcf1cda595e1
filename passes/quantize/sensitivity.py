"""Which nodes quantization hurts most, measured: each candidate node's added noise, ranked, for the
keep-in-float search (``float_search.keep_sensitive_in_float``) and ``onnxkit debug quant``.

Sensitivity is measured, not guessed: the float model and the quantized model run on the same samples,
every activation of the float model is matched by name to what the quantized model's consumers see
(``<name>_DequantizeLinear_Output`` in QDQ, else ``<name>``), and the noise power is summed per tensor.
A node's sensitivity is the relative noise it adds: the noise-to-signal ratio (NSR) of its output minus
the worst NSR of its inputs. Linear NSR rather than dB, so a node that takes a clean 60 dB tensor to 40 dB
ranks below one that takes 20 dB to 10 dB: the second adds ten times more noise.

Tensor names follow ONNX Runtime's QDQ naming (``quant_utils.DEQUANT_OUTPUT_SUFFIX``), and SQNR is
``qdq_loss_debug``'s (signal power over noise power, over all samples); the powers are summed sample by sample
rather than collected whole as ``qdq_loss_debug.collect_activations`` does, so memory stays one sample's
tensors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

from onnxkit.passes.quantize.calibration import FLOAT_TYPES
from onnxkit.passes.quantize.runtime import TensorTap


@dataclasses.dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    added_nsr: float  # the noise-to-signal ratio the node adds to its inputs', against the float model
    output_sqnr_db: float  # its output in the quantized model against the float model's
    rounding_nsr: float | None = None  # its own INT8 rounding: before against after its QDQ pairs

    def describe(self) -> str:
        own = f" (its own INT8 rounding {self.rounding_nsr:.2%})" if self.rounding_nsr is not None else ""
        return f"output SQNR {self.output_sqnr_db:.1f} dB, adds {self.added_nsr:.2%} relative noise power{own}"


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0 or math.isinf(noise):  # an infinite noise power (a value overflowed to inf) is no log10 argument
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _value_names(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.input}
    for node in proto.graph.node:
        names.update(node.output)
    return names


def activation_qdq(quantized: onnx.ModelProto) -> dict[str, tuple[float, float, int, int]]:
    """Each activation quantized per tensor in ``quantized`` (QDQ): its scale, zero point and integer range,
    from the ``QuantizeLinear`` nodes that read it."""
    constants = {t.name: t for t in quantized.graph.initializer}
    found = {}
    for node in quantized.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[0] in constants:
            continue
        scale, zero_point = constants.get(node.input[1]), constants.get(node.input[2])
        if scale is None or zero_point is None:
            continue
        scale_value, zero_value = onnx.numpy_helper.to_array(scale), onnx.numpy_helper.to_array(zero_point)
        if scale_value.size != 1:
            continue  # per-channel: a weight, not an activation
        info = np.iinfo(zero_value.dtype)
        found[node.input[0]] = (
            float(scale_value.reshape(())),
            float(zero_value.reshape(())),
            int(info.min),
            int(info.max),
        )
    return found


def folded_activations(float_proto: onnx.ModelProto, quantized: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """The Relu and Clip nodes of ``float_proto`` that ORT folded into the range of their producer's output in
    ``quantized`` (QDQ), by name: gone from the graph, their input no longer made, their output written by the
    producer, clamped only by its QuantizeLinear."""
    names = {n.name for n in quantized.graph.node}
    made = _value_names(quantized)
    return {
        node.name: node
        for node in float_proto.graph.node
        if node.op_type in ("Relu", "Clip")
        and node.name not in names
        and node.input
        and node.input[0] not in made
        and node.output[0] in made
    }


def _float32(values: np.ndarray) -> np.ndarray:
    """float16 tensors measured in float32 (no copy of a float32 one)."""
    return values.astype(np.float32, copy=False)


def _power(values: np.ndarray) -> float:
    """The sum of squares, accumulated in float64 without a squared (or float64) copy: activations of a
    detector at 320x320 are tens of megabytes each, and allocating those copies took most of a ranking."""
    flat = values.ravel()
    return float(np.einsum("i,i->", flat, flat, dtype=np.float64))


def _rounding_noise(values: np.ndarray, qdq: tuple[float, float, int, int]) -> float:
    """The noise power of quantizing and dequantizing ``values`` with ``qdq`` (round half to even, in the
    tensor's own float32 as ORT's QuantizeLinear), in one buffer."""
    scale, zero_point, low, high = qdq
    if scale <= 0:
        return 0.0
    rounded = np.divide(values, values.dtype.type(scale))
    np.rint(rounded, out=rounded)
    rounded += zero_point
    np.clip(rounded, low, high, out=rounded)
    rounded -= zero_point
    rounded *= scale
    rounded -= values
    return _power(rounded)


def measure_sensitivity(
    float_proto: onnx.ModelProto,
    quantized: onnx.ModelProto,
    candidates: Sequence[onnx.NodeProto],
    types: Mapping[str, int],
    samples: Iterable[Mapping[str, Any]],
) -> list[NodeSensitivity]:
    """Each candidate node's added noise, most sensitive first, from one run of each model over ``samples``.

    Two measures:

    - against float (``qdq_loss_debug``'s cross-model error): the node's output as consumed in the quantized
      model (``Y_DequantizeLinear_Output`` where the output is quantized, else ``Y``) against the float
      model's ``Y``, less the worst of its inputs as produced (``X``, before the QDQ pair in front of the node,
      so its own input quantization counts against it). Upstream noise can mask a node here: an input
      already ruined leaves nothing to ruin.
    - its own rounding (``qdq_loss_debug``'s pre- against post-QDQ error, on clean inputs): each activation
      the node reads or writes through a QDQ pair, taken from the float model and quantized with that
      pair's scale and zero point. This does not depend on what happened upstream.

    A Relu or Clip that ORT folded into its producer's output range (``folded_activations``) has no tensors of
    its own: its producer is measured by the Relu's output, and the Relu is ranked with the same measure, just
    before it. Kept float alone, the Relu unfolds: its producer's output is quantized over its whole range
    instead (no INT8 kernel lost, and a range the entropy calibration may clip less than the Relu's one-sided
    one); keeping the producer float takes both out of INT8.

    The ranking uses the first: the second, relative to each tensor's own power, misses a range widened by
    a channel that a later Relu or a zero weight row drops (its rounding is small against that channel and
    ruins the rest), and it is reported only, to explain. Signal and noise powers are summed sample by
    sample, so memory is one sample's tensors.
    """
    initializers = {i.name for i in float_proto.graph.initializer}
    present = _value_names(quantized)
    qdq = activation_qdq(quantized)
    # ORT folds a Relu/Clip into its producer's output range: the producer then answers for the Relu's output.
    folded = folded_activations(float_proto, quantized)
    absorbed = {node.input[0]: node.output[0] for node in folded.values()}
    folded_outputs = set(absorbed.values())
    pairs: dict[tuple[str, str], None] = {}  # (float name, quantized name), in order
    rounded: dict[str, None] = {}  # float activations whose rounding is measured
    node_pairs: list[tuple[onnx.NodeProto, list[tuple[str, str]], list[tuple[str, str]], list[str]]] = []

    def activation(name: str) -> bool:
        return bool(name) and name not in initializers and types.get(name) in FLOAT_TYPES and name in present

    def add(pair: tuple[str, str]) -> tuple[str, str]:
        pairs[pair] = None
        return pair

    def consumed(name: str) -> tuple[str, str]:
        return (name, dequantized if (dequantized := f"{name}{DEQUANT_OUTPUT_SUFFIX}") in present else name)

    def produced(name: str) -> tuple[str, str]:
        # A folded activation's output is written by its producer before the Relu/Clip's range clamps it: the
        # unclamped tensor is not the float one, so its readers see it as dequantized.
        return consumed(name) if name in folded_outputs else (name, name)

    ranked_folded = {node.input[0]: node for node in folded.values() if node.name in {c.name for c in candidates}}
    for node in candidates:
        if node.name in folded:
            continue  # measured with its producer, below
        written = [absorbed.get(name, name) for name in node.output]
        inputs = [add(produced(name)) for name in node.input if activation(name)]
        outputs = [add(consumed(name)) for name in written if activation(name)]
        rounding = [name for name in (*node.input, *written) if activation(name) and name in qdq]
        rounded.update(dict.fromkeys(rounding))
        if outputs:
            # The folded Relu first: the sort keeps ties in order, and it is the cheaper of the two to keep float.
            unfolds = [ranked_folded[name] for name in node.output if name in ranked_folded]
            node_pairs.extend((unfold, inputs, outputs, rounding) for unfold in unfolds)
            node_pairs.append((node, inputs, outputs, rounding))
    if not pairs:
        return []
    float_names = list(dict.fromkeys([*(f for f, _ in pairs), *rounded]))
    quantized_names = list(dict.fromkeys(q for _, q in pairs))
    float_tap = TensorTap(float_proto, float_names, types)
    quantized_tap = TensorTap(quantized, quantized_names, {q: types[f] for f, q in pairs})
    signal = dict.fromkeys(float_names, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    rounding_noise = dict.fromkeys(rounded, 0.0)
    for sample in samples:
        float_values = {name: _float32(value) for name, value in float_tap.run(sample).items()}
        quantized_values = {name: _float32(value) for name, value in quantized_tap.run(sample).items()}
        for name, value in float_values.items():
            signal[name] += _power(value)
        for float_name, quantized_name in pairs:
            # A float32 difference is correctly rounded: its error is 1e-7 of the noise, not of the signal.
            noise[(float_name, quantized_name)] += _power(
                np.subtract(float_values[float_name], quantized_values[quantized_name])
            )
        for name in rounded:
            rounding_noise[name] += _rounding_noise(float_values[name], qdq[name])

    def ratio(noise_power: float, signal_power: float) -> float:
        return noise_power / signal_power if signal_power > 0 else (math.inf if noise_power > 0 else 0.0)

    def nsr(pair: tuple[str, str]) -> float:
        return ratio(noise[pair], signal[pair[0]])

    ranked = []
    for node, inputs, outputs, rounding in node_pairs:
        worst = max(outputs, key=nsr)
        input_nsr = max((nsr(pair) for pair in inputs), default=0.0)
        added = nsr(worst) - input_nsr if math.isfinite(nsr(worst)) else math.inf
        own = sum(ratio(rounding_noise[name], signal[name]) for name in rounding) if rounding else None
        ranked.append(NodeSensitivity(node.name, node.op_type, added, sqnr_db(signal[worst[0]], noise[worst]), own))
    ranked.sort(key=lambda s: s.added_nsr, reverse=True)
    return ranked
