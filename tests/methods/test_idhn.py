"""IDHN: the exact loss terms with the paper's constants, gradients, and an overfit check on real digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.cached_features import CachedFeatures
from hashing.encoding import Encoder
from hashing.methods.idhn import IDHN, idhn_pair_loss, label_cosine
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit
from tests.methods.digits import digits_batch

torch.set_num_threads(1)


def test_label_cosine_matches_definition():
    labels = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
    s = label_cosine(labels, labels).numpy()
    for i in range(4):
        for j in range(4):
            a, b = labels[i].numpy(), labels[j].numpy()
            norm = np.linalg.norm(a) * np.linalg.norm(b)
            expected = a @ b / norm if norm > 0 else 0.0
            assert s[i, j] == pytest.approx(expected, abs=1e-6)


def test_hard_pairs_give_likelihood_and_soft_pairs_give_mse():
    k = 4
    u = torch.tensor([[0.9, -0.5, 0.2, 0.7], [0.8, -0.4, -0.1, 0.6], [-0.3, 0.5, 0.9, -0.8]])
    # s = 1 (identical labels, hard), 0 (disjoint, hard), 1/sqrt(2) and 0.5 (soft)
    s = torch.tensor([[1.0, 0.0, 2**-0.5], [0.0, 1.0, 0.5], [2**-0.5, 0.5, 1.0]])
    got = idhn_pair_loss(u, u, s).numpy()
    un = u.tolist()
    for i in range(3):
        for j in range(3):
            ip = sum(a * b for a, b in zip(un[i], un[j], strict=True))
            sij = float(s[i, j])
            if sij > 0.99 or sij < 0.01:
                theta = 5.0 * ip / k
                expected = math.log(1 + math.exp(theta)) - sij * theta
            else:
                expected = 0.1 * k * ((ip + k) / (2 * k) - sij) ** 2
            assert got[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-7), (i, j)


def test_threshold_edges_switch_between_terms():
    u = torch.tensor([[0.5, 0.5], [0.5, -0.1]])
    ip = 0.25 - 0.05
    for s_val, hard in [(0.995, True), (0.985, False), (0.005, True), (0.015, False)]:
        s = torch.full((2, 2), s_val)
        got = float(idhn_pair_loss(u, u, s)[0, 1])
        theta = 5.0 * ip / 2
        likelihood = math.log1p(math.exp(theta)) - s_val * theta
        mse = 0.1 * 2 * ((ip + 2) / 4 - s_val) ** 2
        assert got == pytest.approx(likelihood if hard else mse, rel=1e-5)


def test_forward_equals_independent_loss():
    k = 8
    torch.manual_seed(0)
    method = IDHN(CachedFeatures(feature_dim=k, spatial_dim=0), bits=k, num_classes=3)
    with torch.no_grad():
        method.hash_layer.weight.copy_(torch.eye(k))
        method.hash_layer.bias.zero_()
    z = np.random.default_rng(1).normal(size=(5, k))
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=np.float64)
    out = method(
        {"image": torch.tensor(z, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.float32)}
    )
    u = z / (1 + np.abs(z))
    norm = np.linalg.norm(labels, axis=1)
    s = labels @ labels.T / np.outer(norm, norm)
    ip = u @ u.T
    theta = 5 * ip / k
    hard = (s > 0.99) | (s < 0.01)
    pair = np.where(hard, np.log1p(np.exp(theta)) - s * theta, 0.1 * k * ((ip + k) / (2 * k) - s) ** 2)
    expected = pair.mean() + 0.1 * np.abs(np.abs(u) - 1).mean()
    assert float(out["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out["pairwise"]) == pytest.approx(pair.mean(), rel=1e-5)


def test_overfit_small_batch_and_codes_follow_labels():
    torch.manual_seed(0)
    batch = digits_batch(32, parity_and_size=True)
    method = IDHN(SmallCNN(), bits=16, num_classes=12)
    history = fit(method, lambda epoch: [batch], epochs=30, lr=3e-3)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"], [h["loss"] for h in history]
    codes = np.where(Encoder(method).relaxed(batch["image"]) >= 0, 1, -1)
    dist = (16 - codes @ codes.T) / 2
    same = (batch["labels"][:, :10] @ batch["labels"][:, :10].T).numpy() > 0
    off_diag = ~np.eye(32, dtype=bool)
    assert dist[same & off_diag].mean() < dist[~same].mean() - 2


def test_theta_scale_sets_theta_to_scale_times_inner_product_whatever_k():
    # theta_scale t: theta = t <u, u'> (beta = t K); None keeps the original beta / K (bounded by beta).
    for k in (16, 64):
        method = IDHN(CachedFeatures(feature_dim=k, spatial_dim=0), bits=k, num_classes=3, theta_scale=0.5)
        assert method.beta == pytest.approx(0.5 * k)
        assert IDHN(CachedFeatures(k, 0), bits=k, num_classes=3).beta == 5.0
    u = torch.full((2, 64), 0.9)  # <u, u'> = 51.84: a hard similar pair (s = 1)
    s = torch.ones(2, 2)
    original = idhn_pair_loss(u, u, s, beta=5.0)  # theta = 5 * 0.81 = 4.05
    scaled = idhn_pair_loss(u, u, s, beta=0.5 * 64)  # theta = 25.9
    assert float(original[0, 1]) == pytest.approx(math.log1p(math.exp(4.05)) - 4.05, rel=1e-5)
    assert float(scaled[0, 1]) < 1e-9 < float(original[0, 1])
    with pytest.raises(ValueError, match="theta_scale"):
        IDHN(CachedFeatures(8, 0), bits=8, num_classes=3, theta_scale=0.0)


def test_forward_uses_the_scaled_theta():
    k = 8
    method = IDHN(CachedFeatures(feature_dim=k, spatial_dim=0), bits=k, num_classes=2, theta_scale=0.5)
    with torch.no_grad():
        method.hash_layer.weight.copy_(torch.eye(k))
        method.hash_layer.bias.zero_()
    z = torch.tensor(np.random.default_rng(2).normal(size=(4, k)), dtype=torch.float32)
    labels = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float32)  # all pairs hard
    out = method({"image": z, "labels": labels})
    u = z / (1 + z.abs())
    theta = 0.5 * (u @ u.T)
    s = (labels @ labels.T > 0).float()
    expected = (torch.nn.functional.softplus(theta) - s * theta).mean()
    assert float(out["pairwise"]) == pytest.approx(float(expected), rel=1e-5)
