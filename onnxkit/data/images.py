"""Image folders: files read with Pillow (or .npy arrays), resized, cropped, normalized, laid out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onnxkit.data.base import Dataset, _check_batch_size, _natural_key
from onnxkit.data.files import _load_arrays
from onnxkit.data.specs import InputSpec, Sample
from onnxkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------------------
# Images


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How to turn an image into a model input, in the order applied.

    ``resize``: an int resizes the shorter side to it, a (height, width) pair resizes exactly; ``crop``: a
    center crop (int or pair). With neither, images are resized to the model's static height and width.
    Integer pixels are multiplied by ``scale``, then ``(x - mean) / std`` per channel. ``layout`` and
    ``color`` default to what the model's input shape says (channels first or last; 1 channel is "L").
    """

    resize: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float = 1 / 255
    layout: Literal["NCHW", "NHWC"] | None = None
    color: Literal["RGB", "BGR", "L"] | None = None


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise DataError(
            "reading or resizing images needs Pillow, which is not installed",
            hint="pip install 'onnxkit[images]', or give .npy images already at the model's size",
        ) from e
    return Image


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an HWC array: uint8 through Pillow's image modes, other dtypes channel by channel."""
    if image.shape[:2] == (height, width):
        return image
    Image = _pillow()
    if image.dtype == np.uint8 and image.shape[2] in (1, 3, 4):
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(height, width, image.shape[2])
    channels = [
        np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
        for c in range(image.shape[2])
    ]
    return np.stack(channels, axis=2)


class ImageFolderDataset(Dataset):
    """Image files (Pillow) or ``.npy`` HWC/HW arrays in a folder tree, preprocessed into one input.

    Each image is one sample with a batch axis of 1; ``batch_size`` stacks several.
    """

    def __init__(
        self,
        folder: str | Path,
        preprocess: ImagePreprocess | None = None,
        *,
        input_name: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"no such image folder: {self.folder}")
        self.preprocess = preprocess or ImagePreprocess()
        self.input_name = input_name
        self.batch_size = _check_batch_size(batch_size)
        self.files = sorted(
            (p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + (".npy",)),
            key=lambda p: [_natural_key(Path(part)) for part in p.relative_to(self.folder).parts],
        )
        if not self.files:
            raise DataError(f"{self.folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) or .npy arrays")

    @staticmethod
    def is_image_folder(folder: Path) -> bool:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))

    def _count(self) -> int:
        return len(self.files)

    def _target(self) -> tuple[str, InputSpec | None]:
        name = self.input_name or self._single_input_name("an image folder")
        return name, self._spec(name)

    def _plan(self, spec: InputSpec | None) -> tuple[str, str, tuple[int, int] | None, np.dtype]:
        """Layout, color mode, the model's static (height, width) if any, and the input dtype."""
        plan = self.preprocess
        shape = spec.shape if spec is not None and spec.rank == 4 else None
        layout = plan.layout or (
            "NHWC" if shape is not None and shape[3] in (1, 3, 4) and shape[1] not in (1, 3) else "NCHW"
        )
        channels, spatial = (
            (None, None) if shape is None else ((shape[1], shape[2:4]) if layout == "NCHW" else (shape[3], shape[1:3]))
        )
        color = plan.color or ("L" if channels == 1 else "RGB")
        static = tuple(spatial) if spatial is not None and all(isinstance(d, int) for d in spatial) else None
        dtype = spec.dtype if spec is not None and spec.dtype is not None else np.dtype(np.float32)
        return layout, color, static, dtype  # type: ignore[return-value]  # static: ints, checked just above

    def _read(self, path: Path, color: str) -> np.ndarray:
        if path.suffix == ".npy":
            image = _load_arrays(path)[""]
            if image.ndim == 2:
                image = image[:, :, None]
            if image.ndim != 3:
                raise DataError(f"{path} has shape {image.shape}; an image array is HxW or HxWxC")
            return image[:, :, ::-1] if color == "BGR" else image
        Image = _pillow()
        try:
            with Image.open(path) as pil:
                image = np.asarray(pil.convert("L" if color == "L" else "RGB"))
        except OSError as e:
            raise DataError(f"cannot read image {path}: {e}") from e
        image = image[:, :, None] if image.ndim == 2 else image
        return image[:, :, ::-1] if color == "BGR" else image

    def _samples(self) -> Iterator[Sample]:
        name, spec = self._target()
        layout, color, static_size, dtype = self._plan(spec)
        plan = self.preprocess
        for path in self.files:
            image = self._read(path, color)
            if plan.resize is not None:
                if isinstance(plan.resize, int):
                    height, width = image.shape[:2]
                    ratio = plan.resize / min(height, width)
                    image = _resize(image, max(1, round(height * ratio)), max(1, round(width * ratio)))
                else:
                    image = _resize(image, *_pair(plan.resize))
            if plan.crop is not None:
                crop_h, crop_w = _pair(plan.crop)
                top, left = round((image.shape[0] - crop_h) / 2), round((image.shape[1] - crop_w) / 2)
                if top < 0 or left < 0:
                    raise DataError(f"{path}: crop {crop_h}x{crop_w} is larger than the image {image.shape[:2]}")
                image = image[top : top + crop_h, left : left + crop_w]
            if plan.resize is None and plan.crop is None and static_size is not None:
                image = _resize(image, *static_size)
            pixels: np.ndarray = image.astype(np.float32) * (plan.scale if image.dtype.kind in "ui" else 1.0)
            if plan.mean is not None:
                pixels = pixels - np.asarray(plan.mean, dtype=np.float32)
            if plan.std is not None:
                pixels = pixels / np.asarray(plan.std, dtype=np.float32)
            if layout == "NCHW":
                pixels = pixels.transpose(2, 0, 1)
            yield {name: np.ascontiguousarray(pixels[None]).astype(dtype, copy=False)}
