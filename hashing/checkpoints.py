"""Training state on disk: model weights, optimizer (and scheduler) states and the progress counters.

A checkpoint is a directory holding one file, ``training_state.pt``, written with ``torch.save`` of
plain containers (tensors, numbers, strings, lists, dicts) and read back with
``torch.load(weights_only=True)``: loading never unpickles arbitrary classes. Ray Train uploads the
directory to the run's storage (local folder or S3) and hands it back on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
FORMAT_VERSION = 1


class Stateful(Protocol):
    """Anything with ``state_dict()``/``load_state_dict()``: optimizers, LR schedulers."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@dataclass
class Progress:
    """Where training stands; identical on every worker (DDP steps in lockstep).

    Attributes:
        epoch: index of the epoch in progress (= epochs completed when ``batch_in_epoch`` is 0).
        step: optimizer steps completed since the start of the run (never reset by a restart).
        batch_in_epoch: batches of epoch ``epoch`` already trained (> 0 only for a mid-epoch checkpoint).
        loss_sums: running sums of each loss term over the batches of the epoch in progress.
        epoch_losses: mean of each loss term for every completed epoch, in epoch order.
        resumed_from_step: ``step`` of the checkpoint this attempt started from (0 for a fresh start).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    loss_sums: dict[str, float] = field(default_factory=dict)
    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0


def save_training_state(
    directory: str | Path,
    model: nn.Module,
    stateful: Mapping[str, Stateful],
    progress: Progress,
) -> Path:
    """Write ``model``'s state dict, every ``stateful`` object's state and ``progress`` into ``directory``.

    Args:
        directory: an existing or new local directory (created if missing).
        model: the unwrapped module (not the DDP wrapper, whose keys carry a ``module.`` prefix).
        stateful: name -> optimizer / scheduler, e.g. ``{"optimizer/main": adam}``.
        progress: the counters to resume from.

    Returns:
        The path of the written state file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stateful": {name: obj.state_dict() for name, obj in stateful.items()},
        "progress": asdict(progress),
    }
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    log.debug("saved training state at step %d (epoch %d) to %s", progress.step, progress.epoch, path)
    return path


def load_training_state(
    directory: str | Path,
    model: nn.Module,
    stateful: Mapping[str, Stateful] | None = None,
) -> Progress:
    """Load a state written by ``save_training_state`` into ``model`` (and ``stateful``); return the progress.

    Args:
        directory: the checkpoint directory.
        model: module with the same architecture as the saved one (strict key match).
        stateful: the same names as at save time; None loads the model weights only (evaluation).

    Raises:
        FileNotFoundError: ``directory`` has no ``training_state.pt``.
        ValueError: the file has another format version, or ``stateful`` names differ from the saved ones.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint directory {directory}: not a training "
                                "checkpoint")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {version!r}, this code reads {FORMAT_VERSION}")
    model.load_state_dict(payload["model"])
    if stateful is not None:
        saved, wanted = set(payload["stateful"]), set(stateful)
        if saved != wanted:
            raise ValueError(
                f"{path}: checkpoint holds optimizer/scheduler states {sorted(saved)}, "
                f"the run expects {sorted(wanted)} (was it written by another method or config?)"
            )
        for name, obj in stateful.items():
            obj.load_state_dict(payload["stateful"][name])
    return Progress(**payload["progress"])
