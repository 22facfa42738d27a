"""The per-worker training loop of the Ray Train job (``pipelines/train.py``).

Two layers, so the loop is testable without a Ray cluster:

- ``make_train_state`` + ``run_epoch``: plain torch. ``run_epoch`` trains the rest of the current
  epoch over any iterable of batches, keeps the step/epoch counters in ``Progress`` and calls a
  checkpoint hook every N steps. Inside a DDP process group the epoch means are averaged over the
  workers; outside one (a test, a plain loop) they are the local means.
- ``train_loop_per_worker``: what ``TorchTrainer`` runs in each worker. It builds the method,
  resumes from ``ray.train.get_checkpoint()`` (weights, optimizer and scheduler states, counters),
  wraps the method in DDP (``prepare_model``), reads this worker's shard of the ``train`` dataset and
  reports once per epoch (and every ``train.checkpoint_every_steps`` steps) with a checkpoint
  written by rank 0. Ray is imported inside the functions only.

A restart resumes where the checkpoint left off: at an epoch boundary, or mid-epoch by skipping
the batches of that epoch already trained (same count; with shuffling, not necessarily the same
rows). The step counter never goes back to 0.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hashing.checkpoints import Progress, Stateful, load_training_state, save_training_state
from hashing.config import Config, validate_config
from hashing.methods import from_config
from hashing.methods.base import Batch, HashingMethod
from hashing.methods.distributed import world
from hashing.training import lr_step_size, make_optimizers, make_schedulers, train_step

log = logging.getLogger(__name__)

TRAIN_DATASET = "train"
# Rows each worker keeps in Ray Data's local shuffle buffer, in batches.
SHUFFLE_BUFFER_BATCHES = 4


@dataclass
class TrainState:
    """Everything one worker trains and saves.

    ``model`` is what a step calls: ``method`` itself, or ``DistributedDataParallel(method)`` once
    wrapped; ``method`` is always the unwrapped module (its state dict is what gets saved).
    """

    method: HashingMethod
    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)

    def stateful(self) -> dict[str, Stateful]:
        """Optimizers and schedulers by checkpoint name (``optimizer/{phase}``, ``scheduler/{phase}``)."""
        out: dict[str, Stateful] = {f"optimizer/{p}": o for p, o in self.optimizers.items()}
        out.update({f"scheduler/{p}": s for p, s in self.schedulers.items()})
        return out


def total_steps(config: Config, train_samples: int) -> int:
    """Global steps of the whole run: ``epochs * (train_samples // (batch_size * num_workers))``
    (every worker drops its last partial batch; bad samples skipped at read time make it a little less)."""
    return config.train.epochs * (train_samples // (config.train.batch_size * config.train.num_workers))


def make_train_state(method: HashingMethod, config: Config, device: torch.device | str = "cpu",
                     steps: int = 0) -> TrainState:
    """Move ``method`` to ``device`` and give it Adam per phase (``config.train.lr``, ``weight_decay``)
    and a StepLR per phase when the config has a schedule: x ``lr_gamma`` every ``lr_step_every``
    steps, or ``lr_decays`` times spread over the run's ``steps`` total steps (``total_steps``)."""
    method.to(device)
    method.train()
    optimizers = make_optimizers(method, config.train.lr, config.train.weight_decay)
    step_size = lr_step_size(steps, config.train.lr_step_every, config.train.lr_decays)
    schedulers = make_schedulers(optimizers, step_size, config.train.lr_gamma)
    return TrainState(method=method, model=method, optimizers=optimizers, schedulers=schedulers)


def resume(state: TrainState, checkpoint_dir: str) -> None:
    """Load a checkpoint written by ``save_training_state`` into ``state`` (weights, optimizer and
    scheduler states, counters) and remember its step as ``progress.resumed_from_step``."""
    state.progress = load_training_state(checkpoint_dir, state.method, state.stateful())
    state.progress.resumed_from_step = state.progress.step
    log.info("resumed from %s: epoch %d, step %d (batch %d of that epoch)", checkpoint_dir,
             state.progress.epoch, state.progress.step, state.progress.batch_in_epoch)


def global_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of each value over the workers of the process group (identity without one).

    Every worker must pass the same keys (the same method), as DDP guarantees.
    """
    _, size = world()
    if size == 1 or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / size for k, v in zip(keys, tensor.tolist(), strict=True)}


def run_epoch(
    state: TrainState,
    batches: Iterable[Batch],
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> dict[str, float]:
    """Train the rest of epoch ``state.progress.epoch`` over ``batches``; return the epoch's row.

    Args:
        state: from ``make_train_state`` (possibly resumed); its ``progress`` is updated in place.
        batches: this epoch's batches (dicts of tensors on the model's device, see
            ``hashing.methods.base``), from the start of the epoch: the first
            ``progress.batch_in_epoch`` of them (trained before a restart) are skipped.
        checkpoint_every: call ``on_checkpoint(state)`` after every step whose global step count is a
            multiple of this; 0 never does.
        on_checkpoint: the mid-epoch checkpoint hook (the Ray worker reports a checkpoint there).

    Returns:
        ``{"epoch": e, "step": global steps so far, "steps": batches in the epoch, "loss": mean,
        <term>: mean, ...}``, means over the epoch's batches (and over the workers, under DDP). A
        multi-phase method's ``loss`` is the sum of its ``<phase>/loss`` means. The row is also
        appended to ``progress.epoch_losses``; the epoch counter then moves on.

    Raises:
        ValueError: the epoch had no batch to train (a shard smaller than one batch).
    """
    progress = state.progress
    state.model.train()
    for index, batch in enumerate(batches):
        if index < progress.batch_in_epoch:
            continue
        terms = train_step(state.model, state.method, state.optimizers, batch)
        for key, value in terms.items():
            progress.loss_sums[key] = progress.loss_sums.get(key, 0.0) + value
        progress.step += 1
        progress.batch_in_epoch += 1
        for scheduler in state.schedulers.values():
            scheduler.step()
        if checkpoint_every and on_checkpoint is not None and progress.step % checkpoint_every == 0:
            on_checkpoint(state)
    steps = progress.batch_in_epoch
    if steps == 0:
        raise ValueError(
            f"epoch {progress.epoch} had no full batch: this worker's shard is smaller than "
            "train.batch_size (lower train.batch_size or train.num_workers)"
        )
    means = global_mean({k: v / steps for k, v in progress.loss_sums.items()})
    if "loss" not in means:
        means["loss"] = sum(v for k, v in means.items() if k.endswith("/loss"))
    row = {"epoch": float(progress.epoch), "step": float(progress.step), "steps": float(steps), **means}
    progress.epoch_losses.append(row)
    progress.epoch += 1
    progress.batch_in_epoch = 0
    progress.loss_sums = {}
    log.info("epoch %d done at step %d: loss %.5f", int(row["epoch"]), progress.step, row["loss"])
    return row


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
