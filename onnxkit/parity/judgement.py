"""A lossy pass's own parity check of the model it hands on, taken by the pipeline instead of running it again.

The quantize pass judges its final model the way the pipeline will: float model against INT8 model, ONNX
Runtime's optimizations off, on the pipeline's parity samples, by the pipeline's tolerance. Running that again
right after costs every parity sample's run of the INT8 model (mobilenetv2: 1 s). A ``Judgement`` carries the
pass's report with digests of what it compared; the pipeline takes it only when the digests are those of what
it would compare itself (``adopt``): the same samples as fed, the same reference outputs (its recorded outputs
of the pass's input), the model it is handed, the same tolerance and session settings. Anything else, or
anything it cannot tell, and it runs its own check.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxkit import runtime
from onnxkit.data import validate_sample
from onnxkit.parity.report import ParityReport
from onnxkit.parity.runs import Compared, Live, Recording, Replay, compare_runs, make_report
from onnxkit.parity.tolerance import Tolerance

# The session settings a comparison ran under: ORT's optimizations, threads, packed weights.
SessionSettings = tuple[bool, int, bool]


@dataclasses.dataclass(frozen=True)
class ParityReference:
    """What the pipeline's check of a pass's output will compare against: its parity samples, and its recorded
    outputs of the pass's input on them, with the session settings it runs the output under. A lossy pass that
    judges its output as the pipeline will (``compare_with``) then need not run its input on those samples again."""

    dataset: Any
    specs: Any
    description: str
    recording: Recording
    session: SessionSettings


def reference_for(chain: Any, model: Any) -> ParityReference | None:
    """``chain``'s samples and its complete recording of ``model``'s outputs on them; None if it has none."""
    if chain is None or getattr(chain, "dataset", None) is None or not chain.prepack:
        return None
    recorded = chain.recorded(model)
    if recorded is None or not recorded.complete:
        return None
    session = (chain.ort_optimizations, chain.threads, chain.prepack)
    return ParityReference(chain.dataset, chain.specs, chain.description, recorded, session)


def compare_with(reference: ParityReference, candidate: Any, tolerance: Tolerance) -> ParityReport:
    """``candidate`` compared with the recorded reference, as the pipeline's chain compares a pass's output."""
    optimize, threads, prepack = reference.session
    try:
        session = runtime.make_session(candidate, optimize=optimize, threads=threads, prepack=prepack)
    except Exception as e:  # ORT raises its own exception types for graphs it cannot load
        failed = Compared([], [f"ONNX Runtime cannot load the candidate model: {runtime.error_line(e)}"], 0, None, None)
        return make_report(failed, tolerance, reference.description, optimize)
    compared = compare_runs(
        Replay(reference.recording), Live(session), reference.dataset, reference.specs, tolerance, data_given=True
    )
    return make_report(compared, tolerance, reference.description, optimize)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A comparison a pass made of its output, and digests of what it compared (``digest_*``)."""

    report: ParityReport
    inputs: str  # the samples as fed, in order
    reference: str  # the reference's outputs on them, by output name
    candidate: str  # the model compared: the one the pass returns
    session: SessionSettings


def _update(digest: Any, value: Any) -> bool:
    """Feed ``value`` (an array, or a list or dict of them) to ``digest``; False for anything else."""
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes() if array.dtype != object else repr(array.tolist()).encode())
        return True
    if isinstance(value, list):
        digest.update(f"list{len(value)}|".encode())
        return all(_update(digest, v) for v in value)
    if isinstance(value, dict):
        digest.update(f"dict{len(value)}|".encode())
        return all(
            _update(digest, k if isinstance(k, np.ndarray) else np.asarray(k)) and _update(digest, v)
            for k, v in sorted(value.items(), key=lambda item: repr(item[0]))
        )
    return False


def digest_inputs(samples: Iterable[Mapping[str, Any]], specs: Any) -> str | None:
    """The samples as a comparison feeds them (validated against ``specs``), in order; None if one cannot be
    digested."""
    digest = hashlib.sha256()
    for index, sample in enumerate(samples):
        fed = validate_sample(sample, specs, index=index)
        for name in sorted(fed):
            digest.update(f"{index}|{name}|".encode())
            if not _update(digest, fed[name]):
                return None
    return digest.hexdigest()


def digest_outputs(names: Sequence[str], values: Sequence[Sequence[Any]]) -> str | None:
    """One model's recorded outputs (``parity.Recording``): names, then each sample's values."""
    digest = hashlib.sha256("|".join(names).encode())
    for sample in values:
        for value in sample:
            if not _update(digest, value):
                return None
    return digest.hexdigest()


def digest_model(model: ir.Model) -> str | None:
    """The model's deterministic serialization; None past protobuf's 2 GB limit."""
    try:
        return hashlib.sha256(ir.serde.serialize_model(model).SerializeToString(deterministic=True)).hexdigest()
    except ValueError:  # protobuf refuses to serialize past 2 GB
        return None


def adopt(
    judgement: Judgement,
    chain: Any,
    reference: Any,
    candidate: ir.Model,
    tolerance: Tolerance,
    *,
    limit: int | None,
) -> ParityReport | None:
    """The judgement's report when it is the comparison ``chain`` would make of ``candidate`` against
    ``reference`` by ``tolerance``, on all of its samples (``limit`` None); else None, and the caller compares."""
    if limit is not None or not judgement.report.samples or judgement.report.tolerance != tolerance:
        return None
    if judgement.session != (chain.ort_optimizations, chain.threads, chain.prepack):
        return None
    recorded = chain.recorded(reference)
    if recorded is None or not recorded.complete or len(recorded.values) != judgement.report.samples:
        return None
    if digest_outputs(recorded.outputs, recorded.values) != judgement.reference:
        return None
    if chain_inputs_digest(chain) != judgement.inputs or digest_model(candidate) != judgement.candidate:
        return None
    return dataclasses.replace(
        judgement.report, data=f"{chain.description}; compared by the pass itself, on the same samples and outputs"
    )


# Each chain's samples digested once: a chain's dataset does not change during a run.
_CHAIN_INPUTS: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def chain_inputs_digest(chain: Any) -> str | None:
    """The digest of the samples ``chain`` compares on (``digest_inputs``)."""
    if chain not in _CHAIN_INPUTS:
        _CHAIN_INPUTS[chain] = digest_inputs(chain.dataset, chain.specs)
    return _CHAIN_INPUTS[chain]
