"""The ``hashing`` command: ``hashing ingest|train|encode|evaluate|promote|search|demo [--help] ...``.

Also ``python -m hashing ...`` and ``python pipelines/<job>.py ...``. Each job reads ``--config PATH`` plus
``key=value`` overrides (one schema, ``hashing.config``) and takes ``--log-level`` / ``-v``; its own
flags are shorthands for config keys or say what to do. The parsers are built here, importing neither
torch, Ray nor MLflow, so ``--help`` answers at once; ``hashing.jobs.runner.run_job`` runs the job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hashing.cli_args import config_parser
from hashing.data.splits import RETRIEVAL_SPLITS, SPLITS
from hashing.jobs.runner import JobSpec, run_job
from hashing.jobs.serve import serve_parser

DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _parser(job: str, description: str) -> argparse.ArgumentParser:
    parser = config_parser(description)
    parser.prog = f"hashing {job}"
    return parser


def _set(args: argparse.Namespace, key: str, value: object) -> None:
    """Append the override ``key=value`` (the value as JSON, which YAML reads back as given)."""
    args.overrides.append(f"{key}={json.dumps(value)}")


# ingest --------------------------------------------------------------------------------------------

def ingest_parser() -> argparse.ArgumentParser:
    p = _parser("ingest",
                "Images + labels/tags (or the built-in dataset) -> WebDataset shards + dataset.json "
                "at dataset.uri; bad records go to quarantine.json. The flags are shorthands for config "
                "keys.")
    p.add_argument("--output", help="dataset root, local folder or s3://bucket/prefix: dataset.uri")
    p.add_argument("--source", choices=["builtin", "folder"], help="ingest.source (default: folder when "
                   "ingest.labels is set, else builtin)")
    p.add_argument("--preset", help="built-in preset (tiny, default, ...): dataset.builtin")
    p.add_argument("--seed", type=int, help="built-in dataset seed: dataset.seed")
    p.add_argument("--labels", help="folder source: labels file (.csv, or .jsonl JSON Lines): ingest.labels")
    p.add_argument("--classes",
                   help="folder source: a,b,c or a .txt file with one class per line: ingest.classes")
    p.add_argument("--split", choices=SPLITS,
                   help="folder source: split of rows without one: ingest.split")
    p.add_argument("--name", help="dataset name (default: builtin-PRESET, or the labels file's folder name): "
                   "dataset.name")
    p.add_argument("--shard-size", type=int, help="samples per shard: dataset.shard_size")
    p.add_argument("--max-shard-bytes", type=int, help="also cap shards at about this many bytes")
    p.add_argument("--strict", action="store_true", help="fail on the first bad record: data.strict=true")
    p.add_argument("--max-bad-fraction", type=float,
                   help="fail when a larger fraction of the records is bad: "
                   "data.max_bad_fraction")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already there (it stays "
                   "readable until the new one is complete, and unchanged if the ingest fails)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--unlabelled", action="store_true",
                   help="folder source: allow a labels file without labels (no CSV column / JSON field)")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="reject images of more than N pixels as too_large (default 8192 x 8192; "
                   "env HASHING_MAX_IMAGE_PIXELS): ingest.max_image_pixels")
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="S3-compatible endpoint: storage.s3_endpoint; default: "
                   "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS")
    return p


_INGEST_FLAGS = {"output": "dataset.uri", "source": "ingest.source", "preset": "dataset.builtin",
                 "seed": "dataset.seed", "labels": "ingest.labels", "classes": "ingest.classes",
                 "split": "ingest.split", "name": "dataset.name", "shard_size": "dataset.shard_size",
                 "max_shard_bytes": "ingest.max_shard_bytes", "max_bad_fraction": "data.max_bad_fraction",
                 "max_image_pixels": "ingest.max_image_pixels", "s3_endpoint": "storage.s3_endpoint"}
_INGEST_SWITCHES = {"strict": "data.strict", "overwrite": "ingest.overwrite",
                    "unlabelled": "ingest.unlabelled"}


def prepare_ingest(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The flags as overrides (after the positional ones, so a flag wins); flag-named errors for the two
    checks users meet most."""
    from hashing.config import check_s3_endpoint, has_credentials

    if args.output is not None and has_credentials(args.output):
        parser.error("--output: the URI contains credentials (user:password@); give them through the "
                     "environment "
                     "(AWS_* variables), never on the command line")
    try:
        check_s3_endpoint(args.s3_endpoint, "--s3-endpoint")
    except ValueError as exc:
        parser.error(str(exc))
    if args.source == "folder" and not args.labels:
        parser.error("--source folder needs --labels FILE")
    for flag, key in _INGEST_FLAGS.items():
        if getattr(args, flag) is not None:
            _set(args, key, getattr(args, flag))
    for flag, key in _INGEST_SWITCHES.items():
        if getattr(args, flag):
            _set(args, key, True)


# train ---------------------------------------------------------------------------------------------

def train_parser() -> argparse.ArgumentParser:
    p = _parser("train", "Train a hashing method with Ray Train (DDP) and register it in MLflow.")
    p.add_argument("--num-workers", metavar="N",
                   help="Ray Train workers (DDP processes): train.num_workers")
    p.add_argument("--use-gpu", action="store_true", help="a GPU per worker, nccl: train.use_gpu=true")
    return p


def prepare_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--num-workers N`` / ``--use-gpu`` win over the same keys given as overrides."""
    if args.num_workers is not None:
        args.overrides.append(f"train.num_workers={args.num_workers}")  # YAML: the schema names a bad one
    if args.use_gpu:
        _set(args, "train.use_gpu", True)


# encode, evaluate, promote, search, demo -----------------------------------------------------------

def encode_parser() -> argparse.ArgumentParser:
    p = _parser("encode", "Encode a dataset into Parquet code shards with a registered model version.")
    p.add_argument("--nightly", action="store_true",
                   help="encode the champion: everything if it changed since the last complete encode, "
                        "else only new source shards")
    p.add_argument("--force", action="store_true", help="rewrite parts that already exist (encode.force)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    return _parser("evaluate",
                   "Evaluate a registered model version from its code shards (query vs database).")


def promote_parser() -> argparse.ArgumentParser:
    p = _parser("promote", "Promote the challenger to champion when its evaluation beats the champion's.")
    p.add_argument("--dry-run", action="store_true", help="decide and print, move and record nothing")
    return p


def search_parser() -> argparse.ArgumentParser:
    p = _parser("search", "Top-k Hamming search over the code shards of a model version.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--key", help="a sample key in the database or query codes")
    what.add_argument("--image", metavar="PATH", help="an image file (local path or s3://)")
    what.add_argument("--text", help='comma-separated tags, e.g. "dress, handbag" (multimodal models only)')
    p.add_argument("--split", choices=RETRIEVAL_SPLITS, default="database", help="the split searched")
    p.add_argument("--allow-partial", action="store_true",
                   help="search the code parts there are when some shards have none (says how many)")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="text: a table; json: one JSON object on stdout (for scripts)")
    return p


def demo_parser() -> argparse.ArgumentParser:
    return _parser("demo", "Run ingest -> train -> encode -> evaluate -> promote -> search on the built-in "
                   f"dataset (default --config configs/{DEFAULT_DEMO_CONFIG.name}).")


def prepare_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.config = args.config or str(DEFAULT_DEMO_CONFIG)


JOBS: dict[str, JobSpec] = {
    "ingest": JobSpec("ingest", ingest_parser, prepare_ingest, tracking=False),
    "train": JobSpec("train", train_parser, prepare_train),
    "encode": JobSpec("encode", encode_parser),
    "evaluate": JobSpec("evaluate", evaluate_parser),
    # run_promote / run_search check the tracking server themselves (they are library calls too)
    "promote": JobSpec("promote", promote_parser, tracking=False),
    "search": JobSpec("search", search_parser, tracking=False),
    "demo": JobSpec("demo", demo_parser, prepare_demo, tracking=False),
    "serve": JobSpec("serve", serve_parser),
}

USAGE = """usage: hashing JOB [--config PATH] [key=value ...] [--log-level LEVEL | -v] [job flags]

jobs (`hashing JOB --help` for each):
  ingest    images + labels (or the built-in dataset) -> WebDataset shards + dataset.json
  train     Ray Train (DDP) training, registered in MLflow as the challenger
  encode    Ray Data batch job: shards -> Parquet code shards of a model version
  evaluate  mAP@K, NDCG@K, P@r, P@N from the code shards, logged against the model version
  promote   challenger -> champion when its evaluation beats the champion's
  search    top-k Hamming search by key, image file or text
  demo      the whole flow on the built-in dataset
  serve     query service on Ray Serve (HTTP) over the champion's code shards
"""


def script(module_name: str, job: str) -> None:
    """What ``pipelines/<job>.py`` does: run as a script (``__main__``, also under ``ray job submit``), the
    ``hashing <job>`` command with its arguments; imported, it becomes the module ``hashing.jobs.<job>``."""
    if module_name == "__main__":
        sys.exit(main([job, *sys.argv[1:]]))
    import importlib

    sys.modules[module_name] = importlib.import_module(f"hashing.jobs.{job}")


def main(argv: Sequence[str] | None = None) -> int:
    """``hashing JOB ...``: the job's exit code; 2 for an unknown job, 0 for ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(USAGE)
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        sys.stderr.write(f"hashing: unknown job {job!r}; jobs: {', '.join(JOBS)}\n\n{USAGE}")
        return 2
    return run_job(JOBS[job], rest)


if __name__ == "__main__":
    sys.exit(main())
