"""Up-front checks: a model or data that cannot work is refused before the first pass runs.

Without them a bad input surfaces late and in the wrong words: calibration data with a wrong input name
fails inside ``quantize`` after every earlier pass ran, a model without outputs ends in ONNX Runtime's
exception text, an operator ORT does not know reads as a parity failure. Each check here raises an
``OnnxkitError`` (exit 2) whose hint names the fix.

``check_run`` is what the pipeline calls once, with the model already loaded (``modelio.load_model`` has
checked the file itself: missing, empty, not ONNX, external data outside the folder).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxkit import graph as graph_walk
from onnxkit.errors import DataError, ModelLoadError

# ---------------------------------------------------------------------------------------------------------
# The model


def check_model(model: ir.Model, *, needs_runtime: bool, model_dir: str | os.PathLike[str] | None = None) -> None:
    """Refuse a model no pass or parity check can work on: no inputs or outputs, opsets this onnx does not
    know, external data that is missing or outside its folder (``model_dir`` for tensors that do not know
    their folder), and (``needs_runtime``) operators ONNX Runtime cannot run."""
    graph = model.graph
    if not graph.outputs:
        raise ModelLoadError(
            "the model has no graph outputs, so nothing it computes can be kept or checked",
            hint="declare the tensors the model produces as graph outputs",
        )
    if not graph.inputs:
        raise ModelLoadError(
            "the model has no graph inputs: its outputs are constants",
            hint="declare the tensors the model takes as graph inputs",
        )
    _check_opsets(model)
    _check_external_data(model, model_dir)
    if needs_runtime:
        _check_runtime_ops(model)


def _check_opsets(model: ir.Model) -> None:
    known = onnx.defs.C.schema_version_map()  # {domain: (first, last)} of the opsets this onnx knows
    for domain, version in model.opset_imports.items():
        name = domain or "ai.onnx"
        last = known.get("" if domain == "ai.onnx" else domain, (None, None))[1]
        if version < 1 or (last is not None and version > last):
            supported = f"1..{last}" if last is not None else "1 and up"
            raise ModelLoadError(
                f"the model imports opset {version} of domain '{name}', which does not exist "
                f"(onnx {onnx.__version__} knows {supported})",
                hint="convert the model to a known opset (onnx.version_converter), or upgrade onnx",
            )
    local_domains = {function.domain for function in model.functions.values()}
    for node in graph_walk.nodes(model):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in model.opset_imports and node.domain not in model.opset_imports and domain not in local_domains:
            raise ModelLoadError(
                f"{_describe(node)} uses domain '{node.domain or 'ai.onnx'}', which the model does not import",
                hint="add an opset_import entry for that domain",
            )


def _check_external_data(model: ir.Model, model_dir: str | os.PathLike[str] | None) -> None:
    """A model built or loaded in Python may point anywhere; the same rule as for files: inside its folder."""
    for tensor in _external_tensors(model):
        folder = Path(tensor.base_dir or model_dir or ".").resolve()
        location = tensor.location
        target = (folder / location).resolve()
        if os.path.isabs(location) or (target != folder and folder not in target.parents):
            raise ModelLoadError(
                f"tensor '{tensor.name}' has external data '{location}' outside the model's folder",
                hint="'..', absolute paths and symlinks that leave the folder are refused for safety",
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external data file '{location}' of tensor '{tensor.name}' is missing",
                hint=f"it should be beside the model, in {folder}",
            )


def _external_tensors(model: ir.Model) -> Iterable[ir.ExternalTensor]:
    for graph in graph_walk.graphs(model):
        if isinstance(graph, ir.Graph):
            for value in graph.initializers.values():
                if isinstance(value.const_value, ir.ExternalTensor):
                    yield value.const_value
        for node in graph:
            for attribute in node.attributes.values():
                if (
                    not attribute.is_ref()
                    and attribute.type == ir.AttributeType.TENSOR
                    and isinstance(attribute.value, ir.ExternalTensor)
                ):
                    yield attribute.value


@functools.cache
def _runtime_ops() -> frozenset[tuple[str, str]]:
    """(domain, op type) of every operator schema ONNX Runtime registers (its contrib domains included)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return frozenset((schema.domain, schema.name) for schema in ort_state.get_all_operator_schema())


def _check_runtime_ops(model: ir.Model) -> None:
    local = {(function.domain, function.name) for function in model.functions.values()}
    for node in graph_walk.nodes(model):
        domain = "" if node.domain == "ai.onnx" else node.domain
        # ONNX Runtime registers every standard operator of the onnx it is built with, and the onnx installed
        # beside it defines no other (tests/test_validate.py checks it): its registry answers for one op at
        # once, where listing ORT's schemas costs 0.05 s of every run. Only an op onnx does not define (a
        # contrib or custom one) is looked up in ORT's list.
        if domain == "" and onnx.defs.has(node.op_type, ""):
            continue
        if (domain, node.op_type) not in _runtime_ops() and (node.domain, node.op_type) not in local:
            raise ModelLoadError(
                f"ONNX Runtime does not know operator {_op_name(node)} ({_describe(node)}), and "
                "parity checks and this pipeline's passes run the model in it",
                hint="use passes that need no runtime with --check off, or replace the custom op",
            )


def _describe(node: ir.Node) -> str:
    return f"node '{node.name}'" if node.name else f"an unnamed {_op_name(node)} node"


def _op_name(node: ir.Node) -> str:
    return f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


# ---------------------------------------------------------------------------------------------------------
# The data


def check_data(data: Any, model: ir.Model, *, option: str, limit: int | None = None) -> None:
    """Read ``data`` (any source ``data.load_dataset`` takes) and check each sample against the model's inputs:
    names, dtypes, ranks, static dims, finite values. ``option`` names the data in messages (``calibration data``);
    ``limit`` stops after that many samples (the ones a run will read)."""
    from onnxkit.data import input_specs, load_dataset, validate_sample
    from onnxkit.data.specs import describe_inputs

    specs = input_specs(model)
    count = 0
    try:
        dataset = load_dataset(data).for_model(specs)
        for index, sample in enumerate(dataset):
            if limit is not None and index >= limit:
                break
            validate_sample(sample, specs, index=index)
            count += 1
    except DataError as e:
        raise DataError(
            f"{option}: {e.message}", hint=e.hint or f"the model's inputs are {describe_inputs(specs)}"
        ) from e
    if count == 0:
        raise DataError(f"{option}: the data holds no samples", hint=f"the model's inputs are {describe_inputs(specs)}")


# ---------------------------------------------------------------------------------------------------------
# A run


def check_synthetic_sizes(model: ir.Model, dims: Mapping[str, int]) -> None:
    """Refuse synthetic inputs too large to make: ``--dim seq=100000000000`` would have numpy allocate 745 GiB.
    Open dims take their small defaults here; only sizes the user or the graph fixed can trip this."""
    from onnxkit.data import SyntheticDataset

    try:
        synthetic = SyntheticDataset(model, dims=dims)
    except DataError:
        return  # inputs synthetic data cannot fill (sequences): whoever needs them says so, as before
    for spec in synthetic.specs or ():
        shape = synthetic.shapes[spec.name]
        itemsize = spec.dtype.itemsize if spec.dtype is not None else 8
        if math.prod(shape) * itemsize > MAX_SYNTHETIC_BYTES:
            raise DataError(
                f"synthetic input '{spec.name}' would be {list(shape)}, {math.prod(shape) * itemsize / 2**30:.1f} GiB",
                hint="give smaller sizes with --dim, or real inputs with --data",
            )


# One synthetic input past this is refused rather than allocated (a model's real inputs are far smaller).
MAX_SYNTHETIC_BYTES = 2**31


def check_run(
    model: ir.Model,
    passes: Sequence[Any],
    *,
    check: str,
    data: Any,
    calibration_data: Any,
    model_dir: str | os.PathLike[str] | None = None,
    dims: Mapping[str, int] | None = None,
) -> None:
    """Everything a pipeline run can know is wrong before its first pass: the model, then each data source.

    ORT is needed when parity runs (``check`` other than ``off``) or a pass runs the model (``uses_runtime``).
    Calibration data is read as far as the default calibration split reads it; without any data, the
    synthetic inputs parity and calibration would make must fit in memory.
    """
    from onnxkit.data import DEFAULT_CALIBRATION_SAMPLES, HOLDOUT_EVERY

    needs_runtime = check != "off" or any(getattr(p, "uses_runtime", False) for p in passes)
    check_model(model, needs_runtime=needs_runtime, model_dir=model_dir)
    if data is not None:
        check_data(data, model, option="data")
    if data is None and calibration_data is None and (needs_runtime or dims):
        check_synthetic_sizes(model, dims or {})
    if calibration_data is not None and calibration_data is not data:
        # The split takes DEFAULT_CALIBRATION_SAMPLES and holds out one in HOLDOUT_EVERY besides.
        limit = DEFAULT_CALIBRATION_SAMPLES * HOLDOUT_EVERY // (HOLDOUT_EVERY - 1) + 1
        check_data(calibration_data, model, option="calibration data", limit=limit)
