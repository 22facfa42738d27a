"""The whole flow on the built-in dataset, one job after another, as a user would run them.

    python pipelines/demo.py [--config configs/demo.yaml] [key=value ...]

Recipe: ingest (the built-in dataset into ``dataset.uri``, skipped when already there) -> train
(Ray Train, registers ``challenger``) -> encode (Ray Data, Parquet code shards) -> evaluate (metrics
and plots against the model version) -> promote (``challenger`` -> ``champion`` when it wins) ->
search (the first query item against the database) -> where the results are.

Each step is the command line printed before it runs, with the same ``--config`` and overrides, so
any of them can be rerun alone; the demo stops at the first step that fails.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from hashing import storage
from hashing.code_shards import version_uri
from hashing.config import Config, config_from_args, config_parser
from hashing.tracking import CHAMPION, registered_model_name, resolve_model, setup_tracking

PIPELINES = Path(__file__).resolve().parent
DEFAULT_CONFIG = PIPELINES.parent / "configs" / "demo.yaml"
SAMPLE_QUERY_KEY = "query-0000000"  # the built-in dataset's first query item


def main(argv: list[str] | None = None) -> int:
    """Run every step; 0 when all succeeded, else the exit code of the step that failed."""
    parser = config_parser("Run ingest -> train -> encode -> evaluate -> promote -> search on the built-in dataset.")
    args = parser.parse_intermixed_args(argv)
    args.config = args.config or str(DEFAULT_CONFIG)
    config = config_from_args(parser, args)
    storage.use_s3_endpoint(config.storage.s3_endpoint)
    if config.dataset.builtin is None:
        parser.error("the demo runs on the built-in dataset: dataset.builtin must name a preset")
    common = ["--config", args.config, *args.overrides]

    steps = [
        ("train", ["train.py", *common]),
        ("encode", ["encode.py", *common, "--no-progress"]),
        ("evaluate", ["evaluate.py", *common]),
        ("promote", ["promote.py", *common]),
        ("search", ["search.py", *common, "--key", SAMPLE_QUERY_KEY]),
    ]
    if not storage.exists(storage.join(config.dataset.uri, "dataset.json")):
        endpoint = ["--s3-endpoint", config.storage.s3_endpoint] if config.storage.s3_endpoint else []
        steps.insert(0, ("ingest", ["ingest.py", "--output", config.dataset.uri, "--source", "builtin",
                                    "--preset", config.dataset.builtin, "--seed", str(config.dataset.seed),
                                    "--shard-size", str(config.dataset.shard_size), *endpoint]))
    for name, step in steps:
        code = run_step(name, step)
        if code != 0:
            print(f"\ndemo: step '{name}' failed with exit code {code}; fix it and rerun `make demo`")
            return code
    print_where_results_are(config, common)
    return 0


def run_step(name: str, arguments: list[str]) -> int:
    """Run ``python pipelines/<arguments>`` in a fresh process (as a user would); its exit code."""
    command = [sys.executable, str(PIPELINES / arguments[0]), *arguments[1:]]
    print(f"\n=== {name}: {shlex.join(['python', f'pipelines/{arguments[0]}', *arguments[1:]])}", flush=True)
    return subprocess.run(command, check=False).returncode


def print_where_results_are(config: Config, common: list[str]) -> None:
    """The MLflow UI command, the champion's code shards and how to search them again."""
    from hashing.data.schema import load_manifest

    uri = setup_tracking(config)
    champion = resolve_model(registered_model_name(config.method.name, load_manifest(config.dataset.uri).name),
                             alias=CHAMPION)
    print("\n=== where the results are")
    print(f"MLflow runs and models: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
    print(f"champion model:         models:/{champion.name}/{champion.version} (@{CHAMPION})")
    print(f"its code shards:        {version_uri(config.encode.codes_root, champion.name, champion.version)}")
    print(f"training checkpoints:   {config.train.storage_path}")
    print(f"search again:           {shlex.join(['python', 'pipelines/search.py', *common, '--key', SAMPLE_QUERY_KEY])}")


if __name__ == "__main__":
    sys.exit(main())
