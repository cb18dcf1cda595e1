"""The pass registry: built-ins, runtime registration, and entry-point plugins that may be broken."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onnxkit import Pass, PassResult, SpecError, get_pass_class, list_passes, register_pass, registry, unregister_pass


def _install_fake_plugins(site: Path) -> None:
    """A distribution with two passes on the entry-point group: one that works and one that fails to import."""
    (site / "good_plugin.py").write_text(
        textwrap.dedent('''
        import onnxkit

        class TagPass(onnxkit.Pass):
            """Tag the model with a metadata entry."""
            name = "tag"
            def call(self, model):
                changed = model.metadata_props.get("tagged") != "yes"
                model.metadata_props["tagged"] = "yes"
                return onnxkit.PassResult(model, changed, ["tagged"] if changed else [])
    ''')
    )
    (site / "broken_plugin.py").write_text("import a_module_that_does_not_exist\n")
    dist = site / "fake_onnxkit_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-onnxkit-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[onnxkit.passes]\ntag = good_plugin:TagPass\nbroken = broken_plugin:BrokenPass\ncleanup = good_plugin:TagPass\n"
    )


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    _install_fake_plugins(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield tmp_path
    registry.refresh()


def test_builtins_are_listed_and_load():
    names = {entry.name: entry for entry in list_passes()}
    assert {"cleanup", "shape-inference"} <= set(names)
    assert get_pass_class("cleanup").name == "cleanup"
    assert names["cleanup"].source == "builtin"


def test_runtime_registration_and_removal():
    class NothingPass(Pass):
        """Does nothing."""

        name = "nothing-at-all"

        def call(self, model):
            return PassResult(model, False)

    register_pass(NothingPass)
    try:
        assert get_pass_class("nothing-at-all") is NothingPass
    finally:
        unregister_pass("nothing-at-all")
    with pytest.raises(SpecError):
        get_pass_class("nothing-at-all")


def test_register_pass_rejects_non_passes():
    with pytest.raises(TypeError):
        register_pass(object)  # the wrong type is what this test passes


def test_plugins_load_lazily_and_broken_ones_keep_their_error(plugin_site):
    import sys as _sys

    assert "good_plugin" not in _sys.modules  # discovery imports nothing
    assert get_pass_class("tag").__name__ == "TagPass"
    entries = {entry.name: entry for entry in list_passes()}
    assert entries["tag"].source == "plugin:fake-onnxkit-plugins"
    assert entries["broken"].pass_class is None
    assert "ModuleNotFoundError" in entries["broken"].error
    # A plugin never shadows a built-in of the same name.
    assert entries["cleanup"].source == "builtin"
    with pytest.raises(SpecError, match="pass 'broken' failed to load"):
        get_pass_class("broken")


def test_cli_lists_broken_plugin_and_keeps_working(plugin_site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    listing = subprocess.run(
        [sys.executable, "-m", "onnxkit", "passes"], capture_output=True, text=True, check=False, env=env
    )
    assert listing.returncode == 0, listing.stderr
    assert "broken  [failed to load, plugin:fake-onnxkit-plugins]" in listing.stdout
    assert "No module named 'a_module_that_does_not_exist'" in listing.stdout
    assert "tag  (exact)  [plugin:fake-onnxkit-plugins]" in listing.stdout
    # The working plugin runs from the CLI, next to the broken one.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxkit",
            "optimize",
            "--example",
            "mlp",
            "--passes",
            "cleanup,tag",
            "-o",
            str(tmp_path / "tagged.onnx"),
            "--check",
            "off",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    import onnx

    metadata = {p.key: p.value for p in onnx.load(tmp_path / "tagged.onnx").metadata_props}
    assert metadata["tagged"] == "yes"
    assert metadata["onnxkit.spec"] == "cleanup,tag"
