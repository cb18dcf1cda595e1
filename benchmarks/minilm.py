"""MiniLM-L6 as the quantization benchmarks use it: real weights, exported at opset 17, the zoo's 64 sentences.

One setup shared by ``benchmarks.quantize_speed`` and ``benchmarks.weight_only``, so both measure the same
model on the same inputs against the same FP32 outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

Sample = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class MiniLM:
    path: Path  # the exported FP32 model
    float_model: onnx.ModelProto
    samples: list[Sample]  # one sentence each, tokenized as the model's own tokenizer does
    expected: list[np.ndarray]  # FP32's sentence embedding for each sample, flattened

    def cosines(self, session: object) -> list[float]:
        """Each sample's cosine between ``session``'s embedding and FP32's."""
        got = (session.run(None, s)[0].ravel() for s in self.samples)  # type: ignore[attr-defined]
        return [float(np.dot(e, g) / (np.linalg.norm(e) * np.linalg.norm(g))) for e, g in zip(self.expected, got)]


def export_minilm(folder: Path) -> MiniLM:
    """Export MiniLM (TorchScript exporter, opset 17) into ``folder`` and run it once in FP32 on every sample."""
    import torch

    from onnxkit.passes.quantize.runtime import make_session
    from onnxkit.pytorch import zoo

    torch.set_num_threads(1)
    model, tokenizer = zoo.load_minilm()
    path = zoo.export_minilm(folder / "minilm.onnx", dynamo=False, opset=17, model=model, tokenizer=tokenizer)
    samples = [{k: v.numpy() for k, v in zoo.tokenize(tokenizer, [s]).items()} for s in zoo.minilm_sentences()]
    float_model = onnx.load(str(path))
    reference = make_session(float_model)
    return MiniLM(path, float_model, samples, [reference.run(None, s)[0].ravel() for s in samples])
