"""What fuse does to the model around its fusions: before IR version 4, the initializers taken out of the
graph inputs while rules run and listed again after; and the clean-up after the rules (the Identity nodes
and Constant nodes they left, equal constants they created apart, orphaned body initializers, contrib domains no
node uses)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RULE_NAME_TAG

from onnxkit.passes._graph_utils import all_nodes, model_graphs, subgraphs


def unlist_initializer_inputs(model: ir.Model) -> list[str | None]:
    """Take the initializers out of the graph inputs; return the names the inputs had, in order."""
    graph = model.graph
    names = [value.name for value in graph.inputs]
    kept = [value for value in graph.inputs if value.name not in graph.initializers]
    graph.inputs.clear()
    graph.inputs.extend(kept)
    return names


def relist_initializer_inputs(model: ir.Model, names: list[str | None]) -> None:
    """List every initializer among the graph inputs again: the ones that remain in their old places, new
    ones after them. Looked up by name, as a fusion may have swapped in a new graph."""
    graph = model.graph
    current = {value.name: value for value in graph.inputs}
    listed = [current.get(name) or (graph.initializers.get(name) if name is not None else None) for name in names]
    old_names = set(names)
    graph.inputs.clear()
    graph.inputs.extend(value for value in listed if value is not None)
    graph.inputs.extend(value for name, value in graph.initializers.items() if name not in old_names)


def bypass_created_identities(model: ir.Model) -> None:
    """Remove the Identity nodes rules left to keep a name, where no graph output needs that name.

    A rule that makes a value equal to an existing one must not rename that value (it may be a graph
    input or an outer-scope value), so it returns an Identity; its users can read the input directly.
    """
    graphs: list[ir.Graph | ir.Function] = [model.graph, *subgraphs(model.graph), *model.functions.values()]
    for graph in graphs:
        for node in list(graph):
            if node.op_type != "Identity" or RULE_NAME_TAG not in node.metadata_props:
                continue
            output, source = node.outputs[0], node.inputs[0]
            if output.is_graph_output():
                continue
            assert source is not None  # the rules write Identity(value)
            output.replace_all_uses_with(source)
            graph.remove(node, safe=True)


def lift_created_constants(model: ir.Model) -> None:
    """Turn the Constant nodes rules created (onnxscript's emit some) into initializers, as exporters and
    simplifiers store constants; functions keep theirs, having no initializers."""
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        output = node.outputs[0]
        if node.op_type != "Constant" or RULE_NAME_TAG not in node.metadata_props or output.is_graph_output():
            continue
        tensor = ir.convenience.get_const_tensor(output)
        if tensor is None:
            continue
        initializer = ir.Value(
            name=output.name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype), const_value=tensor
        )
        graph = node.graph
        assert graph is not None  # a node the graph iterator found in it
        graph.register_initializer(initializer)
        output.replace_all_uses_with(initializer)
        graph.remove(node, safe=True)


def remove_unused_subgraph_initializers(model: ir.Model) -> None:
    """Folding inside an If/Loop body can orphan the body's own initializers; onnx_ir only prunes the main graph's."""
    for graph in subgraphs(model.graph):
        outputs = set(graph.outputs)
        for name, initializer in list(graph.initializers.items()):
            if not initializer.uses() and initializer not in outputs:
                del graph.initializers[name]


def drop_unused_opsets(model: ir.Model, domains: tuple[str, ...]) -> None:
    """Declare the domains fusions may add (``com.microsoft``) only while a node uses them."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    used = {node.domain for node in all_nodes(model)}
    for domain in domains:
        if domain not in used:
            for graph in graphs:
                graph.opset_imports.pop(domain, None)


def initializer_ids(model: ir.Model) -> set[int]:
    """The identities of the initializers of every graph, to tell afterwards which ones the fusions created."""
    return {id(value) for graph in model_graphs(model) for value in graph.initializers.values()}


def merge_created_duplicates(model: ir.Model, existing: set[int]) -> int:
    """Merge the initializers the fusions created (those not in ``existing``) with equal ones: same dtype,
    shape and bytes, the first in the graph's order kept, as simplify merges them; returns how many went.

    Folded layers often get equal constants (the same Squeeze axes, Reshape targets, a zero bias): left
    apart, a simplify after fuse merged them, so ``simplify,fuse`` run twice changed the model. Only tensors of a
    created tensor's dtype and shape are read, a few elements of each, and whole only where those are equal.
    """
    merged = 0
    for graph in model_graphs(model):
        created = [value for value in graph.initializers.values() if id(value) not in existing]
        layouts = {_layout(value.const_value) for value in created if value.const_value is not None} - {None}
        if not layouts:
            continue
        # Told apart by a few elements first: copying every same-shaped weight's bytes was a fifth of fuse's
        # time on a ViT (its MLP weights all [1536, 384]); only tensors with equal samples are compared whole.
        kept: dict[tuple, list[ir.Value]] = {}
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or value.is_graph_input() or value.is_graph_output():
                continue
            layout = _layout(tensor)
            if layout not in layouts:
                continue
            same_sample = kept.setdefault((layout, _sample(tensor)), [])
            first = next((other for other in same_sample if _equal(other, value)), None)
            if first is None:
                same_sample.append(value)
            elif not {id(first), id(value)} <= existing:  # equal weights of the model's own: simplify's business
                value.replace_all_uses_with(first)
                graph.initializers.pop(value.name)  # type: ignore[arg-type]  # an initializer has a name
                merged += 1
    return merged


_SAMPLED = 64  # elements read of each tensor before any is compared whole


def _sample(tensor: ir.TensorProtocol) -> bytes:
    """Bytes equal for equal tensors of one layout: evenly spaced elements, ends included."""
    array = tensor.numpy()
    if array.size <= _SAMPLED:
        return array.tobytes()
    return array.flat[np.linspace(0, array.size - 1, _SAMPLED, dtype=np.int64)].tobytes()


def _equal(a: ir.Value, b: ir.Value) -> bool:
    assert a.const_value is not None and b.const_value is not None  # initializers chosen for their tensors
    return a.const_value.tobytes() == b.const_value.tobytes()


def _layout(tensor: ir.TensorProtocol) -> tuple[ir.DataType, tuple[int, ...]] | None:
    """A numeric tensor's dtype and shape; None for strings (no fusion creates them)."""
    return None if tensor.dtype == ir.DataType.STRING else (tensor.dtype, tuple(tensor.shape.numpy()))
