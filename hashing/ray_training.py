"""The driver side of a Ray Train run (``hashing train``; ``benchmarks/training.py``): the ``train`` split
as a Ray dataset, ``TorchTrainer.fit`` of the workers' loop (``hashing.train_worker``), what the run logs
to MLflow, and the trained method rebuilt from the last checkpoint. Ray is imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import mlflow

from hashing import storage
from hashing.checkpoints import load_training_state
from hashing.config import Config, config_to_dict
from hashing.data.quarantine import Quarantine
from hashing.data.read import TORCH_COLUMNS, RemoteQuarantine, read_split
from hashing.data.schema import DatasetManifest
from hashing.data.transforms import Preprocess
from hashing.methods import from_config
from hashing.methods.base import HashingMethod
from hashing.mlflow import names
from hashing.ray_session import train_log_level
from hashing.train_worker import TRAIN_DATASET, train_loop_per_worker

log = logging.getLogger(__name__)


class TrainingFailed(RuntimeError):
    """Ray Train gave up (a worker error with no restarts left); the message says where the checkpoints
    are."""


def read_training_split(config: Config, preprocess: Preprocess, quarantine: RemoteQuarantine):
    """The ``train`` split as a Ray dataset of the tensor columns (``image``, ``labels``, ``tags``);
    bad samples are skipped into ``quarantine`` (or fail the run with ``data.strict``)."""
    data = read_split(config.dataset.uri, "train", preprocess, strict=config.data.strict,
                      quarantine=quarantine,
                      num_cpus=0.5)
    return data.select_columns(list(TORCH_COLUMNS))


def run_trainer(config: Config, manifest: DatasetManifest, train_data, run_name: str,
                train_loop: Callable[[dict[str, Any]], dict[str, Any]] = train_loop_per_worker):
    """Run ``TorchTrainer.fit`` of ``train_loop`` (the workers' loop; a benchmark passes a timed one) over
    ``train_data`` (``read_training_split``); return its ``ray.train.Result``.

    Raises:
        TrainingFailed: Ray Train gave up (no restarts left); the message says where the checkpoints are.
    """
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
        train_loop,
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
