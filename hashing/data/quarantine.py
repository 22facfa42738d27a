"""Bad input: what was wrong, where (shard or labels-file line, key), and what to do about it.

Every bad sample becomes a ``BadSample`` and goes to a ``Quarantine``. In the default mode it is
logged and kept in the quarantine list (written as ``quarantine.json`` next to the dataset by
``ingest``); in strict mode the first one raises ``BadInputError``. ``Quarantine.check`` raises
``TooManyBadSamplesError`` when the bad fraction passes ``max_bad_fraction``. Nothing is dropped
without being counted here.

``quarantine.json`` layout::

    {"good": int, "bad": int, "bad_fraction": float, "max_bad_fraction": float,
     "counts": {kind: int}, "records": [{"kind", "detail", "key", "shard"}, ...]}
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from enum import StrEnum

from hashing import storage
from hashing.errors import InputError, UserError

log = logging.getLogger(__name__)

# Bad samples logged one by one at WARNING; the rest at DEBUG (the report keeps them all).
LOG_FIRST = 20


class BadKind(StrEnum):
    """Why a sample was rejected."""

    CORRUPT_IMAGE = "corrupt_image"  # image bytes that do not decode, or an unsupported format
    TOO_LARGE = "too_large"  # image header claims more pixels than the limit (decompression bomb)
    MISSING_IMAGE = "missing_image"  # no image member in the sample, or the image file is missing
    BAD_JSON = "bad_json"  # unreadable JSON, or JSON without the expected fields/types
    BAD_LABEL = "bad_label"  # a label that is neither a class index nor a class name (true, 1.5, {})
    LABEL_OUT_OF_RANGE = "label_out_of_range"  # class index outside [0, number of classes)
    UNKNOWN_LABEL = "unknown_label"  # class name not in the dataset's classes
    UNKNOWN_SPLIT = "unknown_split"  # split other than train / query / database
    DUPLICATE_KEY = "duplicate_key"  # second and later occurrences of a key in the dataset
    BAD_KEY = "bad_key"  # key that is empty or has characters outside [A-Za-z0-9_-] (tar members too)
    BAD_PATH = "bad_path"  # image path that is absolute or escapes the labels file's folder
    BAD_MEMBER = "bad_member"  # tar member that is not a regular file or has no extension
    TRUNCATED_TAR = "truncated_tar"  # tar ends early: the samples before it are kept
    CHECKSUM_MISMATCH = "checksum_mismatch"  # shard bytes differ from dataset.json


@dataclass(frozen=True)
class BadSample:
    """One rejected sample. ``shard`` is the shard URI, or ``file:line`` of a labels file."""

    kind: BadKind
    detail: str
    key: str | None = None
    shard: str | None = None

    def describe(self) -> str:
        """One line naming kind, shard and key, e.g. ``label_out_of_range in s3://b/train/shard-000001.tar
        key=img_7: label 9 not in [0, 5)``."""
        return f"{self.kind} in {self.shard or '?'} key={self.key or '?'}: {self.detail}"

    def to_dict(self) -> dict:
        """JSON-ready dict (``kind`` as its string value)."""
        out = asdict(self)
        out["kind"] = str(self.kind)
        return out


class BadInputError(InputError):
    """A bad sample in strict mode. ``bad`` holds the record."""

    def __init__(self, bad: BadSample) -> None:
        super().__init__(f"bad input (strict mode): {bad.describe()}. Fix the input, or run without "
                         "strict mode to skip bad samples into the quarantine report.")
        self.bad = bad


class TooManyBadSamplesError(UserError, RuntimeError):
    """The bad fraction passed ``max_bad_fraction``."""


class Quarantine:
    """Counts good samples and collects bad ones.

    Args:
        strict: raise ``BadInputError`` on the first bad sample instead of collecting it.
        max_bad_fraction: ``check`` fails when ``bad / (good + bad)`` is larger than this.
    """

    def __init__(self, strict: bool = False, max_bad_fraction: float = 0.01) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.strict = strict
        self.max_bad_fraction = max_bad_fraction
        self.good = 0
        self.records: list[BadSample] = []

    def add_good(self, n: int = 1) -> None:
        """Count ``n`` accepted samples."""
        self.good += n

    def add(self, bad: BadSample) -> None:
        """Record a bad sample: raise in strict mode, else log it and keep it."""
        if self.strict:
            raise BadInputError(bad)
        level = logging.WARNING if len(self.records) < LOG_FIRST else logging.DEBUG
        log.log(level, "quarantined %s", bad.describe())
        self.records.append(bad)

    def merge(self, good: int, records: list[BadSample]) -> None:
        """Add counts and records collected (and logged) elsewhere, e.g. by Ray Data workers."""
        self.good += good
        self.records.extend(records)

    @property
    def total(self) -> int:
        """Samples seen: good + bad."""
        return self.good + len(self.records)

    @property
    def bad_fraction(self) -> float:
        """``bad / total`` (0.0 when nothing was seen)."""
        return len(self.records) / self.total if self.total else 0.0

    def counts(self) -> dict[str, int]:
        """Number of bad samples per kind."""
        return dict(sorted(Counter(str(r.kind) for r in self.records).items()))

    def check(self) -> None:
        """Raise ``TooManyBadSamplesError`` when the bad fraction is above ``max_bad_fraction``."""
        if self.bad_fraction > self.max_bad_fraction:
            raise TooManyBadSamplesError(
                f"{len(self.records)} of {self.total} samples are bad ({self.bad_fraction:.1%} > "
                f"max_bad_fraction {self.max_bad_fraction:.1%}); by kind: {self.counts()}. "
                f"First: {self.records[0].describe()}"
            )

    def to_dict(self) -> dict:
        """The report (layout in the module docstring)."""
        return {
            "good": self.good,
            "bad": len(self.records),
            "bad_fraction": self.bad_fraction,
            "max_bad_fraction": self.max_bad_fraction,
            "counts": self.counts(),
            "records": [r.to_dict() for r in self.records],
        }

    def write(self, uri: str) -> None:
        """Write the report as JSON to ``uri`` (local path or ``s3://``), whole-file."""
        storage.write_bytes(uri, json.dumps(self.to_dict(), indent=1).encode())
