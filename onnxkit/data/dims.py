"""The dynamic dims of a model's inputs: keys, roles and sizes.

A dynamic dim gets a role (batch, sequence, spatial, other) from its name and its place; dims that share a
name share one size (``dim_key``); an unnamed dim (paddle2onnx's -1, which ``InputSpec`` reads as unknown) or
a ``?`` is a dynamic dim of its own. ``bind_shape`` gives each one a size: the user's ``--dim`` first, then
sizes the graph pins or a probe chose, then the role's default (``DIM_DEFAULTS``, the first rung of
``onnxkit.data.probe``'s ladders).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from onnxkit.data.specs import InputSpec, dim_name
from onnxkit.errors import DataError

_BATCH_NAMES = {"batch", "batch_size", "batchsize", "nbatch", "bs"}
_SHORT_BATCH_NAMES = {"n", "b"}  # a batch only on axis 0: elsewhere "N" is as likely a length
_SEQUENCE_NAMES = {
    "s",
    "t",
    "l",
    "seq",
    "seq_len",
    "seqlen",
    "sequence",
    "sequence_length",
    "length",
    "len",
    "time",
    "tokens",
    "num_tokens",
    "past_sequence_length",
    "total_sequence_length",
}
_SPATIAL_NAMES = {"h", "w", "height", "width"}
# Names an exporter makes up for a dim it knows nothing about (tf2onnx's unk__772, paddle2onnx's
# p2o.DynamicDimension.0) say no more than no name: their role comes from the dim's place, as an unnamed one's.
_PLACEHOLDER_NAMES = re.compile(r"unk__\d+|(p2o\.)?dynamicdimension\.\d+")
# The first rung of each role's ladder (onnxkit.data.probe.SIZE_LADDERS).
DIM_DEFAULTS = {"batch": 1, "sequence": 16, "spatial": 32, "other": 8}
# ``--dim batch=4,seq=128`` binds every dim of that role, whatever the model calls it.
_ROLE_KEYS = {"batch": ("batch",), "sequence": ("seq", "sequence")}
_IMAGE_CHANNELS = 4  # an image input's static channel axis holds at most this many (gray, RGB, RGBA)


def is_dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int)


def dim_key(spec: InputSpec, axis: int) -> str:
    """What identifies a dynamic dim: its name (shared between inputs), else ``input[axis]``."""
    assert spec.shape is not None
    return dim_name(spec.shape[axis]) or f"{spec.name}[{axis}]"


def dim_role(spec: InputSpec, axis: int) -> str:
    assert spec.shape is not None
    shape, name = spec.shape, (dim_name(spec.shape[axis]) or "").lower()
    if _PLACEHOLDER_NAMES.fullmatch(name):
        name = ""
    if name in _BATCH_NAMES or "batch" in name or (axis == 0 and name in _SHORT_BATCH_NAMES):
        return "batch"
    if name in _SEQUENCE_NAMES or "seq" in name:
        return "sequence"
    if name in _SPATIAL_NAMES or _is_image_axis(shape, axis):
        return "spatial"
    # Axis 0 of an unnamed dim, or of an input of rank 3 and more whatever the exporter called it, is the batch.
    return "batch" if axis == 0 and (not name or len(shape) >= 3) else "other"


def _is_image_axis(shape: Sequence[int | str | None], axis: int) -> bool:
    """A height or width of an NCHW or NHWC image: rank 4 with a small static channel axis."""
    if len(shape) != 4:
        return False
    for channel_axis, spatial_axes in ((1, (2, 3)), (3, (1, 2))):
        channels = shape[channel_axis]
        if axis in spatial_axes and isinstance(channels, int) and 0 < channels <= _IMAGE_CHANNELS:
            return True
    return False


def dynamic_dims(specs: Sequence[InputSpec]) -> dict[str, str]:
    """Every dynamic dim of the inputs, ``{key: role}``, in input order; a shared name takes its first role."""
    roles: dict[str, str] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape or ()):
            if is_dynamic(dim):
                roles.setdefault(dim_key(spec, axis), dim_role(spec, axis))
    return roles


def user_size(key: str, role: str, dims: Mapping[str, int]) -> int | None:
    """The size ``--dim`` gives a dim, by its own name or by its role, or None."""
    if key in dims:
        return int(dims[key])
    return next((int(dims[name]) for name in _ROLE_KEYS.get(role, ()) if name in dims), None)


def bind_shape(spec: InputSpec, dims: Mapping[str, int], sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
    """A concrete shape for ``spec``. A dynamic dim takes its size from ``dims`` by its own name or by its
    role (``batch`` binds every batch-like dim, ``seq`` every sequence-like one), else from ``sizes`` by its
    key, else a default by role: batch 1, sequence 16, height/width 32, anything else 8."""
    if spec.shape is None:
        raise DataError(
            f"input '{spec.name}' has no declared shape, so synthetic data cannot be made for it",
            hint="give real inputs with --data",
        )
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        key, role = dim_key(spec, axis), dim_role(spec, axis)
        size = user_size(key, role, dims)
        if size is None:
            size = (sizes or {}).get(key, DIM_DEFAULTS[role])
        shape.append(size)
    return tuple(shape)
