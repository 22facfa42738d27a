"""Image decoding and model preprocessing with PIL + numpy (no torchvision)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """Bytes that are not a readable image; the message names the item."""


def decode_image(data: bytes, name_for_errors: str) -> np.ndarray:
    """Decode PNG/JPEG/WebP ``data`` into uint8[H, W, 3] RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name_for_errors}: not a readable image ({len(data)} bytes): {exc}") from None


def to_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """uint8[H, W, 3] from uint8[H, W] (grayscale), [H, W, 3], [H, W, 4] (alpha dropped) or a PIL image."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[:, :, :3]
    raise ValueError(f"expected an image of shape [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")


@dataclass(frozen=True)
class Preprocess:
    """Image -> float32[3, size, size]: resize (shorter side to ``size``, bilinear), center crop, scale
    to [0, 1], then ``(x - mean) / std`` per channel. Picklable, so Ray workers can carry it."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        rgb = Image.fromarray(to_rgb_array(image))
        w, h = rgb.size
        scale = self.size / min(w, h)
        new_w, new_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (new_w, new_h) != (w, h):
            rgb = rgb.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        rgb = rgb.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(rgb, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images: list) -> np.ndarray:
        """float32[n, 3, size, size]."""
        out = np.empty((len(images), 3, self.size, self.size), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out
