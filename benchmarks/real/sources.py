"""The raw material of the corpus's calibration sets: sentences, rendered pages and text lines, photo crops,
digits, synthesized audio and its log-mel features. Each is made here from sklearn's bundled datasets, a font
and numpy, so no data is downloaded; ``recipes`` shapes them for each model."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SEED = 0
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


Sample = dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------------------
# Text sources


@functools.cache
def english_sentences() -> list[str]:
    """Real English prose that ships with sklearn: its bundled datasets' descriptions, split into sentences."""
    from sklearn import datasets

    text = " ".join(
        loader().DESCR
        for loader in (
            datasets.load_iris,
            datasets.load_digits,
            datasets.load_wine,
            datasets.load_breast_cancer,
            datasets.load_diabetes,
        )
    )
    words = [w for w in text.replace("\n", " ").split() if w.isascii() and not set(w) <= set("=-*|:.")]
    sentences, current = [], []
    for word in words:
        current.append(word)
        if word.endswith(".") and len(current) >= 4:
            sentences.append(" ".join(current))
            current = []
    return sentences


# A few everyday lines for the models that read other scripts (Arabic, Thai, Khmer, Chinese).
OTHER_SCRIPTS = {
    "arabic": [
        "ذهب الولد إلى المدرسة في الصباح",
        "الكتاب على الطاولة بجانب النافذة",
        "أحب القراءة في المساء",
        "كانت السماء صافية والشمس مشرقة",
        "يعمل المهندس في الشركة منذ سنوات",
        "محمد وعلي وفاطمة وأحمد",
    ],
    "thai": ["วันนี้อากาศดีมาก", "ฉันชอบกินข้าวผัด", "เขาไปโรงเรียนทุกวัน", "ประเทศไทยมีวัฒนธรรมที่หลากหลาย", "หนังสือเล่มนี้น่าอ่าน"],
    "khmer": ["ខ្ញុំស្រលាញ់ប្រទេសកម្ពុជា", "សួស្តីអ្នកទាំងអស់គ្នា", "ថ្ងៃនេះអាកាសធាតុល្អណាស់", "គាត់ទៅសាលារៀនរៀងរាល់ថ្ងៃ"],
    "chinese": ["今天天气很好", "我喜欢看书和听音乐", "他每天坐地铁去上班", "中国有很多美丽的城市", "这本书非常有意思"],
}


def char_ids(text: str, vocab: int, length: int, *, first_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Characters to ids in ``[first_id, vocab)`` (approximate: the model's own tokenizer is not here), padded
    with 0 to ``length``; and the mask of real positions."""
    span = max(vocab - first_id, 1)
    ids = [first_id + ord(c) % span for c in text[:length]]
    out = np.zeros(length, np.int64)
    out[: len(ids)] = ids
    mask = np.zeros(length, bool)
    mask[: len(ids)] = True
    return out, mask


# ---------------------------------------------------------------------------------------------------------
# Images


@functools.cache
def _font(size: int) -> Any:
    if FONT_PATH.exists():
        return ImageFont.truetype(str(FONT_PATH), size)
    return ImageFont.load_default(size)


def render_page(height: int, width: int, rng: np.random.Generator, *, table: bool = False) -> np.ndarray:
    """A page-like RGB image: paragraphs of text lines in a few sizes and greys, or a ruled table of cells."""
    page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(page)
    sentences = english_sentences()
    if table:
        rows, cols = int(rng.integers(4, 9)), int(rng.integers(2, 5))
        top, left = int(height * 0.08), int(width * 0.05)
        cell_h, cell_w = (height - 2 * top) // rows, (width - 2 * left) // cols
        font = _font(max(10, min(cell_h // 2, 22)))
        for r in range(rows + 1):
            draw.line([(left, top + r * cell_h), (left + cols * cell_w, top + r * cell_h)], fill=(0, 0, 0), width=2)
        for c in range(cols + 1):
            draw.line([(left + c * cell_w, top), (left + c * cell_w, top + rows * cell_h)], fill=(0, 0, 0), width=2)
        for r in range(rows):
            for c in range(cols):
                words = sentences[int(rng.integers(len(sentences)))].split()[:2]
                draw.text(
                    (left + c * cell_w + 6, top + r * cell_h + cell_h // 4), " ".join(words), font=font, fill=(0, 0, 0)
                )
        return np.asarray(page)
    y = int(rng.integers(8, 30))
    while y < height - 20:
        size = int(rng.choice([12, 14, 16, 20, 28]))
        font = _font(size)
        ink = tuple(int(v) for v in rng.integers(0, 80, 3))
        x = int(rng.integers(8, max(9, width // 6)))
        text = sentences[int(rng.integers(len(sentences)))]
        draw.text((x, y), text, font=font, fill=ink)
        y += int(size * rng.uniform(1.3, 2.2)) + (int(rng.integers(10, 40)) if rng.random() < 0.2 else 0)
    return np.asarray(page)


def render_text_line(
    height: int, width: int, text: str, rng: np.random.Generator, *, noisy: bool = False
) -> np.ndarray:
    """A text-line crop as a recognizer sees it: the text fills the height, resized to ``height`` and padded
    (or squeezed) to ``width``; ``noisy`` adds captcha-style clutter lines."""
    font = _font(32)
    left, top, right, bottom = font.getbbox(text)
    line = Image.new("RGB", (right - left + 16, bottom - top + 12), (255, 255, 255))
    draw = ImageDraw.Draw(line)
    draw.text((8 - left, 6 - top), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
    if noisy:
        for _ in range(4):
            points = [tuple(int(v) for v in rng.integers(0, (line.width, line.height))) for _ in range(2)]
            draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=2)
    scaled_width = min(width, max(1, round(line.width * height / line.height)))
    line = line.resize((scaled_width, height), Image.BILINEAR)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(line, (0, 0))
    return np.asarray(canvas)


@functools.cache
def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def photo_crop(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop (a quarter to all of the photo) of one of sklearn's sample photos, resized to the size."""
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    ch, cw = int(h * scale), int(min(w, h * scale * width / height))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((width, height), Image.BILINEAR)
    return np.asarray(crop)


def digit_image(size: int, index: int) -> np.ndarray:
    """A sklearn digit (8x8, 0..16, white on black as in MNIST) scaled to ``size`` x ``size``, values 0..255."""
    from sklearn.datasets import load_digits

    digit = load_digits().images[index] / 16.0 * 255.0
    return np.asarray(Image.fromarray(digit.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)


def to_chw(image: np.ndarray, normalize: str) -> np.ndarray:
    """HWC uint8 RGB → 1xCxHxW float32 with a family's preprocessing."""
    return to_hwc(image, normalize).transpose(2, 0, 1)[None]


def to_hwc(image: np.ndarray, normalize: str) -> np.ndarray:
    x = image.astype(np.float32)
    if normalize == "imagenet":
        x = (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    elif normalize == "half":  # PaddleOCR recognizers: (x/255 - 0.5) / 0.5
        x = (x / 255.0 - 0.5) / 0.5
    elif normalize == "unit":
        x = x / 255.0
    elif normalize == "raw":  # YOLOX: pixel values as they are
        pass
    elif normalize == "mtcnn":
        x = (x - 127.5) * 0.0078125
    elif normalize == "caffe-bgr":  # open_nsfw: BGR minus the VGG channel means
        x = x[..., ::-1] - np.array([104.0, 117.0, 123.0], np.float32)
    else:
        raise ValueError(normalize)
    return np.ascontiguousarray(x, np.float32)


# ---------------------------------------------------------------------------------------------------------
# Audio


def synth_signal(samples: int, rate: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A signal in [-1, 1]: a tone, a chirp, a noise burst, or AM speech-like voicing (harmonics of a gliding
    pitch under a syllable-rate envelope), with a little background noise."""
    t = np.arange(samples) / rate
    kind = kind or str(rng.choice(["tone", "chirp", "burst", "speech", "speech"]))
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(110, 2000) * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(100, 500), rng.uniform(1000, 6000)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(t[-1], 1e-3))))
    elif kind == "burst":
        x = rng.standard_normal(samples) * (np.sin(np.pi * t * rng.uniform(2, 6)) > 0.3)
    else:
        pitch = rng.uniform(90, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        harmonics = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 6)), 0, None) ** 1.5
        x = harmonics * envelope
    x = x + 0.01 * rng.standard_normal(samples)
    return (0.8 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def log_mel(
    signal: np.ndarray, rate: int, bands: int, *, hop: int | None = None, window: int | None = None
) -> np.ndarray:
    """[frames, bands] log mel energies (25 ms windows, 10 ms hop unless given): the features speech models use."""
    hop = hop or rate // 100
    window = window or int(rate * 0.025)
    fft = 1 << (window - 1).bit_length()
    frames = 1 + max(0, len(signal) - window) // hop
    strided = np.lib.stride_tricks.sliding_window_view(signal, window)[::hop][:frames] * np.hanning(window)
    power = np.abs(np.fft.rfft(strided, fft)) ** 2
    top_mel = 2595 * np.log10(1 + rate / 2 / 700)
    edges = 700 * (10 ** (np.linspace(2595 * np.log10(1 + 20 / 700), top_mel, bands + 2) / 2595) - 1)
    bins = np.fft.rfftfreq(fft, 1 / rate)
    filters = np.zeros((bands, len(bins)))
    for b in range(bands):
        lo, mid, hi = edges[b : b + 3]
        filters[b] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return np.log(power @ filters.T + 1e-6).astype(np.float32)


def frames_to_samples(frames: int, rate: int) -> int:
    return (frames - 1) * (rate // 100) + int(rate * 0.025)
