"""hashing.data.shards: standard tars readable by webdataset, validation, quarantine, dataset.json last."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from hashing import storage
from hashing.data.quarantine import BadInputError, BadKind, Quarantine, TooManyBadSamplesError
from hashing.data.schema import (
    DatasetManifest,
    ShardInfo,
    SplitInfo,
    compute_fingerprint,
    load_manifest,
    sample_json,
)
from hashing.data.shards import DatasetWriter, Record, ShardWriter
from hashing.data.transforms import encode_png

CLASSES = ["cat", "coffee", "person"]


def _records(photos: list[np.ndarray], n: int, split: str = "train") -> list[Record]:
    return [Record(split=split, key=f"{split}_{i:03d}", image=encode_png(photos[i % 3]), labels=[i % 3],
                   tags=["photo", f"t{i % 2}"], source=f"test:{i}") for i in range(n)]


def test_shard_writer_rolls_over_and_is_deterministic(tmp_path: Path, photos) -> None:
    def write(root: Path) -> SplitInfo:
        w = ShardWriter(str(root), "train", shard_size=3)
        for i in range(7):
            w.write(f"k{i}", {"png": encode_png(photos[i % 3]), "json": sample_json([i % 3], [])})
        return w.close()

    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    assert [s.samples for s in a.shards] == [3, 3, 1] and a.samples == 7
    assert [s.path for s in a.shards] == ["train/shard-000000.tar", "train/shard-000001.tar",
                                          "train/shard-000002.tar"]
    assert a == b  # same input, byte-identical shards
    for s in a.shards:
        data = (tmp_path / "a" / s.path).read_bytes()
        assert len(data) == s.bytes and hashlib.sha256(data).hexdigest() == s.sha256
    with tarfile.open(tmp_path / "a" / "train/shard-000000.tar") as tar:
        assert tar.getnames() == ["k0.png", "k0.json", "k1.png", "k1.json", "k2.png", "k2.json"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tar.getmembers())


def test_shard_writer_byte_limit(tmp_path: Path, photos) -> None:
    png = encode_png(photos[0])
    w = ShardWriter(str(tmp_path), "query", shard_size=100, max_shard_bytes=2 * len(png) + 3000)
    for i in range(5):
        w.write(f"q{i}", {"png": png, "json": b"{}"})
    info = w.close()
    assert [s.samples for s in info.shards] == [2, 2, 1]
    assert not Path(w._tmpdir).exists()  # temporary folder removed


def test_shard_writer_rejects_keys_webdataset_would_split(tmp_path: Path) -> None:
    w = ShardWriter(str(tmp_path), "train")
    for key in ("a.b", "a/b", "", "x" * 129):
        with pytest.raises(ValueError, match="does not match"):
            w.write(key, {"json": b"{}"})
    w.abort()


def test_shards_are_read_by_webdataset_itself(tmp_path: Path, photos) -> None:
    q = Quarantine()
    writer = DatasetWriter(str(tmp_path), "t", CLASSES, None, q, shard_size=4)
    records = _records(photos, 6)
    for r in records:
        assert writer.add(r)
    manifest = writer.close()
    urls = [str(tmp_path / s.path) for s in manifest.split("train").shards]
    got = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in got] == [r.key for r in records]
    for s, r in zip(got, records, strict=True):
        assert set(s) >= {"__key__", "png", "json"}
        assert s["png"] == r.image
        assert json.loads(s["json"]) == {"labels": r.labels, "tags": r.tags}
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))),
                                      photos[int(r.key[-3:]) % 3])


def test_dataset_writer_manifest_and_fingerprint(tmp_path: Path, photos) -> None:
    def write(root: Path, records: list[Record]) -> DatasetManifest:
        w = DatasetWriter(str(root), "t", CLASSES, None, Quarantine(), shard_size=2)
        for r in records:
            w.add(r)
        return w.close()

    records = _records(photos, 3, "query") + _records(photos, 5, "train") + _records(photos, 1, "database")
    m = write(tmp_path / "a", records)
    assert list(m.splits) == ["train", "query", "database"]
    assert {k: v.samples for k, v in m.splits.items()} == {"train": 5, "query": 3, "database": 1}
    assert m.tags == ["photo", "t0", "t1"]  # built from the records: sorted unique
    assert load_manifest(str(tmp_path / "a")) == m
    assert m.fingerprint == compute_fingerprint(m.classes, m.tags, m.splits)
    assert write(tmp_path / "b", records).fingerprint == m.fingerprint  # deterministic
    changed = records[:-1] + [Record("database", "database_000", encode_png(photos[1]), [0], [], "x")]
    assert write(tmp_path / "c", changed).fingerprint != m.fingerprint
    assert json.loads((tmp_path / "a" / "quarantine.json").read_text())["bad"] == 0


def _bad_records(photos: list[np.ndarray]) -> list[tuple[Record, BadKind]]:
    good = encode_png(photos[0])
    return [
        (Record("train", "corrupt", good[:40], [0], [], "f:1"), BadKind.CORRUPT_IMAGE),
        (Record("train", "notimage", b"hello world", [0], [], "f:2"), BadKind.CORRUPT_IMAGE),
        (Record("train", "range", good, [3], [], "f:3"), BadKind.LABEL_OUT_OF_RANGE),
        (Record("train", "negative", good, [-1], [], "f:4"), BadKind.LABEL_OUT_OF_RANGE),
        (Record("validation", "split", good, [0], [], "f:5"), BadKind.UNKNOWN_SPLIT),
        (Record("train", "train_000", good, [1], [], "f:6"), BadKind.DUPLICATE_KEY),
        (Record("query", "bad.key", good, [1], [], "f:7"), BadKind.BAD_KEY),
    ]


def test_dataset_writer_quarantines_bad_records(tmp_path: Path, photos) -> None:
    q = Quarantine(max_bad_fraction=1.0)
    w = DatasetWriter(str(tmp_path), "t", CLASSES, None, q, shard_size=10)
    for r in _records(photos, 4):
        assert w.add(r)
    bad = _bad_records(photos)
    for r, _ in bad:
        assert not w.add(r)
    m = w.close()
    assert m.split("train").samples == 4 and list(m.splits) == ["train"]
    report = json.loads((tmp_path / "quarantine.json").read_text())
    assert report["good"] == 4 and report["bad"] == len(bad)
    assert [(x["kind"], x["key"], x["shard"]) for x in report["records"]] == \
        [(str(kind), r.key, r.source) for r, kind in bad]
    assert "test:0" in report["records"][5]["detail"]  # duplicate names the first occurrence


@pytest.mark.parametrize("case", range(7))
def test_dataset_writer_strict_fails_with_key_and_source(tmp_path: Path, photos, case: int) -> None:
    record, kind = _bad_records(photos)[case]
    w = DatasetWriter(str(tmp_path), "t", CLASSES, None, Quarantine(strict=True))
    w.add(_records(photos, 1)[0])
    with pytest.raises(BadInputError, match=f"{kind} in {record.source} key={record.key}") as err:
        w.add(record)
    assert err.value.bad.kind == kind
    w.abort()
    assert not (tmp_path / "dataset.json").exists()


def test_too_many_bad_records_fail_after_writing_the_report(tmp_path: Path, photos) -> None:
    q = Quarantine(max_bad_fraction=0.2)
    w = DatasetWriter(str(tmp_path), "t", CLASSES, None, q)
    for r in _records(photos, 3):
        w.add(r)
    w.add(Record("train", "x", b"junk", [0], [], "f:9"))  # 1 of 4 = 25% > 20%
    with pytest.raises(TooManyBadSamplesError,
                       match=r"1 of 4 samples are bad \(25.0% > max_bad_fraction 20.0%\)"):
        w.close()
    assert json.loads((tmp_path / "quarantine.json").read_text())["counts"] == {"corrupt_image": 1}
    assert not (tmp_path / "dataset.json").exists()


def test_dataset_written_to_s3(s3_bucket: str, photos) -> None:
    root = storage.join(s3_bucket, "ds")
    w = DatasetWriter(root, "t", CLASSES, ["photo"], Quarantine(), shard_size=2)
    for r in _records(photos, 3):
        w.add(r)
    m = w.close()
    assert storage.list_files(root) == [storage.join(root, p) for p in (
        "dataset.json", "quarantine.json", "train/shard-000000.tar", "train/shard-000001.tar")]
    assert load_manifest(root) == m and m.tags == ["photo"]
    shard = m.split("train").shards[1]
    assert hashlib.sha256(storage.read_bytes(storage.join(root, shard.path))).hexdigest() == shard.sha256


def test_manifest_validation(tmp_path: Path) -> None:
    info = ShardInfo(path="train/shard-000000.tar", samples=2, bytes=10, sha256="0" * 64)
    splits = {"train": SplitInfo(samples=2, shards=[info])}
    m = DatasetManifest.build("t", CLASSES, None, splits)
    with pytest.raises(ValueError, match="sum over shards"):
        SplitInfo(samples=3, shards=[info])
    with pytest.raises(ValueError, match="unknown splits"):
        DatasetManifest.build("t", CLASSES, None, {"val": splits["train"]})
    with pytest.raises(ValueError, match="unique"):
        DatasetManifest.build("t", ["a", "a"], None, splits)
    assert DatasetManifest.build("other-name", CLASSES, None, splits).fingerprint == m.fingerprint
    assert DatasetManifest.build("t", [*CLASSES, "dog"], None, splits).fingerprint != m.fingerprint
