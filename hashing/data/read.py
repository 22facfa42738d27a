"""Reading datasets: shard tars -> validated samples -> model-ready arrays, with or without Ray.

Without Ray: ``decode_sample`` (one WebDataset-style sample dict), ``iter_shard`` (one tar stream),
``iter_split`` (a whole split, plain Python) and ``validate_split`` (count the bad samples of a split).

With Ray: ``read_split`` returns a ``ray.data.Dataset`` with one row per good sample:

    ``key``     string
    ``image``   float32[3, S, S]  (``preprocess`` output)
    ``labels``  float32[c]        multi-hot over ``dataset.json`` classes
    ``tags``    float32[V]        bag-of-words over the ``dataset.json`` tag vocabulary (V = 0 without)

``iter_torch_batches`` cannot take the string column: use ``ds.select_columns(list(TORCH_COLUMNS))``.

Bad samples (see ``hashing.data.quarantine``) are never returned. Tars are parsed in stream mode;
member names are only split into key and extension, never used as file system paths. Each shard's
size and sha256 are checked against ``dataset.json``: a shard that was cut short or changed after
ingest is reported (``truncated_tar`` / ``checksum_mismatch``) and the samples read before the damage
are kept. How they are counted:

- ``iter_split`` / ``validate_split``: into the ``Quarantine`` passed in (strict: raise at once);
  duplicate keys are checked across the split.
- ``read_split``: ``strict=True`` fails the Ray job on the first bad sample (``BadInputError`` naming
  shard and key). Otherwise each worker logs the bad samples, and when a ``RemoteQuarantine`` is
  passed, reports them per shard to it; after consuming the dataset, ``RemoteQuarantine.result()``
  gives a ``Quarantine`` to log with the run and ``check()`` against the bad-fraction limit.
  Duplicate keys are checked within a shard (ingest guarantees unique keys across the dataset).
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from hashing import storage
from hashing.data.checksum import ChecksumStream
from hashing.data.quarantine import BadInputError, BadKind, BadSample, Quarantine
from hashing.data.schema import (
    IMAGE_EXTENSIONS,
    KEY_PATTERN,
    SampleError,
    ShardInfo,
    load_manifest,
    parse_sample_json,
)
from hashing.data.tags import TagVocabulary
from hashing.data.transforms import ImageDecodeError, ImageTooLargeError, decode_image
from hashing.errors import InputError

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

TORCH_COLUMNS = ("image", "labels", "tags")
# Image bytes a Ray Data decode task hands on at a time (one block): 213 images of 3x112x112 float32,
# a whole 1000-image shard at 32 px.
DECODED_BLOCK_BYTES = 32 << 20
# WebDataset's member naming: key = folder part + file name up to the first dot; extension = the rest.
_MEMBER = re.compile(r"((?:.*/)?[^./]+)\.([^/]+)")

# What ``preprocess`` arguments are: image uint8[H, W, 3] -> model input (``transforms.Preprocess`` is one).
ImageTransform = Callable[[np.ndarray], np.ndarray]


def decode_sample(raw: dict, shard: str, classes: int, preprocess: ImageTransform | None = None,
                  vocab: TagVocabulary | None = None) -> dict | BadSample:
    """Validate and decode one sample.

    Args:
        raw: WebDataset-style dict: ``__key__`` str, one of ``png``/``jpg``/``webp`` bytes, ``json`` bytes.
        shard: shard URI (or source) for error reports.
        classes: number of classes c.
        preprocess: image uint8[H, W, 3] -> float32[3, S, S]; None keeps the decoded uint8[H, W, 3].
        vocab: tag vocabulary (V words); None gives ``tags`` float32[0].

    Returns:
        ``{"key": str, "image": array, "labels": float32[c] multi-hot, "tags": float32[V]}``, or a
        ``BadSample`` saying what is wrong.
    """
    key = raw.get("__key__")
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        return BadSample(BadKind.MISSING_IMAGE, f"no .png/.jpg/.webp member; members: {sorted(raw)}",
                         key=key, shard=shard)
    if "json" not in raw:
        return BadSample(BadKind.BAD_JSON, f"no .json member; members: {sorted(raw)}", key=key, shard=shard)
    try:
        labels, tags = parse_sample_json(raw["json"], classes)
    except SampleError as exc:
        return BadSample(exc.kind, exc.detail, key=key, shard=shard)
    try:
        image = decode_image(raw[ext], f"{shard}:{key}.{ext}")
    except ImageDecodeError as exc:
        kind = BadKind.TOO_LARGE if isinstance(exc, ImageTooLargeError) else BadKind.CORRUPT_IMAGE
        return BadSample(kind, str(exc), key=key, shard=shard)
    multi_hot = np.zeros(classes, dtype=np.float32)
    multi_hot[labels] = 1.0
    return {
        "key": key,
        "image": preprocess(image) if preprocess is not None else image,
        "labels": multi_hot,
        "tags": vocab.bag_of_words(tags) if vocab is not None else np.zeros(0, dtype=np.float32),
    }


def iter_shard(stream: BinaryIO, shard: str) -> Iterator[dict | BadSample]:
    """Group a tar stream's members into WebDataset-style samples (``{"__key__": ..., ext: bytes}``).

    Consecutive members with the same key form a sample. Non-file members, names without an
    extension and repeated members are reported as ``bad_member``; keys outside ``KEY_PATTERN``
    (``../../x``, ``/tmp/abs``) as ``bad_key``. A tar that cannot be read to the
    end yields one ``truncated_tar`` record (key = the sample in progress) after the samples before it.
    """
    current: dict | None = None
    bad_key: str | None = None
    done = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.isdir():
                    continue
                match = _MEMBER.fullmatch(member.name)
                if not member.isfile() or match is None:
                    yield BadSample(BadKind.BAD_MEMBER, f"tar member {member.name!r} is not a regular file "
                                    "named key.ext", key=match.group(1) if match else None, shard=shard)
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if not KEY_PATTERN.fullmatch(key):
                    if key != bad_key:  # one record per sample, not per member
                        yield BadSample(BadKind.BAD_KEY, f"tar member {member.name!r}: the key must match "
                                        f"{KEY_PATTERN.pattern}", key=key, shard=shard)
                    bad_key = key
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    done += 1
                    current = None
                if current is None:
                    current = {"__key__": key}
                data = tar.extractfile(member).read()
                if ext in current:
                    yield BadSample(BadKind.BAD_MEMBER, f"member {member.name!r} repeated; kept the first",
                                    key=key, shard=shard)
                    continue
                current[ext] = data
    except (tarfile.TarError, EOFError) as exc:
        key = current["__key__"] if current else None
        yield BadSample(BadKind.TRUNCATED_TAR, f"tar unreadable after {done} samples ({exc}); the samples "
                        "before it were kept", key=key, shard=shard)
        return
    if current is not None:
        yield current


def decode_shard(stream: BinaryIO, shard: str, info: ShardInfo, classes: int,
                 preprocess: ImageTransform | None,
                 vocab: TagVocabulary | None) -> Iterator[dict | BadSample]:
    """Decode one whole shard file: each good sample as ``decode_sample``'s dict, each bad one as a
    ``BadSample``, then a ``BadSample`` if the bytes read differ from ``info`` (size or sha256).

    Args:
        stream: the shard file's bytes (read to the end, so the checksum covers all of it).
        shard: the shard's URI, for messages and bad-sample records.
        info: the shard's ``dataset.json`` entry.
        classes: c, for label validation.
        preprocess: images -> float32[3, S, S] (None: keep uint8[H, W, 3]).
        vocab: tag vocabulary for the text modality (None: no tag vectors).
    """
    reader = ChecksumStream(stream)
    seen: set[str] = set()
    for raw in iter_shard(reader, shard):
        if isinstance(raw, BadSample):
            yield raw
            if raw.kind == BadKind.TRUNCATED_TAR:
                return
            continue
        if raw["__key__"] in seen:
            yield BadSample(BadKind.DUPLICATE_KEY, "key repeated within the shard", key=raw["__key__"],
                            shard=shard)
            continue
        seen.add(raw["__key__"])
        yield decode_sample(raw, shard, classes, preprocess, vocab)
    reader.drain()
    if reader.size != info.bytes or reader.sha.hexdigest() != info.sha256:
        kind = BadKind.TRUNCATED_TAR if reader.size < info.bytes else BadKind.CHECKSUM_MISMATCH
        yield BadSample(kind, f"shard has {reader.size} bytes (sha256 {reader.sha.hexdigest()[:12]}...), "
                        f"dataset.json says {info.bytes} ({info.sha256[:12]}...): changed after ingest; "
                        f"{len(seen)} of {info.samples} samples were found", shard=shard)


def _vocab(tags: list[str] | None) -> TagVocabulary | None:
    return TagVocabulary(tags) if tags else None


def iter_split(root: str, split: str, preprocess: ImageTransform | None = None, *,
               quarantine: Quarantine | None = None) -> Iterator[dict]:
    """Yield the good samples of ``split`` in shard order (see ``decode_sample`` for the dict).

    Bad samples go to ``quarantine`` (default: a non-strict one, which logs them). Raises
    ``UnknownSplitError`` listing the dataset's splits, FileNotFoundError for a missing shard.
    """
    manifest = load_manifest(root)
    info = manifest.split(split)
    quarantine = quarantine if quarantine is not None else Quarantine()
    vocab = _vocab(manifest.tags)
    seen: set[str] = set()
    for shard in info.shards:
        uri = storage.join(root, shard.path)
        with storage.open_input(uri) as stream:
            for out in decode_shard(stream, uri, shard, len(manifest.classes), preprocess, vocab):
                if isinstance(out, BadSample):
                    quarantine.add(out)
                elif out["key"] in seen:
                    quarantine.add(BadSample(BadKind.DUPLICATE_KEY, "key already read from an earlier shard",
                                             key=out["key"], shard=uri))
                else:
                    seen.add(out["key"])
                    quarantine.add_good()
                    yield out


def validate_split(root: str, split: str, *, strict: bool = False,
                   max_bad_fraction: float = 0.01) -> Quarantine:
    """Read a whole split (images decoded, not preprocessed) and return its quarantine report.

    The caller decides what to do with it (``check()`` raises past ``max_bad_fraction``).
    """
    quarantine = Quarantine(strict=strict, max_bad_fraction=max_bad_fraction)
    for _ in iter_split(root, split, quarantine=quarantine):
        pass
    return quarantine


class _ShardReports:
    """Ray actor body: the latest (good count, bad records) per shard URI (repeated passes overwrite)."""

    def __init__(self) -> None:
        self.reports: dict[str, tuple[int, list[BadSample]]] = {}

    def put(self, shard: str, good: int, bad: list[BadSample]) -> None:
        self.reports[shard] = (good, bad)

    def get(self) -> dict[str, tuple[int, list[BadSample]]]:
        return self.reports


class RemoteQuarantine:
    """Collects bad samples from ``read_split``'s Ray workers (held by a zero-CPU Ray actor).

    Create it on the driver after ``ray.init``, pass it to ``read_split``, consume the dataset, then
    call ``result()``. Per-shard reports are kept once, so several passes (epochs) do not double count.
    """

    def __init__(self, max_bad_fraction: float = 0.01) -> None:
        import ray

        self.max_bad_fraction = max_bad_fraction
        self._actor = ray.remote(num_cpus=0)(_ShardReports).remote()

    def report(self, shard: str, good: int, bad: list[BadSample]) -> None:
        """Record one shard's outcome (called by the workers; waits until stored)."""
        import ray

        ray.get(self._actor.put.remote(shard, good, bad))

    def result(self) -> Quarantine:
        """A ``Quarantine`` with the good count and bad records of every shard read so far."""
        import ray

        out = Quarantine(max_bad_fraction=self.max_bad_fraction)
        for _, (good, bad) in sorted(ray.get(self._actor.get.remote()).items()):
            out.merge(good, bad)
        return out


def _decode_shard_batch(batch: dict[str, np.ndarray], shards: dict[str, tuple[str, ShardInfo]], classes: int,
                        preprocess: ImageTransform, vocab: TagVocabulary | None, image_shape: tuple[int, ...],
                        strict: bool, quarantine: RemoteQuarantine | None) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data UDF: a batch of whole shards (``bytes``, ``path``) -> decoded samples, yielded in blocks
    of about ``DECODED_BLOCK_BYTES`` of images (so training starts once the first block is decoded, not
    the whole shard, and a worker holds one block of large images at a time)."""
    rows_per_block = max(1,
                         DECODED_BLOCK_BYTES // (np.dtype(np.float32).itemsize * int(np.prod(image_shape))))
    rows: list[dict] = []
    yielded = False
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        uri, info = shards[_normalise(path)]
        good, bad = 0, []
        for out in decode_shard(io.BytesIO(data), uri, info, classes, preprocess, vocab):
            if isinstance(out, BadSample):
                if strict:
                    raise BadInputError(out)
                log.warning("skipped %s", out.describe())
                bad.append(out)
                continue
            rows.append(out)
            good += 1
            if len(rows) == rows_per_block:
                yield _sample_columns(rows, classes, vocab, image_shape)
                rows, yielded = [], True
        if quarantine is not None:
            quarantine.report(uri, good, bad)
    if rows or not yielded:
        yield _sample_columns(rows, classes, vocab, image_shape)


def _sample_columns(rows: list[dict], classes: int, vocab: TagVocabulary | None,
                    image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Decoded samples -> the dataset's columns (typed empty arrays when ``rows`` is empty)."""
    vocab_size = len(vocab.words) if vocab is not None else 0
    return {
        "key": np.array([r["key"] for r in rows], dtype=str),
        "image": np.stack([r["image"] for r in rows]) if rows else np.zeros((0, *image_shape), np.float32),
        "labels": np.stack([r["labels"] for r in rows]) if rows else np.zeros((0, classes), np.float32),
        "tags": np.stack([r["tags"] for r in rows]) if rows else np.zeros((0, vocab_size), np.float32),
    }


def _normalise(path: str) -> str:
    return path.lstrip("/")


def read_split(root: str, split: str, preprocess: ImageTransform, *, strict: bool = False,
               quarantine: RemoteQuarantine | None = None, num_cpus: float = 0.5) -> ray.data.Dataset:
    """A Ray dataset of ``split``'s good samples, decoded and preprocessed (columns in the module docstring).

    Args:
        root: dataset root URI (local or ``s3://``; the workers resolve their own S3 credentials,
            see ``storage.ray_filesystem``).
        split: ``train``, ``query`` or ``database``; ``UnknownSplitError`` lists the dataset's splits.
        preprocess: picklable image uint8[H, W, 3] -> float32[3, S, S] (e.g. ``transforms.Preprocess``).
        strict: fail the job on the first bad sample instead of skipping it.
        quarantine: where workers report bad samples per shard (see ``RemoteQuarantine``).
        num_cpus: logical CPUs per read and per decode task (0.5 keeps small machines from stalling).
    """
    import ray

    manifest = load_manifest(root)
    info = manifest.split(split)
    if not info.shards:
        raise InputError(f"split {split!r} of {root!r} has no shards")
    fs, base = storage.ray_filesystem(root)
    paths = [f"{base.rstrip('/')}/{s.path}" for s in info.shards]
    shards = {_normalise(p): (storage.join(root, s.path), s) for p, s in zip(paths, info.shards, strict=True)}
    image_shape = tuple(preprocess(np.zeros((8, 8, 3), np.uint8)).shape)
    ds = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True, override_num_blocks=len(paths),
                                    num_cpus=num_cpus)
    return ds.map_batches(
        _decode_shard_batch,
        batch_size=1,
        batch_format="numpy",
        num_cpus=num_cpus,
        fn_kwargs={"shards": shards, "classes": len(manifest.classes), "preprocess": preprocess,
                   "vocab": _vocab(manifest.tags), "image_shape": image_shape, "strict": strict,
                   "quarantine": quarantine},
    )
