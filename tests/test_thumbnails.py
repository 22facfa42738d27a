"""hashing.thumbnails: a sample's stored image by key, from local and S3 datasets, no Ray."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hashing import storage
from hashing.data.schema import load_manifest
from hashing.errors import InputError
from hashing.thumbnails import ThumbnailStore, UnknownKeyError, index_shard, to_png


def _stored_members(dataset: str, split: str) -> dict[str, bytes]:
    """``key -> image bytes`` of every sample of ``split``, read with tarfile directly."""
    members = {}
    for shard in load_manifest(dataset).split(split).shards:
        with tarfile.open(f"{dataset}/{shard.path}") as tar:
            for name in tar.getnames():
                if name.endswith(".png"):
                    members[name.removesuffix(".png")] = tar.extractfile(name).read()
    return members


def test_every_key_of_every_split_gives_its_stored_png(tiny_dataset: str) -> None:
    store = ThumbnailStore(tiny_dataset)
    for split in ("query", "database"):
        stored = _stored_members(tiny_dataset, split)
        assert len(stored) == load_manifest(tiny_dataset).split(split).samples
        for key in list(stored)[:: max(1, len(stored) // 40)]:
            assert store.png(key) == stored[key], key
    assert set(store.index()) >= set(_stored_members(tiny_dataset, "train"))


def test_splits_limit_the_index_and_an_unknown_key_names_the_key(tiny_dataset: str) -> None:
    store = ThumbnailStore(tiny_dataset, splits=("query",))
    query_key = next(iter(_stored_members(tiny_dataset, "query")))
    database_key = next(iter(_stored_members(tiny_dataset, "database")))
    assert store.png(query_key).startswith(b"\x89PNG")
    with pytest.raises(UnknownKeyError, match=database_key):
        store.png(database_key)
    with pytest.raises(UnknownKeyError, match="no-such-key"):
        ThumbnailStore(tiny_dataset).png("no-such-key")


def test_index_shard_skips_non_image_members_and_bad_keys(tmp_path: Path) -> None:
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tar:
        members = (("a.png", b"first"), ("a.json", b"{}"), ("../evil.png", b"x"), ("b.JPG", b"jpeg!"))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = index_shard(str(shard))
    assert sorted(index) == ["a", "b"]
    raw = shard.read_bytes()
    assert raw[index["a"].offset: index["a"].offset + index["a"].size] == b"first"
    assert (index["b"].extension, index["b"].size) == ("jpg", 5)


def test_jpeg_and_webp_are_converted_to_png_and_garbage_is_refused() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for fmt in ("JPEG", "WEBP"):
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format=fmt)
        png = to_png(out.getvalue(), "test image")
        with Image.open(io.BytesIO(png)) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (10, 12), "RGB")
    with pytest.raises(InputError, match="the thing is not a readable image"):
        to_png(b"not an image", "the thing")


def test_s3_dataset(tiny_dataset: str, s3_bucket: str) -> None:
    root = storage.join(s3_bucket, "datasets", "tiny")
    manifest = load_manifest(tiny_dataset)
    storage.write_bytes(storage.join(root, "dataset.json"), Path(tiny_dataset, "dataset.json").read_bytes())
    for shard in manifest.split("database").shards:
        storage.write_bytes(storage.join(root, shard.path), Path(tiny_dataset, shard.path).read_bytes())
    stored = _stored_members(tiny_dataset, "database")
    store = ThumbnailStore(root, splits=("database",))
    keys = list(stored)
    for key in (keys[0], keys[len(keys) // 2], keys[-1]):
        assert store.png(key) == stored[key]
    assert len(store.index()) == len(stored)
