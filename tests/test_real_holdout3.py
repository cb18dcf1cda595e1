"""The third unseen set (``holdout.tsv``'s rows of group ``holdout3``), fetched from PyPI: every model goes
through ``onnxkit optimize --passes simplify,fuse`` from another folder with exact parity, on inputs onnxkit
finds itself, and ends at or below the node count of the best standard peer (onnxsim, onnxslim).

Slow: the twelve models are about 110 MB of wheels to fetch once, and a run of fastmrz_seg takes seconds
(ONNX Runtime's ConvTranspose). What these models exposed is also tested inline: a batch that must be a
multiple of 4 (``test_probe``), tf2onnx's Gather and Max of shapes and a Concat read by two Concats
(``passes/test_simplify_rules``).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxsim
import onnxslim
import pytest

from benchmarks.real import fetch
from benchmarks.real.corpus import cache_dir, load_manifest
from tests.test_real_corpus import assert_exact, optimize_from_elsewhere

HOLDOUT3 = tuple(m.name for m in load_manifest(corpus="holdout") if m.group == "holdout3")


@pytest.fixture(scope="module")
def holdout3_models() -> dict[str, Path]:
    models = load_manifest(only=list(HOLDOUT3), corpus="holdout")
    assert fetch.fetch(models) == []
    return {m.name: m.path(cache_dir()) for m in models}


def best_peer_nodes(path: Path) -> int:
    model = onnx.load(str(path))
    simplified, _ = onnxsim.simplify(model)
    return min(len(simplified.graph.node), len(onnxslim.slim(model).graph.node))


@pytest.mark.slow
@pytest.mark.parametrize("name", HOLDOUT3)
def test_unseen_model_goes_through_simplify_fuse_at_or_below_the_best_peer(holdout3_models, name, tmp_path):
    path = holdout3_models[name]
    output, report = optimize_from_elsewhere(path, tmp_path / "elsewhere")
    assert_exact(path, output, report)
    assert len(onnx.load(str(output)).graph.node) <= best_peer_nodes(path)
