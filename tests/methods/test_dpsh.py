"""DPSH: the likelihood + quantisation loss against a numpy reference, gradients, overfit on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from benchmarks.cached_features import CachedFeatures
from hashing.methods.dpsh import DPSH, dpsh_pair_loss
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit

torch.set_num_threads(1)


def digits_batch(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real 8x8 digits upsampled to 3x16x16; labels = [digit one-hot (10), even, >= 5] (multi-label)."""
    digits = load_digits()
    idx = np.random.default_rng(seed).choice(len(digits.target), n, replace=False)
    img = np.kron(digits.images[idx] / 16.0, np.ones((2, 2)))
    images = torch.tensor((img - 0.5) / 0.5, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    y = digits.target[idx]
    labels = np.zeros((n, 12), dtype=np.float32)
    labels[np.arange(n), y] = 1
    labels[:, 10] = y % 2 == 0
    labels[:, 11] = y >= 5
    return {"image": images, "labels": torch.tensor(labels)}


def test_forward_equals_numpy_reference():
    k = 8
    torch.manual_seed(0)
    method = DPSH(CachedFeatures(feature_dim=k, spatial_dim=0), bits=k, num_classes=3)
    with torch.no_grad():
        method.hash_layer.weight.copy_(torch.eye(k))
        method.hash_layer.bias.zero_()
    u = np.random.default_rng(1).normal(size=(5, k)) * 2
    u[0, 0] = 0.0  # sign(0) = +1
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float64)
    out = method(
        {"image": torch.tensor(u, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.float32)}
    )
    s = (labels @ labels.T > 0).astype(np.float64)
    theta = 0.5 * u @ u.T
    likelihood = (np.log1p(np.exp(theta)) - s * theta).mean()
    b = np.where(u >= 0, 1.0, -1.0)
    expected = likelihood + 0.1 * ((u - b) ** 2).mean()
    assert float(out["likelihood"]) == pytest.approx(likelihood, rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)


def test_pair_loss_is_stable_for_large_inner_products():
    u = torch.full((2, 64), 10.0)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = dpsh_pair_loss(u, u, s)
    theta = 0.5 * 64 * 100
    assert torch.isfinite(loss).all()
    assert float(loss[0, 0]) == pytest.approx(0.0, abs=1e-3)  # log(1 + e^t) - t -> 0
    assert float(loss[0, 1]) == pytest.approx(theta, rel=1e-6)


def test_overfit_small_batch():
    torch.manual_seed(0)
    batch = digits_batch(32)
    method = DPSH(SmallCNN(), bits=16, num_classes=12)
    history = fit(method, lambda epoch: [batch], epochs=25, lr=3e-3)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < 0.7 * losses[2], losses  # still improving after the large first steps
