"""Train a hashing method as a Ray Train job (DDP), evaluate it, and register it in MLflow.

    python pipelines/train.py --config configs/idhn.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/train.py --config configs/idhn.yaml

Recipe: config -> MLflow tracking -> Ray Data training split -> ``TorchTrainer.fit``
(``hashing.ray_training``; DDP workers run
``hashing.train_worker.train_loop_per_worker``; checkpoints every epoch, and every
``train.checkpoint_every_steps`` steps, into ``train.storage_path``; ``train.max_failures`` restarts
from the last checkpoint) -> final evaluation of query vs database codes (``hashing.train_eval``) -> model
logged, registered as ``hashing-{method}-{dataset}`` with the alias ``challenger`` -> a summary of where
results are.

Baselines ``method.name=lsh`` / ``itq`` have no gradient steps: ``fit_baseline`` runs the frozen
backbone over the train split in this process, fits the projection on its pooled features, evaluates
and registers the model exactly as above (so encode, evaluate, promote and search work on it), and
logs the float-feature ceiling of the same backbone (``float_ceiling/map_at_K``, ``.../ndcg_at_k``:
cosine ranking of the features themselves) in the same run.
"""

from __future__ import annotations

import argparse
import logging
import sys

import mlflow

from hashing.config import Config
from hashing.data.read import RemoteQuarantine
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.evaluation import metric_key
from hashing.methods import from_config, method_class
from hashing.methods.base import HashingMethod
from hashing.methods.shallow import ShallowHashing
from hashing.mlflow import names
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.registry import register_model
from hashing.mlflow.runs import log_config, set_experiment, setup_tracking
from hashing.ray_session import init_ray
from hashing.ray_training import (
    TrainingFailed,
    load_trained_method,
    log_training,
    read_training_split,
    run_trainer,
)
from hashing.train_eval import evaluate, fit_and_evaluate_baseline, make_preprocess

log = logging.getLogger("train")


def parse_train_cli(argv: list[str] | None) -> Config:
    """``--config``/``key=value`` as every job, plus ``--num-workers N`` and ``--use-gpu``: shorthands for
    ``train.num_workers=N`` and ``train.use_gpu=true`` that win over the same keys given as overrides."""
    from hashing.cli import JOBS
    from hashing.jobs.runner import parse_job_args

    return parse_job_args(JOBS["train"], argv)[0]


def main(argv: list[str] | None = None) -> int:
    """``hashing train ...``: 0 on success, 2 on bad input (one message, no traceback), 1 if training
    failed."""
    from hashing.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing train`` runs it (``hashing.jobs.runner``): train, register, print where it is."""
    manifest = load_manifest(config.dataset.uri)
    tracking_uri = setup_tracking(config)
    set_experiment(config, manifest.name)
    if not method_class(config.method.name).trainable:
        return fit_baseline(config, manifest, tracking_uri)
    started_ray = init_ray(config.ray.address, config.ray.num_cpus)
    try:
        preprocess = make_preprocess(config)
        quarantine = RemoteQuarantine(config.data.max_bad_fraction)
        train_data = read_training_split(config, preprocess, quarantine)
        with mlflow.start_run(run_name=config.run.name) as run:
            log_config(config)
            mlflow.set_tags({names.TAG_JOB: "train", names.TAG_METHOD: config.method.name,
                             names.TAG_DATASET: manifest.name,
                             names.TAG_DATASET_FINGERPRINT: manifest.fingerprint})
            result = run_trainer(config, manifest, train_data, run_name=f"train-{run.info.run_id}")
            log_training(result, quarantine.result())
            method = load_trained_method(config, manifest, result.checkpoint)
            report = evaluate(method, config, preprocess)
            model_uri, model_name, version = register_challenger(method, config, manifest, run.info.run_id)
    except TrainingFailed as exc:
        log.error("%s", exc)
        return 1
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    print(f"run:         {run.info.run_id} (experiment {run.info.experiment_id}) at {tracking_uri}")
    print(f"model:       models:/{model_name}/{version} (@{names.CHALLENGER}), {model_uri}")
    print(f"checkpoints: {result.path}")
    print("metrics:     " + ", ".join(f"{k}={v:.4f}" for k, v in report.items()))
    return 0


def register_challenger(method: HashingMethod, config: Config, manifest: DatasetManifest,
                        run_id: str) -> tuple[str, str, int]:
    """Log ``method`` as a model of the active run and register it with alias ``challenger``, tagged
    with the dataset it was trained on; ``(model URI, registered name, version)``."""
    model_uri = log_hashing_model(method, config, extra={
        "dataset": manifest.name, "dataset_fingerprint": manifest.fingerprint})
    model_name = names.registered_model_name(config.method.name, manifest.name)
    version = register_model(model_uri, model_name, names.CHALLENGER, tags={
        names.TAG_DATASET: manifest.name, names.TAG_DATASET_FINGERPRINT: manifest.fingerprint,
        names.TAG_RUN_ID: run_id})
    return model_uri, model_name, version


def fit_baseline(config: Config, manifest: DatasetManifest, tracking_uri: str) -> int:
    """Fit LSH / ITQ on the backbone's train features, evaluate it and the float-feature ceiling, register
    it."""
    preprocess = make_preprocess(config)
    method = from_config(config, len(manifest.classes), len(manifest.tags or []))
    assert isinstance(method, ShallowHashing)
    with mlflow.start_run(run_name=config.run.name) as run:
        log_config(config)
        mlflow.set_tags({names.TAG_JOB: "train", names.TAG_METHOD: config.method.name,
                         names.TAG_DATASET: manifest.name,
                         names.TAG_DATASET_FINGERPRINT: manifest.fingerprint})
        report, ceiling = fit_and_evaluate_baseline(method, config, preprocess)
        model_uri, model_name, version = register_challenger(method, config, manifest, run.info.run_id)
    print(f"run:         {run.info.run_id} (experiment {run.info.experiment_id}) at {tracking_uri}")
    print(f"model:       models:/{model_name}/{version} (@{names.CHALLENGER}), {model_uri}")
    print("metrics:     " + ", ".join(f"{k}={v:.4f}" for k, v in report.items()))
    print("float ceiling (cosine of the same backbone's features): "
          + ", ".join(f"{metric_key(k)}={v:.4f}" for k, v in ceiling.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
