"""Built-in models, the digits splits, and MiniLM exported with both exporters and run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxkit.pytorch import zoo

torch.set_num_threads(1)


@pytest.mark.parametrize("image_size", [(8, 8), (28, 28), (10, 12)])
def test_simple_cnn_is_sized_for_its_input(image_size):
    model = zoo.SimpleCNN(image_size=image_size)
    assert (model.conv.in_channels, model.conv.out_channels, model.conv.kernel_size) == (1, 32, (3, 3))
    assert model(torch.zeros(3, 1, *image_size)).shape == (3, 10)


def test_batchnorm_cnn_has_batchnorm_and_classifies():
    model = zoo.BatchNormCNN(image_size=(8, 8))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_digits_splits_cover_the_dataset_with_every_class():
    splits = zoo.load_digits_splits(seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.image_size == (8, 8)
    for split in (splits.train, splits.val, splits.test):
        assert split.images.dtype == np.float32 and split.labels.dtype == np.int64
        assert split.images.shape[1:] == (1, 8, 8)
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert set(split.labels.tolist()) == set(range(10))
    assert len(splits.test) / 1797 == pytest.approx(0.15, abs=0.01)


def test_digits_split_depends_only_on_the_seed():
    first, again, other = zoo.load_digits_splits(0), zoo.load_digits_splits(0), zoo.load_digits_splits(1)
    np.testing.assert_array_equal(first.test.images, again.test.images)
    assert not np.array_equal(first.test.labels, other.test.labels)


def test_minilm_sentences_are_varied():
    sentences = zoo.minilm_sentences()
    assert len(sentences) == 64 and len(set(sentences)) == 64
    assert min(map(len, sentences)) < 45 < max(map(len, sentences))


@pytest.fixture(scope="module")
def minilm():
    return zoo.load_minilm()


def test_minilm_embeddings_are_normalised_and_meaningful(minilm):
    model, tokenizer = minilm
    sentences = [
        "The cat is sleeping on the warm windowsill.",
        "A kitten naps in the sunny window.",
        "Stock markets fell sharply after the central bank raised interest rates.",
    ]
    with torch.no_grad():
        embeddings = model(**zoo.tokenize(tokenizer, sentences))
    assert embeddings.shape == (3, 384)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_exported_minilm_matches_torch_on_real_sentences(minilm, tmp_path, dynamo):
    model, tokenizer = minilm
    path = zoo.export_minilm(tmp_path / "minilm.onnx", dynamo=dynamo, model=model, tokenizer=tokenizer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding"]
    assert session.get_inputs()[0].shape == ["batch", "sequence"]

    sentences = zoo.minilm_sentences()
    # Other batch sizes and padded lengths than the export example, to exercise both dynamic axes.
    for batch in (sentences, sentences[:1], sentences[5:12]):
        inputs = zoo.tokenize(tokenizer, batch)
        with torch.no_grad():
            expected = model(**inputs).numpy()
        actual = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        cosine = (actual * expected).sum(1) / (np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.min() > 0.9999
        np.testing.assert_allclose(actual, expected, atol=1e-4)
