"""Every MLflow name the jobs share: experiments, registered models, aliases, tags, artifacts, model format.

Names:
    experiment       ``hashing-{dataset}`` (one per dataset; ``tracking.experiment`` overrides it)
    registered model ``hashing-{method}-{dataset}``
    aliases          ``challenger`` (newest trained), ``champion`` (serving)

Run tags (``TAG_*``) are set by the jobs on their MLflow runs; model-version tags (``CODES_*``, ``EVAL_*``,
``PROMOTION*``) on registered versions, documented in ``hashing.mlflow.registry``. Tag values are strings.
"""

from __future__ import annotations

CHALLENGER = "challenger"
CHAMPION = "champion"

# Run tags: which job, on what, with which model (train, encode, evaluate, promote).
TAG_JOB = "job"
TAG_METHOD = "method"
TAG_DATASET = "dataset"
TAG_DATASET_FINGERPRINT = "dataset_fingerprint"
TAG_MODEL_NAME = "model_name"
TAG_MODEL_VERSION = "model_version"
# Train runs: where Ray Train left the checkpoints, which nodes trained.
TAG_CHECKPOINT_PATH = "checkpoint_path"
TAG_TRAIN_NODES = "train_nodes"
# Encode runs: where the codes went, how the plan was made, done or not.
TAG_CODES_ROOT = "codes_root"
TAG_CODES_URI = "codes_uri"
TAG_MODE = "mode"
TAG_NIGHTLY = "nightly"
TAG_COMPLETE = "complete"

# Model-version tags. Set by training: the run that logged the version.
TAG_RUN_ID = "run_id"
# Set by a complete encode.
CODES_URI = "codes_uri"
CODES_DATASET_FINGERPRINT = "codes_dataset_fingerprint"
CODES_RUN_ID = "codes_run_id"
# Set by evaluate (its latest evaluation, ``hashing.mlflow.version_evaluation``).
EVAL_DATASET = "eval_dataset"
EVAL_DATASET_FINGERPRINT = "eval_dataset_fingerprint"
EVAL_RUN_ID = "eval_run_id"
EVAL_MAP_KEY = "eval_map_key"
EVAL_MAP = "eval_map"
EVAL_METRIC_PREFIX = "eval_metric_"
# Set by promote on the challenger it decided about.
PROMOTION_DECISION = "promotion_decision"
PROMOTION = "promotion"

# Run artifacts.
CONFIG_YAML = "config.yaml"
PR_CURVE_PNG = "plots/pr_curve.png"
PRECISION_AT_N_PNG = "plots/precision_at_n.png"

# The logged model (``hashing.mlflow.model_files``): its name in the run, its two pyfunc artifacts.
MODEL_NAME_IN_RUN = "model"
MODEL_FORMAT = "hashing-model"
MODEL_FORMAT_VERSION = 1
STATE_DICT_ARTIFACT = "state_dict"
CONFIG_ARTIFACT = "config"
STATE_DICT_FILE = "state_dict.safetensors"
CONFIG_FILE = "config.json"


def experiment_name(dataset_name: str) -> str:
    """The MLflow experiment of every run on dataset ``dataset_name``."""
    return f"hashing-{dataset_name}"


def registered_model_name(method: str, dataset: str) -> str:
    """The registry name of ``method`` trained on ``dataset``: ``hashing-{method}-{dataset}``."""
    return f"hashing-{method}-{dataset}"
