"""The code-shard contract: Parquet parts of packed codes, one per source shard, for one model version.

Layout (``codes_root`` is a local folder or ``s3://`` URI)::

    {codes_root}/{model_name}/v{version}/{split}/part-{source shard name}.parquet

e.g. ``runs/codes/hashing-idhn-builtin-tiny/v3/database/part-shard-000004.parquet`` holds the codes of
``database/shard-000004.tar``. Columns:

    ``key``           string                           the sample's ``__key__``
    ``code``          fixed_size_binary(bits // 8)     packed code (``numpy.packbits`` order,
    ``hashing.codes``) ``labels``        list<int32> (null when unknown)  class indices
    ``source_shard``  string                           source shard path in the dataset
    (``database/shard-000004.tar``)

File metadata (``PartMeta``): ``bits``, ``method``, ``model_uri``, ``dataset_fingerprint`` (of the
dataset when the part was written), ``source_shard`` and ``source_sha256`` (the shard's checksum in
``dataset.json``), ``format_version``. A part is written whole-file-or-nothing
(``hashing.storage.write_bytes``), so it exists only when finished: a part is *finished* for a source
shard when its ``source_sha256`` equals the shard's current checksum. Parts of shards that changed
since are stale and get re-encoded; parts of shards that no longer exist are ignored by readers that
pass the expected shards.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hashing import storage
from hashing.codes import check_bits, check_codes
from hashing.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# Parallel metadata reads when listing finished parts (S3 round trips dominate).
_LIST_THREADS = 8


class CodeShardError(InputError):
    """Code shards that break the contract or do not match what the caller expects."""


@dataclass(frozen=True)
class PartMeta:
    """The file metadata of one part (all strings in the Parquet key-value metadata)."""

    bits: int
    method: str
    model_uri: str
    dataset_fingerprint: str
    source_shard: str
    source_sha256: str
    format_version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[bytes, bytes]:
        """Parquet key-value metadata: ``{b"bits": b"48", b"method": b"idhn", ...}``."""
        return {f.name.encode(): str(getattr(self, f.name)).encode() for f in fields(self)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None, uri: str) -> PartMeta:
        """Parse ``to_metadata`` output; ``CodeShardError`` names the file and the missing keys."""
        metadata = metadata or {}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n.encode() not in metadata]
        if missing:
            raise CodeShardError(f"{uri}: not a code-shard part (file metadata lacks {missing})")
        values = {n: metadata[n.encode()].decode() for n in names}
        meta = cls(**{**values, "bits": int(values["bits"]), "format_version": int(values["format_version"])})
        if meta.format_version != FORMAT_VERSION:
            raise CodeShardError(f"{uri}: code-shard format_version {meta.format_version}, this code reads "
                                 f"{FORMAT_VERSION}; re-encode with pipelines/encode.py --force")
        return meta


def version_uri(codes_root: str, model_name: str, version: int) -> str:
    """``{codes_root}/{model_name}/v{version}``: every split's parts of one model version."""
    return storage.join(codes_root, model_name, f"v{int(version)}")


def split_uri(codes_root: str, model_name: str, version: int, split: str) -> str:
    """``{codes_root}/{model_name}/v{version}/{split}``."""
    return storage.join(version_uri(codes_root, model_name, version), split)


def part_name(source_shard: str) -> str:
    """``database/shard-000004.tar`` -> ``part-shard-000004.parquet``."""
    stem = posixpath.basename(source_shard)
    stem = stem.removesuffix(".tar")
    if not stem:
        raise ValueError(f"source shard {source_shard!r} has no file name")
    return f"{PART_PREFIX}{stem}{PART_SUFFIX}"


def part_uri(split_root: str, source_shard: str) -> str:
    """URI of the part of ``source_shard`` under ``split_root`` (from ``split_uri``)."""
    return storage.join(split_root, part_name(source_shard))


def _schema(bits: int) -> pa.Schema:
    return pa.schema([
        pa.field("key", pa.string(), nullable=False),
        pa.field("code", pa.binary(bits // 8), nullable=False),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("source_shard", pa.string(), nullable=False),
    ])


def part_bytes(keys: Sequence[str], codes: np.ndarray, labels: Sequence[Sequence[int]] | None,
               meta: PartMeta) -> bytes:
    """The Parquet file of one part, in memory.

    Args:
        keys: n sample keys.
        codes: packed codes uint8[n, meta.bits // 8].
        labels: n lists of class indices, or None when labels are unknown (null column values).
        meta: the file metadata; ``meta.source_shard`` fills the ``source_shard`` column.
    """
    bits = check_bits(meta.bits)
    n = len(keys)
    check_codes(codes, "codes", width=bits // 8)
    if codes.shape[0] != n or (labels is not None and len(labels) != n):
        raise ValueError(f"part of {meta.source_shard}: {n} keys, {codes.shape[0]} codes and "
                         f"{'no' if labels is None else len(labels)} label lists; expected one of each per "
                         "row")
    width = bits // 8
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    code_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(flat)])
    labels_array = pa.array([None] * n if labels is None else [[int(x) for x in row] for row in labels],
                            type=pa.list_(pa.int32()))
    table = pa.Table.from_arrays(
        [pa.array(list(keys), type=pa.string()), code_array, labels_array,
         pa.array([meta.source_shard] * n, type=pa.string())],
        schema=_schema(bits).with_metadata(meta.to_metadata()),
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_part(uri: str, keys: Sequence[str], codes: np.ndarray, labels: Sequence[Sequence[int]] | None,
               meta: PartMeta) -> None:
    """Write one part whole-file-or-nothing (see ``part_bytes`` for the arguments)."""
    storage.write_bytes(uri, part_bytes(keys, codes, labels, meta))


@dataclass
class CodePart:
    """One part read back: ``keys`` object[n] (str), ``codes`` uint8[n, bits // 8], ``labels`` list of
    int32 arrays (None entries where unknown), ``meta``."""

    keys: np.ndarray
    codes: np.ndarray
    labels: list[np.ndarray | None]
    meta: PartMeta


def _table_codes(column: pa.ChunkedArray, bits: int, uri: str) -> np.ndarray:
    width = bits // 8
    if column.type != pa.binary(width):
        raise CodeShardError(f"{uri}: column 'code' is {column.type}, expected fixed_size_binary({width}) "
                             f"for {bits} bits")
    array = column.combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset * width
    return data[start: start + len(array) * width].reshape(len(array), width).copy()


def read_part(uri: str) -> CodePart:
    """Read one part; ``CodeShardError`` names the file when it breaks the contract."""
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except pa.ArrowInvalid as exc:
        raise CodeShardError(f"{uri}: not a readable Parquet file ({exc})") from exc
    meta = PartMeta.from_metadata(table.schema.metadata, uri)
    missing = [c for c in ("key", "code", "labels") if c not in table.column_names]
    if missing:
        raise CodeShardError(f"{uri}: missing columns {missing}; has {table.column_names}")
    labels = [None if row is None else np.asarray(row, dtype=np.int32)
              for row in table.column("labels").to_pylist()]
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    return CodePart(keys, _table_codes(table.column("code"), meta.bits, uri), labels, meta)


def read_part_meta(uri: str) -> PartMeta:
    """The file metadata of one part (reads the Parquet footer only)."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_file(path) as f:
            metadata = pq.read_schema(f).metadata
    except pa.ArrowInvalid as exc:
        raise CodeShardError(f"{uri}: not a readable Parquet file ({exc})") from exc
    return PartMeta.from_metadata(metadata, uri)


def list_parts(split_root: str) -> dict[str, str]:
    """``{part file name: URI}`` of the parts under ``split_root`` (temporary files of writes are skipped)."""
    out = {}
    for uri in storage.list_files(split_root):
        name = posixpath.basename(uri)
        if (name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
                and uri == storage.join(split_root, name)):
            out[name] = uri
    return out


def finished_parts(split_root: str, shards: Mapping[str, str], model_uri: str) -> dict[str, str]:
    """The source shards whose part is finished: ``{source shard: part URI}``.

    Args:
        split_root: from ``split_uri``.
        shards: ``{source shard path: sha256}`` of the dataset's current shards (``dataset.json``).
        model_uri: the pinned model (``models:/name/3``) the parts must have been written by.

    A part counts when it exists, was written by ``model_uri`` and its ``source_sha256`` equals the
    shard's checksum; stale, foreign and unreadable parts are logged and left out (a rerun rewrites them).
    """
    present = list_parts(split_root)
    candidates = {s: present[part_name(s)] for s in shards if part_name(s) in present}

    def check(item: tuple[str, str]) -> tuple[str, str | None]:
        shard, uri = item
        try:
            meta = read_part_meta(uri)
        except CodeShardError as exc:
            log.warning("ignoring %s", exc)
            return shard, None
        if meta.source_sha256 != shards[shard] or meta.source_shard != shard or meta.model_uri != model_uri:
            log.info("%s is stale (written by %s for %s sha256 %.12s..., now %s and %.12s...)", uri,
                     meta.model_uri, meta.source_shard, meta.source_sha256, model_uri, shards[shard])
            return shard, None
        return shard, uri

    with ThreadPoolExecutor(max_workers=_LIST_THREADS) as pool:
        return {s: uri for s, uri in pool.map(check, candidates.items()) if uri is not None}


@dataclass
class SplitCodes:
    """A split's codes in memory, rows in source-shard order.

    ``keys`` object[n] (str), ``codes`` uint8[n, bits // 8], ``labels`` n int32 arrays of class indices
    (None where unknown), ``source_shards`` object[n] (str); ``bits``, ``method``, ``model_uri`` are the
    same in every part; ``parts`` lists the part URIs read.
    """

    keys: np.ndarray
    codes: np.ndarray
    labels: list[np.ndarray | None]
    source_shards: np.ndarray
    bits: int
    method: str
    model_uri: str
    parts: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def multi_hot(self, num_classes: int) -> np.ndarray:
        """Labels as multi-hot uint8[n, num_classes]; ``CodeShardError`` when some are unknown or out of
        range."""
        out = np.zeros((len(self), num_classes), dtype=np.uint8)
        for i, row in enumerate(self.labels):
            if row is None:
                raise CodeShardError(f"key {self.keys[i]!r} ({self.source_shards[i]}) has no labels; "
                                     "metrics need labelled query and database splits")
            if row.size and (row.min() < 0 or row.max() >= num_classes):
                raise CodeShardError(f"key {self.keys[i]!r} has label {row.tolist()} outside "
                                     f"[0, {num_classes})")
            out[i, row] = 1
        return out

    def index_of(self) -> dict[str, int]:
        """``{key: row}``."""
        return {k: i for i, k in enumerate(self.keys)}


def load_split(split_root: str, expected: Mapping[str, str] | None = None) -> SplitCodes:
    """Read every part of a split into memory.

    Args:
        split_root: from ``split_uri``.
        expected: ``{source shard path: sha256}`` in dataset order (``dataset.json``); when given, every
            shard must have a finished part (else ``CodeShardError`` listing the missing or stale ones),
            and parts of other shards are left out. None reads all parts, in name order.

    Raises:
        CodeShardError: no parts, missing/stale parts, parts that disagree on bits / method / model,
            or a key in two rows.
    """
    present = list_parts(split_root)
    if expected is None:
        uris = [present[name] for name in sorted(present)]
    else:
        missing = [s for s in expected if part_name(s) not in present]
        if missing:
            raise CodeShardError(f"{split_root}: {len(missing)} of {len(expected)} source shards have no "
                                 "code "
                                 f"part ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
                                 "run pipelines/encode.py for this model version")
        uris = [present[part_name(s)] for s in expected]
    if not uris:
        raise CodeShardError(f"no code parts under {split_root}; run pipelines/encode.py for this model "
                             "version")
    parts = [read_part(uri) for uri in uris]
    first = parts[0].meta
    for uri, part in zip(uris, parts, strict=True):
        m = part.meta
        if (m.bits, m.method, m.model_uri) != (first.bits, first.method, first.model_uri):
            raise CodeShardError(f"{uri} was written by {m.model_uri} ({m.method}, {m.bits} bits) but "
                                 f"{uris[0]} "
                                 f"by {first.model_uri} ({first.method}, {first.bits} bits); re-encode with "
                                 "--force")
        if expected is not None and (m.source_shard not in expected
                                     or m.source_sha256 != expected[m.source_shard]):
            raise CodeShardError(f"{uri} is stale: written for {m.source_shard} with sha256 "
                                 f"{m.source_sha256[:12]}..., the dataset now has "
                                 f"{str(expected.get(m.source_shard))[:12]}...; rerun pipelines/encode.py")
    keys = np.concatenate([p.keys for p in parts])
    unique, counts = np.unique(keys.astype(str), return_counts=True)
    if (counts > 1).any():
        raise CodeShardError(f"{split_root}: keys in more than one row: {unique[counts > 1][:5].tolist()}")
    return SplitCodes(
        keys=keys,
        codes=np.concatenate([p.codes for p in parts]),
        labels=[row for p in parts for row in p.labels],
        source_shards=np.concatenate([np.full(len(p.keys), p.meta.source_shard,
                                              dtype=object) for p in parts]),
        bits=first.bits,
        method=first.method,
        model_uri=first.model_uri,
        parts=uris,
    )
