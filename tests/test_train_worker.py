"""The loop the Ray Train worker runs (``hashing.training``) without a Ray cluster: epochs, resuming from a
mid-epoch checkpoint (``hashing.train_worker.checkpoint_name``), and DDP over gloo.

Data: scikit-learn's real handwritten digits (8x8, 10 classes) as 3-channel images with one-hot labels.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.nn.parallel import DistributedDataParallel

from benchmarks.cached_features import CachedFeatures
from hashing.checkpoints import save_training_state
from hashing.config import Config, load_config
from hashing.methods import from_config
from hashing.methods.idhn import IDHN
from hashing.train_worker import checkpoint_name
from hashing.training import fit, global_mean, make_train_state, resume, run_epoch

ROWS, BATCH = 96, 16  # 6 batches per epoch


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _config(**overrides: object) -> Config:
    base = {"model.backbone": "small_cnn", "model.bits": 16, "method.name": "idhn", "train.lr": 3e-3,
            "train.lr_step_every": 4, "train.lr_gamma": 0.5, "run.seed": 3}
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images[:ROWS] / 16.0, dtype=torch.float32)
    images = ((images - 0.5) / 0.5).unsqueeze(1).repeat(1, 3, 1, 1)  # float32[n, 3, 8, 8]
    labels = torch.nn.functional.one_hot(torch.tensor(digits.target[:ROWS]), 10).float()
    return images, labels


def _batches(epoch: int) -> list[dict[str, torch.Tensor]]:
    images, labels = _digits()
    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(epoch))
    return [
        {"image": images[idx], "labels": labels[idx], "tags": torch.zeros(len(idx), 0)}
        for idx in order.split(BATCH)
    ]


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.state_dict().values()]


def test_fit_is_run_epoch_per_epoch_under_the_configured_schedule() -> None:
    config = _config()
    reference = from_config(config, num_classes=10, tag_vocab_size=0)
    history = fit(reference, _batches, epochs=2, lr=config.train.lr, lr_step_every=4, lr_gamma=0.5)

    state = make_train_state(from_config(config, 10, 0), config)
    rows = [run_epoch(state, _batches(epoch)) for epoch in range(2)]

    assert [r["epoch"] for r in rows] == [0.0, 1.0]
    assert [r["step"] for r in rows] == [6.0, 12.0]
    assert [r["steps"] for r in rows] == [6.0, 6.0] and state.progress.step == 12
    assert set(rows[0]) == {"epoch", "step", "steps", "loss", "pairwise", "quantization"}
    # fit's rows: the same rows plus the lr at the end of each epoch (decays after steps 4, 8, 12)
    for row, ref in zip(rows, history, strict=True):
        assert {k: v for k, v in ref.items() if k != "lr"} == pytest.approx(row, rel=1e-5)
    assert [ref["lr"] for ref in history] == pytest.approx([3e-3 * 0.5, 3e-3 * 0.5**3])
    assert state.progress.epoch_losses == rows and state.progress.epoch == 2
    for a, b in zip(_params(state.method), _params(reference), strict=True):
        torch.testing.assert_close(a, b)
    assert state.optimizers["main"].param_groups[0]["lr"] == pytest.approx(3e-3 * 0.5**3)


def test_mid_epoch_checkpoint_resumes_to_the_same_result(tmp_path: Path) -> None:
    config = _config()
    uninterrupted = make_train_state(from_config(config, 10, 0), config)
    for epoch in range(2):
        run_epoch(uninterrupted, _batches(epoch))

    saved_at: list[int] = []

    def save(state) -> None:
        saved_at.append(state.progress.step)
        save_training_state(tmp_path / checkpoint_name(state.progress), state.method, state.stateful(),
                            state.progress)

    crashed = make_train_state(from_config(config, 10, 0), config)
    run_epoch(crashed, _batches(0), checkpoint_every=5, on_checkpoint=save)
    run_epoch(crashed, _batches(1)[:3], checkpoint_every=5, on_checkpoint=save)  # "dies" after step 9
    assert saved_at == [5]
    assert (tmp_path / "epoch0000-step00000005").is_dir()

    # A new worker (different init seed) resumes from the step-5 checkpoint: epoch 0, 5 of 6 batches done.
    resumed = make_train_state(from_config(_config(**{"run.seed": 11}), 10, 0), config)
    resume(resumed, str(tmp_path / "epoch0000-step00000005"))
    assert (resumed.progress.epoch, resumed.progress.step, resumed.progress.batch_in_epoch) == (0, 5, 5)
    assert resumed.progress.resumed_from_step == 5
    for epoch in range(resumed.progress.epoch, 2):
        run_epoch(resumed, _batches(epoch))

    assert resumed.progress.step == uninterrupted.progress.step == 12
    for row, ref in zip(resumed.progress.epoch_losses, uninterrupted.progress.epoch_losses, strict=True):
        assert row == pytest.approx(ref, rel=1e-5)
    for a, b in zip(_params(resumed.method), _params(uninterrupted.method), strict=True):
        torch.testing.assert_close(a, b)


def test_checkpoint_hook_runs_every_n_global_steps() -> None:
    config = _config()
    state = make_train_state(from_config(config, 10, 0), config)
    steps: list[int] = []
    for epoch in range(2):
        run_epoch(
            state, _batches(epoch), checkpoint_every=4, on_checkpoint=lambda s: steps.append(s.progress.step)
        )
    assert steps == [4, 8, 12]


def test_only_rank_0_logs_the_epoch_line(monkeypatch, caplog) -> None:
    """Every worker has the same epoch means: one INFO line per epoch (rank 0's), not one per worker."""
    import logging

    from hashing import training

    config = _config()
    for rank, level in ((0, logging.INFO), (1, logging.DEBUG)):
        state = make_train_state(from_config(config, 10, 0), config)
        monkeypatch.setattr(training, "world", lambda rank=rank: (rank, 1))
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hashing.training"):
            run_epoch(state, _batches(0))
        assert [r.levelno for r in caplog.records if "epoch 0 done" in r.getMessage()] == [level]


def test_an_epoch_without_batches_is_a_clear_error() -> None:
    config = _config()
    state = make_train_state(from_config(config, 10, 0), config)
    with pytest.raises(ValueError, match="train.batch_size"):
        run_epoch(state, [])


def _cached_idhn(features: torch.Tensor) -> IDHN:
    torch.manual_seed(0)
    return IDHN(CachedFeatures(features.shape[1] - 4, 4), bits=16, num_classes=10)


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _digits()
    return images[:, 0].reshape(ROWS, 64), labels


def _ddp_worker(rank: int, port: int, config: Config, out: multiprocessing.Queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        features, labels = _features()
        state = make_train_state(_cached_idhn(features), config)
        state.model = DistributedDataParallel(state.method)
        half = BATCH // 2
        batches = [{"image": features[i + rank * half: i + (rank + 1) * half],
                    "labels": labels[i + rank * half: i + (rank + 1) * half]} for i in range(0, ROWS, BATCH)]
        row = run_epoch(state, batches)
        mean = global_mean({"rank": float(rank), "one": 1.0})
        out.put((rank, row, mean, [p.tolist() for p in _params(state.method)]))
        del state  # the DDP reducer's gloo work goes before its group (see tests/methods/test_distributed.py)
        gc.collect()
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_workers_train_like_one_process_on_the_global_batch(services) -> None:
    """Under DDP each worker holds half of every batch; pairs span the global batch and the epoch loss is
    averaged over workers, so loss and weights equal one process on the whole batches."""
    config = _config(**{"train.lr_step_every": "null"})
    features, labels = _features()
    single = make_train_state(_cached_idhn(features), config)
    expected = run_epoch(single, [{"image": features[i: i + BATCH], "labels": labels[i: i + BATCH]}
                                  for i in range(0, ROWS, BATCH)])

    ctx = multiprocessing.get_context("spawn")  # fork would copy Ray's and torch's threads' locks
    out = ctx.Queue()
    port = services.free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(rank, port, config, out)) for rank in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    for rank, row, mean, params in results:
        assert mean == {"one": 1.0, "rank": 0.5}
        assert row["steps"] == 6.0
        for key in ("loss", "pairwise", "quantization"):
            assert row[key] == pytest.approx(expected[key], rel=1e-4), (rank, key)
        for got, want in zip(params, _params(single.method), strict=True):
            np.testing.assert_allclose(np.array(got), want.numpy(), rtol=1e-4, atol=1e-6)
