"""User-facing errors.

An ``OnnxkitError`` is something the user can fix: a missing file, a bad spec, data that does not fit the
model. The CLI prints it as one ``error: ...`` line plus a ``Note:`` hint, without a traceback, and exits 2.
Anything else that escapes is a bug in onnxkit and keeps its traceback.
"""

from __future__ import annotations


class OnnxkitError(Exception):
    """Base class of every error a user can act on."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelLoadError(OnnxkitError):
    """The model file is missing, unreadable, not ONNX, or unsafe (external data outside its folder)."""


class ModelSaveError(OnnxkitError):
    """The output could not be written; nothing was left behind."""


class SpecError(OnnxkitError):
    """A pipeline spec is malformed, names an unknown pass, or gives a bad option."""


class DataError(OnnxkitError):
    """Input data does not fit the model: wrong names, dtypes, ranks, shapes, or non-finite values."""


class PassFailedError(OnnxkitError):
    """A pass raised, or left a model that fails verification. Names the pass."""

    exit_code = 1


class ParityError(OnnxkitError):
    """A model's outputs drifted beyond tolerance."""

    exit_code = 1


class ExportError(OnnxkitError):
    """A PyTorch model could not be exported to ONNX."""
