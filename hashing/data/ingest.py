"""Writing an ingest: validated records -> shards, ``quarantine.json``, then ``dataset.json``, replacing a
dataset already there without ever leaving it unreadable.

``ingest`` drives ``hashing.data.shards.DatasetWriter`` over the records of a source
(``hashing.data.sources``). With ``overwrite`` the new shards go to the next generation folder beside the
old ones (``g1/``, ``g2/``, ...) and ``dataset.json`` is switched last, so a failed ingest leaves the old
dataset as it was; the old shards are removed after the switch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tqdm import tqdm

from hashing import storage
from hashing.data.quarantine import BadSample, Quarantine, TooManyBadSamplesError
from hashing.data.schema import QUARANTINE_NAME, DatasetManifest, load_manifest, manifest_uri
from hashing.data.shards import DEFAULT_SHARD_SIZE, DatasetWriter, Record
from hashing.errors import AlreadyExistsError

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.01


@dataclass(frozen=True)
class IngestResult:
    """What ``ingest`` wrote: the manifest, the quarantine report and where they are."""

    root: str
    manifest: DatasetManifest
    quarantine: Quarantine

    @property
    def quarantine_uri(self) -> str:
        return storage.join(self.root, QUARANTINE_NAME)


def ingest(output: str, records: Iterable[Record | BadSample], *, name: str, classes: list[str],
           tags: list[str] | None, total: int | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
           max_shard_bytes: int | None = None, strict: bool = False,
           max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, overwrite: bool = False,
           progress: bool = True) -> IngestResult:
    """Validate ``records`` and write the dataset at ``output``; returns what was written.

    With ``overwrite`` and a readable dataset already there, the new shards go beside the old ones (the
    next generation folder, ``g1/``, ``g2/`` ...) and ``dataset.json`` is switched last: until the new
    dataset is complete, and whenever the ingest fails, the old one stays readable as it was. The old
    shards are removed after the switch.

    Raises ``FileExistsError`` when ``output`` already has a ``dataset.json`` and not ``overwrite``,
    ``BadInputError`` in strict mode, ``TooManyBadSamplesError`` past ``max_bad_fraction``,
    ``StorageUnavailableError`` (naming the endpoint and what was written) when S3 stops answering.
    """
    writer: DatasetWriter | None = None
    try:
        old = _replaced_dataset(output, overwrite)
        quarantine = Quarantine(strict=strict, max_bad_fraction=max_bad_fraction)
        writer = DatasetWriter(output, name, classes, tags, quarantine, shard_size, max_shard_bytes,
                               prefix=_next_prefix(old) if old is not None else "")
        try:
            for item in tqdm(records, total=total, unit="sample", desc="ingest", disable=not progress):
                writer.add(item)
        except BaseException:
            writer.abort()
            raise
        manifest = writer.close()
    except TooManyBadSamplesError as exc:
        kept = f"; the dataset already at {output} is unchanged" if writer.prefix else ""
        raise TooManyBadSamplesError(f"{exc}. Report: {writer.quarantine_uri}{kept}") from None
    except storage.StorageUnavailableError as exc:
        written = writer.written() if writer is not None else []
        listed = ", ".join(written[:5]) + (" ..." if len(written) > 5 else "")
        raise storage.StorageUnavailableError(
            f"{exc}. Written to {output} before that: {len(written)} "
            f"shards{f' ({listed})' if written else ''}; "
            "no dataset.json was written (a dataset already there is unchanged): rerun the ingest with "
            "--overwrite once the store answers") from None
    if old is not None:
        _remove_old_shards(output, old, manifest)
    return IngestResult(output, manifest, quarantine)


def _replaced_dataset(output: str, overwrite: bool) -> DatasetManifest | None:
    """The readable dataset at ``output`` that ``overwrite`` replaces, None when there is none (or it is
    unreadable: nothing to keep). Raises ``FileExistsError`` when there is one and not ``overwrite``."""
    if not storage.exists(manifest_uri(output)):
        return None
    if not overwrite:
        raise AlreadyExistsError(f"{manifest_uri(output)} already exists; pass --overwrite to replace it")
    try:
        return load_manifest(output)
    except ValueError as exc:
        log.warning("replacing an unreadable dataset: %s", exc)
        return None


def _next_prefix(old: DatasetManifest) -> str:
    """The generation folder after ``old``'s: ``g1/`` after shards at the root, ``g3/`` after ``g2/``."""
    paths = [s.path for split in old.splits.values() for s in split.shards]
    match = re.match(r"g(\d+)/", paths[0]) if paths else None
    return f"g{int(match.group(1)) + 1 if match else 1}/"


def _remove_old_shards(output: str, old: DatasetManifest, new: DatasetManifest) -> None:
    """Delete ``old``'s shards that ``new`` does not use, and the report of ``old``'s generation folder
    (after the switch; a failure only leaves files behind)."""
    keep = {s.path for split in new.splits.values() for s in split.shards}
    old_paths = {s.path for split in old.splits.values() for s in split.shards}
    folders = {p.split("/", 1)[0] for p in old_paths if re.match(r"g\d+/", p)}
    for path in sorted(old_paths - keep) + [f"{f}/{QUARANTINE_NAME}" for f in sorted(folders)]:
        try:
            storage.delete(storage.join(output, path))
        except OSError as exc:
            log.warning("could not remove the replaced shard %s: %s", path, exc)

