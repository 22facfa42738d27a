"""pipelines/train.py: clear errors, and end to end on the tiny dataset with configs/test.yaml.

The end-to-end tests run the job as a user does, in its own process tree (so killing a worker never
touches another Ray instance on the machine): through ``ray job submit`` to a local head, as
``python pipelines/train.py`` with a training worker SIGKILLed mid-run, and against a two-node
``ray.cluster_utils.Cluster``. They read the results back from the run's MLflow sqlite database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "hashing-idhn-builtin-tiny"
JOB_TIMEOUT_S = 420


def _env(**extra: str) -> dict[str, str]:
    """This venv first on PATH (``ray job submit`` runs ``python``), quiet Ray and MLflow."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def _train_args(root: Path, dataset: str, *overrides: str) -> list[str]:
    return ["pipelines/train.py", "--config", "configs/test.yaml", f"run.root={root}",
            f"dataset.uri={dataset}",
            *overrides]


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db",
                        registry_uri=f"sqlite:///{root}/mlflow.db")


def _only_run(root: Path):
    client = _client(root)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _metric_history(root: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _client(root).get_metric_history(run_id, key)]


# --- fast: bad input is one clear message ---------------------------------------------------------------


def test_a_bad_config_value_names_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(REPO / "configs/test.yaml"), "train.num_workers=0", "train.max_failures=maybe"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "train.num_workers" in err and "train.max_failures" in err


def test_num_workers_and_use_gpu_flags_set_the_train_keys_and_win_over_overrides(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipelines.train import parse_train_cli

    config = parse_train_cli(["--config", str(REPO / "configs/test.yaml"), "train.num_workers=1",
                              "--num-workers", "3", "--use-gpu"])
    assert config.train.num_workers == 3 and config.train.use_gpu is True
    assert parse_train_cli(["--config", str(REPO / "configs/test.yaml")]).train.use_gpu is False
    with pytest.raises(SystemExit) as exit_info:
        parse_train_cli(["--num-workers", "none"])
    assert exit_info.value.code == 2 and "train.num_workers" in capsys.readouterr().err


def test_a_missing_dataset_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.train import main

    assert main(["--config", str(REPO / "configs/test.yaml"), f"run.root={tmp_path}",
                 f"dataset.uri={tmp_path / 'nothing'}"]) == 2
    assert "dataset.json" in caplog.text and "ingest" in caplog.text


# --- end to end -----------------------------------------------------------------------------------------


@pytest.fixture
def ray_head(services) -> Iterator[str]:
    """A local Ray head (``ray start --head --block``, dashboard and job server on 127.0.0.1, auth off for
    local development); yields the job server URL. Every port it listens on is a free one: the job agent's
    default (52365) is taken by any other Ray on the machine, and without its agent the head answers
    "No available agent to submit job". Stopped through its process group (never ``ray stop``, which
    would stop every Ray on the machine)."""
    port, dashboard = services.free_port(), services.free_port()
    agent_ports = [f"--{flag}={services.free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port")]
    temp_dir = tempfile.mkdtemp(prefix="rayhead-",
                                dir="/tmp")  # short: Ray's socket paths have a length limit
    url = f"http://127.0.0.1:{dashboard}"
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
               f"--dashboard-port={dashboard}",
               "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=4",
               "--include-dashboard=true", f"--temp-dir={temp_dir}", *agent_ports]
    env = _env(RAY_AUTH_MODE="disabled", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    with services.running_service("ray head", command, f"{url}/api/version", Path(temp_dir, "ray-start.log"),
                                  timeout_s=120, env=env):
        yield url


@pytest.mark.slow
@pytest.mark.parametrize("entrypoint", [["python", "pipelines/train.py"], ["hashing", "train"]],
                         ids=["python-pipelines", "console-script"])
def test_ray_job_submit_trains_evaluates_and_registers_a_loadable_model(
    ray_head: str, tiny_dataset: str, tmp_path: Path, entrypoint: list[str]
) -> None:
    import mlflow

    from hashing.data.schema import load_manifest
    from hashing.evaluation import metric_key
    from hashing.metrics import retrieval_report
    from hashing.mlflow.logged_model import load_hashing_model
    from hashing.train_eval import encode_split, make_preprocess

    root = tmp_path / "run"
    done = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", ".", "--",
         *entrypoint, *_train_args(root, tiny_dataset)[1:]],
        cwd=REPO, env=_env(RAY_AUTH_MODE="disabled"), capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in output, output[-5000:]

    run = _only_run(root)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "idhn" and run.data.params["train.num_workers"] == "2"
    assert run.data.tags["dataset_fingerprint"] == load_manifest(tiny_dataset).fingerprint
    assert [step for step, _ in _metric_history(root, run.info.run_id, "train/loss")] == [0]
    client = _client(root)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots"} <= artifacts
    png = Path(client.download_artifacts(run.info.run_id, "plots/pr_curve.png", str(tmp_path)))
    assert png.read_bytes().startswith(b"\x89PNG")

    version = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert version.run_id == run.info.run_id and int(version.version) == 1

    # The registered model loads without pickle and reproduces the metrics the run logged.
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        method, config = load_hashing_model(f"models:/{MODEL_NAME}@challenger")
    finally:
        mlflow.set_tracking_uri(None)
    preprocess = make_preprocess(config)
    q_codes, q_labels = encode_split(method, config, "query", preprocess)
    db_codes, db_labels = encode_split(method, config, "database", preprocess)
    assert q_codes.shape[1] == 16 // 8 and q_codes.dtype == np.uint8
    report = retrieval_report(q_codes, db_codes, q_labels, db_labels, topk=config.evaluate.topk,
                              ndcg_k=config.evaluate.ndcg_k, radius=config.evaluate.radius)
    for key, value in report.items():
        assert run.data.metrics[metric_key(key)] == pytest.approx(value, abs=1e-9), key


def _latest_checkpoint(storage: Path) -> str | None:
    """Name of the latest checkpoint Ray Train has registered under ``storage`` (None before the first)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (OSError, json.JSONDecodeError):
            continue
        if latest:
            return json.dumps(latest)
    return None


@pytest.mark.slow
def test_a_killed_worker_restarts_from_the_last_checkpoint(tiny_dataset: str, tmp_path: Path,
                                                           services) -> None:
    root = tmp_path / "run"
    epochs = 4
    proc = subprocess.Popen(
        [sys.executable, *_train_args(root, tiny_dataset, f"train.epochs={epochs}", "train.max_failures=2",
                                      "ray.num_cpus=4")],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _latest_checkpoint(root / "train") is None:
            assert proc.poll() is None, proc.stdout.read()[-5000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        workers = [pid for pid in _descendants(proc.pid) if "RayTrainWorker" in _cmdline(pid)]
        assert len(workers) == 2, [(pid, _cmdline(pid)[:80]) for pid in _descendants(proc.pid)]
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        services.stop_process_group(proc)
    assert proc.returncode == 0, output[-5000:]

    run = _only_run(root)
    resumed_from = run.data.metrics["train/resumed_from_step"]
    steps = run.data.metrics["train/steps"]
    per_epoch = steps / epochs
    # The attempt that finished started from a checkpoint (step > 0) and did not count from 0 again.
    assert 0 < resumed_from < steps and per_epoch == int(per_epoch), (resumed_from, steps)
    assert [step for step, _ in _metric_history(root, run.info.run_id, "train/loss")] == list(range(epochs))
    assert _client(root).get_model_version_by_alias(MODEL_NAME, "challenger").run_id == run.info.run_id


@pytest.mark.slow
def test_two_workers_train_on_two_nodes(tiny_dataset: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.cluster_utils import Cluster

    root = tmp_path / "run"
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # 3 logical CPUs per node and 2 per worker: the workers cannot share a node, and each node keeps
    # 1 CPU for Ray Data's read and decode tasks.
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 3, "include_dashboard": False})
    try:
        worker_node = cluster.add_node(num_cpus=3)
        cluster.wait_for_nodes()
        expected_nodes = {cluster.head_node.node_id, worker_node.node_id}
        done = subprocess.run(
            [sys.executable, *_train_args(root, tiny_dataset, f"ray.address={cluster.address}",
                                          "train.cpus_per_worker=2")],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False,
        )
    finally:
        cluster.shutdown()
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    nodes = set(_only_run(root).data.tags["train_nodes"].split(","))
    assert nodes == expected_nodes


# --- baselines: LSH / ITQ through the same job, registered and loadable like any model ---------------


@pytest.mark.parametrize("method", ["itq", "lsh"])
def test_baseline_is_fitted_registered_and_encodes_like_a_model(
    method: str, tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlflow

    from hashing.codes import pack_signs
    from hashing.config import load_config
    from hashing.encoding import Encoder
    from hashing.mlflow.logged_model import load_hashing_model
    from hashing.mlflow.runs import setup_tracking
    from pipelines import train

    args = ["--config", "configs/test.yaml", f"run.root={tmp_path}", f"dataset.uri={tiny_dataset}",
            f"method.name={method}", "evaluate.plots=false"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert f"models:/hashing-{method}-builtin-tiny/1 (@challenger)" in out and "float ceiling" in out
    run = _only_run(tmp_path)
    assert run.data.tags["method"] == method
    for key in ("map_at_100", "float_ceiling/map_at_100", "float_ceiling/ndcg_at_50", "train/fit_seconds"):
        assert 0.0 <= run.data.metrics[key] or key == "train/fit_seconds", key
    assert 0.0 < run.data.metrics["float_ceiling/map_at_100"] <= 1.0

    config = load_config(REPO / "configs" / "test.yaml", [f"run.root={tmp_path}"])
    setup_tracking(config)
    try:
        loaded, loaded_config = load_hashing_model(f"models:/hashing-{method}-builtin-tiny@challenger")
    finally:
        mlflow.set_tracking_uri(None)
    assert loaded.name == method and loaded_config.method.name == method
    assert loaded.projection.abs().sum() > 0  # the fitted projection was saved, not the zero init
    images = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    import torch

    with torch.no_grad():
        features = loaded.backbone(torch.from_numpy(images)).global_
        expected = pack_signs(loaded.codes_from_features(features).numpy())
    np.testing.assert_array_equal(Encoder(loaded, 32).encode_images(images), expected)
