"""The layer rules of ARCHITECTURE.md, checked on the source: what `passes/` may import from onnxkit, and that
onnxkit's core never pulls in torch when it is imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What a pass may build on. Everything else in onnxkit (pipeline, cli, bench, report, …) sits above the passes.
PASS_LAYER = {"pass_base", "graph", "runtime", "modelio", "data", "errors", "passes"}
# Reaches above that layer that ARCHITECTURE.md names, each with its reason.
PASS_EXCEPTIONS = {
    "parity": "a lossy pass (quantize, precision) judges its own candidates against its parity target",
    "export": "the export pass wraps the torch exporter, imported lazily inside the pass",
}
# The modules those two exceptions are made of. They sit beside the pass layer, not above it: each may import
# only the pass layer and the others of this set, never pipeline, cli, report or bench (checked below).
EXCEPTION_MODULES = {"parity", "parity_chain", "parity_runs", "parity_report", "tolerance",
                     "export", "export_inputs"}

# The modules that need torch; everything else in onnxkit must import without it.
TORCH_MODULES = {"onnxkit.export", "onnxkit.export_inputs", "onnxkit.train", "onnxkit.train_setup",
                 "onnxkit.train_batches", "onnxkit.zoo", "onnxkit.demo"}


def _onnxkit_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, first component under onnxkit) for every import of an onnxkit module, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "onnxkit":  # from onnxkit import parity, runtime
                names = [f"onnxkit.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[1]) for name in names
                  if name.startswith("onnxkit.") and name.count(".") >= 1]
    return found


def test_passes_import_only_the_layer_below_them():
    sources = sorted((REPO / "passes").rglob("*.py"))
    assert len(sources) > 20, "passes/ not found where expected"
    violations = []
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        for line, module in _onnxkit_imports(tree):
            if module not in PASS_LAYER and module not in PASS_EXCEPTIONS:
                violations.append(f"{source.relative_to(REPO)}:{line} imports onnxkit.{module}")
    assert not violations, (
        "passes/ may import only onnxkit's " + ", ".join(sorted(PASS_LAYER - {"passes"}))
        + " (and " + ", ".join(f"{name}: {why}" for name, why in PASS_EXCEPTIONS.items()) + "); "
        "move what the pass needs down into one of those modules:\n  " + "\n  ".join(violations))


def test_the_named_exceptions_build_only_on_the_pass_layer():
    """A pass may use parity and export because they are services below the pipeline: what they import is the
    pass layer and each other. Were parity to import the pipeline, the exception would let passes reach it."""
    assert set(PASS_EXCEPTIONS) <= EXCEPTION_MODULES
    violations = []
    for name in sorted(EXCEPTION_MODULES):
        source = REPO / "onnxkit" / f"{name}.py"
        tree = ast.parse(source.read_text(), filename=str(source))
        for line, module in _onnxkit_imports(tree):
            if module not in PASS_LAYER | EXCEPTION_MODULES:
                violations.append(f"onnxkit/{name}.py:{line} imports onnxkit.{module}")
    assert not violations, ("the modules passes may reach through a named exception must build only on "
                            + ", ".join(sorted(PASS_LAYER - {"passes"})) + ":\n  " + "\n  ".join(violations))


def test_the_import_check_sees_every_form_of_import():
    tree = ast.parse("import onnxkit.pipeline\nfrom onnxkit import cli, graph\nfrom onnxkit.report import x\n"
                     "def f():\n    from onnxkit.bench import y\nfrom . import sibling\nimport onnx\n")
    assert [module for _, module in _onnxkit_imports(tree)] == ["pipeline", "cli", "graph", "report", "bench"]


def _core_modules() -> list[str]:
    package = REPO / "onnxkit"
    modules = []
    for source in sorted(package.rglob("*.py")):
        relative = source.relative_to(package)
        if relative.parts[0] == "passes":  # a link to passes/: those are covered through onnxkit.passes below
            continue
        parts = ["onnxkit", *relative.with_suffix("").parts]
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1] if parts[-1] == "__init__" else []
        name = ".".join(parts)
        if name and name not in TORCH_MODULES:
            modules.append(name)
    return modules


def test_onnxkit_core_imports_without_torch():
    modules = _core_modules() + ["onnxkit.passes", "onnxkit.registry"]
    assert "onnxkit.pipeline" in modules and "onnxkit.cli" in modules
    # A fresh interpreter: in this one, other tests may have imported torch already.
    program = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported torch')\n"
        "from onnxkit import registry\n"
        "for entry in registry.list_passes():\n"
        "    name = entry.name\n"
        "    registry.get_pass_class(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'loading the pass {name!r} imported torch')\n"
    )
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False,
                               cwd=REPO)
    assert completed.returncode == 0, (
        "onnxkit's core must import without torch (torch belongs to "
        + ", ".join(sorted(TORCH_MODULES)) + ", imported only when used): "
        + (completed.stderr.strip().splitlines() or ["?"])[-1])


def test_the_public_api_is_exactly_what_all_names():
    import onnxkit

    lazy = set(onnxkit._LAZY)
    exported = set(onnxkit.__all__) - {"__version__"}
    assert lazy <= exported, f"imported lazily but not in __all__: {sorted(lazy - exported)}"
    errors = {name for name in exported - lazy if name.endswith("Error")}
    assert exported == lazy | errors, f"in __all__ with no source: {sorted(exported - lazy - errors)}"
    for name in sorted(exported - {"Trainer", "TrainConfig", "export_model"}):  # the rest needs no torch
        assert getattr(onnxkit, name) is not None
