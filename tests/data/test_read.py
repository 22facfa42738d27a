"""hashing.data.read: decoding without Ray, bad input in shards (quarantine / strict), Ray Data reads."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from hashing import storage
from hashing.data.quarantine import BadInputError, BadKind, BadSample, Quarantine
from hashing.data.read import (
    TORCH_COLUMNS,
    RemoteQuarantine,
    decode_sample,
    iter_shard,
    iter_split,
    read_split,
    validate_split,
)
from hashing.data.schema import DatasetManifest, UnknownSplitError, load_manifest, sample_json, write_manifest
from hashing.data.shards import ShardWriter
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import Preprocess, encode_png

CLASSES = ["cat", "coffee", "person"]
TAGS = ["photo", "t0", "t1"]
SIZE = 16


@pytest.fixture(scope="module")
def preprocess() -> Preprocess:
    return Preprocess(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _good(photos, i: int) -> tuple[str, dict[str, bytes]]:
    return f"s{i:02d}", {"png": encode_png(photos[i % 3]),
                         "json": sample_json([i % 3], ["photo", f"t{i % 2}"])}


def _write(root: str, samples: list[tuple[str, dict[str, bytes]]], shard_size: int = 3) -> DatasetManifest:
    """Write ``samples`` as given (no validation) into train shards + a matching dataset.json."""
    w = ShardWriter(root, "train", shard_size=shard_size)
    for key, members in samples:
        w.write(key, members)
    manifest = DatasetManifest.build("t", CLASSES, TAGS, {"train": w.close()})
    write_manifest(root, manifest)
    return manifest


def test_decode_sample_good(photos, preprocess) -> None:
    key, raw = _good(photos, 4)
    vocab = TagVocabulary(TAGS)
    out = decode_sample({"__key__": key, **raw}, "shard.tar", len(CLASSES), preprocess, vocab)
    assert out["key"] == "s04"
    np.testing.assert_array_equal(out["labels"], np.array([0, 1, 0], np.float32))
    np.testing.assert_array_equal(out["tags"], vocab.bag_of_words(["photo", "t0"]))
    assert out["image"].shape == (3, SIZE, SIZE) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"], preprocess(photos[1]))
    raw_out = decode_sample({"__key__": key, **raw}, "shard.tar", len(CLASSES))
    np.testing.assert_array_equal(raw_out["image"], photos[1])  # PNG is lossless
    assert raw_out["tags"].shape == (0,)


@pytest.mark.parametrize(("members", "kind", "detail"), [
    ({"json": b'{"labels": [0]}'}, BadKind.MISSING_IMAGE, "no .png/.jpg/.webp member"),
    ({"png": b"\x89PNG\r\n\x1a\nnot really", "json": b'{"labels": [0]}'}, BadKind.CORRUPT_IMAGE, ""),
    ({"png": None, "json": b"{labels: [0]"}, BadKind.BAD_JSON, "unreadable JSON"),
    ({"png": None, "json": b"\xff\xfe"}, BadKind.BAD_JSON, "unreadable JSON"),
    ({"png": None, "json": b"[0, 1]"}, BadKind.BAD_JSON, "expected an object"),
    ({"png": None, "json": b'{"labels": "0"}'}, BadKind.BAD_JSON, "list of class indices"),
    ({"png": None, "json": b'{"labels": [true]}'}, BadKind.BAD_JSON, "list of class indices"),
    ({"png": None, "json": b'{"labels": [0], "tags": [1]}'}, BadKind.BAD_JSON, "list of strings"),
    ({"png": None}, BadKind.BAD_JSON, "no .json member"),
    ({"png": None, "json": b'{"labels": [1, 3]}'}, BadKind.LABEL_OUT_OF_RANGE, "label 3 not in [0, 3)"),
])
def test_decode_sample_bad(photos, members, kind, detail) -> None:
    raw = {"__key__": "k1",
           **{k: (v if v is not None else encode_png(photos[0])) for k, v in members.items()}}
    out = decode_sample(raw, "s3://b/train/shard-000004.tar", len(CLASSES))
    assert isinstance(out, BadSample)
    assert (out.kind, out.key, out.shard) == (kind, "k1", "s3://b/train/shard-000004.tar")
    assert detail in out.detail


def test_iter_split_reads_everything_in_order(tmp_path: Path, photos, preprocess) -> None:
    samples = [_good(photos, i) for i in range(7)]
    _write(str(tmp_path), samples)
    q = Quarantine()
    got = list(iter_split(str(tmp_path), "train", preprocess, quarantine=q))
    assert [g["key"] for g in got] == [k for k, _ in samples]
    assert q.good == 7 and q.records == []
    np.testing.assert_allclose(got[5]["image"], preprocess(photos[2]))
    with pytest.raises(UnknownSplitError, match=r"has no split 'query'; its splits: \['train'\]"):
        next(iter_split(str(tmp_path), "query"))
    with pytest.raises(FileNotFoundError, match="ingest"):
        next(iter_split(str(tmp_path / "nothing"), "train"))


def test_ray_decode_hands_on_a_shard_in_blocks_of_about_decoded_block_bytes(
    tmp_path: Path, photos, preprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hashing.data import read

    samples = [_good(photos, i) for i in range(7)] + [("bad",
                                                       {"png": b"not a png", "json": sample_json([0], [])})]
    manifest = _write(str(tmp_path), samples, shard_size=8)
    info = manifest.split("train").shards[0]
    path = str(tmp_path / info.path)
    monkeypatch.setattr(read, "DECODED_BLOCK_BYTES", 3 * 3 * SIZE * SIZE * 4 + 100)  # 3 float32 images
    q = Quarantine()
    blocks = list(read._decode_shard_batch(
        {"bytes": [Path(path).read_bytes()], "path": [path]}, {read._normalise(path): (path, info)},
        classes=len(CLASSES), preprocess=preprocess, vocab=TagVocabulary(TAGS), image_shape=(3, SIZE, SIZE),
        strict=False, quarantine=_Reports(q)))
    assert [len(b["key"]) for b in blocks] == [3, 3, 1]
    assert [k for b in blocks for k in b["key"]] == [k for k, _ in samples[:7]]
    assert all(b["image"].shape[1:] == (3, SIZE, SIZE) for b in blocks)
    assert q.good == 7 and [r.key for r in q.records] == ["bad"]


class _Reports:
    """``RemoteQuarantine.report`` into a local ``Quarantine`` (the UDF called without Ray)."""

    def __init__(self, quarantine: Quarantine) -> None:
        self.quarantine = quarantine

    def report(self, shard: str, good: int, bad: list[BadSample]) -> None:
        self.quarantine.add_good(good)
        for sample in bad:
            self.quarantine.add(sample)


def _bad_dataset(root: str, photos) -> list[tuple[str, BadKind, str]]:
    """A train split with one bad sample of each in-shard kind; returns (key, kind, shard) expected."""
    good = [_good(photos, i) for i in range(6)]
    png = encode_png(photos[0])
    samples = [
        good[0],
        ("corrupt", {"png": png[: len(png) // 2], "json": sample_json([0], [])}),
        good[1],  # shard 0
        ("noimage", {"json": sample_json([0], [])}),
        ("badjson", {"png": png, "json": b'{"labels": [0'}),
        good[2],  # shard 1
        ("range", {"png": png, "json": sample_json([5], [])}),
        good[0],  # duplicate key of shard 0
        good[3],  # shard 2
        good[4],
    ]
    _write(root, samples)
    shard = [storage.join(root, f"train/shard-{i:06d}.tar") for i in range(4)]
    return [("corrupt", BadKind.CORRUPT_IMAGE, shard[0]), ("noimage", BadKind.MISSING_IMAGE, shard[1]),
            ("badjson", BadKind.BAD_JSON, shard[1]), ("range", BadKind.LABEL_OUT_OF_RANGE, shard[2]),
            ("s00", BadKind.DUPLICATE_KEY, shard[2])]


def test_bad_samples_are_quarantined_with_shard_and_key(tmp_path: Path, photos) -> None:
    expected = _bad_dataset(str(tmp_path), photos)
    q = Quarantine(max_bad_fraction=1.0)
    keys = [s["key"] for s in iter_split(str(tmp_path), "train", quarantine=q)]
    assert keys == ["s00", "s01", "s02", "s03", "s04"]
    assert [(r.key, r.kind, r.shard) for r in q.records] == expected
    assert q.good == 5 and q.bad_fraction == 0.5
    report = validate_split(str(tmp_path), "train", max_bad_fraction=1.0)
    assert report.counts() == {"bad_json": 1, "corrupt_image": 1, "duplicate_key": 1,
                               "label_out_of_range": 1, "missing_image": 1}
    with pytest.raises(Exception, match="5 of 10 samples are bad"):
        validate_split(str(tmp_path), "train", max_bad_fraction=0.4).check()


def test_strict_mode_fails_on_first_bad_sample(tmp_path: Path, photos) -> None:
    _bad_dataset(str(tmp_path), photos)
    shard = storage.join(str(tmp_path), "train/shard-000000.tar")
    with pytest.raises(BadInputError, match=f"corrupt_image in {shard} key=corrupt: .*strict"):
        validate_split(str(tmp_path), "train", strict=True)


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


@pytest.mark.parametrize("cut", ["data", "header"])
def test_truncated_tar_keeps_samples_before_the_cut(tmp_path: Path, photos, cut: str) -> None:
    _write(str(tmp_path), [_good(photos, i) for i in range(8)], shard_size=5)
    path = tmp_path / "train/shard-000000.tar"
    header, data = _member_offsets(path)["s03.png"]
    path.write_bytes(path.read_bytes()[: data + 100 if cut == "data" else header])
    q = Quarantine(max_bad_fraction=1.0)
    keys = [s["key"] for s in iter_split(str(tmp_path), "train", quarantine=q)]
    assert keys == ["s00", "s01", "s02", "s05", "s06", "s07"]  # shard 1 read in full
    assert len(q.records) == 1
    rec = q.records[0]
    assert (rec.kind, rec.shard) == (BadKind.TRUNCATED_TAR, str(path))
    # Cut inside a member: the sample in progress is named. Cut between members: tarfile sees a
    # clean end, the size check against dataset.json catches it.
    assert rec.key == ("s03" if cut == "data" else None)
    assert "3 samples" in rec.detail or "3 of 5 samples" in rec.detail


def test_changed_shard_is_reported_but_its_samples_kept(tmp_path: Path, photos) -> None:
    _write(str(tmp_path), [_good(photos, i) for i in range(3)])
    path = tmp_path / "train/shard-000000.tar"
    data = path.read_bytes()
    assert data.count(b'"photo"') == 3
    path.write_bytes(data.replace(b'"photo"', b'"phota"', 1))  # still valid JSON
    q = Quarantine(max_bad_fraction=1.0)
    assert len(list(iter_split(str(tmp_path), "train", quarantine=q))) == 3
    assert [(r.kind, r.shard, r.key) for r in q.records] == [(BadKind.CHECKSUM_MISMATCH, str(path), None)]


def test_iter_shard_reports_odd_members_and_garbage() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("a.json", b"{}"), ("noext", b"x"), ("a.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    out = list(iter_shard(io.BytesIO(buf.getvalue()), "x.tar"))
    assert [o.kind for o in out if isinstance(o, BadSample)] == [BadKind.BAD_MEMBER] * 3
    assert [o for o in out if not isinstance(o, BadSample)] == [{"__key__": "a", "json": b"{}"}]
    garbage = list(iter_shard(io.BytesIO(b"this is not a tar file" * 40), "y.tar"))
    assert [(g.kind, g.shard) for g in garbage] == [(BadKind.TRUNCATED_TAR, "y.tar")]


# --- Ray Data (one Ray instance for the session; few tests: Ray start-up costs ~10 s) ----------------

@pytest.mark.slow
def test_read_split_with_ray(ray_local, tiny_dataset: str, preprocess) -> None:
    manifest = load_manifest(tiny_dataset)
    ds = read_split(tiny_dataset, "query", preprocess)
    rows = ds.take_all()
    assert len(rows) == manifest.split("query").samples
    expected = {s["key"]: s for s in iter_split(tiny_dataset, "query", preprocess)}
    assert sorted(r["key"] for r in rows) == sorted(expected)
    for r in rows[:5]:
        assert r["image"].shape == (3, SIZE, SIZE) and r["image"].dtype == np.float32
        np.testing.assert_allclose(r["image"], expected[r["key"]]["image"])
        np.testing.assert_array_equal(r["labels"], expected[r["key"]]["labels"])
        np.testing.assert_array_equal(r["tags"], expected[r["key"]]["tags"])
    batch = next(iter(ds.select_columns(list(TORCH_COLUMNS)).iter_torch_batches(batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE)
    assert batch["labels"].shape == (4, len(manifest.classes))
    assert batch["tags"].shape == (4, len(manifest.tags))


@pytest.mark.slow
def test_read_split_with_ray_reports_bad_samples(ray_local, tmp_path: Path, photos, preprocess) -> None:
    expected = _bad_dataset(str(tmp_path), photos)
    remote = RemoteQuarantine(max_bad_fraction=0.1)
    for _ in range(2):  # two passes (epochs) do not double count
        assert ds_count(read_split(str(tmp_path), "train", preprocess, quarantine=remote)) == 6
    result = remote.result()
    # Duplicate keys across shards are an ingest-time check; within the Ray read only per shard.
    assert result.good == 6
    assert sorted((r.key, r.kind, r.shard) for r in result.records) == sorted(expected[:-1])
    with pytest.raises(Exception, match="4 of 10 samples are bad"):
        result.check()
    with pytest.raises(Exception, match=r"corrupt_image in .*shard-000000.tar key=corrupt"):
        read_split(str(tmp_path), "train", preprocess, strict=True).take_all()
    with pytest.raises(UnknownSplitError, match="its splits"):
        read_split(str(tmp_path), "database", preprocess)


def ds_count(ds) -> int:
    return sum(len(b["key"]) for b in ds.iter_batches(batch_size=None))


@pytest.mark.slow
def test_read_split_from_s3_with_ray(ray_local, s3_bucket: str, photos, preprocess) -> None:
    """The AWS variables are set after ray.init: the workers resolve their own credentials (``ray_local``
    gives them the moto ones) and get the endpoint with the filesystem."""
    root = storage.join(s3_bucket, "ds")
    _write(root, [_good(photos, i) for i in range(5)], shard_size=2)
    rows = read_split(root, "train", preprocess).take_all()
    assert sorted(r["key"] for r in rows) == [f"s{i:02d}" for i in range(5)]
    assert json.loads(storage.read_bytes(storage.join(root,
                                                      "dataset.json")))["splits"]["train"]["samples"] == 5
