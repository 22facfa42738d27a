"""The one training loop: optimizers per phase, one step, an epoch over any batches, and ``fit``.

``make_train_state`` + ``run_epoch`` are the loop. ``run_epoch`` trains the rest of the current epoch
over any iterable of batches, keeps the step/epoch counters in ``Progress`` and calls a checkpoint hook
every N steps; inside a DDP process group the epoch means are averaged over the workers, outside one
they are the local means. The Ray Train worker (``hashing.train_worker``) runs it with
``model = DDP(method)`` over its dataset shard; ``fit`` runs it in this process (tests, benchmarks).

A restart resumes where the checkpoint left off (``resume``): at an epoch boundary, or mid-epoch by
skipping the batches of that epoch already trained (same count; with shuffling, not necessarily the
same rows). The step counter never goes back to 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from hashing.checkpoints import Progress, Stateful, load_training_state
from hashing.config import Config
from hashing.methods.base import Batch, HashingMethod
from hashing.methods.distributed import world

log = logging.getLogger(__name__)


def make_optimizers(
    method: HashingMethod, lr: float, weight_decay: float = 0.0
) -> dict[str, torch.optim.Optimizer]:
    """One Adam per phase over ``method.optimizer_groups(phase, lr)`` (pretrained backbone at a scaled lr)."""
    optimizers = {}
    for phase in method.phases:
        groups = [g for g in method.optimizer_groups(phase, lr) if g["params"]]
        if not groups:
            raise ValueError(f"method {method.name!r} phase {phase!r} has no trainable parameters")
        optimizers[phase] = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return optimizers


def lr_step_size(
    total_steps: int, lr_step_every: int | None = None, lr_decays: int | None = None
) -> int | None:
    """Steps between two lr x gamma decays, or None for a constant learning rate.

    ``lr_step_every`` is a fixed step count (it never fires in a run shorter than it);
    ``lr_decays`` = n spreads n decays evenly over a run of ``total_steps`` steps: every
    ``total_steps // (n + 1)`` steps (at least 1), so the n-th decay happens before the end and the
    last stretch trains at the smallest rate. Giving both is an error (the config forbids it too).
    """
    if lr_step_every is not None and lr_decays is not None:
        raise ValueError("give lr_step_every or lr_decays, not both")
    if lr_decays is not None:
        if total_steps < 1:
            raise ValueError(f"lr_decays needs the run's total steps (>= 1), got {total_steps}")
        return max(1, total_steps // (lr_decays + 1))
    return lr_step_every or None


def make_schedulers(
    optimizers: dict[str, torch.optim.Optimizer], step_size: int | None, gamma: float
) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """A StepLR (x ``gamma`` every ``step_size`` steps) per phase; none when ``step_size`` is None."""
    if not step_size:
        return {}
    return {p: torch.optim.lr_scheduler.StepLR(o, step_size, gamma) for p, o in optimizers.items()}


def train_step(
    model: nn.Module, method: HashingMethod, optimizers: dict[str, torch.optim.Optimizer], batch: Batch
) -> dict[str, float]:
    """One training step: for each phase, zero_grad -> ``model(batch, phase=phase)`` -> backward -> step.

    Args:
        model: ``method`` itself or ``DistributedDataParallel(method)`` (called, so DDP's hooks run).
        method: the unwrapped method (gives the phases).
        optimizers: from ``make_optimizers``, keyed by phase.
        batch: dict of tensors on the model's device (see ``hashing.methods.base``).

    Returns:
        The detached scalar terms of every phase: ``{"loss": ..., term: ...}`` for a single-phase
        method, ``{"<phase>/loss": ..., "<phase>/<term>": ...}`` when there are several phases.
    """
    terms: dict[str, float] = {}
    prefix = len(method.phases) > 1
    for phase in method.phases:
        optimizer = optimizers[phase]
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, phase=phase)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"method {method.name!r} phase {phase!r}: loss is {loss.item()}")
        loss.backward()
        optimizer.step()
        for key, value in out.items():
            terms[f"{phase}/{key}" if prefix else key] = float(value.detach())
    return terms


@dataclass
class TrainState:
    """Everything one training process trains and saves.

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

    def lr(self) -> float:
        """The learning rate of the first phase's new layers (its first param group), now."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]


def new_train_state(method: HashingMethod, lr: float, weight_decay: float = 0.0, step_size: int | None = None,
                    gamma: float = 0.5, device: torch.device | str | None = None) -> TrainState:
    """Move ``method`` to ``device`` (None: leave it where it is), put it in train mode and give it Adam
    per phase (``make_optimizers``) and, when ``step_size`` is set, a StepLR per phase (x ``gamma`` every
    ``step_size`` steps, see ``lr_step_size``)."""
    if device is not None:
        method.to(device)
    method.train()
    optimizers = make_optimizers(method, lr, weight_decay)
    schedulers = make_schedulers(optimizers, step_size, gamma)
    return TrainState(method=method, model=method, optimizers=optimizers, schedulers=schedulers)


def make_train_state(method: HashingMethod, config: Config, device: torch.device | str = "cpu",
                     steps: int = 0) -> TrainState:
    """``new_train_state`` with ``config.train``'s ``lr`` and ``weight_decay`` and its schedule: x
    ``lr_gamma`` every ``lr_step_every`` steps, or ``lr_decays`` times spread over the run's ``steps``
    total steps."""
    train = config.train
    step_size = lr_step_size(steps, train.lr_step_every, train.lr_decays)
    return new_train_state(method, train.lr, train.weight_decay, step_size, train.lr_gamma, device)


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
        state: from ``make_train_state`` / ``new_train_state`` (possibly resumed); its ``progress`` is
            updated in place.
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
        ValueError: the epoch had no batch to train (fewer rows than one batch, e.g. a worker's shard).
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
            f"epoch {progress.epoch} had no batch to train: fewer rows than one batch (under Ray Train, "
            "this worker's shard is smaller than train.batch_size: lower train.batch_size or "
            "train.num_workers)"
        )
    means = global_mean({k: v / steps for k, v in progress.loss_sums.items()})
    if "loss" not in means:
        means["loss"] = sum(v for k, v in means.items() if k.endswith("/loss"))
    row = {"epoch": float(progress.epoch), "step": float(progress.step), "steps": float(steps), **means}
    progress.epoch_losses.append(row)
    progress.epoch += 1
    progress.batch_in_epoch = 0
    progress.loss_sums = {}
    # The means are the same on every worker: one line (rank 0's) per epoch, the others at DEBUG.
    log.log(logging.INFO if world()[0] == 0 else logging.DEBUG, "epoch %d done at step %d: loss %.5f",
            int(row["epoch"]), progress.step, row["loss"])
    return row


def fit(
    method: HashingMethod,
    batches_fn: Callable[[int], Iterable[Batch]],
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    lr_step_every: int | None = None,
    lr_gamma: float = 0.5,
    lr_decays: int | None = None,
    steps_per_epoch: int | None = None,
) -> list[dict[str, float]]:
    """Train ``method`` in this process: ``new_train_state`` then ``run_epoch`` per epoch.

    Args:
        batches_fn: ``batches_fn(epoch)`` gives the batches of that epoch (reshuffle there if wanted).
        lr_step_every: multiply every learning rate by ``lr_gamma`` every this many steps (IDHN's
            original: 0.5 every 500 steps); None keeps it constant.
        lr_decays: instead, that many decays spread over the run (``lr_step_size``); needs
            ``steps_per_epoch`` (the run has ``epochs * steps_per_epoch`` steps).

    Returns:
        One ``run_epoch`` row per epoch plus ``"lr"``: the new layers' learning rate at the end of the
        epoch (first phase).
    """
    if lr_decays is not None and not steps_per_epoch:
        raise ValueError("fit with lr_decays needs steps_per_epoch")
    step_size = lr_step_size(epochs * (steps_per_epoch or 0), lr_step_every, lr_decays)
    state = new_train_state(method, lr, weight_decay, step_size, lr_gamma)
    return [{**run_epoch(state, batches_fn(epoch)), "lr": state.lr()} for epoch in range(epochs)]
