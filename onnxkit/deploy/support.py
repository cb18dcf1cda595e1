"""Which operators a deployment target runs, and which nodes of a model it would refuse.

Each answer comes from the best source at hand, and the report names it:

- ONNX Runtime (``ort-cpu``, ``ort-mobile``): the kernel registry of the installed ONNX Runtime
  (``get_all_opkernel_def``: domain, op type and the opset range of each CPU kernel). An op without a kernel
  still runs when its ONNX schema has a function body, which ORT expands.
- OpenVINO: the installed OpenVINO itself. Its ONNX frontend converts the model partially, leaving an
  ``ONNXFrameworkNode`` for each op it has no conversion for; ``Core.query_model`` then says which of the
  converted operations the CPU plugin runs.
- TensorRT: no CPU runtime exists, so its published operator support matrix ships as data
  (``tensorrt-8.5.json``, with its version and source).
- ``portable``: the standard ONNX domains only, each op known to ONNX at the model's opset.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import graph

STANDARD_DOMAINS = frozenset({"", "ai.onnx.ml"})
TENSORRT_TABLE = "tensorrt-8.5.json"


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name


def op_label(domain: str, op_type: str) -> str:
    return f"{domain}::{op_type}" if domain else op_type


@dataclasses.dataclass(frozen=True)
class NodeOp:
    """One node as a runtime sees it: its op, the opset of its domain, and where it sits."""

    name: str
    domain: str
    op_type: str
    opset: int | None
    graph: str  # "main", a subgraph or a local function

    @property
    def op(self) -> str:
        return op_label(self.domain, self.op_type)


@dataclasses.dataclass
class UnsupportedNode:
    name: str
    op: str
    opset: int | None
    graph: str
    reason: str


@dataclasses.dataclass
class SupportReport:
    """What the target would refuse: each unsupported node with its reason, and where the answer came from."""

    target: str
    source: str
    nodes: int
    unsupported: list[UnsupportedNode] = dataclasses.field(default_factory=list)
    model_problems: list[str] = dataclasses.field(default_factory=list)  # e.g. an opset the target lacks
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def supported(self) -> bool:
        return not self.unsupported and not self.model_problems

    def unsupported_ops(self) -> dict[str, int]:
        """Unsupported op → how many nodes use it."""
        counts: dict[str, int] = {}
        for node in self.unsupported:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def lines(self, max_nodes: int = 20) -> list[str]:
        verdict = "supported" if self.supported else "NOT supported"
        lines = [
            (
                f"target {self.target}: {verdict}: {len(self.unsupported)} of {self.nodes} nodes unsupported "
                f"(source: {self.source})"
            )
        ]
        lines += [f"  model: {problem}" for problem in self.model_problems]
        for op, count in sorted(self.unsupported_ops().items()):
            lines.append(f"  {op}: {count} node{'s' if count != 1 else ''}")
        for node in self.unsupported[:max_nodes]:
            where = "" if node.graph == "main" else f" in {node.graph}"
            lines.append(f"    {node.name or '<unnamed>'} ({node.op}, opset {node.opset}){where}: {node.reason}")
        if len(self.unsupported) > max_nodes:
            lines.append(f"    ... and {len(self.unsupported) - max_nodes} more (--json lists them all)")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "supported": self.supported,
            "source": self.source,
            "nodes": self.nodes,
            "unsupported_count": len(self.unsupported),
            "unsupported_ops": self.unsupported_ops(),
            "unsupported": [dataclasses.asdict(n) for n in self.unsupported],
            "model_problems": list(self.model_problems),
            "notes": list(self.notes),
        }


def node_ops(model: ir.Model) -> Iterator[NodeOp]:
    """Every operator node of every graph; calls to the model's own functions are left out (their bodies are
    walked instead: runtimes inline them)."""
    functions = {(f.domain, f.name) for f in model.functions.values()}
    opsets = {_domain(d): v for d, v in model.opset_imports.items()}
    for g in graph.graphs(model):
        where = "main" if g is model.graph else f"{'function' if isinstance(g, ir.Function) else 'subgraph'} {g.name}"
        for node in g:
            domain = _domain(node.domain)
            if (domain, node.op_type) in functions:
                continue
            yield NodeOp(node.name or "", domain, node.op_type, node.version or opsets.get(domain), where)


# ---------------------------------------------------------------------------------------------------------
# Per-op tables: a function (domain, op type, opset) -> reason it is unsupported, or None


OpRule = Callable[[str, str, "int | None"], "str | None"]


def check_with_rule(
    model: ir.Model, target: str, source: str, rule: OpRule, notes: list[str] | None = None
) -> SupportReport:
    report = SupportReport(target, source, 0, notes=list(notes or []))
    decided: dict[tuple[str, str, int | None], str | None] = {}
    for node in node_ops(model):
        report.nodes += 1
        key = (node.domain, node.op_type, node.opset)
        if key not in decided:
            decided[key] = rule(*key)
        reason = decided[key]
        if reason is not None:
            report.unsupported.append(UnsupportedNode(node.name, node.op, node.opset, node.graph, reason))
    return report


def _onnx_schema(domain: str, op_type: str, opset: int | None) -> Any:
    try:
        return onnx.defs.get_schema(op_type, opset or onnx.defs.onnx_opset_version(), domain)
    except onnx.defs.SchemaError:
        return None


def standard_rule(domain: str, op_type: str, opset: int | None) -> str | None:
    """``portable``: a standard ONNX op that exists at the model's opset."""
    if domain not in STANDARD_DOMAINS:
        return f"domain {domain} is not a standard ONNX domain"
    if _onnx_schema(domain, op_type, opset) is None:
        return f"not an ONNX operator at opset {opset}"
    return None


@functools.lru_cache(maxsize=1)
def _ort_cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    import onnxruntime.capi._pybind_state as ort_state  # the kernel registry; no public module exposes it

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kernel in ort_state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider":
            kernels.setdefault((_domain(kernel.domain), kernel.op_name), []).append(tuple(kernel.version_range))
    return kernels


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ort_cpu_rule(domain: str, op_type: str, opset: int | None) -> str | None:
    """A CPU kernel whose opset range covers the model's opset, or an ONNX function body ORT can expand.
    Constant nodes need no kernel: ORT turns them into initializers when it loads the model."""
    if domain == "" and op_type == "Constant":
        return None
    ranges = _ort_cpu_kernels().get((domain, op_type), [])
    if ranges and (opset is None or any(start <= opset <= end for start, end in ranges)):
        return None
    schema = _onnx_schema(domain, op_type, opset) if domain in STANDARD_DOMAINS else None
    if schema is not None and (schema.has_function or schema.has_context_dependent_function):
        return None
    if not ranges:
        return f"no CPU kernel in ONNX Runtime {ort_version()}"
    spans = ", ".join(f"{start}-{end if end < 2**30 else ''}" for start, end in sorted(ranges))
    return f"ONNX Runtime {ort_version()} has CPU kernels for opsets {spans}, not {opset}"


@functools.lru_cache(maxsize=1)
def tensorrt_table() -> dict[str, Any]:
    text = importlib.resources.files("onnxkit.deploy").joinpath(TENSORRT_TABLE).read_text()
    return json.loads(text)


def tensorrt_rule(domain: str, op_type: str, opset: int | None) -> str | None:
    table = tensorrt_table()
    version = f"TensorRT {table['version']}"
    if domain not in table["domains"]:
        return f"{version} parses only the standard ONNX domain; {domain} needs a TensorRT plugin"
    if op_type in table["unsupported"]:
        return f"unsupported in {version}'s operator matrix"
    if op_type not in table["supported"]:
        return f"not in {version}'s operator matrix"
    return None


def tensorrt_opset_problems(model: ir.Model) -> list[str]:
    table = tensorrt_table()
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is not None and opset > table["max_opset"]:
        return [f"imports ONNX opset {opset}; TensorRT {table['version']} supports opsets up to {table['max_opset']}"]
    return []


def tensorrt_source() -> str:
    table = tensorrt_table()
    return f"TensorRT {table['version']} operator matrix ({table['source_short']})"


# ---------------------------------------------------------------------------------------------------------
# OpenVINO: ask the installed runtime


def check_openvino(model_path: Path, model: ir.Model, device: str = "CPU") -> SupportReport:
    """Convert ``model_path`` with OpenVINO's ONNX frontend, partially, and ask the device which operations
    it runs, in a child process (``openvino.query``): a crash there is a model problem in the report. Each
    refusal is mapped back to the ONNX node that produced it (by node name, else by the names of its output
    tensors)."""
    from onnxkit.deploy import openvino

    ops = list(node_ops(model))
    report = SupportReport(
        "openvino", f"OpenVINO {openvino.openvino_version()} ({device}: ONNX frontend, query_model)", len(ops)
    )
    by_name = {op.name: op for op in ops if op.name}
    by_output: dict[str, NodeOp] = {}
    for g in graph.graphs(model):
        for node in g:
            match = by_name.get(node.name or "")
            if match is not None:
                by_output.update({out.name: match for out in node.outputs if out.name})

    def onnx_node(ov_op: dict[str, Any]) -> NodeOp | None:
        found = by_name.get(ov_op["name"])
        if found is None:
            found = next((by_output[n] for n in ov_op["outputs"] if n in by_output), None)
        return found

    try:
        answer = openvino.query(model_path, device)
    except openvino.OpenVinoCrashed as e:
        report.model_problems.append(str(e))
        return report
    if answer["frontend_error"] is not None:
        report.model_problems.append(f"OpenVINO's ONNX frontend cannot read the model: {answer['frontend_error']}")
    if answer["plugin_error"] is not None:
        report.model_problems.append(
            f"OpenVINO's {device} plugin fails on the converted model: {answer['plugin_error']}"
        )
    for ov_op in answer["unconverted"]:
        found = onnx_node(ov_op)
        report.unsupported.append(
            UnsupportedNode(
                found.name if found else ov_op["name"],
                op_label(ov_op["domain"], ov_op["type"]),
                found.opset if found else None,
                found.graph if found else "main",
                FRONTEND_REFUSAL,
            )
        )
    if answer["unconverted"]:
        report.notes.append(f"the {device} plugin was not asked: OpenVINO compiles only a fully converted model")
    seen: set[str] = set()
    for ov_op in answer["unsupported"]:
        found = onnx_node(ov_op)
        name = found.name if found else ov_op["name"]
        if name in seen:
            continue
        seen.add(name)
        report.unsupported.append(
            UnsupportedNode(
                name,
                found.op if found else ov_op["type"],
                found.opset if found else None,
                found.graph if found else "main",
                f"OpenVINO's {device} plugin does not run {ov_op['type']}",
            )
        )
    return report


FRONTEND_REFUSAL = "OpenVINO's ONNX frontend could not convert it"
