"""The whole flow on the built-in dataset, one job after another, as a user would run them.

    hashing demo [--config configs/demo.yaml] [key=value ...]      (or python pipelines/demo.py ...)

Recipe: ingest (the built-in dataset into ``dataset.uri``, skipped when already there) -> train
(Ray Train, registers ``challenger``) -> encode (Ray Data, Parquet code shards) -> evaluate (metrics
and plots against the model version) -> promote (``challenger`` -> ``champion`` when it wins) ->
search (the first query item against the database) -> where the results are, and the
command and URL of the query service over the champion's codes (not started).

Each step is the command line printed before it runs, with the same ``--config`` and overrides, so
any of them can be rerun alone; the demo stops at the first step that fails.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from hashing import storage
from hashing.code_shards import version_uri
from hashing.config import Config
from hashing.errors import InputError
from hashing.jobs.serve import DEFAULT_PORT
from hashing.mlflow.names import CHAMPION, registered_model_name
from hashing.mlflow.registry import resolve_model
from hashing.mlflow.runs import setup_tracking

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"  # in a checkout; else `python -m hashing`
SAMPLE_QUERY_KEY = "query-0000000"  # the built-in dataset's first query item


def main(argv: list[str] | None = None) -> int:
    """``hashing demo ...``: 0 when all steps succeeded, else the exit code of the step that failed."""
    from hashing.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """Run every step with the demo's ``--config`` and overrides (see the module docstring)."""
    if config.dataset.builtin is None:
        raise InputError("the demo runs on the built-in dataset: dataset.builtin must name a preset")
    common = ["--config", args.config, *args.overrides]
    steps = [
        ("train", common),
        ("encode", [*common, "--no-progress"]),
        ("evaluate", common),
        ("promote", common),
        ("search", [*common, "--key", SAMPLE_QUERY_KEY]),
    ]
    if not storage.exists(storage.join(config.dataset.uri, "dataset.json")):
        steps.insert(0, ("ingest", common))  # ingest reads the same config: dataset.uri, .builtin, .seed, ...
    for name, arguments in steps:
        code = run_step(name, arguments)
        if code != 0:
            print(f"\ndemo: step '{name}' failed with exit code {code}; fix it and rerun `make demo`")
            return code
    print_where_results_are(config, common)
    return 0


def step_command(job: str, arguments: list[str]) -> tuple[list[str], str]:
    """``(argv to run, the command as a user would type it)``: ``python pipelines/<job>.py ...`` in a
    checkout, else ``hashing <job> ...`` (run as ``python -m hashing``)."""
    script = PIPELINES / f"{job}.py"
    if script.is_file():
        return [sys.executable, str(script),
                *arguments], shlex.join(["python", f"pipelines/{job}.py", *arguments])
    return [sys.executable, "-m", "hashing", job, *arguments], shlex.join(["hashing", job, *arguments])


def run_step(name: str, arguments: list[str]) -> int:
    """Run job ``name`` in a fresh process (as a user would); its exit code."""
    command, shown = step_command(name, arguments)
    print(f"\n=== {name}: {shown}", flush=True)
    return subprocess.run(command, check=False).returncode


def print_where_results_are(config: Config, common: list[str]) -> None:
    """The MLflow UI command, the champion's code shards and how to search them again."""
    from hashing.data.schema import load_manifest

    uri = setup_tracking(config)
    champion = resolve_model(registered_model_name(config.method.name,
                                                   load_manifest(config.dataset.uri).name),
                             alias=CHAMPION)
    print("\n=== where the results are")
    print(f"MLflow runs and models: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)")
    print(f"champion model:         models:/{champion.name}/{champion.version} (@{CHAMPION})")
    print(f"its code shards:        {version_uri(config.encode.codes_root, champion.name, champion.version)}")
    print(f"training checkpoints:   {config.train.storage_path}")
    print(f"search again:           {step_command('search', [*common, '--key', SAMPLE_QUERY_KEY])[1]}")
    print(f"serve the champion:     {step_command('serve', common)[1]}")
    print(f"                        then http://127.0.0.1:{DEFAULT_PORT}/ (the web page) or "
          f"http://127.0.0.1:{DEFAULT_PORT}/search?key={SAMPLE_QUERY_KEY}&k=10")


if __name__ == "__main__":
    sys.exit(main())
