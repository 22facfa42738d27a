"""hashing.mlflow.runs: where MLflow is, the experiment per dataset, what a run logs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import mlflow
import numpy as np
import pytest
import yaml

from hashing.config import config_to_dict, flatten, load_config, validate_config
from hashing.evaluation import RetrievalEvaluation
from hashing.mlflow import runs
from hashing.mlflow.names import PR_CURVE_PNG, PRECISION_AT_N_PNG

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_default_tracking_uri_is_sqlite_in_run_root(logged):
    assert logged["tracking_uri"] == f"sqlite:///{logged['root']}/mlflow.db"
    assert (Path(logged["root"]) / "mlflow.db").is_file()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    config = load_config(None, [f"run.root={tmp_path}", "model.backbone=small_cnn"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert runs.tracking_uri(config) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert runs.tracking_uri(config) == "http://127.0.0.1:5999"
    config.tracking.uri = "http://mlflow:5000"
    assert runs.tracking_uri(config) == "http://mlflow:5000"
    assert runs.tracking_env(config)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_setup_tracking_does_not_pin_the_next_config(logged, tmp_path):
    """A second config in the same process (another test, a notebook) gets its own default database."""
    other = load_config(None, [f"run.root={tmp_path}", "model.backbone=small_cnn"])
    assert runs.tracking_uri(other) == f"sqlite:///{tmp_path}/mlflow.db"


def test_experiment_per_dataset_with_artifacts_under_run_root(logged):
    experiment = mlflow.get_experiment(logged["experiment_id"])
    assert experiment.name == "hashing-tiny"
    assert experiment.artifact_location == (Path(logged["root"]) / "mlartifacts").as_uri()


def test_logged_config_and_params(logged):
    run = mlflow.get_run(logged["run_id"])
    expected = flatten(config_to_dict(logged["config"]))
    assert run.data.params["method.params.alpha"] == "0.2"
    assert run.data.params["train.epochs"] == str(expected["train.epochs"])
    assert set(run.data.params) == set(expected)
    text = Path(
        mlflow.artifacts.download_artifacts(run_id=logged["run_id"], artifact_path="config.yaml")
    ).read_text()
    assert validate_config(yaml.safe_load(text)) == logged["config"]


def test_log_png(logged):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    with mlflow.start_run(experiment_id=logged["experiment_id"]) as run:
        runs.log_png(figure, "plots/pr_curve.png")
    plt.close(figure)
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots/pr_curve.png")
    assert Path(path).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"\.png"):
        runs.log_png(figure, "plots/pr_curve.jpg")


def test_log_evaluation_logs_metrics_and_plots_only_with_curves(logged):
    curves = RetrievalEvaluation({"map_at_10": 0.5, "p_at_r2": 0.25}, np.array([1, 5]), np.array([0.9, 0.7]),
                                 precision=np.array([1.0, 0.8, 0.6]), recall=np.array([0.1, 0.5, 1.0]))
    without = RetrievalEvaluation({"map_at_10": 0.125}, np.array([1]), np.array([0.5]))
    logged_runs = []
    for result in (curves, without):
        with mlflow.start_run(experiment_id=logged["experiment_id"]) as run:
            runs.log_evaluation(result, "test")
        logged_runs.append(run.info.run_id)
    client = mlflow.MlflowClient()
    assert mlflow.get_run(logged_runs[0]).data.metrics == curves.metrics
    assert mlflow.get_run(logged_runs[1]).data.metrics == without.metrics
    with_plots = {a.path for a in client.list_artifacts(logged_runs[0], "plots")}
    assert with_plots == {PR_CURVE_PNG, PRECISION_AT_N_PNG}
    for png in with_plots:
        path = mlflow.artifacts.download_artifacts(run_id=logged_runs[0], artifact_path=png)
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    assert client.list_artifacts(logged_runs[1]) == []
