"""Train a hashing method as a Ray Train job (DDP), evaluate it, and register it in MLflow.

    python pipelines/train.py --config configs/idhn.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python pipelines/train.py --config configs/idhn.yaml

Recipe: config -> MLflow tracking -> Ray Data training split -> ``TorchTrainer.fit`` (DDP workers run
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

from hashing import storage
from hashing.checkpoints import load_training_state
from hashing.config import Config, config_to_dict
from hashing.data.quarantine import Quarantine
from hashing.data.read import TORCH_COLUMNS, RemoteQuarantine, read_split
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.data.transforms import Preprocess
from hashing.evaluation import metric_key
from hashing.methods import from_config, method_class
from hashing.methods.base import HashingMethod
from hashing.methods.shallow import ShallowHashing
from hashing.mlflow import names
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.registry import register_model
from hashing.mlflow.runs import log_config, set_experiment, setup_tracking
from hashing.ray_session import init_ray, train_log_level
from hashing.train_eval import evaluate, fit_and_evaluate_baseline, make_preprocess
from hashing.train_worker import TRAIN_DATASET, train_loop_per_worker

log = logging.getLogger("train")


class TrainingFailed(RuntimeError):
    """Ray Train gave up (a worker error with no restarts left); the message says where the checkpoints
    are."""


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
            result = fit(config, manifest, train_data, run_name=f"train-{run.info.run_id}")
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


def read_training_split(config: Config, preprocess: Preprocess, quarantine: RemoteQuarantine):
    """The ``train`` split as a Ray dataset of the tensor columns (``image``, ``labels``, ``tags``);
    bad samples are skipped into ``quarantine`` (or fail the run with ``data.strict``)."""
    data = read_split(config.dataset.uri, "train", preprocess, strict=config.data.strict,
                      quarantine=quarantine,
                      num_cpus=0.5)
    return data.select_columns(list(TORCH_COLUMNS))


def fit(config: Config, manifest: DatasetManifest, train_data, run_name: str):
    """Run ``TorchTrainer.fit``; return its ``ray.train.Result`` (raises if training failed for good)."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    fs, path = storage.ray_filesystem(config.train.storage_path)
    resources = {"CPU": config.train.cpus_per_worker}
    if config.train.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config_to_dict(config),
            "num_classes": len(manifest.classes),
            "tag_vocab_size": len(manifest.tags or []),
            "train_samples": manifest.splits[TRAIN_DATASET].samples,
            "tag_vocabulary": list(manifest.tags or []),
        },
        scaling_config=ScalingConfig(num_workers=config.train.num_workers, use_gpu=config.train.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=config.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.checkpoints_to_keep),
            logging_config=LoggingConfig(log_level=train_log_level()),
        ),
        datasets={TRAIN_DATASET: train_data},
    )
    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        where = storage.join(config.train.storage_path, run_name)
        raise TrainingFailed(f"training failed (train.max_failures={config.train.max_failures} restarts "
                             f"allowed; checkpoints under {where}): {exc}") from exc


def log_training(result, quarantine: Quarantine) -> None:
    """Per-epoch losses (``train/<term>`` at step = epoch), the step count, restarts, nodes and the
    samples skipped as bad (``quarantine.json``); raises ``TooManyBadSamplesError`` past the limit."""
    summary = result.return_value
    for row in summary["epoch_losses"]:
        epoch = int(row["epoch"])
        mlflow.log_metrics({f"train/{k}": v for k, v in row.items() if k not in ("epoch", "step", "steps")},
                           step=epoch)
    mlflow.log_metrics({"train/steps": summary["step"],
                        "train/resumed_from_step": summary["resumed_from_step"]})
    mlflow.set_tags({names.TAG_CHECKPOINT_PATH: result.path,
                     names.TAG_TRAIN_NODES: ",".join(sorted(set(summary["worker_nodes"])))})
    mlflow.log_dict(quarantine.to_dict(), "quarantine.json")
    quarantine.check()


def load_trained_method(config: Config, manifest: DatasetManifest, checkpoint) -> HashingMethod:
    """The method with the weights of the run's last checkpoint (eval mode, CPU)."""
    method = from_config(config, len(manifest.classes), len(manifest.tags or []), pretrained=False)
    with checkpoint.as_directory() as folder:
        progress = load_training_state(folder, method)
    log.info("final model from the checkpoint at step %d", progress.step)
    return method.eval()




if __name__ == "__main__":
    sys.exit(main())
