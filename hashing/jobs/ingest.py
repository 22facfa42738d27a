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

Recipe: config -> ``IngestArgs`` -> the source (``hashing.data.sources``) -> ``hashing.data.ingest.ingest``
(shards, quarantine report, ``dataset.json``) -> the summary table.

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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hashing.config import Config
from hashing.data.ingest import DEFAULT_MAX_BAD_FRACTION, IngestResult, ingest
from hashing.data.schema import manifest_uri
from hashing.data.shards import DEFAULT_SHARD_SIZE
from hashing.data.sources import builtin_source, folder_source, read_classes
from hashing.data.transforms import MAX_IMAGE_PIXELS_ENV
from hashing.errors import InputError


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
