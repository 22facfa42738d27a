"""Tag vocabulary: tags (strings) -> bag-of-words vectors for the text networks, and -> a sentence for
MiniLM."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class TagVocabulary:
    """A fixed list of V tag words; a tag is one entry (multi-word phrases are one tag).

    ``bag_of_words`` is binary (1 where the tag occurs, however often): the papers' text input.
    Tags outside the vocabulary are ignored (logged at debug level).
    """

    def __init__(self, words: list[str]) -> None:
        if len(set(words)) != len(words):
            dupes = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"tag vocabulary has repeated words: {dupes}")
        self.words = list(words)
        self._index = {w: i for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        """V, the number of words."""
        return len(self.words)

    def index(self, word: str) -> int:
        """Position of ``word``; KeyError naming it when unknown."""
        try:
            return self._index[word]
        except KeyError:
            raise KeyError(f"tag {word!r} is not in the vocabulary of {self.size} words") from None

    def bag_of_words(self, tags: list[str]) -> np.ndarray:
        """float32[V] with 1.0 at each known tag."""
        out = np.zeros(self.size, dtype=np.float32)
        for tag in tags:
            i = self._index.get(tag)
            if i is None:
                log.debug("tag %r is not in the vocabulary; ignored", tag)
            else:
                out[i] = 1.0
        return out

    def bag_of_words_batch(self, tags: list[list[str]]) -> np.ndarray:
        """float32[n, V], one row per tag list."""
        out = np.zeros((len(tags), self.size), dtype=np.float32)
        for row, item in enumerate(tags):
            out[row] = self.bag_of_words(item)
        return out

    def to_json(self) -> list[str]:
        """The words, as stored in ``dataset.json``'s ``tags``."""
        return list(self.words)

    @classmethod
    def from_json(cls, words: list[str]) -> TagVocabulary:
        return cls(list(words))


def tags_to_text(tags: list[str]) -> str:
    """The sentence the MiniLM encoder reads: "a shirt, trainers" (empty string for no tags)."""
    return ", ".join(tags)
