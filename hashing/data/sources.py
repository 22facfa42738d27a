"""Ingest sources: where ``Record``s (or ``BadSample``s) come from before ``hashing.data.ingest`` writes them.

- ``builtin_source``: the built-in Fashion-MNIST mosaic dataset (``hashing.data.builtin``).
- ``folder_source``: a labels file next to the images. CSV with a header ``key,image,labels,tags[,split]``
  where ``labels``/``tags`` are ``;``-separated, or JSON Lines with the fields ``key``, ``image``,
  ``labels`` (list), ``tags`` (list), ``split``. ``image`` is a path relative to the labels file's folder
  (absolute paths and ``..`` escapes are ``bad_path``); labels are class indices or class names (others
  are ``bad_label`` / ``unknown_label``); ``key`` defaults to the image path with ``/`` and ``.`` as
  ``_``; ``split`` defaults to the caller's. Images in other formats than PNG/JPEG/WebP are re-encoded
  as PNG (``too_large`` past the decoder's pixel limit).
- ``read_classes``: the class names for ``folder_source`` (``a,b,c``, a ``.txt`` file, ``classes.txt``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hashing.data.quarantine import BadKind, BadSample
from hashing.data.schema import image_extension
from hashing.data.shards import Record
from hashing.data.splits import SPLITS
from hashing.data.transforms import ImageDecodeError, ImageTooLargeError, decode_image, encode_png
from hashing.errors import InputError, NotFoundError


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

