"""Ingest job: images + labels/tags -> WebDataset shards + ``dataset.json`` (+ ``quarantine.json``).

Writes the dataset contract of ``hashing.data.schema`` to a local folder or an ``s3://`` URI from

- ``--source builtin``: the built-in Fashion-MNIST mosaic dataset (``--preset``, ``--seed``), or
- ``--source folder``: a labels file (``--labels``) next to the images. CSV with a header
  ``key,image,labels,tags[,split]`` where ``labels``/``tags`` are ``;``-separated, or JSON Lines with
  the fields ``key``, ``image``, ``labels`` (list), ``tags`` (list), ``split``. ``image`` is a path
  relative to the labels file's folder (absolute paths and ``..`` escapes are rejected); labels are
  class indices or class names; ``key`` defaults to the image path with ``/`` and ``.`` as ``_``;
  ``split`` defaults to ``--split``. Classes come from ``--classes a,b,c``, ``--classes FILE.txt``
  (one per line) or a ``classes.txt`` next to the labels file. Images in other formats than
  PNG/JPEG/WebP are re-encoded as PNG. The tag vocabulary is every tag seen, sorted.

The labels file must be UTF-8 with at least one record, and give labels (a CSV ``labels`` column, a
JSON ``labels`` field) unless ``--unlabelled``; other CSV columns are an error (a typo like ``label``).
Labels that are neither ints nor strings (``true``, ``1.5``) are ``bad_label``; images over
``--max-image-pixels`` (a decompression bomb) are ``too_large``.

Every bad record (shard or ``file:line``, key, reason) goes to ``{output}/quarantine.json``; ``--strict``
fails on the first one; ``--max-bad-fraction`` fails the job past it (``dataset.json`` is then not
written). ``dataset.json`` is written last. ``--overwrite`` writes the new shards beside the old ones
(``g1/``, ``g2/``, ...) and switches ``dataset.json`` last, so a failed ingest leaves the old dataset
as it was. When S3 stops answering, the job stops with one message naming the endpoint and the shards
written so far, without ``dataset.json``.

Like every job it reads ``--config`` and ``key=value`` overrides: the ``ingest`` section (source, labels,
classes, split, max_shard_bytes, overwrite, unlabelled, max_image_pixels), ``dataset.uri`` (the output),
``dataset.builtin`` / ``.seed`` / ``.name`` / ``.shard_size``, ``data.strict`` / ``.max_bad_fraction`` and
``storage.s3_endpoint``; each flag above is a shorthand for one of them (``hashing.cli.ingest_parser``).

    hashing ingest --config configs/demo.yaml                      (dataset.uri from the config)
    hashing ingest dataset.builtin=tiny dataset.uri=runs/data/builtin-tiny
    python pipelines/ingest.py --output s3://bucket/ds --source folder --labels photos/labels.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hashing import storage
from hashing.config import Config
from hashing.data.quarantine import BadKind, BadSample, Quarantine, TooManyBadSamplesError
from hashing.data.schema import (
    QUARANTINE_NAME,
    SPLITS,
    DatasetManifest,
    image_extension,
    load_manifest,
    manifest_uri,
)
from hashing.data.shards import DEFAULT_SHARD_SIZE, DatasetWriter, Record
from hashing.data.transforms import (
    MAX_IMAGE_PIXELS_ENV,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
)
from hashing.errors import AlreadyExistsError, InputError, NotFoundError

log = logging.getLogger("ingest")

DEFAULT_MAX_BAD_FRACTION = 0.01


@dataclass(frozen=True)
class IngestArgs:
    """Everything the job needs; ``parse_args`` builds it from the command line."""

    output: str
    source: str = "builtin"
    preset: str = "tiny"
    seed: int = 0
    labels: str | None = None
    classes: str | None = None
    split: str = "train"
    name: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    max_shard_bytes: int | None = None
    strict: bool = False
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    overwrite: bool = False
    progress: bool = True
    s3_endpoint: str | None = None
    unlabelled: bool = False
    max_image_pixels: int | None = None


def parse_args(argv: list[str] | None = None) -> IngestArgs:
    """Command line (``--config``, ``key=value``, the flags of ``hashing.cli.ingest_parser``) ->
    ``IngestArgs``."""
    from hashing.cli import JOBS
    from hashing.jobs.runner import parse_job_args

    config, args = parse_job_args(JOBS["ingest"], argv)
    return ingest_args(config, progress=args.progress)


def ingest_args(config: Config, progress: bool = True) -> IngestArgs:
    """What the job does, from the config's ``ingest``, ``dataset``, ``data`` and ``storage`` sections."""
    ing = config.ingest
    if ing.source == "builtin" and config.dataset.builtin is None:
        raise InputError("ingest.source=builtin needs dataset.builtin (a preset name), or set ingest.labels")
    return IngestArgs(
        output=config.dataset.uri, source=ing.source, preset=config.dataset.builtin or "",
        seed=config.dataset.seed,
        labels=ing.labels, classes=ing.classes, split=ing.split, name=config.dataset.name,
        shard_size=config.dataset.shard_size, max_shard_bytes=ing.max_shard_bytes, strict=config.data.strict,
        max_bad_fraction=config.data.max_bad_fraction, overwrite=ing.overwrite, progress=progress,
        s3_endpoint=config.storage.s3_endpoint, unlabelled=ing.unlabelled,
        max_image_pixels=ing.max_image_pixels)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of ``image`` uint8[H, W] or uint8[H, W, 3] (deterministic for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def builtin_source(preset: str, seed: int) -> tuple[list[str], list[str], int, Iterator[Record]]:
    """``(classes, tag vocabulary, number of records, records)`` of the built-in dataset."""
    from hashing.data.builtin import CLASSES, PRESETS, TAG_VOCABULARY, builtin_samples

    if preset not in PRESETS:
        raise InputError(f"unknown built-in preset {preset!r}; allowed: {', '.join(sorted(PRESETS))}")
    sizes = PRESETS[preset]

    def records() -> Iterator[Record]:
        for split in SPLITS:
            for i, s in enumerate(builtin_samples(split, sizes[split], seed, preset=preset)):
                yield Record(split=split, key=s.key, image=encode_png(s.image), labels=list(s.labels),
                             tags=list(s.tags), source=f"builtin:{split}#{i}")

    return list(CLASSES), list(TAG_VOCABULARY), sum(sizes[s] for s in SPLITS), records()


def read_classes(spec: str | None, labels_file: Path) -> list[str]:
    """Class names from ``a,b,c``, a ``.txt`` file (one per line), or ``classes.txt`` by the labels file."""
    if spec and not spec.endswith(".txt"):
        names = [c.strip() for c in spec.split(",")]
    else:
        path = Path(spec) if spec else labels_file.parent / "classes.txt"
        if not path.is_file():
            raise NotFoundError(f"no classes: {path} does not exist; pass --classes a,b,c or a .txt file")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names or not all(names) or len(set(names)) != len(names):
        raise InputError(f"classes must be non-empty and unique, got {names}")
    return names


CSV_COLUMNS = ("key", "image", "labels", "tags", "split")


def _rows(labels_file: Path, labelled: bool) -> Iterator[tuple[str, dict | BadSample]]:
    """``(location, row)`` per labels-file record; rows: ``{key, image, labels: list, tags: list, split}``.

    Raises ValueError naming the file when it is not UTF-8, has no records, or (CSV) its header lacks
    ``image`` or, unless not ``labelled``, ``labels``, or has other columns than ``CSV_COLUMNS``.
    """
    count = 0
    with labels_file.open(newline="", encoding="utf-8") as f:
        rows = _csv_rows(f, labels_file, labelled) if labels_file.suffix.lower() == ".csv" \
            else _jsonl_rows(f, labels_file.name, labelled)
        try:
            for item in rows:
                count += 1
                yield item
        except UnicodeDecodeError as exc:
            raise InputError(f"{labels_file}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} "
                             f"at offset {exc.start} after {count} records); save the labels file as "
                             "UTF-8") from None
    if count == 0:
        raise InputError(f"no records in {labels_file}")


def _csv_rows(f: io.TextIOBase, labels_file: Path, labelled: bool) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(f)
    if reader.fieldnames is None:
        return  # an empty file: _rows reports "no records"
    header = [c.strip() for c in reader.fieldnames]
    required = ["image", "labels"] if labelled else ["image"]
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown:
        hint = "" if not labelled or "labels" not in missing else \
            " (pass --unlabelled to ingest images without labels)"
        raise InputError(f"{labels_file}: the CSV header must have the columns "
                         "key,image,labels,tags[,split]; "
                         f"got {header}: missing {missing}, unknown {unknown}{hint}")
    reader.fieldnames = header
    for row in reader:
        yield f"{labels_file.name}:{reader.line_num}", {
            "key": row.get("key") or None, "image": row.get("image") or "",
            "labels": [x for x in (row.get("labels") or "").split(";") if x.strip()],
            "tags": [x.strip() for x in (row.get("tags") or "").split(";") if x.strip()],
            "split": row.get("split") or None}


def _jsonl_rows(f: io.TextIOBase, name: str, labelled: bool) -> Iterator[tuple[str, dict | BadSample]]:
    expected = '{"image": str, "labels": [...], "tags": [...]}'
    for lineno, line in enumerate(f, start=1):
        where = f"{name}:{lineno}"
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, BadSample(BadKind.BAD_JSON, f"unreadable JSON line: {exc}", shard=where)
            continue
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) \
                or not isinstance(obj.get("labels", []), list) or not isinstance(obj.get("tags", []), list):
            yield where, BadSample(BadKind.BAD_JSON, f"expected {expected}", key=key, shard=where)
            continue
        if labelled and "labels" not in obj:
            yield where, BadSample(BadKind.BAD_JSON, f'no "labels" field (fields: {sorted(obj)}); expected '
                                   f"{expected}, or pass --unlabelled", key=key, shard=where)
            continue
        yield where, {"key": key, "image": obj["image"], "labels": obj.get("labels", []),
                      "tags": [str(t) for t in obj.get("tags", [])], "split": obj.get("split")}


def _default_key(image_path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", image_path)


@dataclass(frozen=True)
class BadLabel:
    """Why a record's labels were rejected (``bad_label`` or ``unknown_label``)."""

    kind: BadKind
    detail: str


def _label_indices(labels: list, classes: list[str]) -> list[int] | BadLabel:
    """Class indices from indices or names; the first label that is neither comes back as a ``BadLabel``."""
    out = []
    for x in labels:
        if isinstance(x, bool) or not isinstance(x, (int, str)):
            return BadLabel(BadKind.BAD_LABEL,
                            f"label {x!r} is not a class index (int) or a class name (str)")
        text = str(x).strip()
        if re.fullmatch(r"-?\d+", text):
            out.append(int(text))
        elif text in classes:
            out.append(classes.index(text))
        else:
            return BadLabel(BadKind.UNKNOWN_LABEL, f"label {text!r} is not a class index or one of {classes}")
    return out


def _load_image(folder: Path, rel: str, key: str, where: str) -> bytes | BadSample:
    """Encoded image bytes of ``folder/rel`` (PNG/JPEG/WebP kept, others re-encoded to PNG)."""
    if not rel or os.path.isabs(rel):
        return BadSample(BadKind.BAD_PATH, f"image path {rel!r} must be relative to the labels file",
                         key=key, shard=where)
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder):
        return BadSample(BadKind.BAD_PATH, f"image path {rel!r} leads outside {folder}", key=key, shard=where)
    if not path.is_file():
        return BadSample(BadKind.MISSING_IMAGE, f"image file {rel!r} does not exist", key=key, shard=where)
    data = path.read_bytes()
    if image_extension(data) is not None:
        return data
    try:
        return encode_png(decode_image(data, str(path)))
    except ImageDecodeError as exc:
        kind = BadKind.TOO_LARGE if isinstance(exc, ImageTooLargeError) else BadKind.CORRUPT_IMAGE
        return BadSample(kind, str(exc), key=key, shard=where)


def folder_source(labels_file: str, classes: list[str], default_split: str,
                  labelled: bool = True) -> Iterator[Record | BadSample]:
    """Records (or bad records) from a labels file; image paths resolve against its folder.

    ``labelled=False`` (``--unlabelled``) allows a CSV without a ``labels`` column and JSON Lines without
    a ``labels`` field. Raises FileNotFoundError at once (before anything is written) when the labels
    file is missing; ValueError (while reading) for the file-level problems of ``_rows``.
    """
    path = Path(labels_file)
    if not path.is_file():
        raise NotFoundError(f"labels file {labels_file!r} does not exist")
    return _folder_records(path, classes, default_split, labelled)


def _folder_records(path: Path, classes: list[str], default_split: str,
                    labelled: bool) -> Iterator[Record | BadSample]:
    folder = path.parent.resolve()
    for where, row in _rows(path, labelled):
        if isinstance(row, BadSample):
            yield row
            continue
        key = str(row["key"]) if row["key"] is not None else _default_key(row["image"])
        labels = _label_indices(row["labels"], classes)
        if isinstance(labels, BadLabel):
            yield BadSample(labels.kind, labels.detail, key=key, shard=where)
            continue
        image = _load_image(folder, row["image"], key, where)
        if isinstance(image, BadSample):
            yield image
            continue
        yield Record(split=row["split"] or default_split, key=key, image=image, labels=labels,
                     tags=row["tags"], source=where)


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


def summary_table(result: IngestResult) -> str:
    """A small text table: per split samples, shards, bytes; then skipped records and the fingerprint."""
    lines = [f"{'split':<10}{'samples':>10}{'shards':>8}{'bytes':>14}"]
    for split, info in result.manifest.splits.items():
        nbytes = sum(s.bytes for s in info.shards)
        lines.append(f"{split:<10}{info.samples:>10}{len(info.shards):>8}{nbytes:>14}")
    samples = sum(i.samples for i in result.manifest.splits.values())
    shards = sum(len(i.shards) for i in result.manifest.splits.values())
    nbytes = sum(s.bytes for i in result.manifest.splits.values() for s in i.shards)
    lines.append(f"{'total':<10}{samples:>10}{shards:>8}{nbytes:>14}")
    q = result.quarantine
    lines.append(f"skipped: {len(q.records)} {q.counts() or ''} -> {result.quarantine_uri}")
    lines.append(f"dataset: {manifest_uri(result.root)} fingerprint {result.manifest.fingerprint}")
    return "\n".join(lines)


def run(args: IngestArgs) -> IngestResult:
    """Run the job for parsed arguments."""
    if args.source == "builtin":
        classes, tags, total, records = builtin_source(args.preset, args.seed)
        name = args.name or f"builtin-{args.preset}"
    else:
        labels_file = Path(args.labels)
        classes, tags = read_classes(args.classes, labels_file), None
        records, total = folder_source(args.labels, classes, args.split, labelled=not args.unlabelled), None
        name = args.name or labels_file.resolve().parent.name
    return ingest(args.output, records, name=name, classes=classes, tags=tags, total=total,
                  shard_size=args.shard_size, max_shard_bytes=args.max_shard_bytes, strict=args.strict,
                  max_bad_fraction=args.max_bad_fraction, overwrite=args.overwrite, progress=args.progress)


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing ingest`` runs it (``hashing.jobs.runner``): ingest, print the summary table."""
    if config.ingest.max_image_pixels is not None:
        os.environ[MAX_IMAGE_PIXELS_ENV] = str(config.ingest.max_image_pixels)
    print(summary_table(run(ingest_args(config, progress=args.progress))))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``hashing ingest ...``: 0 on success, 2 on bad input / configuration (one message, no traceback)."""
    from hashing.cli import main as cli_main

    return cli_main(["ingest", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
