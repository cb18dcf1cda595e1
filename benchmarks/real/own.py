"""Our own exports for the real-world corpus: ``python -m benchmarks.real.own [--only arch,arch]``.

Six small architectures with seeded weights, each exported by torch as a user would: TorchScript at opsets 11
and 13, and dynamo at opset 18, with dynamic batch (and sequence) dims. They land in ``<cache>/own/`` as
``own_<arch>_<exporter><opset>.onnx`` with 32 calibration samples each in ``<cache>/calib/`` (photo crops for
the CNNs, sentences as ids for the text models, log-mel features for the sequence model). An exporter that
cannot export a model is recorded in ``<cache>/own/EXPORTS.json`` with its one-line error, not hidden.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.real import calibration, sources
from benchmarks.real.corpus import cache_dir

VOCAB = 96
IMAGE = 64
SEQUENCE = 24
FEATURES = 40
EXPORTS = (("ts", 11), ("ts", 13), ("dynamo", 18))


def _randomize_batchnorm(module: nn.Module, generator: torch.Generator) -> None:
    """Running statistics that are not the identity, as a trained network has, so folding them is tested."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class BatchNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 16),
            nn.MaxPool2d(2),
            _conv_bn(16, 32),
            nn.MaxPool2d(2),
            _conv_bn(32, 64),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16)
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(image))
        return self.head(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            _conv_bn(hidden, hidden, groups=hidden, act=nn.Hardswish),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MobileNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(3, 16, 2, act=nn.Hardswish),
            InvertedResidual(16, 4),
            _conv_bn(16, 16, 2, groups=16, act=nn.ReLU6),
            nn.Conv2d(16, 32, 1),
            InvertedResidual(32, 3),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(image), 1))


class TransformerEncoderNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 64)
        self.position = nn.Parameter(torch.randn(128, 64) * 0.02)
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        return self.head(self.encoder(x))


class GRUTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.rnn = nn.GRU(32, 48, batch_first=True, bidirectional=True)
        self.head = nn.Linear(96, 12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(input_ids))[0])


class GatedLoopNet(nn.Module):
    """A data-dependent branch and a loop over time: an ``If`` and a ``Loop`` under TorchScript scripting,
    ``torch.cond`` (an ``If``) under dynamo, which has no loop over a dynamic length to offer."""

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Linear(FEATURES, 32)
        self.recurrent = nn.Linear(32, 32)
        self.loud = nn.Linear(32, 4)
        self.quiet = nn.Linear(32, 4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.input(features)
        state = torch.zeros_like(projected[:, 0])
        for t in range(projected.shape[1]):
            state = torch.tanh(projected[:, t] + self.recurrent(state))
        if bool(features.mean() > 0):
            return self.loud(state)
        return self.quiet(state)


class GatedCondNet(GatedLoopNet):
    """The same weights and branch for dynamo: the branch through ``torch.cond``, the recurrence as a cumulative
    sum of the projected inputs (dynamo cannot loop over a dynamic length)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        state = torch.tanh(torch.cumsum(self.input(features), dim=1)[:, -1])
        return torch.cond(features.mean() > 0, self.loud, self.quiet, (state,))


@dataclasses.dataclass(frozen=True)
class Architecture:
    build: Callable[[], nn.Module]
    input_name: str
    example: Callable[[], torch.Tensor]
    dynamic: dict[int, str]  # axis → name
    calibration: str  # which data calibration.py makes for it
    dynamo_build: Callable[[], nn.Module] | None = None  # a variant for dynamo where the module needs one
    script: bool = False  # TorchScript: script (keeps If/Loop) rather than trace
    extra_exports: tuple[tuple[str, int], ...] = ()


def _image() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE)


def _ids() -> torch.Tensor:
    return torch.randint(1, VOCAB, (2, SEQUENCE))


def _features() -> torch.Tensor:
    return torch.randn(2, SEQUENCE, FEATURES)


ARCHITECTURES: dict[str, Architecture] = {
    "bn_cnn": Architecture(BatchNormCNN, "image", _image, {0: "batch"}, "photo"),
    "resnet_blocks": Architecture(ResNetBlocks, "image", _image, {0: "batch"}, "photo"),
    "mobilenet_dw": Architecture(MobileNetStyle, "image", _image, {0: "batch"}, "photo"),
    # TorchScript cannot export torch's attention below opset 14 (aten::scaled_dot_product_attention): 11 and 13
    # are recorded as failures, and 14 is added so that a TorchScript export of it is in the corpus.
    "transformer_encoder": Architecture(
        TransformerEncoderNet, "input_ids", _ids, {0: "batch", 1: "sequence"}, "ids", extra_exports=(("ts", 14),)
    ),
    "gru_tagger": Architecture(GRUTagger, "input_ids", _ids, {0: "batch", 1: "sequence"}, "ids"),
    "gated_loop": Architecture(
        GatedLoopNet,
        "features",
        _features,
        {0: "batch", 1: "sequence"},
        "features",
        dynamo_build=GatedCondNet,
        script=True,
    ),
}


def own_dir(cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "own"


def model_name(arch: str, exporter: str, opset: int) -> str:
    return f"own_{arch}_{exporter}{opset}"


def build(arch: str, *, for_dynamo: bool = False) -> nn.Module:
    spec = ARCHITECTURES[arch]
    torch.manual_seed(sorted(ARCHITECTURES).index(arch))
    module = (spec.dynamo_build if for_dynamo and spec.dynamo_build else spec.build)()
    _randomize_batchnorm(module, torch.Generator().manual_seed(1))
    return module.eval()


def export(arch: str, exporter: str, opset: int, path: Path) -> None:
    """Export one architecture as torch's own exporter does it; raises what the exporter raises."""
    spec = ARCHITECTURES[arch]
    torch.manual_seed(0)
    example = spec.example()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "ts":
            # nn.TransformerEncoder's inference fast path is one fused aten op TorchScript cannot export;
            # turning it off is the documented way users export it.
            torch.backends.mha.set_fastpath_enabled(False)
            module = build(arch)
            if spec.script:
                module = torch.jit.script(module)
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[spec.input_name],
                output_names=["output"],
                dynamic_axes={spec.input_name: spec.dynamic},
            )
        else:
            dims = {
                axis: torch.export.Dim(name, min=1 if axis == 0 else 2, max=4096) for axis, name in spec.dynamic.items()
            }
            program = torch.onnx.export(
                build(arch, for_dynamo=True),
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[spec.input_name],
                output_names=["output"],
                dynamic_shapes={spec.input_name: dims},
                verbose=False,
            )
            program.save(str(path))


def check_export(arch: str, exporter: str, path: Path) -> float:
    """Largest absolute difference between torch and ONNX Runtime on fresh inputs of another batch size and,
    where the sequence axis is declared dynamic, another length too: an exporter that baked the example's
    size into the graph (TorchScript tracing torch's attention does) made a model that is not what it says."""
    from onnxkit.runtime import error_line, make_session

    spec = ARCHITECTURES[arch]
    torch.manual_seed(7)
    example = spec.example()
    inputs = [torch.cat([example, example[:1]])]  # batch 3: the batch dim really is dynamic
    if 1 in spec.dynamic:
        inputs.append(torch.cat([example, example[:, : example.shape[1] // 2]], dim=1))  # 1.5× the length
    session = make_session(path)
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = build(arch, for_dynamo=exporter == "dynamo")(x).numpy()
        try:
            got = session.run(None, {spec.input_name: x.numpy()})[0]
        except Exception as e:  # ORT's own exception types
            raise RuntimeError(
                f"the export does not run at {tuple(x.shape)}, only at the traced size "
                f"{tuple(example.shape)}: {error_line(e)}"
            ) from e
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def calibration_samples(arch: str, count: int = calibration.SAMPLES) -> dict[str, np.ndarray]:
    """``count`` domain samples of batch 1, stacked: photo crops, sentences as ids, or log-mel features."""
    spec = ARCHITECTURES[arch]
    samples = []
    for i in range(count):
        rng = np.random.default_rng([sources.SEED, i])
        if spec.calibration == "photo":
            x = sources.to_chw(sources.photo_crop(IMAGE, IMAGE, rng), "imagenet")
        elif spec.calibration == "ids":
            sentences = sources.english_sentences()
            x = sources.char_ids(sentences[int(rng.integers(len(sentences)))], VOCAB, SEQUENCE)[0][None]
        else:
            signal = sources.synth_signal(sources.frames_to_samples(SEQUENCE, 16000), 16000, rng)
            x = sources.log_mel(signal, 16000, FEATURES)[None, :SEQUENCE]
        samples.append(x)
    return {spec.input_name: np.stack(samples)}


CALIBRATION_KINDS = {
    "photo": "sample-photo crops (ImageNet-normalized)",
    "ids": "English sentences, characters mapped into the vocabulary",
    "features": "40-band log-mels of synthesized audio",
}


def export_all(archs: list[str], cache: Path | None = None) -> dict[str, dict[str, Any]]:
    """Export every architecture with every exporter (skipping files already there) and write their
    calibration sets; returns and saves the record of each export."""
    cache = cache or cache_dir()
    record_path = own_dir(cache) / "EXPORTS.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    kinds = json.loads(calibration.kinds_path(cache).read_text()) if calibration.kinds_path(cache).exists() else {}
    for arch in archs:
        data = calibration_samples(arch)
        for exporter, opset in EXPORTS + ARCHITECTURES[arch].extra_exports:
            name = model_name(arch, exporter, opset)
            path = own_dir(cache) / f"{name}.onnx"
            record: dict[str, Any] = {"arch": arch, "exporter": exporter, "opset": opset, "torch": torch.__version__}
            if records.get(name, {}).get("ok") is False and records[name].get("torch") == torch.__version__:
                print(f"{name:36s} {records[name]['error']} (recorded; not tried again with this torch)")
                continue
            try:
                if not path.exists():
                    export(arch, exporter, opset, path)
                record.update(ok=True, max_abs_error=check_export(arch, exporter, path))
            except Exception as e:  # an exporter that cannot export this model is a finding
                path.unlink(missing_ok=True)
                record.update(ok=False, error=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}")
            records[name] = record
            if record["ok"]:
                target = calibration.calibration_path(name, cache)
                target.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(target, **data)
                kinds[name] = {
                    "kind": CALIBRATION_KINDS[ARCHITECTURES[arch].calibration],
                    "synthetic_only": False,
                    "samples": len(next(iter(data.values()))),
                }
            status = f"ok (max |torch - ORT| {record['max_abs_error']:.1e})" if record["ok"] else record["error"]
            print(f"{name:36s} {status}", flush=True)
    own_dir(cache).mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(records, indent=1, sort_keys=True))
    calibration.kinds_path(cache).parent.mkdir(parents=True, exist_ok=True)
    calibration.kinds_path(cache).write_text(json.dumps(kinds, indent=1, sort_keys=True))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated architectures: {', '.join(ARCHITECTURES)}")
    args = parser.parse_args(argv)
    archs = [a for a in args.only.split(",") if a] or list(ARCHITECTURES)
    unknown = set(archs) - set(ARCHITECTURES)
    if unknown:
        parser.error(f"unknown architecture(s): {', '.join(sorted(unknown))}")
    torch.set_num_threads(1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" on every export
    records = export_all(archs)
    failed = [name for name, r in records.items() if not r["ok"]]
    print(
        f"own exports: {len(records) - len(failed)} of {len(records)} in {own_dir()}"
        + (f"; the exporter could not export: {', '.join(failed)}" if failed else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
