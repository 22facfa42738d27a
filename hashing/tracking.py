"""MLflow in one place: tracking URI, experiment / registered-model / alias names, the model format.

Names:
    experiment       ``hashing-{dataset}`` (one per dataset; ``tracking.experiment`` overrides it)
    registered model ``hashing-{method}-{dataset}``
    aliases          ``challenger`` (newest trained), ``champion`` (serving)

The model format is an MLflow pyfunc "models from code" model: ``hashing/serving.py`` is the model
code, and two artifacts hold the weights and how to rebuild the network:
    ``state_dict.safetensors``  the method's ``state_dict()`` (tensors only; safetensors, no pickle)
    ``config.json``             ``{"format", "format_version", "config": <resolved Config>, "model_meta"}``
so loading never unpickles a class. ``load_hashing_model`` rebuilds the method from the two files
directly (no pyfunc); ``mlflow.pyfunc.load_model`` gives ``predict(images) -> packed codes``.
The serving environment needs this package (``hashing``) installed, as the project image has it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hashing.config import Config, config_to_dict, config_to_yaml, flatten, is_remote, validate_config
from hashing.errors import InputError, MissingError, UnavailableError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hashing.config import ModelRefSection
    from hashing.methods.base import HashingMethod

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_FORMAT = "hashing-model"
MODEL_FORMAT_VERSION = 1
STATE_DICT_FILE = "state_dict.safetensors"
CONFIG_FILE = "config.json"
SERVING_CODE = str(Path(__file__).with_name("serving.py"))
# Pinned where it matters, short (STACK.md: an explicit list cuts log_model from seconds to 0.1 s).
PIP_REQUIREMENTS = [
    f"torch=={distribution_version('torch').split('+')[0]}",
    "numpy",
    "safetensors",
    "pyyaml",
    "pydantic>=2",
]

# Run / model-version tags other jobs read.
TAG_DATASET = "dataset"
TAG_DATASET_FINGERPRINT = "dataset_fingerprint"
TAG_METHOD = "method"
TAG_MODEL_NAME = "model_name"
TAG_MODEL_VERSION = "model_version"
TAG_JOB = "job"


def experiment_name(dataset_name: str) -> str:
    """The MLflow experiment of every run on dataset ``dataset_name``."""
    return f"hashing-{dataset_name}"


def registered_model_name(method: str, dataset: str) -> str:
    """The registry name of ``method`` trained on ``dataset``: ``hashing-{method}-{dataset}``."""
    return f"hashing-{method}-{dataset}"


def tracking_uri(config: Config) -> str:
    """``tracking.uri``, else env ``MLFLOW_TRACKING_URI``, else ``sqlite:///{run.root}/mlflow.db``."""
    return (
        config.tracking.uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{config.run.root}/mlflow.db"
    )


_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


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


# How long a job waits for an MLflow server to answer before it gives up (MLflow's own retries take minutes).
SERVER_CHECK_TIMEOUT_S = 5.0


def check_tracking_server(config: Config, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """For an ``http(s)://`` tracking URI (``tracking_uri``), check that something answers at
    ``{uri}/health`` within ``timeout_s``; other URIs (sqlite, databricks) are left to MLflow.

    Any HTTP answer counts (a proxy may want authentication for it); only a refused connection, an
    unknown host or a timeout fail. Raises ``ConnectionError`` naming the URI.
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
    mlflow.log_text(config_to_yaml(config), "config.yaml")
    params = {
        k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(config_to_dict(config)).items()
    }
    mlflow.log_params(params)


def log_png(figure: Figure, artifact_file: str) -> None:
    """Log a matplotlib figure to the active run as PNG ``artifact_file`` (e.g. ``plots/pr_curve.png``)."""
    if not artifact_file.endswith(".png"):
        raise ValueError(f"artifact_file must end with .png, got {artifact_file!r}")
    mlflow.log_figure(figure, artifact_file)


def model_meta(method: HashingMethod, config: Config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilding ``method`` needs beyond the config, plus ``extra`` (dataset name, fingerprint ...)."""
    return {
        "method": config.method.name,
        "backbone": config.model.backbone,
        "bits": method.bits,
        "num_classes": method.num_classes,
        "tag_vocab_size": method.tag_vocab_size,
        "image_size": config.dataset.image_size,
        "mean": list(method.backbone.mean),
        "std": list(method.backbone.std),
        "modalities": list(method.modalities),
        **(extra or {}),
    }


def save_model_files(
    method: HashingMethod, config: Config, folder: str | os.PathLike, extra: dict | None = None
) -> dict[str, str]:
    """Write ``state_dict.safetensors`` and ``config.json`` for ``method`` into ``folder``.

    Returns ``{"state_dict": path, "config": path}`` (the pyfunc artifacts mapping).
    """
    from safetensors.torch import save_file

    from hashing.methods.base import HashingMethod

    if not isinstance(method, HashingMethod):
        raise TypeError(f"expected a HashingMethod (unwrap DDP with .module), got {type(method).__name__}")
    if method.bits != config.model.bits:
        raise ValueError(f"method has {method.bits} bits but config model.bits is {config.model.bits}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in method.state_dict().items()}
    save_file(tensors, str(folder / STATE_DICT_FILE))
    document = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "config": config_to_dict(config),
        "model_meta": model_meta(method, config, extra),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2))
    return {"state_dict": str(folder / STATE_DICT_FILE), "config": str(folder / CONFIG_FILE)}


def load_model_files(
    state_dict_path: str | os.PathLike, config_path: str | os.PathLike
) -> tuple[HashingMethod, Config]:
    """Rebuild a method from the two model files (see the module docstring); in eval mode, on CPU."""
    from safetensors.torch import load_file

    from hashing.methods import build_method
    from hashing.models import build_backbone

    document = json.loads(Path(config_path).read_text())
    if document.get("format") != MODEL_FORMAT or document.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} file "
            f"(format={document.get('format')!r}, format_version={document.get('format_version')!r})"
        )
    config = validate_config(document["config"], f"model config {config_path}")
    meta = document["model_meta"]
    method = build_method(
        config.method.name,
        backbone=build_backbone(config.model.backbone, pretrained=False),
        bits=config.model.bits,
        num_classes=meta["num_classes"],
        tag_vocab_size=meta["tag_vocab_size"],
        **config.method.params,
    )
    try:
        method.load_state_dict(load_file(str(state_dict_path)), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{state_dict_path} does not fit method {config.method.name!r}: {exc}") from exc
    return method.eval(), config


def _signature(config: Config):
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = config.dataset.image_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, config.model.bits // 8))]),
    )


def log_hashing_model(
    method: HashingMethod, config: Config, name: str = "model", extra: dict | None = None
) -> str:
    """Log ``method`` to the active run as a pyfunc models-from-code model; return its model URI.

    ``extra`` goes into ``model_meta`` (e.g. ``{"dataset": name, "dataset_fingerprint": fp}``).
    """
    with tempfile.TemporaryDirectory(prefix="hashing-model-") as tmp:
        artifacts = save_model_files(method, config, tmp, extra)
        with warnings.catch_warnings():
            # The tensor signature below fixes the input; an example would only add a large JSON file.
            warnings.filterwarnings(
                "ignore", message=".*input example was not provided", category=UserWarning
            )
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=SERVING_CODE,
                artifacts=artifacts,
                pip_requirements=PIP_REQUIREMENTS,
                signature=_signature(config),
            )
    log.info("logged model %s (%s, %d bits)", info.model_uri, config.method.name, config.model.bits)
    return info.model_uri


def load_hashing_model(model_uri: str) -> tuple[HashingMethod, Config]:
    """Download the two model files of ``model_uri`` (``models:/name@alias``, ``models:/name/3``,
    ``models:/m-...``, ``runs:/...``) and rebuild the method (eval mode, CPU) without pyfunc."""
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="hashing-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        flavor = Model.load(local).flavors.get("python_function", {})
        files = {k: v["path"] for k, v in flavor.get("artifacts", {}).items()}
        if set(files) != {"state_dict", "config"}:
            raise InputError(f"{model_uri} is not a hashing model (pyfunc artifacts: {sorted(files)})")
        return load_model_files(Path(local, files["state_dict"]), Path(local, files["config"]))


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to what it resolved to: ``uri`` never moves when an alias moves later."""

    uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def register_model(
    model_uri: str, name: str, alias: str | None = CHALLENGER, tags: dict[str, str] | None = None
) -> int:
    """Register ``model_uri`` as a new version of ``name``, move ``alias`` to it; return the version."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s%s", name, version.version, f" as @{alias}" if alias else "")
    return int(version.version)


def resolve_model(
    name_or_uri: str, alias: str | None = CHAMPION, version: int | None = None
) -> ResolvedModel:
    """Pin a model: a registered name (with ``version``, else ``alias``) or a URI.

    ``models:/name@alias`` and ``models:/name/3`` resolve through the registry; other URIs
    (``models:/m-...``, ``runs:/...``) are returned as they are.

    Raises:
        LookupError: the name, version or alias does not exist (the message lists what does).
    """
    if name_or_uri.startswith("models:/"):
        ref = name_or_uri.removeprefix("models:/")
        if "@" in ref:
            name_or_uri, alias, version = ref.split("@", 1)[0], ref.split("@", 1)[1], None
        elif "/" in ref and ref.rsplit("/", 1)[1].isdigit():
            name_or_uri, version = ref.rsplit("/", 1)[0], int(ref.rsplit("/", 1)[1])
        else:
            return ResolvedModel(uri=name_or_uri)
    elif is_remote(name_or_uri) or name_or_uri.startswith("runs:/"):
        return ResolvedModel(uri=name_or_uri)
    name = name_or_uri
    client = MlflowClient()
    try:
        if version is not None:
            found = client.get_model_version(name, str(version))
        elif alias:
            found = client.get_model_version_by_alias(name, alias)
        else:
            raise MissingError(f"model {name!r}: give a version or an alias")
    except MlflowException as exc:
        raise MissingError(_missing(client, name, alias, version)) from exc
    return ResolvedModel(
        uri=f"models:/{name}/{found.version}", name=name, version=int(found.version), run_id=found.run_id
    )


def _missing(client: MlflowClient, name: str, alias: str | None, version: int | None) -> str:
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        uri = mlflow.get_tracking_uri()
        return f"no registered model {name!r} at {uri} (train one first: pipelines/train.py)"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(registered.aliases.items())) or "none"
    wanted = f"version {version}" if version is not None else f"alias @{alias}"
    return f"model {name!r} has no {wanted}; versions: {versions or 'none'}; aliases: {aliases}"


def resolve_section_model(ref: ModelRefSection, method: str, dataset: str) -> ResolvedModel:
    """Pin the model a job section (``encode``/``evaluate``/``search``) names.

    ``ref.model`` None means ``hashing-{method}-{dataset}``; ``ref.version`` wins over ``ref.alias``.
    """
    return resolve_model(
        ref.model or registered_model_name(method, dataset), alias=ref.alias, version=ref.version
    )
