"""hashing/checkpoints.py: training state round trip, safe loading, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from hashing.checkpoints import STATE_FILE, Progress, load_training_state, save_training_state


class _Payload:
    """A class that must never be unpickled from a checkpoint."""


def _model_and_state(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)


def _step(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.StepLR,
          x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()
    sched.step()


def test_round_trip_restores_weights_optimizer_scheduler_and_counters(tmp_path: Path) -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    model, opt, sched = _model_and_state(0)
    for _ in range(3):
        _step(model, opt, sched, x)
    progress = Progress(epoch=2, step=3, batch_in_epoch=1, loss_sums={"loss": 0.75},
                        epoch_losses=[{"epoch": 0.0, "loss": 1.5}, {"epoch": 1.0, "loss": 1.25}])
    save_training_state(tmp_path, model, {"optimizer/main": opt, "scheduler/main": sched}, progress)

    other, other_opt, other_sched = _model_and_state(99)
    loaded = load_training_state(tmp_path, other,
                                 {"optimizer/main": other_opt, "scheduler/main": other_sched})

    assert loaded == progress
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert other_sched.last_epoch == 3 and other_opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5)
    # The resumed run continues exactly as the original: same Adam moments, same lr schedule.
    for _ in range(3):
        _step(model, opt, sched, x)
        _step(other, other_opt, other_sched, x)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert other_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.125)


def test_weights_only_loading_without_optimizers(tmp_path: Path) -> None:
    model, opt, _ = _model_and_state(0)
    save_training_state(tmp_path / "ckpt", model, {"optimizer/main": opt}, Progress(step=7))
    other, _, _ = _model_and_state(1)
    assert load_training_state(tmp_path / "ckpt", other).step == 7
    assert torch.equal(other[0].weight, model[0].weight)


def test_loading_refuses_to_unpickle_arbitrary_classes(tmp_path: Path) -> None:
    model, _, _ = _model_and_state(0)
    torch.save({"format_version": 1, "model": model.state_dict(), "stateful": {}, "progress": _Payload()},
               tmp_path / STATE_FILE)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_state(tmp_path, model)


def test_missing_state_file_names_the_directory(tmp_path: Path) -> None:
    model, _, _ = _model_and_state(0)
    with pytest.raises(FileNotFoundError, match=f"{STATE_FILE}.*{tmp_path.name}"):
        load_training_state(tmp_path, model)


def test_optimizer_names_must_match(tmp_path: Path) -> None:
    model, opt, _ = _model_and_state(0)
    save_training_state(tmp_path, model, {"optimizer/main": opt}, Progress())
    with pytest.raises(ValueError,
                       match=r"\['optimizer/main'\].*\['optimizer/discriminator', 'optimizer/main'\]"):
        load_training_state(tmp_path, model, {"optimizer/main": opt, "optimizer/discriminator": opt})


def test_other_format_version_is_rejected(tmp_path: Path) -> None:
    model, _, _ = _model_and_state(0)
    torch.save({"format_version": 99, "model": model.state_dict(), "stateful": {}, "progress": {}},
               tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="format_version 99"):
        load_training_state(tmp_path, model)
