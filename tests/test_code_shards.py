"""hashing.code_shards: the Parquet part contract, finished-part detection and whole-split reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hashing import code_shards as cs
from hashing.codes import pack_signs

BITS = 24
MODEL_URI = "models:/hashing-idhn-tiny/3"
SHA_A = "a" * 64
SHA_B = "b" * 64


def _meta(source_shard: str, sha: str = SHA_A, model_uri: str = MODEL_URI, bits: int = BITS) -> cs.PartMeta:
    return cs.PartMeta(bits=bits, method="idhn", model_uri=model_uri, dataset_fingerprint="fp-1",
                       source_shard=source_shard, source_sha256=sha)


def _codes(n: int, seed: int, bits: int = BITS) -> np.ndarray:
    return pack_signs(np.random.default_rng(seed).standard_normal((n, bits)))


def _write(root: str, split: str, shard: int, n: int, **meta) -> tuple[list[str], np.ndarray]:
    """Write part ``{split}/shard-{shard:06d}.tar`` with n rows; return its keys and codes."""
    source = f"{split}/shard-{shard:06d}.tar"
    keys = [f"{split}-{shard}-{i}" for i in range(n)]
    codes = _codes(n, seed=shard)
    cs.write_part(cs.part_uri(root, source), keys, codes, [[i % 3] for i in range(n)], _meta(source, **meta))
    return keys, codes


def test_part_layout_names_model_version_split_and_source_shard() -> None:
    root = cs.split_uri("s3://bucket/codes", "hashing-idhn-tiny", 3, "database")
    assert root == "s3://bucket/codes/hashing-idhn-tiny/v3/database"
    assert cs.part_uri(root, "database/shard-000004.tar") == root + "/part-shard-000004.parquet"


def test_part_round_trip_keeps_keys_codes_labels_and_metadata(tmp_path: Path) -> None:
    uri = str(tmp_path / "part-shard-000001.parquet")
    relaxed = np.random.default_rng(0).standard_normal((5, BITS))
    codes = pack_signs(relaxed)
    labels = [[0], [1, 2], [], [4], [0, 3]]
    meta = _meta("database/shard-000001.tar")
    cs.write_part(uri, ["k0", "k1", "k2", "k3", "k4"], codes, labels, meta)

    table = pq.read_table(uri)
    assert table.schema.field("code").type == pa.binary(BITS // 8)
    assert table.schema.field("labels").type == pa.list_(pa.int32())
    assert table.column("source_shard").to_pylist() == ["database/shard-000001.tar"] * 5
    # Byte layout is numpy.packbits of the sign bits, big-endian within a byte.
    first = table.column("code")[0].as_py()
    assert first == np.packbits(relaxed[0] > 0).tobytes()
    assert table.schema.metadata[b"bits"] == b"24"
    assert table.schema.metadata[b"model_uri"] == MODEL_URI.encode()
    assert table.schema.metadata[b"dataset_fingerprint"] == b"fp-1"

    part = cs.read_part(uri)
    assert part.keys.tolist() == ["k0", "k1", "k2", "k3", "k4"]
    np.testing.assert_array_equal(part.codes, codes)
    assert [row.tolist() for row in part.labels] == labels
    assert part.meta == meta
    assert cs.read_part_meta(uri) == meta


def test_unknown_labels_are_null(tmp_path: Path) -> None:
    uri = str(tmp_path / "part-shard-000000.parquet")
    cs.write_part(uri, ["a", "b"], _codes(2, 1), None, _meta("query/shard-000000.tar"))
    assert pq.read_table(uri).column("labels").null_count == 2
    assert cs.read_part(uri).labels == [None, None]


def test_part_rejects_rows_that_do_not_line_up() -> None:
    with pytest.raises(ValueError, match="expected one of each per row"):
        cs.part_bytes(["a", "b", "c"], _codes(2, 1), None, _meta("query/shard-000000.tar"))
    with pytest.raises(ValueError, match="codes"):
        cs.part_bytes(["a", "b"], _codes(2, 1, bits=16), None, _meta("query/shard-000000.tar"))


def test_write_is_whole_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    root = str(tmp_path / "v1" / "query")
    _write(root, "query", 0, 4)
    keys, codes = _write(root, "query", 0, 7)  # rewrite replaces the part as a whole
    assert os.listdir(root) == ["part-shard-000000.parquet"]
    part = cs.read_part(cs.part_uri(root, "query/shard-000000.tar"))
    assert part.keys.tolist() == keys
    np.testing.assert_array_equal(part.codes, codes)


def test_finished_parts_needs_same_model_and_source_checksum(tmp_path: Path) -> None:
    root = str(tmp_path / "v3" / "database")
    _write(root, "database", 0, 3)
    _write(root, "database", 1, 3, sha=SHA_B)  # written for an older version of shard 1
    _write(root, "database", 2, 3, model_uri="models:/hashing-idhn-tiny/2")  # another model's part
    _write(root, "database", 9, 3)  # a shard the dataset no longer has
    (tmp_path / "v3" / "database" / "part-shard-000003.parquet").write_bytes(b"not parquet")
    (tmp_path / "v3" / "database" / ".tmp-part-shard-000004.parquet123").write_bytes(b"half a write")
    shards = {f"database/shard-{i:06d}.tar": SHA_A for i in range(5)}

    done = cs.finished_parts(root, shards, MODEL_URI)

    assert done == {"database/shard-000000.tar": cs.part_uri(root, "database/shard-000000.tar")}
    assert cs.finished_parts(str(tmp_path / "nothing"), shards, MODEL_URI) == {}


def test_load_split_reads_expected_shards_in_dataset_order(tmp_path: Path) -> None:
    root = str(tmp_path / "v3" / "database")
    k1, c1 = _write(root, "database", 1, 4)
    k0, c0 = _write(root, "database", 0, 3)
    _write(root, "database", 7, 2)  # not in the dataset any more: left out
    expected = {"database/shard-000001.tar": SHA_A, "database/shard-000000.tar": SHA_A}

    split = cs.load_split(root, expected)

    assert split.keys.tolist() == k1 + k0
    np.testing.assert_array_equal(split.codes, np.concatenate([c1, c0]))
    expected = ["database/shard-000001.tar"] * 4 + ["database/shard-000000.tar"] * 3
    assert split.source_shards.tolist() == expected
    assert (split.bits, split.method, split.model_uri) == (BITS, "idhn", MODEL_URI)
    assert split.multi_hot(3)[:4].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    assert len(cs.load_split(root)) == 9  # no expectation: every part, in name order


def test_load_split_names_missing_stale_and_mixed_parts(tmp_path: Path) -> None:
    root = str(tmp_path / "v3" / "query")
    _write(root, "query", 0, 2)
    with pytest.raises(cs.CodeShardError,
                       match=r"1 of 2 source shards have no code part \(query/shard-000001"):
        cs.load_split(root, {"query/shard-000000.tar": SHA_A, "query/shard-000001.tar": SHA_A})
    with pytest.raises(cs.CodeShardError, match="part-shard-000000.parquet is stale"):
        cs.load_split(root, {"query/shard-000000.tar": SHA_B})
    _write(root, "query", 1, 2, model_uri="models:/other/1")
    with pytest.raises(cs.CodeShardError, match="models:/other/1"):
        cs.load_split(root)
    with pytest.raises(cs.CodeShardError, match="no code parts under"):
        cs.load_split(str(tmp_path / "empty"))


def test_load_split_refuses_a_key_in_two_parts(tmp_path: Path) -> None:
    root = str(tmp_path / "v3" / "query")
    for shard in (0, 1):
        source = f"query/shard-{shard:06d}.tar"
        cs.write_part(cs.part_uri(root, source), ["same", f"other-{shard}"], _codes(2, shard), None,
                      _meta(source))
    with pytest.raises(cs.CodeShardError, match=r"keys in more than one row: \['same'\]"):
        cs.load_split(root)


def test_bad_or_foreign_parquet_file_is_named_in_the_error(tmp_path: Path) -> None:
    garbage = tmp_path / "part-shard-000000.parquet"
    garbage.write_bytes(b"PAR1 but not really")
    with pytest.raises(cs.CodeShardError, match=f"{re.escape(str(garbage))}: not a readable Parquet file"):
        cs.read_part(str(garbage))
    with pytest.raises(cs.CodeShardError, match=f"{re.escape(str(garbage))}: not a readable Parquet file"):
        cs.read_part_meta(str(garbage))

    foreign = tmp_path / "part-shard-000001.parquet"
    pq.write_table(pa.table({"key": ["a"], "code": [b"\x00\x01"]}), foreign)
    with pytest.raises(cs.CodeShardError, match=f"{re.escape(str(foreign))}: not a code-shard part .*'bits'"):
        cs.read_part(str(foreign))

    wrong_width = tmp_path / "part-shard-000002.parquet"
    table = pa.table({"key": ["a"], "code": pa.array([b"\x00"], pa.binary(1)), "labels": pa.array([None],
                      pa.list_(pa.int32())), "source_shard": ["q/shard-000002.tar"]})
    pq.write_table(table.replace_schema_metadata(_meta("q/shard-000002.tar").to_metadata()), wrong_width)
    with pytest.raises(cs.CodeShardError, match=r"column 'code' is fixed_size_binary\[1\], expected "
                       r"fixed_size_binary\(3\)"):
        cs.read_part(str(wrong_width))
