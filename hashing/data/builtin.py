"""The built-in dataset: multi-label 2x2 mosaics of real Fashion-MNIST items with noisy text tags.

Each image is uint8[56, 56] grayscale: a 2x2 grid of 28x28 cells, 1-4 of them (uniformly) filled
with Fashion-MNIST items, the rest black. Labels = the set of the items' classes (10 classes).
Tags = a word per item (the class's canonical word with probability 0.7, else one of its synonyms),
each dropped with probability 0.1 (at least one tag is kept), plus a spurious tag (a noise word or
another class's word) with probability 0.1; repeated words are kept once, in the order drawn.

Splits: ``train`` draws items from Fashion-MNIST's train part; ``query`` from test images
[0, 2000) and ``database`` from test images [2000, 10000), so no source image is in both.
Everything is deterministic from ``(split, seed)``.

The ``single`` preset is the single-label variant (the CIFAR-10 protocol of the hashing papers):
one item per image, the 28x28 item upscaled 2x to the same 56x56 image size, one class label,
class-balanced splits (train 500 and query 100 per class; database: every test image of
[2000, 10000), each once), items drawn without replacement within a split; tags as above for
that one item. Pass ``preset="single"`` to ``builtin_samples`` (``preset_samples`` does it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hashing.data.fashion_mnist import load_fashion_mnist
from hashing.data.splits import SPLITS
from hashing.errors import InputError

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
    "single": {"train": 5000, "query": 1000, "database": 8000},
}
# Presets of one item (one label) per image; the others are multi-label mosaics.
SINGLE_LABEL_PRESETS = frozenset({"single"})
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


def preset_samples(preset: str, split: str, seed: int = 0) -> Iterator[Sample]:
    """Every sample of ``split`` of built-in ``preset`` (its size from ``PRESETS``)."""
    if preset not in PRESETS:
        raise InputError(f"unknown built-in preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
    return builtin_samples(split, PRESETS[preset][split], seed, preset=preset)


def _single_samples(split: str, size: int, seed: int, images: np.ndarray, labels: np.ndarray,
                    start: int, end: int) -> Iterator[Sample]:
    """One upscaled item per image, classes balanced (cyclic, then shuffled), sources without replacement."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], 1])
    classes = rng.permutation(np.arange(size) % len(CLASSES))
    pools = {}
    for c in range(len(CLASSES)):
        pool = np.flatnonzero(labels[start:end] == c) + start
        need = int((classes == c).sum())
        pools[c] = list(rng.choice(pool, need, replace=need > len(pool)))
    for i, c in enumerate(classes):
        src = int(pools[int(c)].pop())
        yield Sample(
            key=f"{split}-{i:07d}",
            image=np.kron(images[src], np.ones((2, 2), dtype=np.uint8)),
            labels=[int(labels[src])],
            tags=_tags(rng, [int(labels[src])]),
            sources=(src,),
        )


def builtin_samples(split: str, size: int, seed: int = 0, preset: str | None = None) -> Iterator[Sample]:
    """Yield ``size`` samples of ``split`` (train / query / database), deterministic from (split, seed):
    mosaics, or single items when ``preset`` is one of ``SINGLE_LABEL_PRESETS``."""
    if split not in _SOURCES:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    part, start, end = _SOURCES[split]
    images, labels = load_fashion_mnist(part)
    if preset in SINGLE_LABEL_PRESETS:
        yield from _single_samples(split, size, seed, images, labels, start, end)
        return
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
