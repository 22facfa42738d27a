"""DPSH: the likelihood + quantisation loss against a numpy reference, gradients, overfit on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.cached_features import CachedFeatures
from hashing.methods.dpsh import DPSH, dpsh_pair_loss
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit
from tests.methods.digits import digits_batch

torch.set_num_threads(1)


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
    batch = digits_batch(32, parity_and_size=True)
    method = DPSH(SmallCNN(), bits=16, num_classes=12)
    history = fit(method, lambda epoch: [batch], epochs=25, lr=3e-3)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[-1] < 0.7 * losses[2], losses  # still improving after the large first steps
