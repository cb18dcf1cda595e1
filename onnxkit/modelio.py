"""Load and save models without ever losing one.

- Loading checks the file before parsing it, so each way a file can be wrong gets its own message.
- External data must stay inside the model's folder: ``..``, absolute paths and symlinks that escape are
  refused, because a model file is untrusted input and may otherwise read any file on the machine.
- Saving writes into a temporary folder beside the target, then ``os.replace``s each file into place, so
  an interrupted or failed save leaves neither a half-written model nor stray temporaries.
- Models whose tensors would push the protobuf past its 2 GB limit are saved with external data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import mmap
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError, EncodeError

from onnxkit import ir_compat
from onnxkit.errors import ModelLoadError, ModelSaveError

ir_compat.install()  # map-typed values (ZipMap outputs of scikit-learn classifiers) load and save

# Protobuf cannot serialize a message of 2 GiB or more; stay well below it, since the graph itself
# (names, attributes, small tensors) also takes room.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)
# Tensors at least this large go to the external-data file when a model is saved with external data.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"no such file: {path}", hint="check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder, not an ONNX file", hint="pass the path of the .onnx file inside it")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty", hint="the file may have been truncated while it was written")


def _parse_model_proto(path: Path, *, keep_bytes: bool = False) -> tuple[onnx.ModelProto, bytes | None]:
    """The model proto in ``path``, and with ``keep_bytes`` the bytes it was parsed from (None for a text
    format)."""
    try:
        proto, content = _read_proto(path, keep_bytes=keep_bytes)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{path} is not a valid ONNX model ({type(e).__name__})",
            hint="the file may be truncated or in another format",
        ) from e
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise ModelLoadError(
            f"{path} is not an ONNX model: it has no graph or no IR version",
            hint="the file may be truncated or in another format",
        )
    if proto.ir_version > onnx.IR_VERSION:
        # onnx's checker, shape inference and ONNX Runtime all refuse it; say so before any of them is reached.
        raise ModelLoadError(
            f"{path} has IR version {proto.ir_version}; onnx {onnx.__version__} reads up to IR {onnx.IR_VERSION}",
            hint="upgrade onnx and onnxruntime, or export the model with an older IR version",
        )
    return proto, content


def _read_proto(path: Path, *, keep_bytes: bool) -> tuple[onnx.ModelProto, bytes | None]:
    """The model proto in ``path``, parsed from the file mapped into memory: reading it into bytes first, as
    ``onnx.load_model`` does, is one more copy of every weight (0.07 s of a 60 MB model's 0.2 s). A text format
    (by the file's extension, as onnx decides it) is left to onnx."""
    if onnx.serialization.registry.get_format_from_file_extension(path.suffix) not in (None, "protobuf"):
        return onnx.load_model(str(path), load_external_data=False), None
    proto = onnx.ModelProto()
    if keep_bytes:
        content = path.read_bytes()
        proto.ParseFromString(content)
        return proto, content
    with path.open("rb") as file:
        try:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file that cannot be mapped (a pipe, say): read as onnx reads it
            return onnx.load_model(str(path), load_external_data=False), None
        with mapped, memoryview(mapped) as view:  # released before the mapping closes; the proto has its copy
            proto.ParseFromString(view)
    return proto, None


def iter_all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph proto: initializers, Constant values and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from iter_all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_all_tensors(subgraph)


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors marked external: the graph's (subgraphs included) and local functions' Constant values."""
    tensors = list(iter_all_tensors(proto.graph))
    for function in proto.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
    return [tensor for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL]


def check_external_data_locations(
    proto: onnx.ModelProto, base_dir: Path, external: list[onnx.TensorProto] | None = None
) -> None:
    """Refuse external-data locations that resolve outside ``base_dir`` (``..``, absolute, symlinks).
    ``external`` is ``_external_tensors(proto)``, when the caller has it."""
    base = base_dir.resolve()
    sizes: dict[Path, int] = {}  # each data file's size, read once however many tensors it holds
    for tensor in _external_tensors(proto) if external is None else external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None:
            raise ModelLoadError(f"tensor '{tensor.name}' is marked external but names no location")
        if os.path.isabs(location) or Path(location).is_absolute():
            raise ModelLoadError(
                f"tensor '{tensor.name}' has an absolute external-data location '{location}'",
                hint="external data must sit in the model's folder; onnxkit refuses other paths for safety",
            )
        target = (base / location).resolve()
        if target != base and base not in target.parents:
            raise ModelLoadError(
                f"tensor '{tensor.name}' has external data '{location}' outside the model's folder",
                hint="'..' and symlinks that leave the folder are refused for safety",
            )
        if not target.is_file():
            raise ModelLoadError(
                f"external data file '{location}' of tensor '{tensor.name}' is missing",
                hint=f"it should be beside the model, in {base}",
            )
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if "length" in entries:
            end = int(entries.get("offset") or 0) + int(entries["length"])
            if target not in sizes:
                sizes[target] = target.stat().st_size
            size = sizes[target]
            if end > size:
                raise ModelLoadError(
                    f"external data file '{location}' is truncated: it holds {size} bytes, "
                    f"tensor '{tensor.name}' needs bytes up to {end}",
                    hint="the file may have been cut short while it was copied or written",
                )


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model as ``load_source`` read it: the ``ir.Model``, and the file's bytes where they are the whole model
    (no external data, a binary file), which the pipeline takes as its input's serialized form instead of
    serializing the model it has just parsed; ``proto`` is what those bytes parse to (its tensors are the
    model's). Hand it on unedited: the bytes say what the file held."""

    model: ir.Model
    proto: onnx.ModelProto
    content: bytes | None
    # The external data files the model was read from: an output written over one of them would destroy the input.
    data_files: tuple[Path, ...] = ()


def load_model(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX model; its external data (checked to stay in the model's folder) is read in whole below
    protobuf's limit and lazily above it.

    Passes, snapshots and sessions serialize a model and read it back; a tensor still pointing at a data file
    then carries only a relative location, which ONNX Runtime and onnx_ir would look for in the current folder.
    Read in, the model is whole wherever it goes. Past the limit, the weights stay on disk until used, and
    whoever re-reads the serialized model must say where they are (``as_ir_model(..., model_dir=)``).
    """
    return _load(Path(path), keep_bytes=False).model


def load_source(path: str | os.PathLike[str]) -> LoadedModel:
    """``load_model``, keeping the file's bytes (``LoadedModel``): read into memory, then parsed, which costs
    what parsing the mapped file does."""
    return _load(Path(path), keep_bytes=True)


def read_model_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The model proto in ``path`` without its external data, after the checks ``load_model`` makes (the file,
    its format, its IR version, external data kept inside the model's folder)."""
    path = Path(path)
    _check_model_file(path)
    proto, _ = _parse_model_proto(path)
    check_external_data_locations(proto, path.parent)
    return proto


def _load(path: Path, *, keep_bytes: bool) -> LoadedModel:
    _check_model_file(path)
    proto, content = _parse_model_proto(path, keep_bytes=keep_bytes)
    external = _external_tensors(proto)  # one walk over the graph's tensors, for both uses
    check_external_data_locations(proto, path.parent, external)
    data_files = tuple(sorted({(path.parent / _location(tensor)).resolve() for tensor in external}))
    try:
        external_bytes = _external_data_bytes(external, path.parent)
        if external_bytes >= EXTERNAL_DATA_THRESHOLD:
            return LoadedModel(ir.load(path), proto, None, data_files)
        if external_bytes:
            onnx.load_external_data_for_model(proto, str(path.parent))
        # Kept only where a snapshot can be the bytes: whole (no external data) and below the in-memory limit.
        whole = content is not None and not external and len(content) < EXTERNAL_DATA_THRESHOLD
        return LoadedModel(ir.serde.deserialize_model(proto), proto, content if whole else None, data_files)
    except Exception as e:
        raise ModelLoadError(f"{path} could not be read as an ONNX model: {e}") from e


def _location(tensor: onnx.TensorProto) -> str:
    return next(entry.value for entry in tensor.external_data if entry.key == "location")


def _external_data_bytes(external: list[onnx.TensorProto], base_dir: Path) -> int:
    """Bytes of the tensors ``external`` keeps in data files (by their ``length``, else the whole file)."""
    total = 0
    for tensor in external:
        entries = {e.key: e.value for e in tensor.external_data}
        total += int(entries["length"]) if "length" in entries else (base_dir / entries["location"]).stat().st_size
    return total


def as_ir_model(
    model: str | os.PathLike[str] | onnx.ModelProto | ir.Model | bytes,
    *,
    model_dir: str | os.PathLike[str] | None = None,
) -> ir.Model:
    """Accept any way a user holds a model and return an ``ir.Model``. ``model_dir`` is where the external
    data of a model given as a proto or bytes lives (its tensors would otherwise be looked for in the
    current folder)."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, (bytes, bytearray)):
        model = onnx.load_model_from_string(bytes(model))
    if isinstance(model, onnx.ModelProto):
        result = ir.serde.deserialize_model(model)
        if model_dir is not None:
            _set_external_data_folder(result, model_dir)
        return result
    return load_model(model)


def _set_external_data_folder(model: ir.Model, folder: str | os.PathLike[str]) -> None:
    for graph in model.graphs():
        ir.external_data.set_base_dir(graph, folder)


def tensor_bytes(model: ir.Model) -> int:
    """Bytes held by the model's tensors: initializers and Constant/attribute tensors, subgraphs included."""
    return sum(_nbytes(tensor) for tensor in _all_tensors(model))


def _all_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    return _graph_tensors(model.graph)


def _graph_tensors(graph: ir.Graph) -> Iterator[ir.TensorProtocol]:
    """The tensors of ``graph`` and of the bodies inside its nodes, in one walk over the nodes (finding the bodies
    first, then reading the attributes again, costs twice that on a model of thousands of nodes)."""
    for value in graph.initializers.values():
        if value.const_value is not None:
            yield value.const_value
    for node in graph:
        attributes = node.attributes
        # onnx_ir's Attributes is a UserDict: reading its plain dict skips the Mapping machinery per node.
        for attribute in getattr(attributes, "data", attributes).values():
            kind = attribute.type
            if kind == ir.AttributeType.TENSOR:
                yield attribute.value
            elif kind == ir.AttributeType.GRAPH and not attribute.is_ref():
                yield from _graph_tensors(attribute.as_graph())
            elif kind == ir.AttributeType.GRAPHS and not attribute.is_ref():
                for body in attribute.as_graphs():
                    yield from _graph_tensors(body)


# Bytes per element of each ``TensorProto.data_type``, as onnx_ir counts them (0.5 for 4-bit types).
_ITEMSIZE: dict[int, float] = {}


def _nbytes(tensor: ir.TensorProtocol) -> int:
    """``tensor.nbytes``; for a tensor still in its loaded proto, from the proto's dims: onnx_ir's ``nbytes`` builds
    a ``Shape`` and a dtype enum per call, which over a model's Constant tensors costs as much as a small pass."""
    if type(tensor) is not ir.serde.TensorProtoTensor:
        return tensor.nbytes
    proto = tensor.raw
    itemsize = _ITEMSIZE.get(proto.data_type)
    if itemsize is None:
        itemsize = _ITEMSIZE[proto.data_type] = ir.DataType(proto.data_type).itemsize
    return math.ceil(itemsize * math.prod(proto.dims))


@dataclasses.dataclass(frozen=True)
class TensorLayout:
    """Where a model's tensors are: bytes held in memory, bytes still in external data files (loaded lazily,
    serialized as references), and the folder those files are read from (the model file's; None if none)."""

    in_memory_bytes: int
    external_bytes: int
    folder: Path | None

    @property
    def needs_external_data(self) -> bool:
        """Whether serializing the model would come near protobuf's limit (references to files do not count)."""
        return self.in_memory_bytes >= EXTERNAL_DATA_THRESHOLD


def tensor_layout(model: ir.Model) -> TensorLayout:
    """The model's ``TensorLayout``, in one walk over its tensors (a walk reads every node's attributes, which
    on a model of thousands of nodes costs as much as a small pass: callers that need several of these facts
    ask once)."""
    in_memory = external = 0
    folder = None
    for tensor in _all_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            external += tensor.nbytes
            # A model parsed from bytes has no folder: its tensors' base_dir is empty.
            if folder is None and tensor.base_dir:
                folder = Path(tensor.base_dir)
        else:
            in_memory += _nbytes(tensor)
    return TensorLayout(in_memory, external, folder)


def external_tensor_bytes(model: ir.Model) -> int:
    """Bytes of the model's tensors still in external data files (loaded lazily, serialized as references)."""
    return tensor_layout(model).external_bytes


def external_data_folder(model: ir.Model) -> Path | None:
    """The folder the model's external data is read from (the model file's folder), or None if it has none."""
    return tensor_layout(model).folder


def needs_external_data(model: ir.Model) -> bool:
    """Whether serializing the model would come near protobuf's limit: tensors still in external data files
    are serialized as references and do not count."""
    return tensor_layout(model).needs_external_data


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    serialized: Sequence[bytes] | None = None,
) -> Path:
    """Save atomically; with external data, the data file is ``<name>.data`` beside it (``<name>.<random>.data``
    when that name is taken: replacing the data a model in place points at would leave a mismatched pair if
    the process died before the model file was replaced too). Once the new model is in place, the other data
    files named after it (the replaced model's, a killed save's) are removed.

    ``external_data=None`` keeps the model's layout: a model loaded with external data is saved with it (the
    output may be in another folder, so its data must be written anew), other models only past protobuf's
    limit. ``external_data=False`` writes every tensor into the model file.

    ``serialized`` is ``model`` already serialized, whole, in parts written one after the other (the
    pipeline's last snapshot, then its provenance): a model saved without external data is then written from
    them instead of being serialized once more.

    Everything is written into a temporary folder inside the target folder first, then moved into place
    with ``os.replace`` (atomic on one filesystem). On any failure the temporaries are removed and the
    target, if it existed, is untouched.
    """
    path = Path(path)
    folder = check_writable_path(path)
    layout = tensor_layout(model)
    if layout.external_bytes and path.resolve() in _files_read(model):
        raise ModelSaveError(
            f"refusing to write {path}: the model's weights are read from it", hint="give another output path"
        )
    data_folder = layout.folder
    # A text format chosen by the extension (.onnxtxt, .json, .textproto), as onnx.load reads it back; such a file
    # holds every tensor itself.
    text_format = onnx.serialization.registry.get_format_from_file_extension(path.suffix)
    if text_format == "protobuf":
        text_format = None
    if text_format is not None and (external_data or layout.needs_external_data):
        raise ModelSaveError(
            f"cannot write {path}: a {text_format} file cannot hold a model with external data",
            hint="give a .onnx path",
        )
    if external_data is None:
        external_data = text_format is None and (data_folder is not None or layout.needs_external_data)
    data_name = _free_data_name(folder, path.name)
    # Which data files the replaced model reads matters only where files named after it are there to remove;
    # reading it costs a parse of the whole file.
    data_files_there = any(folder.glob(f"{glob.escape(path.name)}.*data"))
    replaced_data = _referenced_data(path) if data_files_there and path.is_file() else set()
    _remove_abandoned_staging(folder, path.name)
    try:
        # The pid in the name lets a later save tell a killed save's leftovers from a running save's files.
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise ModelSaveError(
            f"cannot write into {folder}: {e.strerror or e}", hint="check the folder's permissions"
        ) from e
    try:
        staged_model = staging / path.name
        if external_data:
            ir.save(model, staged_model, external_data=data_name, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES)
        elif data_folder is not None or text_format is not None:
            # ir.save would keep the references to data files that are not beside the output; read them in.
            proto = to_proto(model)
            if data_folder is not None:
                onnx.load_external_data_for_model(proto, str(data_folder))
            onnx.save_model(proto, staged_model, format=text_format or "protobuf")
        elif serialized is not None:
            _write_parts(staged_model, serialized)
        else:
            ir.save(model, staged_model)
        with _interrupts_deferred():  # Ctrl-C between the two moves would leave the new data without its model
            # Data first: a model file in place must never point at data that is not there yet.
            if (staging / data_name).exists():
                os.replace(staging / data_name, folder / data_name)
            os.replace(staged_model, path)
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}", hint="check free space and permissions") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _remove_stale_data(folder, path.name, data_name if external_data else "", replaced_data, model)
    return path


def check_writable_path(path: Path) -> Path:
    """The folder ``path`` would be written into; ``ModelSaveError`` when it is a folder itself, or its folder is
    missing or a file."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ModelSaveError(f"cannot write {path}: it is a folder", hint="give a file name, e.g. ending in .onnx")
    if folder.exists() and not folder.is_dir():
        raise ModelSaveError(f"cannot write {path}: {folder} is a file, not a folder", hint="give another path")
    if not folder.is_dir():
        raise ModelSaveError(
            f"cannot write {path}: folder {folder} does not exist",
            hint="create the folder first, or give another path",
        )
    return folder


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it and ``os.replace``: a report is whole or
    absent, and an earlier one stays until the new one is complete."""
    path = Path(path)
    folder = check_writable_path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}", hint="check the folder's permissions") from e
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except OSError as e:
        raise ModelSaveError(f"cannot write {path}: {e.strerror or e}", hint="check free space and permissions") from e
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise it: the block's file moves are all made or,
    by the caller's cleanup, none. Only the main thread can set a signal handler; elsewhere nothing is held."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:  # None: set outside Python
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(received[0], None)  # Python's default handler raises KeyboardInterrupt here
    elif received and previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def _write_parts(path: Path, parts: Sequence[bytes]) -> None:
    with path.open("wb") as file:
        file.writelines(parts)


def _remove_abandoned_staging(folder: Path, model_name: str) -> None:
    """Remove the staging folders of saves to the same file whose process is gone (killed mid-save)."""
    for staging in folder.glob(f".{glob.escape(model_name)}.*.tmp"):
        pid = staging.name[len(model_name) + 2 :].split(".")[0]
        if pid.isdigit() and staging.is_dir() and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _free_data_name(folder: Path, model_name: str) -> str:
    name = model_name + ".data"
    while (folder / name).exists():
        name = f"{model_name}.{secrets.token_hex(4)}.data"
    return name


def _referenced_data(path: Path) -> set[Path]:
    """The data files the model at ``path`` points at (none when it cannot be read: not ours to judge)."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # a foreign or broken file at the destination: it is replaced, its data left alone
        return set()
    return {
        (path.parent / entry.value).resolve()
        for tensor in iter_all_tensors(proto.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _remove_stale_data(folder: Path, model_name: str, kept: str, replaced: set[Path], model: ir.Model) -> None:
    """Remove the data files named after the model (``<name>.data``, ``<name>.<hex>.data``) other than the one
    it was just saved with, if they held the data of the model the save replaced, or are a killed save's
    (``<hex>``: only onnxkit writes those names). A file another model may read stays: a ``<name>.data`` the
    replaced model did not use (the input's, say), and any the saved model still reads (loaded lazily)."""
    still_read: set[Path] | None = None  # walked for only when there are data files to weigh
    for file in folder.glob(f"{glob.escape(model_name)}.*data"):
        found = _DATA_NAME.fullmatch(file.name[len(model_name) :])
        if file.name == kept or found is None:
            continue
        if still_read is None:
            still_read = _files_read(model)
        if file.resolve() in still_read:
            continue
        if found.group(1) or file.resolve() in replaced:
            file.unlink(missing_ok=True)


def _files_read(model: ir.Model) -> set[Path]:
    """The data files the model's tensors still read (loaded lazily)."""
    return {Path(t.path).resolve() for t in _all_tensors(model) if isinstance(t, ir.ExternalTensor)}


_DATA_NAME = re.compile(r"\.([0-9a-f]{8}\.)?data")


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (following symlinks); false when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def proto_bytes(proto: onnx.ModelProto) -> int:
    """The serialized size of a model proto; past protobuf's 2 GB limit, where ``ByteSize()`` raises, the bytes
    of its tensors (the graph around them is small)."""
    try:
        return proto.ByteSize()
    except EncodeError:
        return sum(len(t.raw_data) if t.HasField("raw_data") else t.ByteSize() for t in iter_all_tensors(proto.graph))


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """The model as a protobuf: tensors in memory carry their data, tensors still in external data files
    (``ir.ExternalTensor``) are references to them, never read."""
    return ir.serde.serialize_model(model)


def clone_model(model: ir.Model) -> ir.Model:
    """An independent deep copy (used to snapshot a model before a pass, for rollback and parity); tensors
    still in external data files keep pointing at them."""
    return as_ir_model(ir.serde.serialize_model(model), model_dir=external_data_folder(model))
