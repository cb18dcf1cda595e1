"""The layer rules of ARCHITECTURE.md, checked on the source: what `passes/` may import from onnxkit, and that
only onnxkit.pytorch imports torch: onnxkit's core never pulls it in when it is imported."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The shared layer: what every pass builds on, and what sits under the pipeline, the CLI and bench alike.
# Each of these imports only the others (tests below), so a pass reaching into it can never reach above it.
SHARED_LAYER = {
    "pass_base": "what a pass is: name, kind, options, context, result",
    "graph": "the one walk over every graph, histograms, fingerprints",
    "runtime": "the one ONNX Runtime session factory",
    "modelio": "load and save: external data, path safety, atomic writes",
    "data": "datasets, synthetic inputs, probing, the held-out split",
    "errors": "the OnnxkitError tree",
    "parity": "comparing two models in ONNX Runtime, tolerances; lossy passes judge their candidates with it",
    "external_tools": "the one runner of each external tool (onnxsim, onnxslim, onnxoptimizer, ORT's quantizer)",
}
# Leaf modules the shared layer uses inside itself, importing nothing of onnxkit; passes do not need them.
SHARED_INTERNALS = {"ir_compat": "modelio's adapter teaching onnx-ir the ONNX map types"}
# The export pass lives in onnxkit.pytorch (the torch boundary), with the exporter it wraps. Like a pass in
# passes/, these modules may import only the shared layer and each other, never pipeline, cli, report or bench.
EXPORT_PASS_MODULES = {"pytorch.export_pass", "pytorch.export", "pytorch.exporters", "pytorch.export_inputs"}

# Everything that needs torch lives in this package; the rest of onnxkit must import without it.
TORCH_PACKAGE = "onnxkit.pytorch"
# Besides the package, the one module that may import torch, and why.
TORCH_OUTSIDE_PACKAGE = {
    "onnxkit/data/python.py": "TorchDataset reads a torch dataset it is handed, importing torch.utils.data only then"
}


def _onnxkit_imports(tree: ast.AST, package: str | None = None) -> list[tuple[int, str]]:
    """(line, first component under onnxkit) for every import of an onnxkit module, at any depth; under
    onnxkit.pytorch, whose modules the rules tell apart, the first two ("pytorch.export"). Relative imports
    are resolved against ``package`` (the dotted package the source lives in) when it is given."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.level == 0 or package):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if base in ("onnxkit", TORCH_PACKAGE) or node.module is None:  # from onnxkit import parity; from . import x
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                names = [base]
        else:
            continue
        found += [(node.lineno, _layer_name(name)) for name in names if name.startswith("onnxkit.")]
    return found


def _layer_name(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[1:3]) if f"{parts[0]}.{parts[1]}" == TORCH_PACKAGE and len(parts) > 2 else parts[1]


def _sources_of(names: set[str]) -> list[Path]:
    """The source files of the onnxkit modules and packages named."""
    sources = []
    for name in sorted(names):
        package = REPO / "onnxkit" / Path(*name.split("."))
        sources += sorted(package.rglob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
    return sources


def _import_violations(sources: list[Path], allowed: set[str]) -> list[str]:
    violations = []
    for source in sources:
        relative = source.relative_to(REPO)
        # passes/ is installed as onnxkit.passes: its relative imports resolve there
        parts = ("onnxkit", *relative.parts[:-1]) if relative.parts[0] == "passes" else relative.parts[:-1]
        tree = ast.parse(source.read_text(), filename=str(source))
        for line, module in _onnxkit_imports(tree, ".".join(parts)):
            if module not in allowed:
                violations.append(f"{relative}:{line} imports onnxkit.{module}")
    return violations


def test_passes_import_only_the_shared_layer():
    sources = sorted((REPO / "passes").rglob("*.py"))
    assert len(sources) > 20, "passes/ not found where expected"
    violations = _import_violations(sources, set(SHARED_LAYER) | {"passes"})
    assert not violations, (
        "passes/ may import only onnxkit's shared layer ("
        + ", ".join(sorted(SHARED_LAYER))
        + "); move what the pass needs down into the shared layer:\n  "
        + "\n  ".join(violations)
    )


def test_the_shared_layer_builds_only_on_itself():
    """Were parity (or data, or runtime) to import the pipeline, a pass could reach the pipeline through it."""
    sources = _sources_of(set(SHARED_LAYER))
    assert len(sources) > 15 and REPO / "onnxkit" / "parity" / "chain.py" in sources
    violations = _import_violations(sources, set(SHARED_LAYER) | set(SHARED_INTERNALS))
    violations += _import_violations(_sources_of(set(SHARED_INTERNALS)), set())
    assert not violations, (
        "the shared layer (" + ", ".join(sorted(SHARED_LAYER)) + ") may import only itself"
        " and " + ", ".join(sorted(SHARED_INTERNALS)) + ":\n  " + "\n  ".join(violations)
    )


def test_the_export_pass_builds_only_on_the_shared_layer():
    """The export pass and the exporter it wraps are held to the passes' rule: the shared layer and their own
    modules, nothing above the passes."""
    from onnxkit.passes import BUILTIN_PASSES

    assert BUILTIN_PASSES["export"].startswith("onnxkit.pytorch.export_pass:")
    violations = _import_violations(_sources_of(EXPORT_PASS_MODULES), set(SHARED_LAYER) | EXPORT_PASS_MODULES)
    # Loading the export pass runs the package's __init__ first: it must not load train, zoo or demo.
    package_init = ast.parse((REPO / "onnxkit" / "pytorch" / "__init__.py").read_text())
    violations += [
        f"onnxkit/pytorch/__init__.py:{node.lineno} imports"
        for node in ast.walk(package_init)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert not violations, (
        "the export pass and its exporter must build only on the shared layer ("
        + ", ".join(sorted(SHARED_LAYER))
        + "):\n  "
        + "\n  ".join(violations)
    )


def test_the_import_check_sees_every_form_of_import():
    tree = ast.parse(
        "import onnxkit.pipeline\nfrom onnxkit import cli, graph\nfrom onnxkit.report import x\n"
        "def f():\n    from onnxkit.bench import y\nfrom . import sibling\nimport onnx\n"
    )
    assert [module for _, module in _onnxkit_imports(tree)] == ["pipeline", "cli", "graph", "report", "bench"]
    relative = ast.parse("from . import runs\nfrom ..pipeline import Pipeline\nfrom .chain import x\n")
    assert [module for _, module in _onnxkit_imports(relative, "onnxkit.parity")] == ["parity", "pipeline", "parity"]
    torch_side = ast.parse(
        "from onnxkit.pytorch import export\nimport onnxkit.pytorch.zoo\nimport onnxkit.pytorch\n"
        "from .train_setup import x\n"
    )
    assert [module for _, module in _onnxkit_imports(torch_side, TORCH_PACKAGE)] == [
        "pytorch.export",
        "pytorch.zoo",
        "pytorch",
        "pytorch.train_setup",
    ]


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
        if name and not name.startswith(TORCH_PACKAGE + "."):
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
    completed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=False, cwd=REPO)
    assert completed.returncode == 0, (
        f"onnxkit's core must import without torch (torch belongs to {TORCH_PACKAGE}, imported only when used): "
        + (completed.stderr.strip().splitlines() or ["?"])[-1]
    )


def test_only_onnxkit_pytorch_imports_torch():
    """Statically, at any depth (a lazy import inside a function counts): torch code goes in onnxkit/pytorch/."""
    torch_package = REPO / Path(*TORCH_PACKAGE.split("."))
    assert (torch_package / "train.py").is_file()
    found = []
    for source in sorted((REPO / "onnxkit").rglob("*.py")):
        relative = source.relative_to(REPO).as_posix()
        if source.is_relative_to(torch_package) or relative.startswith("onnxkit/passes/"):
            continue  # passes/ is checked by its own rule: it imports only the shared layer
        for node in ast.walk(ast.parse(source.read_text(), filename=relative)):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(name == "torch" or name.startswith("torch.") for name in names):
                found.append(relative)
    outside = sorted(set(found) - set(TORCH_OUTSIDE_PACKAGE))
    assert not outside, f"torch imported outside {TORCH_PACKAGE}: {outside}; move that code into onnxkit/pytorch/"
    assert set(TORCH_OUTSIDE_PACKAGE) <= set(found), "a named exception that no longer imports torch: drop it"


def test_the_public_api_is_exactly_what_all_names():
    import onnxkit

    lazy = set(onnxkit._LAZY)
    exported = set(onnxkit.__all__) - {"__version__"}
    assert lazy <= exported, f"imported lazily but not in __all__: {sorted(lazy - exported)}"
    errors = {name for name in exported - lazy if name.endswith("Error")}
    assert exported == lazy | errors, f"in __all__ with no source: {sorted(exported - lazy - errors)}"
    for name in sorted(exported - {"Trainer", "TrainConfig", "export_model"}):  # the rest needs no torch
        assert getattr(onnxkit, name) is not None
