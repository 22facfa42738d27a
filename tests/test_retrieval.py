"""hashing.retrieval without a model: the text-query parser and the stored-code lookups over code shards."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hashing import code_shards
from hashing.code_shards import CodeShardError
from hashing.data.tags import TagVocabulary
from hashing.errors import InputError, MissingError
from hashing.mlflow.registry import ResolvedModel
from hashing.retrieval import key_code, load_codes, parse_tags

VOCABULARY = TagVocabulary(["ankle boot", "bag", "dress", "sandal"])
MODEL = ResolvedModel(name="m", version=1, uri="models:/m/1")


def test_parse_tags_matches_the_longest_phrase_first_and_skips_unknown_words(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse_tags("Ankle Boot bag, shiny dress", VOCABULARY) == ["ankle boot", "bag", "dress"]
    assert "['shiny']" in caplog.text
    with pytest.raises(InputError, match="no tag of the vocabulary in 'hat'; tags are: ankle boot, bag"):
        parse_tags("hat", VOCABULARY)
    with pytest.raises(InputError, match="no tag vocabulary"):
        parse_tags("bag", TagVocabulary([]))


def _write_split(root: Path, split: str, keys: list[str], model_uri: str = MODEL.uri) -> np.ndarray:
    codes = np.arange(len(keys) * 2, dtype=np.uint8).reshape(len(keys), 2)
    shard = f"{split}/shard-000000.tar"
    meta = code_shards.PartMeta(16, "idhn", model_uri, "fp", shard, "0" * 64)
    code_shards.write_part(code_shards.part_uri(str(root / split), shard), keys, codes, None, meta)
    return codes


def test_key_code_looks_in_the_searched_split_then_in_the_other(tmp_path: Path) -> None:
    database = _write_split(tmp_path, "database", ["d0", "d1"])
    query = _write_split(tmp_path, "query", ["q0", "q1", "q2"])
    codes = load_codes(str(tmp_path), "database", MODEL)
    np.testing.assert_array_equal(key_code(str(tmp_path), "database", codes, MODEL, "d1"), database[1:2])
    np.testing.assert_array_equal(key_code(str(tmp_path), "database", codes, MODEL, "q2"), query[2:3])
    with pytest.raises(MissingError, match="'nope' is in neither the database nor the query codes"):
        key_code(str(tmp_path), "database", codes, MODEL, "nope")


def test_load_codes_refuses_parts_of_another_model_version(tmp_path: Path) -> None:
    _write_split(tmp_path, "database", ["d0"], model_uri="models:/m/2")
    with pytest.raises(CodeShardError, match="written by models:/m/2, not models:/m/1"):
        load_codes(str(tmp_path), "database", MODEL)
