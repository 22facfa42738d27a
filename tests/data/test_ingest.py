"""hashing.data.ingest: a dataset written once, then replaced generation by generation (``g1/``, ``g2/``)
with ``dataset.json`` switched last; a failed replacement leaves the old dataset as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from hashing.data.ingest import ingest
from hashing.data.quarantine import TooManyBadSamplesError
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.data.shards import Record
from hashing.data.transforms import encode_png
from hashing.errors import AlreadyExistsError

CLASSES = ["cat", "coffee", "person"]


def _records(photos, n: int, bad_key: bool = False) -> list[Record]:
    keys = [f"k{i}" for i in range(n)]
    if bad_key:
        keys[-1] = "not.a.key"
    return [Record(split="train", key=key, image=encode_png(photos[i % 3]), labels=[i % 3], tags=["photo"],
                   source=f"test:{i}") for i, key in enumerate(keys)]


def _shards(manifest: DatasetManifest) -> list[str]:
    return [s.path for split in manifest.splits.values() for s in split.shards]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_overwrite_writes_each_generation_beside_the_last_then_removes_it(tmp_path: Path, photos) -> None:
    out = tmp_path / "ds"

    def write(overwrite: bool) -> DatasetManifest:
        return ingest(str(out), _records(photos, 3), name="d", classes=CLASSES, tags=None, shard_size=2,
                      overwrite=overwrite, progress=False).manifest

    first = write(False)
    assert _shards(first) == ["train/shard-000000.tar", "train/shard-000001.tar"]
    with pytest.raises(AlreadyExistsError, match="--overwrite"):
        write(False)
    second = write(True)
    assert _shards(second) == ["g1/train/shard-000000.tar", "g1/train/shard-000001.tar"]
    assert _files(out) == sorted(["dataset.json", "quarantine.json", "g1/quarantine.json", *_shards(second)])
    third = write(True)
    assert _shards(third) == ["g2/train/shard-000000.tar", "g2/train/shard-000001.tar"]
    assert _files(out) == sorted(["dataset.json", "quarantine.json", "g2/quarantine.json", *_shards(third)])
    assert load_manifest(str(out)) == third and third.fingerprint != first.fingerprint  # other shard paths


def test_a_failed_overwrite_leaves_the_old_dataset_as_it_was(tmp_path: Path, photos) -> None:
    out = tmp_path / "ds"
    old = ingest(str(out), _records(photos, 3), name="d", classes=CLASSES, tags=None, progress=False).manifest
    with pytest.raises(TooManyBadSamplesError, match="the dataset already at .* is unchanged"):
        ingest(str(out), _records(photos, 4, bad_key=True), name="d", classes=CLASSES, tags=None,
               max_bad_fraction=0.0, overwrite=True, progress=False)
    assert load_manifest(str(out)) == old
    assert all((out / path).is_file() for path in _shards(old))
