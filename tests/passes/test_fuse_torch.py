"""``fuse`` on models exported from PyTorch by both exporters: a CNN with BatchNorm, a transformer encoder
layer and an LSTM keep parity in ONNX Runtime under both targets; with ``simplify`` in front, the result
has no more nodes than the best peer simplifier (``target=standard``) or ONNX Runtime's extended offline
optimizer (``target=onnxruntime``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from onnxkit import Pipeline
from onnxkit.errors import OnnxkitError
from onnxkit.modelio import save_model
from onnxkit.passes.fuse import FusePass
from onnxkit.pipeline import count_nodes
from onnxkit.pytorch.export import export_model
from tests.conftest import run_model

PEERS = ("onnxsim", "onnxslim", "onnxoptimizer")


class ConvNet(nn.Module):
    """Conv+BatchNorm blocks with a residual, and BatchNorm1d after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(self.branch(y) + y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def _with_trained_batchnorm_statistics(module: nn.Module) -> nn.Module:
    """Freshly built BatchNorm layers are identities (mean 0, var 1); give them statistics to fold."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator))
            layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
    return module


MODELS = {
    "cnn": (lambda: _with_trained_batchnorm_statistics(ConvNet()), (2, 3, 8, 8)),
    "encoder": (Encoder, (2, 5, 16)),
    "lstm": (Recurrent, (2, 5, 8)),
}
EXPORTS = [pytest.param(name, False, id=f"{name}-torchscript") for name in MODELS] + [
    pytest.param(name, True, id=f"{name}-dynamo", marks=pytest.mark.slow) for name in MODELS
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, bool], Path]:
    """Exports made on first use and shared by the module's tests."""
    torch.set_num_threads(1)
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, dynamo: bool) -> Path:
        if (name, dynamo) not in cache:
            make, shape = MODELS[name]
            torch.manual_seed(0)
            module = make().eval()
            fastpath = torch.backends.mha.get_fastpath_enabled()
            # The fused encoder-layer kernel torch uses in inference has no ONNX translation.
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                model, _ = export_model(
                    module, (torch.randn(*shape),), input_names=["x"], dynamic_batch=True, dynamo=dynamo, verify=False
                )
            finally:
                torch.backends.mha.set_fastpath_enabled(fastpath)
            path = tmp_path_factory.mktemp("exports") / f"{name}-{'dynamo' if dynamo else 'torchscript'}.onnx"
            cache[(name, dynamo)] = save_model(model, path)
        return cache[(name, dynamo)]

    return get


@pytest.mark.parametrize("target", ["standard", "onnxruntime"])
@pytest.mark.parametrize(("name", "dynamo"), EXPORTS)
def test_fuse_keeps_parity_on_torch_exports(exported, name, dynamo, target):
    path = exported(name, dynamo)
    result = Pipeline.parse(f"fuse{{target={target}}}").run(path, check="each")  # raises on a parity failure
    fused = ir.to_proto(result.model)
    # The pipeline compared one batch size; a second one checks that dynamic dimensions stayed dynamic.
    _, shape = MODELS[name]
    feeds = {"x": np.random.default_rng(1).standard_normal((3, *shape[1:])).astype(np.float32)}
    for expected, actual in zip(run_model(onnx.load(path), feeds), run_model(fused, feeds)):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert not FusePass(target=target)(ir.from_proto(fused)).modified
    if target == "standard":
        assert all(node.domain in ("", "ai.onnx") for node in ir.traversal.RecursiveGraphIterator(result.model.graph))


def ort_extended_node_count(path: Path, tmp_path: Path) -> int:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.optimized_model_filepath = str(tmp_path / "ort-extended.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return count_nodes(ir.load(options.optimized_model_filepath))


def peer_node_counts(path: Path) -> dict[str, int]:
    """Node counts of the peers whose output keeps parity; a peer that breaks the model does not count."""
    counts = {}
    for peer in PEERS:
        try:
            counts[peer] = count_nodes(Pipeline.parse(f"simplify{{backend={peer}}}").run(path, check="each").model)
        except OnnxkitError:
            continue
    return counts


def assert_no_more_nodes_than_peers(path: Path, tmp_path: Path) -> None:
    portable = count_nodes(Pipeline.parse("simplify,fuse").run(path, check="each").model)
    peers = peer_node_counts(path)
    assert peers, "no peer kept parity"
    assert portable <= min(peers.values()), f"simplify,fuse: {portable} nodes; peers: {peers}"
    for_ort = count_nodes(Pipeline.parse("simplify,fuse{target=onnxruntime}").run(path, check="each").model)
    ort_extended = ort_extended_node_count(path, tmp_path)
    assert for_ort <= ort_extended, (
        f"simplify,fuse{{target=onnxruntime}}: {for_ort} nodes; ORT extended: {ort_extended}"
    )


@pytest.mark.slow
@pytest.mark.parametrize(("name", "dynamo"), EXPORTS)
def test_simplify_fuse_has_no_more_nodes_than_peers(exported, tmp_path, name, dynamo):
    assert_no_more_nodes_than_peers(exported(name, dynamo), tmp_path)


@pytest.mark.slow  # exports MiniLM (22M parameters) and runs three simplifiers on it: about two minutes
def test_minilm_keeps_parity_and_has_no_more_nodes_than_peers(tmp_path):
    from onnxkit.pytorch import zoo

    torch.set_num_threads(1)
    path = zoo.export_minilm(tmp_path / "minilm.onnx", dynamo=False, verify=False)
    assert_no_more_nodes_than_peers(path, tmp_path)


def test_attention_fusion_that_fails_midway_leaves_the_model_whole(exported, monkeypatch):
    """onnxscript's attention fusions go through ops no runtime has; if a step raises, none may remain."""
    from onnxscript.rewriter.ort_fusions import mha

    path = exported("encoder", False)
    spec = "simplify,fuse{target=onnxruntime}"  # folding the shape arithmetic first lets attention match
    complete = Pipeline.parse(spec).run(path, check="each").report.passes[1].stats
    assert any("attention" in line for line in complete)

    def broken(*args, **kwargs):
        raise RuntimeError("unforeseen graph")

    monkeypatch.setattr(mha, "fuse_mha2", broken)
    with pytest.warns(UserWarning, match="attention fusion skipped"):
        result = Pipeline.parse(spec).run(path, check="each")
    stats = result.report.passes[1].stats
    assert not any("attention" in line for line in stats) and stats  # the other fusions still ran
    domains = {node.domain for node in ir.traversal.RecursiveGraphIterator(result.model.graph)}
    assert domains <= {"", "com.microsoft"}
