"""Where MLflow is and what a run logs: tracking URI, server check, experiments, config / figure / evaluation.

The tracking URI is ``tracking.uri``, else env ``MLFLOW_TRACKING_URI``, else a sqlite database in the
run root (``sqlite:///{run.root}/mlflow.db``, artifacts in ``{run.root}/mlartifacts``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow

from hashing.config import Config, config_to_dict, config_to_yaml, flatten
from hashing.errors import UnavailableError
from hashing.mlflow.names import CONFIG_YAML, PR_CURVE_PNG, PRECISION_AT_N_PNG, experiment_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hashing.evaluation import RetrievalEvaluation

_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

# How long a job waits for an MLflow server to answer before it gives up (MLflow's own retries take minutes).
SERVER_CHECK_TIMEOUT_S = 5.0


def tracking_uri(config: Config) -> str:
    """``tracking.uri``, else env ``MLFLOW_TRACKING_URI``, else ``sqlite:///{run.root}/mlflow.db``."""
    return (
        config.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{config.run.root}/mlflow.db"
    )


def setup_tracking(config: Config) -> str:
    """Point this process's MLflow at the config's tracking URI; return it.

    Turns MLflow telemetry and download progress bars off (unless the environment says otherwise)
    and creates the folder of a local sqlite database. ``MLFLOW_TRACKING_URI`` in the environment
    stays what the user set (MLflow would export the URI there, and a later config in the same
    process would then inherit it instead of its own default); other processes (Ray actors that
    load models) get the settings from ``tracking_env``.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    user_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_env
    return uri


def check_tracking_server(config: Config, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """For an ``http(s)://`` tracking URI (``tracking_uri``), check that something answers at
    ``{uri}/health`` within ``timeout_s``; other URIs (sqlite, databricks) are left to MLflow.

    Any HTTP answer counts (a proxy may want authentication for it); only a refused connection, an
    unknown host or a timeout fail. Raises ``UnavailableError`` (a ``ConnectionError``) naming the URI.
    """
    uri = tracking_uri(config)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(f"no MLflow tracking server answers at {uri} (tracking.uri / "
                               "MLFLOW_TRACKING_URI): "
                               f"{reason}; start the server or fix the URI") from None


def tracking_env(config: Config) -> dict[str, str]:
    """Environment for other processes to reach the same MLflow (e.g. ``runtime_env={"env_vars": ...}``)."""
    return {**_QUIET_ENV, "MLFLOW_TRACKING_URI": tracking_uri(config)}


def set_experiment(config: Config, dataset_name: str) -> str:
    """Make the dataset's experiment active (created if needed); return its id.

    With a local sqlite database, artifacts go to ``{run.root}/mlartifacts`` (not the current
    folder, which ``ray job submit`` makes a temporary one); a tracking server picks its own store.
    """
    name = config.tracking.experiment or experiment_name(dataset_name)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if mlflow.get_tracking_uri().startswith("sqlite:"):
            location = Path(config.run.root, "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_config(config: Config) -> None:
    """Log the resolved config to the active run: ``config.yaml`` artifact + flattened params."""
    mlflow.log_text(config_to_yaml(config), CONFIG_YAML)
    params = {
        k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(config_to_dict(config)).items()
    }
    mlflow.log_params(params)


def log_png(figure: Figure, artifact_file: str) -> None:
    """Log a matplotlib figure to the active run as PNG ``artifact_file`` (e.g. ``plots/pr_curve.png``)."""
    if not artifact_file.endswith(".png"):
        raise ValueError(f"artifact_file must end with .png, got {artifact_file!r}")
    mlflow.log_figure(figure, artifact_file)


def log_evaluation(result: RetrievalEvaluation, title: str) -> None:
    """Log ``result`` to the active run: its metrics (names as in ``hashing.evaluation``), and when it has
    curves the PR and P@N plots (``plots/pr_curve.png``, ``plots/precision_at_n.png``)."""
    from hashing.evaluation import pr_figure, precision_at_n_figure

    mlflow.log_metrics(result.metrics)
    if result.precision is not None and result.recall is not None:
        log_png(pr_figure(result.precision, result.recall, title), PR_CURVE_PNG)
        log_png(precision_at_n_figure(result.ns, result.precision_at, title), PRECISION_AT_N_PNG)
