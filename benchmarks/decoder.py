"""A small Llama-style decoder for the weight-only benchmark and its test: built from a ``transformers`` config,
trained briefly on Python's own docstrings, exported to ONNX with a ``logits`` output.

No weights are downloaded. Random initial weights are a poor stand-in for 4-bit error: Gaussian N(0, 0.02)
matrices have no structure to lose. So the decoder is trained for a few hundred steps (``onnxkit.pytorch.train.Trainer``,
seeded, one thread) on a word-level vocabulary of docstrings from a fixed list of standard-library modules;
that gives it real next-token statistics, though far from a production LLM's (no outlier channels of the kind
billions of parameters grow), which RESULTS.md says beside its figures.

    decoder = build_decoder(folder, DecoderShape.bench())   # hidden 256, 4 layers, vocab 2048
    decoder.path, decoder.samples, decoder.expected          # the ONNX file, held-out windows, FP32 logits
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import inspect
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

Sample = dict[str, np.ndarray]
# Docstrings of these modules, in this order, are the text: fixed so the vocabulary and data are the same
# on every run of the same Python (not ``inspect``: libraries imported first replace some of its functions).
MODULES = (
    "argparse",
    "asyncio",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "email.message",
    "fractions",
    "functools",
    "http.client",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "pickle",
    "re",
    "shutil",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "zipfile",
)
WORDS = re.compile(r"[A-Za-z_]+|\d+|[^\sA-Za-z_\d]")
UNKNOWN = 0
HELD_OUT = 0.1  # the last tenth of the token stream is never trained on: the benchmark's samples come from it


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    sequence: int  # tokens per training window and per sample
    steps: int  # optimizer steps
    batch: int

    @classmethod
    def bench(cls) -> DecoderShape:
        """The benchmark's: 4 layers of width 256, a 2048-word vocabulary (about 4.7 M parameters, 19 MB)."""
        return cls(hidden=256, layers=4, heads=4, intermediate=768, vocab=2048, sequence=64, steps=300, batch=8)

    @classmethod
    def tiny(cls) -> DecoderShape:
        """The test's: 2 layers of width 64, a 512-word vocabulary; trained for seconds."""
        return cls(hidden=64, layers=2, heads=2, intermediate=128, vocab=512, sequence=32, steps=120, batch=16)


@dataclasses.dataclass(frozen=True)
class Decoder:
    path: Path  # the exported FP32 model: input_ids, attention_mask [batch, sequence] int64 → logits
    shape: DecoderShape
    samples: list[Sample]  # held-out windows, one per sample
    targets: list[np.ndarray]  # each sample's next tokens [1, sequence]
    expected: list[np.ndarray]  # FP32 logits for each sample [1, sequence, vocab]
    training: dict[str, Any]  # steps, seconds, first and last training loss

    def scores(self, session: Any) -> dict[str, float]:
        """Against FP32 on the held-out samples: worst and mean cosine of the logits (per sample), the share of
        positions whose top-1 next token agrees, and next-token cross-entropy (FP32's is in ``training``)."""
        got = [session.run(["logits"], s)[0] for s in self.samples]
        cosines = [_cosine(e.ravel(), g.ravel()) for e, g in zip(self.expected, got)]
        agree = np.mean([np.mean(e.argmax(-1) == g.argmax(-1)) for e, g in zip(self.expected, got)])
        return {
            "cosine_min": round(min(cosines), 4),
            "cosine_mean": round(float(np.mean(cosines)), 4),
            "top1_agreement": round(float(agree), 4),
            "next_token_loss": round(float(np.mean([_cross_entropy(g, t) for g, t in zip(got, self.targets)])), 4),
        }


def docstring_text() -> str:
    """The docstrings of ``MODULES``: each module's, then its public classes', functions' and methods'."""
    parts = []
    with warnings.catch_warnings():  # reading typing.io's docstring warns that typing.io is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in MODULES:
            parts += _docstrings(importlib.import_module(name))
    return "\n".join(dict.fromkeys(p for p in parts if p))  # inherited docstrings once


def _docstrings(module: Any) -> list[str]:
    parts = [inspect.getdoc(module) or ""]
    for member_name, member in sorted(vars(module).items()):
        if (
            member_name.startswith("_")
            or not (inspect.isclass(member) or inspect.isfunction(member))
            or member.__module__ != module.__name__
        ):  # what it defines, whatever else was imported
            continue
        parts.append(inspect.getdoc(member) or "")
        if inspect.isclass(member):
            parts += [
                inspect.getdoc(m) or ""
                for n, m in sorted(vars(member).items())
                if not n.startswith("_") and inspect.isfunction(m) and m.__module__ == module.__name__
            ]
    return parts


def tokenize(text: str, vocab: int) -> np.ndarray:
    """Words, numbers and punctuation marks as ids: the ``vocab - 1`` most frequent get their own, the rest
    ``UNKNOWN``."""
    words = WORDS.findall(text)
    ranked = [w for w, _ in sorted(collections.Counter(words).items(), key=lambda item: (-item[1], item[0]))]
    ids = {w: i + 1 for i, w in enumerate(ranked[: vocab - 1])}
    return np.array([ids.get(w, UNKNOWN) for w in words], dtype=np.int64)


def _logits_only(model: Any) -> Any:
    """``model(input_ids, attention_mask)`` → logits, without a KV cache: what training and the export see."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly()


def build_decoder(folder: Path, shape: DecoderShape, samples: int = 32, seed: int = 0) -> Decoder:
    """Train a Llama decoder of ``shape`` on the docstrings, export it to ``folder/decoder.onnx`` (TorchScript
    exporter, opset 17, dynamic batch and sequence), and run it in FP32 on ``samples`` held-out windows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from onnxkit.modelio import save_model
    from onnxkit.passes.quantize.runtime import make_session
    from onnxkit.pytorch.export import export_model
    from onnxkit.pytorch.train import TrainConfig, Trainer

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=4 * shape.sequence,
        tie_word_embeddings=False,  # the LM head is its own MatMul, apart from the table
        attn_implementation="eager",
    )  # type: ignore[call-arg]  # plain MatMul/Softmax attention
    model = _logits_only(LlamaForCausalLM(config))
    tokens = tokenize(docstring_text(), shape.vocab)
    split = int(len(tokens) * (1 - HELD_OUT))
    train, held_out = _windows(tokens[:split], shape.sequence + 1), _windows(tokens[split:], shape.sequence + 1)

    def batches() -> Any:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(order) - shape.batch + 1, shape.batch):
            window = torch.from_numpy(train[order[start : start + shape.batch].numpy()])
            yield {"input_ids": window[:, :-1], "attention_mask": torch.ones_like(window[:, :-1])}, window[:, 1:]

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    losses: list[float] = []
    trainer = Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01),
        loss,
        config=TrainConfig(seed=seed, progress=False, clip_grad_norm=1.0, device="cpu"),
        log=lambda line: None,
        on_step=lambda _, record: losses.append(record.loss),
    )
    started = time.perf_counter()
    trainer.fit(_Reiterable(batches), max_steps=shape.steps)
    seconds = time.perf_counter() - started
    model.eval()

    picked = held_out[np.linspace(0, len(held_out) - 1, samples).astype(int)]
    windows = [{"input_ids": w[None, :-1], "attention_mask": np.ones_like(w[None, :-1])} for w in picked]
    example = {name: torch.from_numpy(np.concatenate([windows[0][name], windows[1][name]])) for name in windows[0]}
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    exported, _ = export_model(model, example, output_names=("logits",), dynamic_axes=axes, dynamo=False, opset=17)
    path = save_model(exported, folder / "decoder.onnx")
    reference = make_session(onnx.load(str(path)))
    expected = [reference.run(["logits"], w)[0] for w in windows]
    targets = [w[None, 1:] for w in picked]
    training = {
        "steps": len(losses),
        "seconds": round(seconds, 1),
        "first_loss": round(losses[0], 3),
        "last_loss": round(float(np.mean(losses[-20:])), 3),
        "tokens": len(tokens),
        "held_out_loss": round(float(np.mean([_cross_entropy(e, t) for e, t in zip(expected, targets)])), 4),
    }
    return Decoder(path, shape, windows, targets, expected, training)


class _Reiterable:
    """A loader the Trainer can iterate once per epoch: a fresh generator each time."""

    def __init__(self, make: Any) -> None:
        self.make = make

    def __iter__(self) -> Any:
        return self.make()


def _windows(tokens: np.ndarray, length: int) -> np.ndarray:
    """Non-overlapping windows of ``length`` tokens, [count, length]."""
    count = len(tokens) // length
    return tokens[: count * length].reshape(count, length)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean next-token cross-entropy of ``logits`` [1, S, V] for ``targets`` [1, S]."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, targets[..., None], -1).mean())
