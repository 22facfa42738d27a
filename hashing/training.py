"""The training step every runner shares: optimizers per phase, one step, encoding, a plain loop.

The Ray Train worker (``pipelines/train.py``) calls ``make_optimizers`` and ``train_step`` with
``model = DDP(method)``; tests and benchmarks use ``fit`` (single process, no Ray).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from hashing.methods.base import Batch, HashingMethod

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


@torch.no_grad()
def encode_batches(method: HashingMethod, batches: Iterable[Batch], modality: str = "image") -> np.ndarray:
    """Relaxed codes float32[n, K] for every row of ``batches`` (eval mode, no gradient).

    ``modality="image"`` encodes ``batch["image"]`` with ``method.encode_image``; ``"text"`` encodes
    ``batch["tags"]`` with ``method.encode_text``. Inputs are moved to the method's device; the
    module's train/eval mode is restored afterwards.
    """
    if modality not in method.modalities:
        raise ValueError(
            f"method {method.name!r} has no {modality!r} encoder; modalities: {method.modalities}"
        )
    key, encode = ("image", method.encode_image) if modality == "image" else ("tags", method.encode_text)
    device = next(method.parameters()).device
    was_training = method.training
    method.eval()
    try:
        parts = [encode(batch[key].to(device)).float().cpu().numpy() for batch in batches]
    finally:
        method.train(was_training)
    if not parts:
        return np.zeros((0, method.bits), dtype=np.float32)
    return np.concatenate(parts, axis=0)


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
    """Train ``method`` in this process; return the per-epoch mean of every term ``train_step`` reports.

    Args:
        batches_fn: ``batches_fn(epoch)`` gives the batches of that epoch (reshuffle there if wanted).
        lr_step_every: multiply every learning rate by ``lr_gamma`` every this many steps (IDHN's
            original: 0.5 every 500 steps); None keeps it constant.
        lr_decays: instead, that many decays spread over the run (``lr_step_size``); needs
            ``steps_per_epoch`` (the run has ``epochs * steps_per_epoch`` steps).

    Returns:
        One dict per epoch: ``{"epoch": e, "steps": n, "lr": lr, "loss": mean, <term>: mean, ...}``,
        ``lr`` being the new layers' learning rate at the end of the epoch (first phase).
    """
    optimizers = make_optimizers(method, lr, weight_decay)
    if lr_decays is not None and not steps_per_epoch:
        raise ValueError("fit with lr_decays needs steps_per_epoch")
    step_size = lr_step_size(epochs * (steps_per_epoch or 0), lr_step_every, lr_decays)
    schedulers = list(make_schedulers(optimizers, step_size, lr_gamma).values())
    method.train()
    history = []
    for epoch in range(epochs):
        sums: dict[str, float] = defaultdict(float)
        steps = 0
        for batch in batches_fn(epoch):
            for key, value in train_step(method, method, optimizers, batch).items():
                sums[key] += value
            steps += 1
            for scheduler in schedulers:
                scheduler.step()
        if steps == 0:
            raise ValueError(f"batches_fn({epoch}) yielded no batches")
        lr_now = next(iter(optimizers.values())).param_groups[0]["lr"]
        row = {
            "epoch": float(epoch),
            "steps": float(steps),
            "lr": lr_now,
            **{k: v / steps for k, v in sums.items()},
        }
        log.info("epoch %d: %s", epoch, {k: round(v, 5) for k, v in row.items()})
        history.append(row)
    return history
