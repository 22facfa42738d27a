"""hashing.encoding without Ray: ``Encoder`` and the per-shard ``ShardEncoder`` on real shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from hashing import storage
from hashing.code_shards import CodePart, read_part
from hashing.codes import pack_signs
from hashing.data.quarantine import BadKind
from hashing.data.read import iter_split
from hashing.data.schema import load_manifest, sample_json
from hashing.data.shards import ShardWriter
from hashing.encoding import Encoder, ShardEncoder, ShardRef, bad_samples_from_json
from hashing.methods import build_method
from hashing.models import build_backbone

SIZE = 32
BITS = 16
MODEL_URI = "models:/hashing-idhn-tiny/1"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """A random small-CNN IDHN (left in train mode) behind an ``Encoder`` batching fewer rows than a shard."""
    torch.manual_seed(0)
    method = build_method("idhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=10)
    return Encoder(method, SIZE, batch_size=12)


def _eval_codes(method: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """The method's own relaxed codes float32[n, K] of ``images``, in eval mode, one forward pass."""
    was_training = method.training
    method.eval()
    with torch.inference_mode():
        codes = method.encode_image(images).numpy()
    method.train(was_training)
    return codes


def _shard_encoder(encoder: Encoder, refs: list[ShardRef], num_classes: int) -> ShardEncoder:
    return ShardEncoder(MODEL_URI, None, {ref.uri: ref for ref in refs}, num_classes, "fp-test",
                        encoder=encoder)


def test_encode_images_is_packed_sign_of_the_method(encoder: Encoder) -> None:
    images = torch.randn(30, 3, SIZE, SIZE)
    codes = encoder.encode_images(images.numpy())
    assert codes.dtype == np.uint8 and codes.shape == (30, BITS // 8)
    np.testing.assert_array_equal(codes, pack_signs(_eval_codes(encoder.method, images)))
    assert encoder.encode_images(np.zeros((0, 3, SIZE, SIZE), np.float32)).shape == (0, BITS // 8)
    with pytest.raises(ValueError, match=r"float32\[n, 3, S, S\]"):
        encoder.encode_images(np.zeros((2, SIZE, SIZE), np.float32))


def test_relaxed_codes_run_in_eval_mode_in_chunks_and_restore_the_mode(encoder: Encoder) -> None:
    images = torch.randn(30, 3, SIZE, SIZE)
    assert encoder.method.training
    relaxed = encoder.relaxed(images)  # 3 chunks of at most 12 rows
    assert relaxed.dtype == np.float32 and relaxed.shape == (30, BITS)
    assert encoder.method.training  # put back as it was found
    # Eval-mode BatchNorm: a row's code depends neither on its chunk nor on the other rows of its batch.
    np.testing.assert_allclose(relaxed, _eval_codes(encoder.method, images), rtol=1e-5, atol=1e-6)
    batches = [{"image": images[:7]}, {"image": images[7:]}]
    np.testing.assert_allclose(encoder.relaxed_batches(batches), relaxed, rtol=1e-5, atol=1e-6)
    assert encoder.relaxed_batches([]).shape == (0, BITS)
    encoder.method.eval()
    encoder.relaxed(images[:2])
    assert not encoder.method.training
    encoder.method.train()


def test_text_codes_of_a_multimodal_method_and_clear_errors_for_a_missing_modality(encoder: Encoder) -> None:
    torch.manual_seed(0)
    method = build_method("dsmhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=3,
                          tag_vocab_size=5, text_hidden=8)
    tags = torch.eye(5)
    text = Encoder(method, batch_size=2).relaxed_batches([{"tags": tags[:3]}, {"tags": tags[3:]}], "text")
    with torch.inference_mode():
        expected = method.eval().encode_text(tags).numpy()
    np.testing.assert_allclose(text, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(Encoder(method).encode_tags(tags.numpy()), pack_signs(expected))
    with pytest.raises(ValueError, match="'text' encoder"):
        encoder.relaxed_batches([{"tags": torch.zeros(2, 3)}], modality="text")
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        encoder.relaxed(torch.zeros(2, 3), modality="audio")
    with pytest.raises(ValueError, match="image_size"):
        Encoder(method).encode_raw([np.zeros((8, 8, 3), np.uint8)])


def test_shard_parts_hold_the_methods_codes_of_every_sample(encoder: Encoder, tiny_dataset: str,
                                                           tmp_path: Path) -> None:
    manifest = load_manifest(tiny_dataset)
    shards = manifest.split("query").shards
    refs = [ShardRef("query", storage.join(tiny_dataset, s.path), s) for s in shards]
    shard_encoder = _shard_encoder(encoder, refs, len(manifest.classes))

    out = shard_encoder({"bytes": np.array([storage.read_bytes(r.uri) for r in refs], dtype=object),
                         "path": np.array([r.uri for r in refs], dtype=object)})

    assert out["source_shard"].tolist() == [s.path for s in shards]
    assert out["rows"].tolist() == [s.samples for s in shards]
    assert out["bad"].tolist() == ["[]"] * len(shards)
    parts = [_read(part, tmp_path) for part in out["part"]]
    samples = list(iter_split(tiny_dataset, "query", encoder.preprocess))
    images = torch.as_tensor(np.stack([s["image"] for s in samples]))
    expected = pack_signs(_eval_codes(encoder.method, images))
    assert np.concatenate([p.keys for p in parts]).tolist() == [s["key"] for s in samples]
    np.testing.assert_array_equal(np.concatenate([p.codes for p in parts]), expected)
    labels = [row.tolist() for p in parts for row in p.labels]
    assert labels == [np.flatnonzero(s["labels"]).tolist() for s in samples]
    assert parts[1].meta.source_shard == shards[1].path and parts[1].meta.source_sha256 == shards[1].sha256
    assert (parts[0].meta.model_uri, parts[0].meta.bits, parts[0].meta.dataset_fingerprint) == (
        MODEL_URI, BITS, "fp-test")


def _read(part: bytes, folder: Path) -> CodePart:
    """``read_part`` of a part returned in memory."""
    path = folder / f"part-{len(list(folder.iterdir()))}.parquet"
    path.write_bytes(part)
    return read_part(str(path))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_sample_is_quarantined_with_its_key_not_dropped(encoder: Encoder, tmp_path: Path) -> None:
    photo = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((40, 30)))
    writer = ShardWriter(str(tmp_path), "database", shard_size=10)
    writer.write("good-0", {"png": _png(photo), "json": sample_json([1], [])})
    writer.write("broken", {"png": b"\x89PNG\r\n\x1a\n truncated", "json": sample_json([0], [])})
    writer.write("good-1", {"png": _png(photo[::-1]), "json": sample_json([0, 2], [])})
    (info,) = writer.close().shards
    ref = ShardRef("database", storage.join(str(tmp_path), info.path), info)
    data = storage.read_bytes(ref.uri)

    result = _shard_encoder(encoder, [ref], num_classes=3).encode_shard(data, ref)

    assert result.rows == 2
    assert [(b.kind, b.key, b.shard) for b in result.bad] == [(BadKind.CORRUPT_IMAGE, "broken", ref.uri)]
    part = _read(result.part, tmp_path)
    assert part.keys.tolist() == ["good-0", "good-1"]
    assert [row.tolist() for row in part.labels] == [[1], [0, 2]]
    # The bad records travel to the driver as JSON in the batch's "bad" column.
    out = _shard_encoder(encoder, [ref], 3)({"bytes": np.array([data], dtype=object),
                                            "path": np.array([ref.uri], dtype=object)})
    assert bad_samples_from_json(out["bad"][0]) == result.bad
    assert json.loads(out["bad"][0])[0]["kind"] == "corrupt_image"

    # Bytes that differ from dataset.json are reported too, after the samples that could be read.
    changed = _shard_encoder(encoder, [ref], 3).encode_shard(data[:-1024], ref)
    assert [b.kind for b in changed.bad][-1] in (BadKind.TRUNCATED_TAR, BadKind.CHECKSUM_MISMATCH)


def test_unknown_shard_path_is_an_error(encoder: Encoder, tiny_dataset: str) -> None:
    shard = load_manifest(tiny_dataset).split("query").shards[0]
    ref = ShardRef("query", storage.join(tiny_dataset, shard.path), shard)
    with pytest.raises(KeyError, match="not one of the 1 shards"):
        _shard_encoder(encoder, [ref], 10)({"bytes": np.array([b""], dtype=object),
                                           "path": np.array(["/elsewhere/shard-000000.tar"], dtype=object)})
