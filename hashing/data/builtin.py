"""The built-in dataset: multi-label 2x2 mosaics of real Fashion-MNIST items with noisy text tags.

Each image is uint8[56, 56] grayscale: a 2x2 grid of 28x28 cells, 1-4 of them (uniformly) filled
with Fashion-MNIST items, the rest black. Labels = the set of the items' classes (10 classes).
Tags = a word per item (the class's canonical word with probability 0.7, else one of its synonyms),
each dropped with probability 0.1 (at least one tag is kept), plus a spurious tag (a noise word or
another class's word) with probability 0.1; repeated words are kept once, in the order drawn.

Splits: ``train`` draws items from Fashion-MNIST's train part; ``query`` from test images
[0, 2000) and ``database`` from test images [2000, 10000), so no source image is in both.
Everything is deterministic from ``(split, seed)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hashing.data.fashion_mnist import load_fashion_mnist

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
# class index -> (canonical word, synonyms)
CLASS_WORDS: list[tuple[str, tuple[str, ...]]] = [
    ("t-shirt", ("tee", "top")),
    ("trousers", ("pants", "jeans")),
    ("pullover", ("sweater", "jumper")),
    ("dress", ("gown", "frock")),
    ("coat", ("jacket", "overcoat")),
    ("sandal", ("flip-flop", "summer shoe")),
    ("shirt", ("blouse", "button-down")),
    ("sneaker", ("trainers", "running shoe")),
    ("bag", ("handbag", "purse")),
    ("ankle boot", ("boot", "bootie")),
]
NOISE_WORDS = ["fashion", "new", "sale", "photo", "style", "outfit"]
TAG_VOCABULARY: list[str] = sorted(
    {w for canon, syns in CLASS_WORDS for w in (canon, *syns)} | set(NOISE_WORDS)
)

PRESETS: dict[str, dict[str, int]] = {
    "default": {"train": 5000, "query": 1000, "database": 20000},
    "small": {"train": 2000, "query": 500, "database": 5000},
    "tiny": {"train": 256, "query": 64, "database": 512},
}
SPLITS = ("train", "query", "database")
# split -> (Fashion-MNIST part, first source index, end source index)
_SOURCES = {"train": ("train", 0, 60000), "query": ("test", 0, 2000), "database": ("test", 2000, 10000)}
_SPLIT_IDS = {"train": 0, "query": 1, "database": 2}

CELL = 28
SYNONYM_P = 0.3
DROP_P = 0.1
SPURIOUS_P = 0.1


@dataclass(frozen=True)
class Sample:
    """One built-in item. ``image`` uint8[56, 56]; ``labels`` sorted unique class indices;
    ``sources`` the Fashion-MNIST indices (in its ``part``) of the items drawn, cell by cell."""

    key: str
    image: np.ndarray
    labels: list[int]
    tags: list[str]
    sources: tuple[int, ...]


def _tags(rng: np.random.Generator, classes: list[int]) -> list[str]:
    words = []
    for c in classes:
        canon, syns = CLASS_WORDS[c]
        words.append(canon if rng.random() >= SYNONYM_P else syns[rng.integers(len(syns))])
    kept = [w for w in words if rng.random() >= DROP_P] or words[:1]
    if rng.random() < SPURIOUS_P:
        pool = NOISE_WORDS + [CLASS_WORDS[c][0] for c in range(len(CLASSES)) if c not in classes]
        kept.append(pool[rng.integers(len(pool))])
    return list(dict.fromkeys(kept))


def builtin_samples(split: str, size: int, seed: int = 0) -> Iterator[Sample]:
    """Yield ``size`` mosaics of ``split`` (train / query / database), deterministic from (split, seed)."""
    if split not in _SOURCES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    part, start, end = _SOURCES[split]
    images, labels = load_fashion_mnist(part)
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    for i in range(size):
        count = int(rng.integers(1, 5))
        cells = rng.permutation(4)[:count]
        sources = rng.integers(start, end, size=count)
        mosaic = np.zeros((2 * CELL, 2 * CELL), dtype=np.uint8)
        for cell, src in zip(cells, sources, strict=True):
            r, c = divmod(int(cell), 2)
            mosaic[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = images[src]
        # items in reading order (cell 0..3), so tags follow the picture left-to-right, top-to-bottom
        order = np.argsort(cells)
        item_classes = [int(labels[sources[j]]) for j in order]
        yield Sample(
            key=f"{split}-{i:07d}",
            image=mosaic,
            labels=sorted(set(item_classes)),
            tags=_tags(rng, item_classes),
            sources=tuple(int(sources[j]) for j in order),
        )
