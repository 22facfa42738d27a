"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip), offline."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": "train", "test": "t10k"}


class FashionMNISTMissing(FileNotFoundError):
    """The Fashion-MNIST files are not installed."""


def _read_idx(path: Path, magic: int) -> np.ndarray:
    if not path.exists():
        raise FashionMNISTMissing(
            f"{path} not found: the built-in dataset is made from the Debian package dataset-fashion-mnist; "
            "`make setup` installs it (or: sudo apt-get install dataset-fashion-mnist)"
        )
    data = gzip.decompress(path.read_bytes())
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind (magic {got}, expected {magic})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(part: str, root: str = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8[n, 28, 28], labels int64[n])`` of ``part`` ("train": 60000, "test": 10000)."""
    if part not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST part {part!r}; allowed: train, test")
    prefix = Path(root) / _FILES[part]
    images = _read_idx(Path(f"{prefix}-images-idx3-ubyte.gz"), 2051)
    labels = _read_idx(Path(f"{prefix}-labels-idx1-ubyte.gz"), 2049).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{prefix}: {len(images)} images but {len(labels)} labels")
    return images, labels
