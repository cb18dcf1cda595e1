"""README.md's examples are run as written: every Python block, and every `$ onnxkit ...` console line."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxkit import registry
from onnxkit.examples import build_example

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _console_blocks() -> list[list[tuple[str, str]]]:
    """Each console block as (command, expected output) pairs: a `$ ` line, and the lines up to the next one."""
    blocks = []
    for block in _blocks("console"):
        lines = block.splitlines()
        examples = []
        for i, line in enumerate(lines):
            if line.startswith("$ "):
                expected = []
                for following in lines[i + 1 :]:
                    if following.startswith("$ "):
                        break
                    expected.append(following)
                examples.append((line[2:].split("  #")[0].strip(), "\n".join(expected)))
        blocks.append(examples)
    return blocks


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda b: b.splitlines()[0][:40])
def test_python_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Run as a real module, as a user's script would be: dataclasses look their module up in sys.modules.
    module = types.ModuleType("readme_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        exec(compile(block, "README.md", "exec"), module.__dict__)
    finally:
        registry.refresh()


@pytest.mark.parametrize("commands", _console_blocks(), ids=lambda b: b[0][0][:50])
def test_console_examples_run(commands, tmp_path):
    """A block's commands run in order in one folder, as a user would type them."""
    onnx.save(build_example("mlp"), tmp_path / "model.onnx")
    samples = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=samples)
    for command, expected in commands:
        argv = shlex.split(command)
        assert argv[0] == "onnxkit"
        result = subprocess.run(
            [sys.executable, "-m", "onnxkit", *argv[1:]], capture_output=True, text=True, check=False, cwd=tmp_path
        )
        if expected:
            assert (result.stdout + result.stderr).strip() == expected.strip(), command
        else:
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
