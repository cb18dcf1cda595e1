"""Pass name → pass class.

Three sources, one mechanism: built-in passes (listed in ``onnxkit.passes.BUILTIN_PASSES`` as
``"module:Class"`` references), third-party passes from the entry-point group ``onnxkit.passes``, and
passes registered at run time with ``register_pass``. References are imported only when a pass is used,
so a plugin that fails to import costs nothing until someone asks for it, and then shows its error
instead of breaking the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from importlib import metadata
from typing import TypeVar

from onnxkit.errors import SpecError
from onnxkit.pass_base import Pass

ENTRY_POINT_GROUP = "onnxkit.passes"

PassT = TypeVar("PassT", bound=type[Pass])


@dataclasses.dataclass
class PassEntry:
    """One registered pass name: where it comes from, and its class or the error that stopped loading it."""

    name: str
    source: str  # "builtin", "runtime", or "plugin:<distribution>"
    reference: str | None = None  # "module:attribute", for lazily loaded passes
    pass_class: type[Pass] | None = None
    error: str | None = None

    def load(self) -> type[Pass]:
        if self.pass_class is not None:
            return self.pass_class
        if self.error is not None:
            raise SpecError(f"pass '{self.name}' failed to load: {self.error}", hint=f"it comes from {self.source}")
        assert self.reference is not None
        module_name, _, attribute = self.reference.partition(":")
        try:
            loaded = getattr(importlib.import_module(module_name), attribute)
            if not (isinstance(loaded, type) and issubclass(loaded, Pass)):
                raise TypeError(f"{self.reference} is not an onnxkit Pass subclass")
        except Exception as e:  # a plugin may fail in any way; keep the error for `onnxkit passes`
            self.error = f"{type(e).__name__}: {e}"
            raise SpecError(
                f"pass '{self.name}' failed to load: {self.error}", hint=f"it comes from {self.source}"
            ) from e
        self.pass_class = loaded
        return loaded


_entries: dict[str, PassEntry] | None = None


def _discover() -> dict[str, PassEntry]:
    global _entries
    if _entries is None:
        from onnxkit.passes import BUILTIN_PASSES

        entries = {name: PassEntry(name, "builtin", reference=ref) for name, ref in BUILTIN_PASSES.items()}
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry_point.name in entries:
                continue  # a plugin never shadows a built-in
            dist = entry_point.dist.name if entry_point.dist else "unknown distribution"
            entries[entry_point.name] = PassEntry(entry_point.name, f"plugin:{dist}", reference=entry_point.value)
        _entries = entries
    return _entries


def refresh() -> None:
    """Forget what was discovered, so newly installed plugins are seen. Runtime registrations are dropped too."""
    global _entries
    _entries = None


def register_pass(pass_class: PassT) -> PassT:
    """Register a ``Pass`` subclass under its ``name``. Usable as a class decorator.

    A runtime registration replaces an earlier one of the same name, so notebooks can re-run a cell.
    """
    if not (isinstance(pass_class, type) and issubclass(pass_class, Pass)):
        raise TypeError("register_pass expects a subclass of onnxkit.Pass")
    name = getattr(pass_class, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{pass_class.__name__} must set a class attribute 'name'")
    _discover()[name] = PassEntry(name, "runtime", pass_class=pass_class)
    return pass_class


def unregister_pass(name: str) -> None:
    """Remove a runtime registration (tests use this to clean up)."""
    entries = _discover()
    if name in entries and entries[name].source == "runtime":
        del entries[name]


def get_pass_class(name: str) -> type[Pass]:
    """The class registered as ``name``; an unknown name raises ``SpecError`` listing close matches."""
    entries = _discover()
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'onnxkit passes' to list them"
        raise SpecError(f"unknown pass '{name}'", hint=hint)
    return entries[name].load()


def list_passes() -> list[PassEntry]:
    """Every registered pass, loaded; plugins that fail to load carry their error instead of a class."""
    entries = sorted(_discover().values(), key=lambda e: (e.source != "builtin", e.name))
    for entry in entries:
        try:
            entry.load()
        except SpecError:
            pass
    return entries
