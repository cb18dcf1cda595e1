"""The one place onnxkit makes ONNX Runtime sessions.

Every comparison, probe, calibration, timing and tool run goes through ``make_session`` so that they all:

- stay quiet: ONNX Runtime's own log lines (coloured ``[E:onnxruntime ...]`` dumps) never reach the terminal
  unless ``set_verbose(True)`` was called (the CLI's ``--verbose``); its errors become our one-line messages;
- find external data wherever the process runs: a model handed over as bytes has its external data resolved
  against ``model_dir`` (the model's own folder), not against the current working directory;
- handle models past protobuf's 2 GB limit by going through a temporary file.

``optimize_offline`` runs ORT's graph optimizer on a file and saves the result. ``error_line`` turns an ONNX
Runtime exception into one readable line, and ``failing_node`` pulls out the
node ORT names in it, so messages can say which node failed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

# ORT's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal. Errors that matter reach the user as
# exceptions, which we reword; the log lines repeat them in a form users take for crashes.
_QUIET_SEVERITY = 4
_VERBOSE_SEVERITY = 2
_verbose = False

ModelSource = Any  # str | os.PathLike | bytes | onnx.ModelProto | ir.Model


def set_verbose(verbose: bool) -> None:
    """Let ONNX Runtime's own warnings and errors through (``--verbose``), or silence them (the default)."""
    global _verbose
    _verbose = verbose
    import onnxruntime as ort

    ort.set_default_logger_severity(_VERBOSE_SEVERITY if verbose else _QUIET_SEVERITY)


def session_options(*, optimize: bool = False, threads: int = 1, prepack: bool = True) -> Any:
    """Session options: graph optimizations off unless asked (parity must see the graph as written), a fixed
    number of threads (timings and comparisons must not fight the rest of the machine), and quiet logs.

    ``prepack=False`` keeps ORT from copying weights into its packed layouts (MatMul, Conv, ...). ORT maps
    external data files into memory, so unpacked weights stay in the page cache, shared by every session on
    the same file, instead of a private copy per session: what a parity check on a model of gigabytes wants
    (it runs a few samples; packing pays off over many runs, as timing them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = _VERBOSE_SEVERITY if _verbose else _QUIET_SEVERITY
    return options


def run_options() -> Any:
    """Run options as quiet as the sessions; setting ``terminate`` from another thread stops a run in flight."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = _VERBOSE_SEVERITY if _verbose else _QUIET_SEVERITY
    return options


# Ops whose CPU kernel computes differently on packed weights: MatMulNBits honours ``accuracy_level`` (int8
# arithmetic) only when its weights are packed, and runs in fp32 without, so a check with packing off would
# judge a kernel that users, whose sessions pack, never run.
_PACKING_CHANGES_RESULTS = frozenset({("com.microsoft", "MatMulNBits")})


def packs_weights(model: ModelSource) -> bool:
    """Whether a session that checks ``model`` (parity, probing) packs its weights, as users' sessions do.

    Yes, unless the model's weights are still in their external data files (a model past
    ``modelio.EXTERNAL_DATA_THRESHOLD``, loaded lazily): ORT maps those files, shared by every session on them,
    and a packed copy would add private memory of the model's size per session. Even then yes where an op's
    kernel gives other results on packed weights (``_PACKING_CHANGES_RESULTS``)."""
    from onnxkit import graph, modelio

    # A lazily loaded model serializes its weights as references, so reading it back here is cheap; whoever
    # checks a chain of models asks once for its input (an ir.Model) and again only where that says no.
    model = modelio.as_ir_model(model)
    if modelio.external_tensor_bytes(model) == 0:
        return True
    return any((node.domain, node.op_type) in _PACKING_CHANGES_RESULTS for node in graph.nodes(model))


def make_session(
    model: ModelSource,
    *,
    options: Any = None,
    optimize: bool = False,
    threads: int = 1,
    prepack: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """An ``onnxruntime.InferenceSession`` for a path, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``.

    ``options`` replaces the defaults of ``session_options(optimize=..., threads=..., prepack=...)``; its log level is set
    here whatever the caller chose. ``model_dir`` is where external data of an in-memory model lives: a
    path's own folder is used for a path, and an ``ir.Model`` loaded from a file knows its folder itself.
    """
    import onnxruntime as ort

    from onnxkit import modelio

    if not _verbose:
        ort.set_default_logger_severity(_QUIET_SEVERITY)
    if options is None:
        options = session_options(optimize=optimize, threads=threads, prepack=prepack)
    options.log_severity_level = _VERBOSE_SEVERITY if _verbose else _QUIET_SEVERITY
    providers = list(providers)
    if isinstance(model, (str, os.PathLike)):
        return _session(str(model), options, providers, Path(model).parent)
    if isinstance(model, (bytes, bytearray)):
        return _session(bytes(model), options, providers, model_dir)
    if isinstance(model, ir.Model):
        layout = modelio.tensor_layout(model)
        if model_dir is None:
            model_dir = layout.folder
        if layout.needs_external_data:
            return _session_from_file(model, options, providers)
        # Tensors still in their data files go as references, read by ORT from model_dir.
        model = modelio.to_proto(model)
    if isinstance(model, onnx.ModelProto):
        if exceeds_protobuf_limit(model):
            return _session_from_file(modelio.as_ir_model(model, model_dir=model_dir), options, providers)
        return _session(model.SerializeToString(), options, providers, model_dir)
    raise TypeError(f"cannot make an ONNX Runtime session from a {type(model).__name__}")


_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def _session(model: str | bytes, options: Any, providers: list[str], data_folder: str | os.PathLike[str] | None) -> Any:
    """ORT reads external data from ``data_folder`` (the current folder when None, as ORT does for bytes).

    Set on every session: callers share one options object between sessions (parity's two models), and a
    folder set for one would otherwise stick to the next.
    """
    import onnxruntime as ort

    options.add_session_config_entry(_DATA_FOLDER, str(Path(data_folder or ".").resolve()))
    return ort.InferenceSession(model, options, providers=providers)


def _session_from_file(model: ir.Model, options: Any, providers: list[str]) -> Any:
    """Over 2 GB: ORT reads the model from a temporary folder; the session holds the weights once made."""
    from onnxkit import modelio

    with tempfile.TemporaryDirectory(prefix="onnxkit-session-") as folder:
        path = Path(folder) / "model.onnx"
        # Through onnx_ir, which leaves the caller's model as it was: onnx.save_model with external data would
        # rewrite the caller's tensors into references to this folder, gone once the session is made.
        modelio.save_model(model, path, external_data=True)
        return _session(str(path), options, providers, folder)


def optimize_offline(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    level: str,
    *,
    external_data: bool = True,
    external_min_bytes: int | None = None,
) -> None:
    """ONNX Runtime's graph optimizer run offline, as the ``ort-optimize`` pass and ``onnxkit bench``'s ORT peers
    run it: load the model file ``source`` at ``level`` ("basic": standard ops only, or "extended": ORT's
    contrib fusions too) and write the optimized model to ``target``. With ``external_data`` its initializers
    (those of at least ``external_min_bytes``, when given) go to ``<target>.data`` beside it, so a model over
    2 GB round-trips. Raises ORT's own exceptions for a model it cannot load."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }
    options = session_options()
    options.graph_optimization_level = levels[level]
    options.optimized_model_filepath = str(target)
    if external_data:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", Path(target).name + ".data"
        )
        if external_min_bytes is not None:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(external_min_bytes)
            )
    make_session(source, options=options)


def exceeds_protobuf_limit(proto: onnx.ModelProto) -> bool:
    """Whether the weights alone come near protobuf's 2 GB limit. Summing tensor payloads is ~5x faster than
    ``ByteSize()`` on a large model, and the graph around the weights is small."""
    from onnxkit import modelio

    payload = sum(len(t.raw_data) if t.HasField("raw_data") else t.ByteSize() for t in proto.graph.initializer)
    return payload >= modelio.EXTERNAL_DATA_THRESHOLD


_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_NODE_NAME = re.compile(r"running (\w+) node\. Name:'([^']*)'")
# What ORT says is for its developers: where in its sources the check sits ("/onnxruntime_src/.../op_kernel.cc:87
# virtual OrtValue* onnxruntime::OpKernelContext::OutputMLValue(int, ...)", "tensorprotoutils.cc:619
# ValidateExternalDataPathFromDir") and the failed condition ("input_size == requested_size was false.").
_SOURCE_LOCATION = re.compile(
    r"(?:/?[\w.\-]+/)*[\w\-]+\.(?:cc|cpp|h|hpp):\d+\s+"  # file:line
    r"(?:(?:virtual\s+)?(?:[\w:<>,*&]+\s+)*?[\w:~<>]+\([^()]*\)\s*(?:const\s*)?"  # a C++ signature
    r"|[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\s+)?"  # or a bare function name
)
_FAILED_CONDITION = re.compile(r"[^.:]*\bwas false\.\s*")
_LOAD_FAILED = re.compile(r"^Load model from .*? failed:\s*")  # the caller names the model
_NODE_FAILURE = re.compile(
    r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message:\s*"
)


def error_line(error: BaseException) -> str:
    """One readable line for an exception: its first line, and for ONNX Runtime's errors without the
    ``[ONNXRuntimeError] : 1 : FAIL :`` prefixes, source locations and failed conditions, with the failing
    node up front ("Reshape node 'r': The input tensor cannot be reshaped ...")."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = _LOAD_FAILED.sub("", _ORT_PREFIX.sub("", text.splitlines()[0]))
    line = _SOURCE_LOCATION.sub("", line)
    line = _FAILED_CONDITION.sub("", line)
    line = _NODE_FAILURE.sub(r"\1 node '\2': ", line)
    return line.strip() or type(error).__name__


def failing_node(error: BaseException) -> tuple[str, str] | None:
    """``(op_type, node name)`` of the node an ORT run error names, if it names one."""
    found = _NODE_NAME.search(str(error))
    return (found.group(1), found.group(2)) if found else None
