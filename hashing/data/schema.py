"""The dataset contract: ``dataset.json`` and the per-sample JSON inside the shards.

A dataset at a root URI (local folder or ``s3://bucket/prefix``)::

    dataset.json                       DatasetManifest (written last, whole-file)
    quarantine.json                    what ingest skipped (hashing.data.quarantine)
    {split}/shard-000000.tar ...       WebDataset tars, split in train / query / database

A sample is the tar members ``{key}.{png|jpg|webp}`` and ``{key}.json`` (one after the other), with
``key`` matching ``KEY_PATTERN`` and the JSON ``{"labels": [class indices], "tags": [strings]}``.

Fingerprint: ``sha256`` (hex) of the canonical JSON (``sort_keys``, separators ``,`` and ``:``) of
``{"schema_version", "classes", "tags", "splits": {split: [[path, samples, bytes, sha256], ...]}}``,
shards in manifest order. It changes when any shard's bytes, the shard list, the class list or the tag
vocabulary change, and not with the dataset ``name``. Deterministic ingest input gives
byte-identical shards, hence the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hashing import storage
from hashing.data.quarantine import BadKind
from hashing.data.splits import SPLITS
from hashing.errors import InputError, NotFoundError, UserError

SCHEMA_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A shard path relative to the dataset root: folders and a .tar file, no segment starting with a dot
# (so no ``..``), no leading ``/``; it always stays inside the root.
SHARD_PATH_PATTERN = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.tar")
MANIFEST_NAME = "dataset.json"
QUARANTINE_NAME = "quarantine.json"


class SampleError(InputError):
    """A sample that breaks the contract; ``kind`` says how (a ``BadKind``)."""

    def __init__(self, kind: BadKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class UnknownSplitError(UserError, KeyError):
    """A split the dataset does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


class ShardInfo(BaseModel):
    """One shard: ``path`` relative to the dataset root (``train/shard-000000.tar``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    samples: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _inside_root(cls, v: str) -> str:
        if not SHARD_PATH_PATTERN.fullmatch(v):
            raise ValueError(f"shard path {v!r} must be a relative path inside the dataset root "
                             "(like train/shard-000000.tar: no '..', no leading '/')")
        return v


class SplitInfo(BaseModel):
    """A split's shards, in read order, and its total sample count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(ge=0)
    shards: list[ShardInfo]

    @model_validator(mode="after")
    def _total_matches(self) -> SplitInfo:
        total = sum(s.samples for s in self.shards)
        if total != self.samples:
            raise ValueError(f"split sample count {self.samples} != sum over shards {total}")
        return self


def compute_fingerprint(classes: list[str], tags: list[str] | None, splits: dict[str, SplitInfo]) -> str:
    """The dataset fingerprint (hex sha256; definition in the module docstring)."""
    content = {
        "schema_version": SCHEMA_VERSION,
        "classes": list(classes),
        "tags": list(tags) if tags is not None else None,
        "splits": {
            name: [[s.path, s.samples, s.bytes, s.sha256] for s in split.shards]
            for name, split in splits.items()
        },
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class DatasetManifest(BaseModel):
    """``dataset.json``: what the dataset holds and where. Build with ``DatasetManifest.build``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int
    name: str
    classes: list[str] = Field(min_length=1)
    tags: list[str] | None = None
    splits: dict[str, SplitInfo]
    fingerprint: str

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is not supported (this code reads {SCHEMA_VERSION}); "
                             "re-ingest the dataset or update the code")
        return v

    @field_validator("classes", "tags")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("names must be unique")
        return v

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, v: dict[str, SplitInfo]) -> dict[str, SplitInfo]:
        unknown = sorted(set(v) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown splits {unknown}; allowed: {list(SPLITS)}")
        return v

    @model_validator(mode="after")
    def _fingerprint_matches(self) -> DatasetManifest:
        expected = compute_fingerprint(self.classes, self.tags, self.splits)
        if self.fingerprint != expected:
            raise ValueError(f"fingerprint {self.fingerprint!r} does not match the content ({expected!r}): "
                             "dataset.json was edited or is damaged; re-ingest the dataset")
        return self

    @classmethod
    def build(cls, name: str, classes: list[str], tags: list[str] | None,
              splits: dict[str, SplitInfo]) -> DatasetManifest:
        """A manifest with ``schema_version`` and ``fingerprint`` filled in."""
        return cls(schema_version=SCHEMA_VERSION, name=name, classes=classes, tags=tags, splits=splits,
                   fingerprint=compute_fingerprint(classes, tags, splits))

    def split(self, name: str) -> SplitInfo:
        """The split ``name``; ``UnknownSplitError`` lists the splits this dataset has."""
        if name not in self.splits:
            raise UnknownSplitError(f"dataset {self.name!r} has no split {name!r}; "
                                    f"its splits: {sorted(self.splits)}")
        return self.splits[name]

    def shard_uris(self, root: str, split: str) -> list[str]:
        """Full URIs of ``split``'s shards under ``root``."""
        return [storage.join(root, s.path) for s in self.split(split).shards]


def label_names(labels, classes: list[str] | None) -> list[str]:
    """Class names of the label indices ``labels`` (int[L], a list or an array; the indices themselves
    without ``classes``); ``[]`` when the labels are unknown (``None``)."""
    if labels is None:
        return []
    return [classes[i] if classes is not None and 0 <= i < len(classes) else str(i)
            for i in map(int, labels)]


def manifest_uri(root: str) -> str:
    """URI of ``dataset.json`` under ``root``."""
    return storage.join(root, MANIFEST_NAME)


def load_manifest(root: str) -> DatasetManifest:
    """Read and validate ``{root}/dataset.json``; errors name the file and what is wrong."""
    uri = manifest_uri(root)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise NotFoundError(f"no dataset at {root!r}: {uri} is missing (create it with "
                                "`python pipelines/ingest.py --output ...`)") from exc
    try:
        return DatasetManifest.model_validate_json(data)
    except ValidationError as exc:
        raise InputError(f"{uri} is not a valid dataset manifest: {exc}") from exc


def write_manifest(root: str, manifest: DatasetManifest) -> str:
    """Write ``{root}/dataset.json`` whole-file; returns its URI."""
    uri = manifest_uri(root)
    storage.write_bytes(uri, manifest.model_dump_json(indent=1).encode())
    return uri


def sample_json(labels: list[int], tags: list[str]) -> bytes:
    """The canonical per-sample JSON bytes: ``{"labels": [...], "tags": [...]}``."""
    return json.dumps({"labels": list(labels), "tags": list(tags)}, separators=(",", ":")).encode()


def parse_sample_json(data: bytes, num_classes: int) -> tuple[list[int], list[str]]:
    """Validate per-sample JSON; return ``(labels, tags)``.

    ``labels``: list of ints in ``[0, num_classes)`` (may be empty; bools are not ints here).
    ``tags``: list of strings (optional, default empty). Other keys are ignored.
    Raises ``SampleError`` with kind ``bad_json`` or ``label_out_of_range``.
    """
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SampleError(BadKind.BAD_JSON, f"unreadable JSON: {exc}") from exc
    if not isinstance(obj, dict) or "labels" not in obj:
        raise SampleError(BadKind.BAD_JSON, f'expected an object {{"labels": [...], "tags": [...]}}, '
                                            f"got {str(obj)[:80]!r}")
    labels, tags = obj["labels"], obj.get("tags", [])
    if not isinstance(labels,
                      list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in labels):
        raise SampleError(BadKind.BAD_JSON, f'"labels" must be a list of class indices, got {labels!r:.80}')
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise SampleError(BadKind.BAD_JSON, f'"tags" must be a list of strings, got {tags!r:.80}')
    bad = [x for x in labels if not 0 <= x < num_classes]
    if bad:
        raise SampleError(BadKind.LABEL_OUT_OF_RANGE, f"label {bad[0]} not in [0, {num_classes})")
    return labels, tags


def image_extension(data: bytes) -> str | None:
    """``png``/``jpg``/``webp`` from the file signature of encoded image bytes; None for others."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None
