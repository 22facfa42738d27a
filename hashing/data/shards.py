"""Writing datasets: WebDataset tar shards per split, validated samples, ``dataset.json`` last.

``ShardWriter`` packs one split's samples into ``{split}/shard-000000.tar``, ... (standard tar, one
member per field: ``{key}.png`` then ``{key}.json``). Tars are byte-deterministic (members in write
order, mtime 0, uid/gid 0, no user names), so the same input gives the same checksums and dataset
fingerprint. A shard is built in a local temporary file and then copied whole to its URI.

``DatasetWriter`` validates every ``Record`` against the contract exactly as the reader will
(``hashing.data.read.decode_sample``), rejects unknown splits, bad and duplicate keys, sends bad ones
to a ``Quarantine``, and on ``close`` writes ``quarantine.json`` then ``dataset.json`` (last, so a
reader never sees a half-written dataset).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass

from hashing import storage
from hashing.data.checksum import ChecksumStream
from hashing.data.quarantine import BadKind, BadSample, Quarantine
from hashing.data.read import decode_sample
from hashing.data.schema import (
    KEY_PATTERN,
    QUARANTINE_NAME,
    DatasetManifest,
    ShardInfo,
    SplitInfo,
    image_extension,
    sample_json,
    write_manifest,
)
from hashing.data.splits import SPLITS

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000


def shard_path(split: str, index: int, prefix: str = "") -> str:
    """Path of shard ``index`` of ``split`` relative to the dataset root: ``train/shard-000003.tar``
    (``g2/train/shard-000003.tar`` with ``prefix="g2/"``, a generation written beside an older one)."""
    return f"{prefix}{split}/shard-{index:06d}.tar"


class ShardWriter:
    """Writes one split's samples into consecutive tar shards under ``root``.

    Args:
        root: dataset root URI (local folder or ``s3://bucket/prefix``).
        split: split name; shards go to ``{root}/{split}/shard-NNNNNN.tar``.
        shard_size: samples per shard (the last shard may hold fewer).
        max_shard_bytes: also start a new shard before one would grow past this many bytes
            (a shard always holds at least one sample); None for no byte limit.
        prefix: folder(s) in front of ``{split}/`` (``"g2/"``; see ``shard_path``).
    """

    def __init__(self, root: str, split: str, shard_size: int = DEFAULT_SHARD_SIZE,
                 max_shard_bytes: int | None = None, prefix: str = "") -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root, self.split, self.prefix = root, split, prefix
        self.shard_size, self.max_shard_bytes = shard_size, max_shard_bytes
        self.shards: list[ShardInfo] = []
        self._tmpdir = tempfile.mkdtemp(prefix="hashing-shard-")
        self._file: io.BufferedWriter | None = None
        self._hashing: ChecksumStream | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._payload = 0

    def write(self, key: str, members: dict[str, bytes]) -> str:
        """Add a sample: ``members`` maps extension (``png``, ``json``) to bytes, written in that order.

        Returns the shard path (relative to root) the sample went to.
        """
        if not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"key {key!r} does not match {KEY_PATTERN.pattern}")
        size = sum(len(v) + 512 for v in members.values())
        if self._tar is not None and (self._count >= self.shard_size or (
                self.max_shard_bytes is not None and self._payload + size > self.max_shard_bytes)):
            self._finish_shard()
        if self._tar is None:
            # Open across write() calls; _finish_shard / abort close them.
            self._file = open(os.path.join(self._tmpdir, "shard.tar"), "wb")  # noqa: SIM115
            self._hashing = ChecksumStream(self._file)
            self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        self._payload += size
        return shard_path(self.split, len(self.shards), self.prefix)

    def _finish_shard(self) -> None:
        assert self._tar is not None and self._file is not None and self._hashing is not None
        self._tar.close()
        self._file.close()
        rel = shard_path(self.split, len(self.shards), self.prefix)
        storage.put_file(self._file.name, storage.join(self.root, rel))
        self.shards.append(ShardInfo(path=rel, samples=self._count, bytes=self._hashing.size,
                                     sha256=self._hashing.sha.hexdigest()))
        log.debug("wrote %s (%d samples, %d bytes)", rel, self._count, self._hashing.size)
        self._tar = self._file = self._hashing = None
        self._count = self._payload = 0

    def close(self) -> SplitInfo:
        """Write the last shard and return the split's ``SplitInfo``."""
        try:
            if self._tar is not None:
                self._finish_shard()
        finally:
            self.abort()
        return SplitInfo(samples=sum(s.samples for s in self.shards), shards=list(self.shards))

    def abort(self) -> None:
        """Drop the shard in progress (nothing is uploaded) and remove temporary files."""
        if self._tar is not None:
            self._tar.close()  # writes the end blocks to the local temporary file only
        if self._file is not None:
            self._file.close()
        self._tar = self._file = self._hashing = None
        shutil.rmtree(self._tmpdir, ignore_errors=True)


@dataclass(frozen=True)
class Record:
    """One sample from an ingest source, before validation.

    ``image``: encoded PNG/JPEG/WebP bytes. ``labels``: class indices. ``source``: where it came
    from, for reports (``labels.csv:12``, ``builtin:train#3``).
    """

    split: str
    key: str
    image: bytes
    labels: list[int]
    tags: list[str]
    source: str


class DatasetWriter:
    """Validates records and writes a whole dataset (shards, ``quarantine.json``, ``dataset.json``).

    Args:
        root: dataset root URI.
        name: dataset name for ``dataset.json``.
        classes: class names; labels index into this list.
        tags: tag vocabulary, or None to build it at ``close`` from the tags of the accepted samples
            (sorted unique; None when there are none).
        quarantine: where bad records go (strict mode and the bad-fraction limit live there).
        shard_size, max_shard_bytes, prefix: see ``ShardWriter``. With a ``prefix`` (a new generation
            beside an older dataset), the quarantine report also goes to ``{root}/{prefix}quarantine.json``
            first, so a failed run does not replace the report of the dataset in use.
    """

    def __init__(self, root: str, name: str, classes: list[str], tags: list[str] | None,
                 quarantine: Quarantine, shard_size: int = DEFAULT_SHARD_SIZE,
                 max_shard_bytes: int | None = None, prefix: str = "") -> None:
        self.root, self.name, self.classes, self.tags = root, name, list(classes), tags
        self.quarantine = quarantine
        self.shard_size, self.max_shard_bytes, self.prefix = shard_size, max_shard_bytes, prefix
        self._writers: dict[str, ShardWriter] = {}
        self._seen: dict[str, str] = {}
        self._tag_words: set[str] = set()

    def add(self, item: Record | BadSample) -> bool:
        """Validate and write one record (or quarantine it, or a ``BadSample`` from the source).

        Returns True when the record was written. Raises ``BadInputError`` in strict mode.
        """
        bad = item if isinstance(item, BadSample) else self._check(item)
        if bad is not None:
            self.quarantine.add(bad)
            return False
        assert isinstance(item, Record)
        writer = self._writers.get(item.split)
        if writer is None:
            writer = self._writers[item.split] = ShardWriter(
                self.root, item.split, self.shard_size, self.max_shard_bytes, self.prefix)
        ext = image_extension(item.image)
        writer.write(item.key, {ext: item.image, "json": sample_json(item.labels, item.tags)})
        self._seen[item.key] = item.source
        self._tag_words.update(item.tags)
        self.quarantine.add_good()
        return True

    def _check(self, rec: Record) -> BadSample | None:
        def bad(kind: BadKind, detail: str) -> BadSample:
            return BadSample(kind, detail, key=rec.key, shard=rec.source)

        if rec.split not in SPLITS:
            return bad(BadKind.UNKNOWN_SPLIT, f"split {rec.split!r} is not one of {list(SPLITS)}")
        if not KEY_PATTERN.fullmatch(rec.key):
            return bad(BadKind.BAD_KEY, f"key must match {KEY_PATTERN.pattern} (letters, digits, _ and -)")
        if rec.key in self._seen:
            return bad(BadKind.DUPLICATE_KEY, f"key already used by {self._seen[rec.key]}")
        ext = image_extension(rec.image)
        if ext is None:
            return bad(BadKind.CORRUPT_IMAGE, "image is not a PNG, JPEG or WebP file")
        raw = {"__key__": rec.key, ext: rec.image, "json": sample_json(rec.labels, rec.tags)}
        out = decode_sample(raw, shard=rec.source, classes=len(self.classes))
        return out if isinstance(out, BadSample) else None

    def close(self) -> DatasetManifest:
        """Finish the shards, write ``quarantine.json``, check the bad fraction, write ``dataset.json``.

        Raises ``TooManyBadSamplesError`` (after writing the report, ``quarantine_uri``, without
        ``dataset.json``) when too many records were bad.
        """
        try:
            splits = {name: self._writers[name].close() for name in SPLITS if name in self._writers}
        except BaseException:
            self.abort()
            raise
        self.quarantine.write(self.quarantine_uri)
        self.quarantine.check()
        if self.prefix:
            self.quarantine.write(storage.join(self.root, QUARANTINE_NAME))
        tags = self.tags if self.tags is not None else (sorted(self._tag_words) or None)
        manifest = DatasetManifest.build(self.name, self.classes, tags, splits)
        write_manifest(self.root, manifest)
        return manifest

    @property
    def quarantine_uri(self) -> str:
        """Where ``close`` writes the quarantine report first: ``{root}/{prefix}quarantine.json``."""
        return storage.join(self.root, self.prefix + QUARANTINE_NAME)

    def written(self) -> list[str]:
        """The shard paths uploaded so far (relative to the root), in write order per split."""
        return [s.path for w in self._writers.values() for s in w.shards]

    def abort(self) -> None:
        """Drop unfinished shards and temporary files; no ``dataset.json`` is written."""
        for writer in self._writers.values():
            writer.abort()
