"""The shared training step: optimizers per phase, one step, and the plain loop ``fit``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.cached_features import CachedFeatures
from hashing.methods.base import Batch, HashingMethod
from hashing.methods.idhn import IDHN
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit, make_optimizers, train_step

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


class TwoPhase(HashingMethod):
    """A toy adversarial-style method: phase "gen" trains ``head``, phase "disc" trains ``critic``."""

    name = "two_phase"
    phases: ClassVar[tuple[str, ...]] = ("gen", "disc")

    def __init__(self) -> None:
        super().__init__(CachedFeatures(8, 0), bits=8, num_classes=3)
        self.head = nn.Linear(8, 8)
        self.critic = nn.Linear(8, 1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.backbone(images).global_))

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return list((self.head if phase == "gen" else self.critic).parameters())

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        u = self.encode_image(batch["image"])
        score = self.critic(u).mean()
        loss = -score if phase == "gen" else score**2
        return {"loss": loss, "score": score}


def feature_batch(n: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 3)
    labels[torch.arange(n), torch.arange(n) % 3] = 1
    centres = torch.randn(3, 8, generator=g) * 3
    return {"image": labels @ centres + torch.randn(n, 8, generator=g), "labels": labels}


def test_make_optimizers_scales_pretrained_backbone_lr():
    backbone = SmallCNN()
    backbone.pretrained = True
    method = IDHN(backbone, bits=16, num_classes=4, pretrained_lr_scale=0.01)
    optimizers = make_optimizers(method, lr=1e-3, weight_decay=1e-5)
    assert list(optimizers) == ["main"]
    groups = optimizers["main"].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-5])
    assert all(g["weight_decay"] == 1e-5 for g in groups)
    hash_ids = {id(p) for p in method.hash_layer.parameters()}
    assert {id(p) for p in groups[0]["params"]} == hash_ids
    assert len(groups[1]["params"]) == len(list(backbone.parameters()))


def test_train_step_single_phase_returns_terms_and_updates():
    torch.manual_seed(0)
    method = IDHN(CachedFeatures(8, 0), bits=8, num_classes=3)
    optimizers = make_optimizers(method, lr=1e-2)
    before = method.hash_layer.weight.detach().clone()
    terms = train_step(method, method, optimizers, feature_batch())
    assert set(terms) == {"loss", "pairwise", "quantization"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in terms.values())
    assert not torch.equal(before, method.hash_layer.weight)


def test_train_step_prefixes_phases_and_updates_only_each_phase_parameters():
    torch.manual_seed(0)
    method = TwoPhase()
    optimizers = make_optimizers(method, lr=1e-2)
    assert list(optimizers) == ["gen", "disc"]
    head_before = method.head.weight.detach().clone()
    critic_before = method.critic.weight.detach().clone()
    optimizers["disc"].zero_grad()
    # Only "gen" runs: the critic must not move although the generator loss backpropagates into it.
    method(feature_batch(), phase="gen")["loss"].backward()
    optimizers["gen"].step()
    assert not torch.equal(head_before, method.head.weight)
    assert torch.equal(critic_before, method.critic.weight)
    terms = train_step(method, method, optimizers, feature_batch())
    assert set(terms) == {"gen/loss", "gen/score", "disc/loss", "disc/score"}
    assert terms["gen/loss"] == pytest.approx(-terms["gen/score"])


def test_train_step_rejects_non_finite_loss():
    method = IDHN(CachedFeatures(8, 0), bits=8, num_classes=3)
    batch = feature_batch()
    batch["image"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="idhn"):
        train_step(method, method, make_optimizers(method, 1e-3), batch)


def test_fit_lowers_loss_and_halves_lr_on_schedule():
    torch.manual_seed(0)
    method = IDHN(CachedFeatures(8, 0), bits=8, num_classes=3)
    batches = [feature_batch(16, seed) for seed in range(3)]
    history = fit(method, lambda epoch: batches, epochs=4, lr=1e-2, lr_step_every=6)
    assert [h["steps"] for h in history] == [3, 3, 3, 3]
    assert [h["lr"] for h in history] == pytest.approx([1e-2, 5e-3, 5e-3, 2.5e-3])
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ValueError, match="no batch to train"):
        fit(method, lambda epoch: [], epochs=1, lr=1e-3)


def test_lr_decays_fire_within_the_run_whatever_its_length():
    from hashing.training import lr_step_size

    # A fixed 500-step schedule never fires in a 390-step run; 5 decays spread over it do.
    assert lr_step_size(390, lr_step_every=500) == 500
    assert lr_step_size(390, lr_decays=5) == 65  # 390 // 6: decays at 65, 130, ..., 325
    assert lr_step_size(3000, lr_decays=5) == 500  # the original's 500 on its own 3000-step run
    assert lr_step_size(3, lr_decays=5) == 1
    assert lr_step_size(100) is None
    with pytest.raises(ValueError, match="not both"):
        lr_step_size(100, lr_step_every=10, lr_decays=2)

    torch.manual_seed(0)
    method = IDHN(CachedFeatures(8, 0), bits=8, num_classes=3)
    batches = [feature_batch(16, seed) for seed in range(3)]
    history = fit(method, lambda epoch: batches, epochs=4, lr=1e-2, lr_decays=3, steps_per_epoch=3)
    # 12 steps, 3 decays every 12 // 4 = 3 steps: after epochs 1, 2, 3 (the last after step 12 too)
    assert [h["lr"] for h in history] == pytest.approx([5e-3, 2.5e-3, 1.25e-3, 6.25e-4])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        fit(method, lambda epoch: batches, epochs=1, lr=1e-2, lr_decays=3)


def test_schn_config_gives_new_layers_and_the_pretrained_backbone_their_own_rates():
    from hashing.config import load_config
    from hashing.methods import build_method

    config = load_config(REPO / "configs" / "schn.yaml", ["model.bits=16"])
    backbone = SmallCNN()
    backbone.pretrained = True  # stands in for the ImageNet backbone, at a test's speed
    method = build_method("schn", backbone=backbone, bits=16, num_classes=4, **config.method.params)
    optimizers = make_optimizers(method, config.train.lr, config.train.weight_decay)
    main = optimizers["main"].param_groups
    assert [g["lr"] for g in main] == pytest.approx([3e-3, 1.2e-4])  # train.lr, x pretrained_lr_scale 0.04
    assert {id(p) for p in main[1]["params"]} == {id(p) for p in backbone.parameters()}
    assert {id(p) for p in method.image_hash.parameters()} <= {id(p) for p in main[0]["params"]}
    assert [g["lr"] for g in optimizers["discriminator"].param_groups] == pytest.approx([3e-3])
