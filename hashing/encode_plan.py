"""What an encode run has to do, before any image is read.

- ``plan``: the source shards of ``encode.splits`` this model version has no finished code part for (all
  of them when forced), and those it has: parts are kept per version, so a rerun after a kill, new
  source shards and a new version all come down to "what this version has no finished part for".
- ``nightly_mode``: for the nightly encode of the champion, ``full`` when the champion changed since the
  last complete encode into the same codes root (or there is none), else ``incremental``.
"""

from __future__ import annotations

import logging

import mlflow

from hashing import storage
from hashing.code_shards import finished_parts, split_uri
from hashing.config import Config
from hashing.data.schema import DatasetManifest, UnknownSplitError
from hashing.encoding import ShardRef
from hashing.errors import InputError
from hashing.mlflow import names
from hashing.mlflow.registry import ResolvedModel

log = logging.getLogger(__name__)


def nightly_mode(codes_root: str, model: ResolvedModel) -> str:
    """``full`` when the last complete encode of ``model.name`` into ``codes_root`` was of another version
    (or there is none), else ``incremental``; the reason is logged."""
    runs = mlflow.search_runs(
        filter_string=(f"tags.{names.TAG_JOB} = 'encode' and tags.{names.TAG_COMPLETE} = 'true' and "
                       f"tags.{names.TAG_MODEL_NAME} = '{model.name}' and "
                       f"tags.{names.TAG_CODES_ROOT} = '{codes_root}'"),
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list",
    )
    if not runs:
        log.info("nightly: no complete encode of %s into %s yet: encoding everything with champion v%d",
                 model.name, codes_root, model.version)
        return "full"
    last = int(runs[0].data.tags[names.TAG_MODEL_VERSION])
    if last != model.version:
        log.info("nightly: champion changed from v%d (run %s) to v%d: encoding everything", last,
                 runs[0].info.run_id, model.version)
        return "full"
    log.info("nightly: champion v%d unchanged since run %s: encoding new source shards only", last,
             runs[0].info.run_id)
    return "incremental"


def plan(config: Config, manifest: DatasetManifest, model: ResolvedModel,
         force: bool) -> tuple[dict[str, ShardRef], list[str]]:
    """``({reader path: ShardRef} to encode, [source shards already finished])`` over ``encode.splits``."""
    _, base = storage.filesystem(config.dataset.uri)  # the reader reports paths as this filesystem names them
    pending: dict[str, ShardRef] = {}
    skipped: list[str] = []
    for split in config.encode.splits:
        try:
            shards = manifest.split(split).shards
        except UnknownSplitError as exc:
            raise InputError(f"encode.splits: {exc}") from None
        done = {} if force else finished_parts(split_uri(config.encode.codes_root, model.name, model.version,
                                                         split),
                                               {s.path: s.sha256 for s in shards}, model.uri)
        skipped += list(done)
        for s in shards:
            if s.path not in done:
                pending[f"{base.rstrip('/')}/{s.path}"] = ShardRef(
                    split, storage.join(config.dataset.uri, s.path), s)
    return pending, skipped
