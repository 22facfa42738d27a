"""The Ray Train glue around the one training loop (``hashing.training``) for ``pipelines/train.py``.

``train_loop_per_worker`` is what ``TorchTrainer`` runs in each worker: it builds the method
(``hashing.methods.from_config``), resumes from ``ray.train.get_checkpoint()`` (weights, optimizer and
scheduler states, counters: ``hashing.training.resume``), wraps the method in DDP (``prepare_model``),
reads this worker's shard of the ``train`` dataset, trains each epoch with ``hashing.training.run_epoch``
and reports once per epoch (and every ``train.checkpoint_every_steps`` steps) with a checkpoint written
by rank 0. Ray is imported inside the functions only.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch.distributed as dist

from hashing.checkpoints import Progress, save_training_state
from hashing.config import Config, validate_config
from hashing.methods import from_config
from hashing.methods.distributed import world
from hashing.training import TrainState, make_train_state, resume, run_epoch

TRAIN_DATASET = "train"
# Rows each worker keeps in Ray Data's local shuffle buffer, in batches.
SHUFFLE_BUFFER_BATCHES = 4


def total_steps(config: Config, train_samples: int) -> int:
    """Global steps of the whole run: ``epochs * (train_samples // (batch_size * num_workers))``
    (every worker drops its last partial batch; bad samples skipped at read time make it a little less)."""
    return config.train.epochs * (train_samples // (config.train.batch_size * config.train.num_workers))


def checkpoint_name(progress: Progress) -> str:
    """Checkpoint folder name, unique within a run: ``epoch{E:04d}-step{S:08d}``."""
    return f"epoch{progress.epoch:04d}-step{progress.step:08d}"


def report(state: TrainState, metrics: dict[str, float]) -> None:
    """``ray.train.report`` on every worker (a barrier); rank 0 attaches a checkpoint of ``state``."""
    import ray.train

    metrics = {
        **metrics,
        "epochs_done": float(state.progress.epoch),
        "step": float(state.progress.step),
        "resumed_from_step": float(state.progress.resumed_from_step),
    }
    with tempfile.TemporaryDirectory(prefix="hashing-ckpt-") as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            save_training_state(tmp, state.method, state.stateful(), state.progress)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(state.progress))


def worker_node_ids() -> list[str]:
    """The Ray node id of every worker, in rank order (an all-gather; just this one outside DDP)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    _, size = world()
    if size == 1:
        return [node]
    nodes: list[Any] = [None] * size
    dist.all_gather_object(nodes, node)
    return nodes


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The ``TorchTrainer`` loop (runs in every worker).

    Args:
        loop_config: ``{"config": resolved config as a dict (``config_to_dict``), "num_classes": c,
            "tag_vocab_size": V, "train_samples": rows of the train split (sizes ``lr_decays``),
            "tag_vocabulary": the V tag words (optional)}``.

    Returns:
        (rank 0's is ``Result.return_value``) ``{"epoch_losses": [row per epoch, see ``run_epoch``],
        "step": final global step, "resumed_from_step": step of the checkpoint this attempt started
        from (0 if none), "worker_nodes": [Ray node id per rank]}``.
    """
    import ray.train
    import ray.train.torch

    config = validate_config(loop_config["config"], "train loop config")
    device = ray.train.torch.get_device()
    method = from_config(config, loop_config["num_classes"], loop_config["tag_vocab_size"],
                         loop_config.get("tag_vocabulary"))
    state = make_train_state(method, config, device, total_steps(config, loop_config.get("train_samples", 0)))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as checkpoint_dir:
            resume(state, checkpoint_dir)
    # Methods whose phases train different parameters leave some unused in each backward pass.
    ddp_kwargs = {"find_unused_parameters": True} if len(method.phases) > 1 else {}
    state.model = ray.train.torch.prepare_model(
        method, move_to_device=False, parallel_strategy_kwargs=ddp_kwargs
    )
    nodes = worker_node_ids()
    shard = ray.train.get_dataset_shard(TRAIN_DATASET)
    batch_size = config.train.batch_size
    for epoch in range(state.progress.epoch, config.train.epochs):
        batches = shard.iter_torch_batches(
            batch_size=batch_size,
            drop_last=True,
            device=device,
            local_shuffle_buffer_size=batch_size * SHUFFLE_BUFFER_BATCHES,
            local_shuffle_seed=config.run.seed + epoch,
        )
        row = run_epoch(state, batches, config.train.checkpoint_every_steps, lambda s: report(s, {}))
        report(state, row)
    return {
        "epoch_losses": state.progress.epoch_losses,
        "step": state.progress.step,
        "resumed_from_step": state.progress.resumed_from_step,
        "worker_nodes": nodes,
    }
