"""The built-in mosaic dataset: deterministic, disjoint sources, labels from the real items, tag noise."""

import numpy as np
import pytest

from hashing.data.builtin import (
    CLASS_WORDS,
    PRESETS,
    TAG_VOCABULARY,
    builtin_samples,
)
from hashing.data.fashion_mnist import FashionMNISTMissing, load_fashion_mnist


def test_same_seed_same_samples_other_seed_differs():
    a = list(builtin_samples("train", 20, seed=3))
    b = list(builtin_samples("train", 20, seed=3))
    c = list(builtin_samples("train", 20, seed=4))
    assert [s.key for s in a] == [s.key for s in b]
    assert all(np.array_equal(x.image, y.image) and x.tags == y.tags for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))


def test_query_and_database_never_share_a_source_image():
    query = {src for s in builtin_samples("query", 1000) for src in s.sources}
    database = {src for s in builtin_samples("database", 3000) for src in s.sources}
    assert query and database
    assert query.isdisjoint(database)


def test_labels_and_pixels_come_from_the_items_drawn():
    images, labels = load_fashion_mnist("test")
    for s in builtin_samples("database", 50, seed=1):
        assert s.image.shape == (56, 56) and s.image.dtype == np.uint8
        assert 1 <= len(s.sources) <= 4
        assert s.labels == sorted({int(labels[i]) for i in s.sources})
        cells = [s.image[r * 28:(r + 1) * 28, c * 28:(c + 1) * 28] for r in range(2) for c in range(2)]
        filled = [cell for cell in cells if cell.any()]
        # every drawn source image appears in a cell, in reading order
        assert len(filled) <= len(s.sources)
        for src in s.sources:
            assert any(np.array_equal(cell, images[src]) for cell in cells)


def test_item_count_covers_one_to_four():
    counts = {len(s.sources) for s in builtin_samples("train", 200)}
    assert counts == {1, 2, 3, 4}


def test_tags_are_in_the_vocabulary_and_noise_rates_are_as_documented():
    samples = list(builtin_samples("train", 2000, seed=0))
    vocab = set(TAG_VOCABULARY)
    spurious = missing = total_items = 0
    for s in samples:
        assert s.tags and set(s.tags) <= vocab
        assert len(set(s.tags)) == len(s.tags)
        item_words = {w for c in s.labels for w in (CLASS_WORDS[c][0], *CLASS_WORDS[c][1])}
        spurious += any(t not in item_words for t in s.tags)
        classes_tagged = {c for c in s.labels if any(t in (CLASS_WORDS[c][0],
                                                           *CLASS_WORDS[c][1]) for t in s.tags)}
        missing += len(s.labels) - len(classes_tagged)
        total_items += len(s.labels)
    # a spurious tag is added with p = 0.1 (some land on a class already present, so a bit less is seen)
    assert 0.05 < spurious / len(samples) < 0.13
    # each item's tag is dropped with p = 0.1; a class with several items is rarely lost entirely
    assert 0.02 < missing / total_items < 0.12


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="allowed: train, query, database"):
        next(builtin_samples("validation", 1))


def test_presets_have_the_documented_default_sizes():
    assert PRESETS["default"] == {"train": 5000, "query": 1000, "database": 20000}


def test_missing_package_files_name_the_fix(tmp_path):
    with pytest.raises(FashionMNISTMissing, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=str(tmp_path))


def test_single_preset_is_one_balanced_label_per_image_without_repeats():
    from hashing.data.builtin import PRESETS, SINGLE_LABEL_PRESETS, preset_samples

    assert "single" in SINGLE_LABEL_PRESETS and PRESETS["single"]["database"] == 8000
    query = list(preset_samples("single", "query"))
    assert len(query) == 1000
    assert all(len(s.labels) == 1 and len(s.sources) == 1 for s in query)
    counts = np.bincount([s.labels[0] for s in query], minlength=10)
    assert counts.tolist() == [100] * 10  # CIFAR-10 protocol: 100 queries per class
    assert len({s.sources[0] for s in query}) == 1000  # no image twice
    first = query[0]
    assert first.image.shape == (56, 56) and first.image.dtype == np.uint8
    from hashing.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    np.testing.assert_array_equal(first.image[::2, ::2], images[first.sources[0]])  # the item, upscaled 2x
    assert first.labels == [int(labels[first.sources[0]])]
    again = list(preset_samples("single", "query"))
    assert [s.key for s in again] == [s.key for s in query] and np.array_equal(again[5].image, query[5].image)
    # the mosaic presets are unchanged by the option
    mosaic = next(iter(preset_samples("tiny", "query")))
    assert mosaic.key == "query-0000000"
