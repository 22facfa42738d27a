"""The whole flow on the tiny dataset: ingest -> train -> encode -> evaluate -> promote -> search.

Runs ``pipelines/demo.py`` (each step a fresh ``python pipelines/<job>.py`` process, as a user runs
them) with ``configs/test.yaml``, once with everything in a local folder and once with the dataset,
checkpoints and code shards on the local S3 endpoint; then reads the results back through MLflow
and the code-shard contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "hashing-idhn-builtin-tiny"
FLOW_TIMEOUT_S = 600


def _run_demo(root: Path, *overrides: str) -> str:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "pipelines/demo.py", "--config", "configs/test.yaml", f"run.root={root}",
         *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=FLOW_TIMEOUT_S, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Traceback" not in output, output[-6000:]  # a healthy run reads as one (issue 14)
    noise = [line for line in output.splitlines() if any(mark in line for mark in RAY_NOISE)]
    assert not noise, "\n".join(noise[:20])  # our lines, not Ray's (issue 15)
    return done.stdout


# What Ray prints by itself at INFO (off unless --log-level DEBUG): Ray Train's worker-group, process-group
# and report lines, Ray Data's execution summaries, a deprecation warning Ray Train triggers in Ray Data,
# MLflow's registry chatter, and Ray's notice that token authentication is on.
RAY_NOISE = ("Started training worker group", "Setting up process group", "Reporting training result",
             "Checkpoint successfully created", "execution finished in",
             "RayDeprecationWarning", "Requesting resources", "Successfully registered model",
             "Created version", "Token authentication is enabled")


def _check_results(root: Path, stdout: str, codes_root: str) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from hashing.code_shards import load_split, split_uri
    from hashing.data.schema import load_manifest

    for step in ("ingest", "train", "encode", "evaluate", "promote", "search"):
        assert f"=== {step}: python pipelines/{step}.py" in stdout, step
    assert "serve the champion:     python pipelines/serve.py --config configs/test.yaml" in stdout
    assert "http://127.0.0.1:8000/ (the web page)" in stdout and "http://127.0.0.1:8000/search?key=" in stdout

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        client = MlflowClient()
        challenger = client.get_model_version_by_alias(MODEL_NAME, "challenger")
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert int(challenger.version) == int(champion.version) == 1
        jobs = {run.data.tags.get("job") for run in mlflow.search_runs(search_all_experiments=True,
                                                                          output_format="list")}
        assert {"train", "encode", "evaluate"} <= jobs
    finally:
        mlflow.set_tracking_uri(None)

    dataset_uri = stdout.split("dataset: ", 1)[1].split()[0].removesuffix("/dataset.json")  # ingest's summary
    manifest = load_manifest(dataset_uri)
    for split in ("query", "database"):
        codes = load_split(split_uri(codes_root, MODEL_NAME, 1, split))
        keys = list(codes.keys)
        assert len(keys) == len(set(keys)) == manifest.split(split).samples, split
        assert codes.codes.shape == (len(keys), 16 // 8)

    # The sample search printed ranked database keys with their Hamming distances.
    search_out = stdout.split("=== search:", 1)[1].split("=== where the results are", 1)[0]
    assert "database-" in search_out
    assert "where the results are" in stdout and f"{codes_root}/{MODEL_NAME}/v1" in stdout


@pytest.mark.slow
def test_flow_on_a_local_folder(tmp_path: Path) -> None:
    root = tmp_path / "run"
    stdout = _run_demo(root)
    _check_results(root, stdout, str(root / "codes"))


@pytest.mark.slow
def test_flow_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    root = tmp_path / "run"
    stdout = _run_demo(root, f"dataset.uri={s3_bucket}/data/tiny", f"train.storage_path={s3_bucket}/train",
                       f"encode.codes_root={s3_bucket}/codes")
    _check_results(root, stdout, f"{s3_bucket}/codes")
