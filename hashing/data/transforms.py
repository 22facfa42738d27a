"""Image decoding and model preprocessing with PIL + numpy (no torchvision)."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from hashing.errors import InputError


class ImageDecodeError(InputError):
    """Bytes that are not a readable image; the message names the item."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header claims more pixels than the limit (a decompression bomb, or just huge)."""


# Pixels (width x height) an image may have; above it the image is rejected before it is decoded.
# 8192 x 8192 by default; the environment variable (e.g. set by ``ingest.py --max-image-pixels``) changes
# it for this process and the processes it starts, local Ray workers included. Pillow's own hard limit
# (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 million pixels) still applies above it.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_PIXELS_ENV = "HASHING_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit: ``HASHING_MAX_IMAGE_PIXELS`` if set, else ``DEFAULT_MAX_IMAGE_PIXELS``."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV)
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive whole number of pixels, got {text!r}")
    return int(text)


def decode_image(data: bytes, name_for_errors: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/WebP ``data`` into uint8[H, W, 3] RGB.

    16-bit (and 32-bit integer) grey images are scaled to 8 bits (``v * 255 / 65535``), not clipped.
    Raises ``ImageTooLargeError`` when the header claims more than ``max_pixels`` pixels (default:
    ``max_image_pixels()``), before any pixel is decoded; ``ImageDecodeError`` for unreadable bytes.
    """
    limit = max_pixels if max_pixels is not None else max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > limit:
                    raise ImageTooLargeError(f"{name_for_errors}: {img.width} x {img.height} pixels, more "
                                             "than "
                                             f"the limit of {limit} ({MAX_IMAGE_PIXELS_ENV})")
                img.load()
                return _to_rgb8(img)
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, 2 x Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(f"{name_for_errors}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        message = f"{name_for_errors}: not a readable image ({len(data)} bytes): {exc}"
        raise ImageDecodeError(message) from None


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of ``image`` uint8[H, W] or uint8[H, W, 3] (deterministic for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """uint8[H, W, 3] of a loaded image; 16/32-bit integer grey is scaled down to 8 bits first."""
    if img.mode.startswith("I"):  # "I;16", "I;16B", "I" (16-bit PNGs load as one of these)
        wide = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


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
