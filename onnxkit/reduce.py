"""Shrink a failing pair of models (an original and a pass's candidate) to the smallest subgraph that still fails.

    result = reduce_pair("model.onnx", "model.opt.onnx", data="inputs.npz")
    result.save("reduced.onnx")   # reduced.onnx, reduced.original.onnx, reduced.inputs.npz

The approach is Polygraphy's ``debug reduce``: bisect first, then go linearly. Here the "check" is onnxkit's
parity comparison of the original's subgraph against the candidate's subgraph cut at the same tensor names,
both fed the values the *original* model computes for the cut's inputs. A subgraph is a set of the original's
nodes (Constant nodes travel with their consumers, so an altered constant stays inside the cut); its
inputs are the tensors it reads but does not make, its outputs the tensors it makes that anything else reads.

1. From the outputs: the shortest prefix of the original's nodes (in topological order) that still fails.
   The failure appears once the broken node is in, so the prefixes are monotone and a bisection finds it.
2. From the inputs: the latest start of that prefix that still fails, again by bisection.
3. Linearly: each node left is dropped in turn if the rest still fails (side branches that bisection over a
   topological order cannot separate).

A cut whose tensor names the candidate lacks (fused away, renamed) cannot be checked; the bisection steps
over it to the nearest cut that can. Each subgraph is extracted with ``onnx.utils.Extractor``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx.utils

from onnxkit import modelio, parity, runtime
from onnxkit.data import as_dataset, input_specs
from onnxkit.errors import DataError, ModelLoadError, OnnxkitError

DEFAULT_SAMPLES = 4  # synthetic samples, or the first ones of --data
Outcome = Literal["fails", "passes", "untestable"]


@dataclasses.dataclass
class Subgraph:
    """One checked cut: the original's nodes in it, its boundary, and the verdict on it."""

    nodes: list[onnx.NodeProto]
    inputs: list[str]
    outputs: list[str]
    original: onnx.ModelProto
    candidate: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    report: parity.ParityReport


@dataclasses.dataclass
class ReduceResult:
    """The smallest failing subgraph found, and how the search went."""

    total_nodes: int
    reduced: Subgraph
    checks: int  # parity checks run, whole models included
    untestable: int  # cuts skipped because the candidate lacks their tensor names

    def describe_nodes(self) -> str:
        return ", ".join(f"{n.op_type} '{n.name or n.output[0]}'" for n in self.reduced.nodes)

    def lines(self) -> list[str]:
        reduced = self.reduced
        return [
            f"reduced {self.total_nodes} nodes to {len(reduced.nodes)}: {self.describe_nodes()}",
            f"inputs {', '.join(reduced.inputs) or 'none'}; outputs {', '.join(reduced.outputs)}",
            f"{self.checks} parity checks, {self.untestable} cuts the candidate could not be cut at",
            reduced.report.summary(),
        ]

    def save(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write the candidate's subgraph to ``path``, the original's beside it as ``<stem>.original.onnx``,
        and the inputs that show the failure as ``<stem>.inputs.npz`` (``onnxkit check`` reads it back)."""
        path, original_path, inputs_path = output_paths(path)
        written = [
            modelio.save_model(modelio.as_ir_model(self.reduced.candidate), path),
            modelio.save_model(modelio.as_ir_model(self.reduced.original), original_path),
        ]
        _save_feeds(self.reduced.feeds, inputs_path)
        return [*written, inputs_path]


def output_paths(path: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The files ``ReduceResult.save(path)`` writes: the candidate's subgraph, the original's, the inputs."""
    path = Path(path)
    return (
        path,
        path.with_name(f"{path.stem}.original{path.suffix or '.onnx'}"),
        path.with_name(f"{path.stem}.inputs.npz"),
    )


def reduce_pair(
    original: Any,
    candidate: Any,
    data: Any = None,
    *,
    tolerance: parity.Tolerance | None = None,
    dims: Mapping[str, int] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ReduceResult:
    """Shrink the failing pair ``original``/``candidate`` (paths, ``ModelProto`` or ``onnx_ir.Model``) to the
    smallest subgraph of the original whose candidate counterpart still fails parity under ``tolerance``
    (default: the exact kind's) on ``data`` (anything ``onnxkit.data`` loads; None probes synthetic inputs).

    Raises ``OnnxkitError`` when the whole pair already passes: there is nothing to reduce.
    """
    tolerance = tolerance or parity.Tolerance.for_kind("exact")
    original_proto, candidate_proto = _proto(original, "original"), _proto(candidate, "candidate")
    # Every intermediate tensor of every sample is kept in memory, so the samples are few.
    dataset = as_dataset(data, original_proto, dims=dims, seed=seed, num_samples=num_samples or DEFAULT_SAMPLES)
    samples = list(dataset)
    if not samples:
        raise DataError("no samples to compare the models on")
    search = _Search(original_proto, candidate_proto, samples, tolerance, progress or (lambda _line: None))
    return search.run()


class _Search:
    def __init__(
        self,
        original: onnx.ModelProto,
        candidate: onnx.ModelProto,
        samples: list[dict[str, Any]],
        tolerance: parity.Tolerance,
        progress: Callable[[str], None],
    ) -> None:
        self.original = _with_types(original)
        self.candidate = _with_types(candidate)
        self.tolerance = tolerance
        self.progress = progress
        graph = self.original.graph
        self.constants = {out for n in graph.node if n.op_type == "Constant" for out in n.output}
        self.initializers = {t.name for t in graph.initializer}
        self.graph_outputs = [o.name for o in graph.output]
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]  # the units the search removes
        self.candidate_names = _names(self.candidate.graph)
        self.types = _elem_types(self.original.graph)
        self.values = _record(self.original, self.nodes, self.types, samples)
        self.checks = 0
        self.untestable = 0
        self.smallest: Subgraph | None = None

    def run(self) -> ReduceResult:
        whole = self.check(range(len(self.nodes)))
        if whole != "fails":
            raise OnnxkitError(
                "the models agree within tolerance on these inputs: nothing to reduce"
                if whole == "passes"
                else "the whole pair cannot be compared in ONNX Runtime",
                hint="give the --data and tolerance under which `onnxkit check` fails",
            )
        count = len(self.nodes)
        end = self._bisect(range, low=0, high=count, fails_high=True)
        self.progress(f"from the outputs: the first {end} of {count} nodes fail")
        start = self._bisect(lambda j: range(j, end), low=0, high=end, fails_high=False)
        self.progress(f"from the inputs: nodes {start + 1}..{end} fail")
        kept = list(range(start, end))
        changed = True
        while changed and len(kept) > 1:  # linear: drop any node whose removal still fails
            changed = False
            for index in reversed(kept):
                rest = [i for i in kept if i != index]
                if self.check(rest) == "fails":
                    kept, changed = rest, True
        self.check(kept)  # the last failing check may have been a larger set: record this one
        assert self.smallest is not None
        self.progress(f"linearly: {len(kept)} nodes")
        return ReduceResult(len(self.nodes), self.smallest, self.checks, self.untestable)

    def _bisect(self, cut: Callable[[int], Iterable[int]], low: int, high: int, fails_high: bool) -> int:
        """The boundary between passing and failing cuts ``cut(k)`` for ``low < k < high``. With ``fails_high``
        ``cut(high)`` fails and the smallest failing k is returned, else ``cut(low)`` fails and the largest."""
        while high - low > 1:
            outcome, k = "untestable", -1
            middle = (low + high) // 2
            for k in _outward(middle, low, high):  # the nearest testable cut to the middle
                outcome = self.check(cut(k))
                if outcome != "untestable":
                    break
            if outcome == "untestable":
                break
            if (outcome == "fails") == fails_high:
                high = k
            else:
                low = k
        return high if fails_high else low

    def check(self, indices: Iterable[int]) -> Outcome:
        nodes = [self.nodes[i] for i in sorted(indices)]
        inputs, outputs = self._boundary(nodes)
        if not outputs or any(name not in self.values for name in inputs):
            self.untestable += 1
            return "untestable"
        if any(name not in self.candidate_names for name in (*inputs, *outputs)):
            self.untestable += 1
            return "untestable"
        try:
            original = _extract(self.original, inputs, outputs, self.types)
            candidate = _extract(self.candidate, inputs, outputs, self.types)
        except (ValueError, KeyError, onnx.checker.ValidationError):
            self.untestable += 1
            return "untestable"
        feeds = [{name: sample[name] for name in inputs} for sample in self.values.samples]
        self.checks += 1
        try:
            # A chain per cut rather than compare_models, which collects garbage before every comparison: in a
            # process holding torch that took most of a reduction's time.
            chain = parity.ParityChain(
                as_dataset(feeds, original), input_specs(original), "the original's values", data_given=True
            )
            report = chain.compare(original, candidate, self.tolerance)
        except (DataError, ModelLoadError):
            self.untestable += 1
            return "untestable"
        if report.samples == 0:  # the candidate's cut did not load or run: the cut, not a parity verdict
            self.untestable += 1
            return "untestable"
        if report.passed:
            return "passes"
        if self.smallest is None or len(nodes) <= len(self.smallest.nodes):
            self.smallest = Subgraph(nodes, inputs, outputs, original, candidate, feeds, report)
        return "fails"

    def _boundary(self, nodes: Sequence[onnx.NodeProto]) -> tuple[list[str], list[str]]:
        made = {out for n in nodes for out in n.output if out}
        inside = {id(n) for n in nodes}
        read_outside = {name for n in self.nodes if id(n) not in inside for name in _reads(n)}
        inputs = [
            name
            for name in dict.fromkeys(name for n in nodes for name in _reads(n))
            if name not in made and name not in self.initializers and name not in self.constants
        ]
        outputs = [
            name for n in nodes for name in n.output if name and (name in read_outside or name in self.graph_outputs)
        ]
        return inputs, outputs


class _Recording:
    """The original model's value of each tensor, per sample."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = samples

    def __contains__(self, name: str) -> bool:
        return bool(self.samples) and name in self.samples[0]


def _record(
    model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], types: Mapping[str, int], samples: list[dict[str, Any]]
) -> _Recording:
    """Run the original once per sample with every typed node output exposed, ORT optimizations off (so no
    fusion hides a tensor). Tensors whose type shape inference could not tell stay out: no cut uses them."""
    names = [out for n in nodes for out in n.output if out and out in types]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, types[name], None) for name in names if name not in present
    )
    try:
        session = runtime.make_session(exposed, optimize=False)
    except Exception as e:  # ORT's own exception types: the original cannot be the reference of any cut
        raise ModelLoadError(
            f"ONNX Runtime cannot load the original model: {runtime.error_line(e)}",
            hint="the original model must run in ONNX Runtime; `onnxkit check` compares what it can",
        ) from e
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    recorded = []
    for sample in samples:
        feed = {name: np.asarray(sample[name]) for name in input_names}
        recorded.append({**feed, **dict(zip(output_names, session.run(output_names, feed)))})
    return _Recording(recorded)


def _extract(
    model: onnx.ModelProto, inputs: list[str], outputs: list[str], types: Mapping[str, int]
) -> onnx.ModelProto:
    """The nodes between ``inputs`` and ``outputs``, as a checked model. Boundary tensors without a value_info
    get the original's element type, shape left open."""
    extractor = onnx.utils.Extractor(model)
    for name in (*inputs, *outputs):
        if name not in extractor.value_infos:
            extractor.value_infos[name] = onnx.helper.make_tensor_value_info(name, types[name], None)
    sub = extractor.extract_model(inputs, outputs)
    available = set(inputs) | {t.name for t in sub.graph.initializer} | {o for n in sub.graph.node for o in n.output}
    missing = {name for n in sub.graph.node for name in _reads(n) if name not in available}
    if missing:  # the candidate computes these outputs from tensors outside the cut
        raise ValueError(f"the cut leaves {sorted(missing)} unfed")
    onnx.checker.check_model(sub)
    return sub


def _reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and the outer-scope names its subgraphs use."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
            local = _names(graph)
            names += [name for inner in graph.node for name in _reads(inner) if name not in local]
    return names


def _names(graph: onnx.GraphProto) -> set[str]:
    return (
        {i.name for i in graph.input}
        | {t.name for t in graph.initializer}
        | {out for n in graph.node for out in n.output if out}
    )


def _elem_types(graph: onnx.GraphProto) -> dict[str, int]:
    return {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.value_info, *graph.output)
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred value_info where ONNX can infer it (a model that defeats inference keeps what
    it declares)."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference errors come in many types; the declared types still serve
        return model


def _proto(model: Any, role: str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return modelio.to_proto(modelio.as_ir_model(model))
    except ModelLoadError:
        raise
    except Exception as e:  # onnx and onnx_ir raise many types for unreadable models
        raise ModelLoadError(f"cannot read the {role} model: {e}") from e


def _save_feeds(feeds: list[dict[str, np.ndarray]], path: Path) -> None:
    """The samples as one .npz: stacked along a new first axis when their shapes agree, else the first one."""
    same_shapes = all({k: v.shape for k, v in f.items()} == {k: v.shape for k, v in feeds[0].items()} for f in feeds)
    arrays = (
        {name: np.stack([f[name] for f in feeds]) for name in feeds[0]}
        if same_shapes and len(feeds) > 1
        else dict(feeds[0])
    )
    temporary = path.with_name(f".{path.name}.tmp.npz")
    np.savez(temporary, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **kwds as its bool options
    os.replace(temporary, path)


def _outward(middle: int, low: int, high: int) -> Iterable[int]:
    """``middle``, then alternately the points after and before it, strictly inside ``(low, high)``."""
    for step in range(high - low):
        for k in (middle + step, middle - step) if step else (middle,):
            if low < k < high:
                yield k
