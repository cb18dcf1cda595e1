"""Synthetic inputs that the model actually runs on, found without asking the user.

With no data given, parity, calibration and benchmarks need inputs that fit the model. What the graph says
comes first (``graph_hints.read_graph``: declared and pinned sizes, dim names, compared values, index
bounds). The dynamic dims it leaves open then climb a ladder of sizes per role, every role one rung per
try, until ONNX Runtime runs the model on the first sample: a detector whose feature pyramid needs 64
pixels, an audio front end that needs a window of 512 samples. One session, a bounded number of tries and
seconds; a model that runs with the first guess costs one run, and a model with no open dim costs none. A
batch of one is tried first but is not taken for granted: some models need a batch that is a multiple of 4
(ICLabel stacks four flips of each input), and their batch climbs as the other dims do.

``--dim`` sizes are fixed and never probed; with ``--data`` nothing is probed at all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import onnx_ir as ir

from onnxkit import runtime
from onnxkit.data.dims import dim_key, dynamic_dims, user_size
from onnxkit.data.graph_hints import read_graph
from onnxkit.data.specs import ModelLike, _ir_model
from onnxkit.data.synthetic import DEFAULT_SYNTHETIC_SAMPLES, SyntheticDataset
from onnxkit.errors import DataError, ModelLoadError

# Each role's sizes, smallest first; the first rung is dims.DIM_DEFAULTS. A batch stays 1 unless
# nothing runs that way (then it climbs the "other" ladder: some exporters put a length on axis 0).
SIZE_LADDERS: dict[str, tuple[int, ...]] = {
    "batch": (1,),
    "spatial": (32, 64, 96, 128, 160, 224, 320, 640),
    "sequence": (16, 32, 64, 128, 256, 512, 1024, 4000, 16000),
    "other": (8, 16, 32, 64, 128, 256, 512, 1024, 4000, 16000),
}
MAX_TRIES = 24
MAX_SECONDS = 60.0  # checked between tries: the try running when it passes still finishes
MAX_ELEMENTS = 1 << 24  # a rung that would make an input tensor larger than this (64 MB of float32) is skipped


@dataclasses.dataclass
class ProbeRun:
    """The session a probe made and the outputs it gave on the chosen dataset's first sample (all of the
    session's outputs, in its order): a caller that runs the model on those samples next starts from them."""

    session: Any
    first_outputs: list[Any]
    seconds: float = 0.0  # how long that run took


def probe_dataset(
    model: ModelLike,
    *,
    dims: Mapping[str, int] | None = None,
    num_samples: int = DEFAULT_SYNTHETIC_SAMPLES,
    seed: int = 0,
    model_dir: str | os.PathLike[str] | None = None,
    max_tries: int = MAX_TRIES,
    max_seconds: float = MAX_SECONDS,
    keep_run: bool = False,
    serialized: bytes | None = None,
) -> SyntheticDataset:
    """A ``SyntheticDataset`` whose first sample ONNX Runtime runs ``model`` on; ``.describe()`` says what was
    chosen and ``.probe`` how (``DynamicDimension.1=64, DynamicDimension.2=64; 2 tries``).

    With ``keep_run``, a probe that ran the model leaves its session and first outputs in the dataset's
    ``probe_run`` (a ``ProbeRun``; None when nothing was probed), for the caller to take: the pipeline's parity
    reference is that very run. Otherwise the session goes once the probe ends, not kept alive by the dataset.

    ``model_dir`` is where the external data of an in-memory model lives; ``serialized`` is the model's bytes,
    when the caller has them at hand: the probe's session is made from them, not from the model serialized
    once more. Raises ``DataError`` naming the
    inputs and the node that failed last when no size tried runs, and ``ModelLoadError`` when ONNX Runtime
    cannot load the model at all.
    """
    probe = Probe(model, dims=dims, num_samples=num_samples, seed=seed, model_dir=model_dir, serialized=serialized)
    if not probe.needed:
        return probe.dataset({})  # every dim is fixed: nothing to choose
    return probe.run(max_tries=max_tries, max_seconds=max_seconds, keep_run=keep_run)


class Probe:
    """A probe in two steps: what the graph says, read here from ``model``; then ``run``, the tries in ONNX
    Runtime. ``run`` reads the model no more, only its bytes or its file, when either was given: it may then
    run in another thread while ``model`` is edited (``background``). ``needed`` is False when there is
    no open dim at all (``dataset({})`` is then the answer, without a run). ``prepack``: whether its
    session packs weights (``runtime.packs_weights`` of the model when not given)."""

    def __init__(
        self,
        model: ModelLike,
        *,
        dims: Mapping[str, int] | None = None,
        num_samples: int = DEFAULT_SYNTHETIC_SAMPLES,
        seed: int = 0,
        model_dir: str | os.PathLike[str] | None = None,
        serialized: bytes | None = None,
        prepack: bool | None = None,
    ) -> None:
        ir_model = _ir_model(model)
        self.hints = read_graph(ir_model)
        self.dims, self.num_samples, self.seed = dict(dims or {}), num_samples, seed
        self.open_dims = {
            key: role
            for key, role in dynamic_dims(self.hints.specs).items()
            if key not in self.hints.pinned and user_size(key, role, self.dims) is None
        }
        self.needed = bool(self.open_dims)
        self._batch_only = all(role == "batch" for role in self.open_dims.values())
        self.background = isinstance(model, (str, os.PathLike)) or serialized is not None
        self._source = (
            model if isinstance(model, (str, os.PathLike)) else serialized if serialized is not None else ir_model
        )
        self._ir_model = ir_model  # what the datasets are built from: never read again, the hints are
        self._model_dir = model_dir if model_dir is not None else _external_data_folder(ir_model)
        # The session becomes the parity reference's: packed or not as parity's own (runtime.packs_weights, which
        # the caller may have asked already).
        if prepack is None:
            prepack = runtime.packs_weights(ir_model) if self.needed else True
        self._prepack = prepack

    def dataset(self, sizes: Mapping[str, int]) -> SyntheticDataset:
        return SyntheticDataset(
            self._ir_model, dims=self.dims, num_samples=self.num_samples, seed=self.seed, sizes=sizes, hints=self.hints
        )

    def run(
        self,
        *,
        max_tries: int = MAX_TRIES,
        max_seconds: float = MAX_SECONDS,
        keep_run: bool = False,
        cancelled: threading.Event | None = None,
        run_options: Any = None,
    ) -> SyntheticDataset:
        """Climb the ladder until ONNX Runtime runs the model (see ``probe_dataset``). Once ``cancelled`` is set
        (the run in flight stopped by ``run_options.terminate``), raises ``ProbeCancelled``."""
        session = _session(self._source, self._model_dir, prepack=self._prepack)
        started, tries, failure, tried = time.perf_counter(), 0, None, None
        for sizes in _ladder(self.open_dims):
            candidate = self.dataset(sizes)
            if any(math.prod(shape) > MAX_ELEMENTS for shape in candidate.shapes.values()):
                continue
            if tries >= max_tries or (tries and time.perf_counter() - started > max_seconds):
                break
            tries, tried = tries + 1, candidate
            run_started = time.perf_counter()
            try:
                outputs = session.run(None, next(iter(candidate)), run_options)
            except Exception as error:  # ORT raises its own types for shape and index errors
                if cancelled is not None and cancelled.is_set():
                    raise ProbeCancelled() from error
                failure = error
                continue
            run_seconds = time.perf_counter() - run_started
            if not (self._batch_only and tries == 1):  # a batch of one that runs is no choice worth a note
                chosen = ", ".join(f"{key}={size}" for key, size in sizes.items())
                candidate.probe = f"{chosen}; {tries} {'try' if tries == 1 else 'tries'}"
            if keep_run:
                candidate.probe_run = ProbeRun(session, outputs, run_seconds)
            return candidate
        raise _nothing_runs(self.open_dims, self.hints.specs, tried, tries, failure)


class ProbeCancelled(Exception):
    """A probe stopped by its caller before it found a size."""


def _session(model: Any, model_dir: str | os.PathLike[str] | None, *, prepack: bool) -> Any:
    try:
        # The session becomes the parity reference's: packed or not as parity's own (runtime.packs_weights).
        return runtime.make_session(model, model_dir=model_dir, prepack=prepack)
    except Exception as error:  # ORT's own exception types: invalid graph, unknown op
        raise ModelLoadError(
            f"ONNX Runtime cannot load the model to probe its inputs: {runtime.error_line(error)}",
            hint="the reference model must run in ONNX Runtime",
        ) from error


def _external_data_folder(model: ir.Model) -> str | None:
    """Where a model loaded from a file keeps its external data, so that ORT finds it from any folder."""
    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.ExternalTensor):
            return str(value.const_value.base_dir)
    return None


def _ladder(open_dims: Mapping[str, str]) -> Iterator[dict[str, int]]:
    """Sizes for the open dims, every role one rung up per step; then again with batch dims climbing too."""
    seen = set()
    for batch_ladder in (SIZE_LADDERS["batch"], SIZE_LADDERS["other"]):
        ladders = {key: batch_ladder if role == "batch" else SIZE_LADDERS[role] for key, role in open_dims.items()}
        for rung in range(max(len(ladder) for ladder in ladders.values())):
            sizes = {key: ladder[min(rung, len(ladder) - 1)] for key, ladder in ladders.items()}
            if tuple(sizes.values()) not in seen:
                seen.add(tuple(sizes.values()))
                yield sizes


def _nothing_runs(
    open_dims: Mapping[str, str], specs: Any, last: SyntheticDataset | None, tries: int, failure: BaseException | None
) -> DataError:
    names = [spec.name for spec in specs if any(dim_key(spec, axis) in open_dims for axis in range(spec.rank or 0))]
    inputs = f"input{'s' if len(names) > 1 else ''} " + ", ".join(f"'{name}'" for name in names)
    if failure is None or last is None:
        outcome = "every size would make too large a tensor"
    else:  # error_line names the failing node first: "Reshape node 'r': The input tensor cannot be reshaped ..."
        outcome = f"the last, {last.shapes_text()}, failed with {runtime.error_line(failure)}"
    return DataError(
        f"the model runs on no synthetic size of {inputs}: {tries} {'try' if tries == 1 else 'tries'}, {outcome}",
        hint="give real inputs with --data, or bind dynamic dims with --dim name=SIZE",
    )
