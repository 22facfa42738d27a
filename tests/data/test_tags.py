"""Tag vocabulary: bag-of-words vectors and the sentence for the MiniLM encoder."""

import numpy as np
import pytest

from hashing.data.tags import TagVocabulary, tags_to_text


def test_bag_of_words_is_binary_and_ignores_unknown_tags():
    vocab = TagVocabulary(["bag", "boot", "shirt"])
    np.testing.assert_array_equal(vocab.bag_of_words(["shirt", "bag", "shirt", "hat"]), [1, 0, 1])
    batch = vocab.bag_of_words_batch([["boot"], []])
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch, [[0, 1, 0], [0, 0, 0]])


def test_json_round_trip_and_index():
    vocab = TagVocabulary.from_json(["a", "b"])
    assert vocab.to_json() == ["a", "b"] and vocab.size == 2 and vocab.index("b") == 1
    with pytest.raises(KeyError, match="'c' is not in the vocabulary"):
        vocab.index("c")


def test_repeated_words_are_rejected():
    with pytest.raises(ValueError, match="repeated"):
        TagVocabulary(["a", "a"])


def test_tags_to_text():
    assert tags_to_text(["shirt", "running shoe"]) == "shirt, running shoe"
