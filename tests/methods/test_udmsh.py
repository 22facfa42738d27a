"""UDMSH: SSDH-style similarity builder, Hamming isometry, no labels, exact loss, overfit on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics.pairwise import cosine_distances

from benchmarks.cached_features import CachedFeatures
from hashing.encoding import Encoder
from hashing.methods import build_method
from hashing.methods.similarity import combined_distance, ssdh_similarity, ssdh_thresholds
from hashing.methods.udmsh import UDMSH, code_affinity
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit
from tests.methods.digits import digits_batch

torch.set_num_threads(1)


def ssdh_reference_thresholds(dist: np.ndarray) -> tuple[float, float]:
    """SSDH main.py's recipe on the off-diagonal entries: open-interval histogram loop, mirrored norm.fit."""
    d = dist[~np.eye(len(dist), dtype=bool)]
    start, margin = -0.00000001, 2.0 / 100
    max_num, max_value = 0, 0.0
    for _ in range(100):
        end = start + margin
        num = np.sum((d > start) & (d < end))
        if num > max_num:
            max_num, max_value = num, start
        start = end
    m = max_value
    left, right = d[d <= m], d[d > m]
    l_mean, l_std = norm.fit(np.concatenate([left, 2 * m - left]))
    r_mean, r_std = norm.fit(np.concatenate([2 * m - right, right]))
    return l_mean - 2 * l_std, r_mean + 2 * r_std


def bimodal_distances(n: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric float64[n, n]: 90% of pairs ~ N(0.9, 0.05), 5% near in [0.05, 0.15], 5% far in [1.7, 1.9].

    Returns the matrix and the kind of each entry (0 bulk, 1 near, 2 far; -1 on the diagonal).
    """
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(n, k=1)
    kind = rng.choice(3, size=len(iu[0]), p=[0.9, 0.05, 0.05])
    values = np.where(
        kind == 0,
        rng.normal(0.9, 0.05, kind.shape),
        np.where(kind == 1, rng.uniform(0.05, 0.15, kind.shape), rng.uniform(1.7, 1.9, kind.shape)),
    )
    dist = np.zeros((n, n))
    kinds = -np.ones((n, n), dtype=int)
    dist[iu], kinds[iu] = values, kind
    dist.T[iu], kinds.T[iu] = values, kind
    return dist, kinds


def test_thresholds_follow_the_ssdh_recipe():
    dist, _ = bimodal_distances()
    t_lo, t_hi = ssdh_thresholds(torch.tensor(dist, dtype=torch.float64))
    ref_lo, ref_hi = ssdh_reference_thresholds(dist)
    # the reference's bin edges start at -1e-8 and accumulate 0.02 steps: m agrees to ~1e-8
    assert t_lo == pytest.approx(ref_lo, abs=1e-6)
    assert t_hi == pytest.approx(ref_hi, abs=1e-6)
    assert 0.15 < t_lo < 0.85 and 0.95 < t_hi < 1.7


def test_near_pairs_get_plus_one_far_pairs_minus_one_and_the_middle_band_in_between():
    dist, kinds = bimodal_distances()
    s = ssdh_similarity(torch.tensor(dist, dtype=torch.float32)).numpy()
    assert np.all(s[kinds == 1] == 1.0)
    assert np.all(s[kinds == 2] == -1.0)
    middle = (kinds == 0) & (np.abs(dist - 0.9) < 0.1)
    assert middle.sum() > 0.5 * (kinds == 0).sum()
    assert np.all((s[middle] > -1) & (s[middle] < 1))
    t_lo, t_hi = ssdh_reference_thresholds(dist)
    d = dist[middle]
    np.testing.assert_allclose(s[middle], 1 - 2 * (d - t_lo) / (t_hi - t_lo), atol=1e-5)


def test_similarity_is_symmetric_bounded_and_non_increasing_in_distance():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    d = combined_distance(x, x.abs())
    s = ssdh_similarity(d)
    torch.testing.assert_close(s, s.T)
    assert s.min() >= -1 and s.max() <= 1
    order = torch.argsort(d.flatten())
    assert torch.all(torch.diff(s.flatten()[order]) <= 1e-6)


def test_similarity_rejects_non_square_or_single_item_input():
    with pytest.raises(ValueError, match="square"):
        ssdh_similarity(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="n >= 2"):
        ssdh_similarity(torch.zeros(1, 1))


def test_combined_distance_is_weighted_cosine_distance():
    rng = np.random.default_rng(0)
    g, sp = rng.normal(size=(7, 5)), rng.normal(size=(7, 3))
    expected = 0.3 * cosine_distances(g) + 0.7 * cosine_distances(sp)
    got = combined_distance(torch.tensor(g), torch.tensor(sp), omega=0.3).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("k", [8, 16, 64])
def test_binary_code_affinity_is_exactly_one_minus_twice_normalised_hamming(k: int):
    bits = np.random.default_rng(k).integers(0, 2, size=(20, k))
    u = torch.tensor(2 * bits - 1, dtype=torch.float32)
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    np.testing.assert_array_equal(code_affinity(u, u).numpy(), (1 - 2 * hamming / k).astype(np.float32))


def test_codes_have_norm_sqrt_k():
    method = UDMSH(SmallCNN(), bits=32, num_classes=0)
    u = method.encode_image(digits_batch(8, classes=4)["image"])
    torch.testing.assert_close(u.norm(dim=1), torch.full((8,), 32**0.5), rtol=1e-5, atol=1e-5)


def test_labels_are_never_read():
    torch.manual_seed(0)
    method = UDMSH(SmallCNN(), bits=16, num_classes=4)
    assert method.uses_labels is False
    batch = digits_batch(12, classes=4)
    without = method({"image": batch["image"]})
    garbage = method({"image": batch["image"], "labels": torch.full((12, 4), float("nan"))})
    for key in without:
        assert torch.equal(without[key], garbage[key]), key


def test_forward_equals_independent_loss():
    k, n, d_glob, d_sp = 8, 30, 8, 4
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(n, d_glob + d_sp))
    method = UDMSH(CachedFeatures(d_glob, d_sp), bits=k, num_classes=0, quant_weight=0.1)
    with torch.no_grad():
        method.hash_layer.weight.copy_(torch.eye(k))
        method.hash_layer.bias.zero_()
    out = method({"image": torch.tensor(feats, dtype=torch.float32)})
    g, sp = feats[:, :d_glob], feats[:, d_glob:]
    dist = 0.5 * cosine_distances(g) + 0.5 * cosine_distances(sp)
    t_lo, t_hi = ssdh_reference_thresholds(dist)
    s = np.where(dist < t_lo, 1.0, np.where(dist > t_hi, -1.0, 1 - 2 * (dist - t_lo) / (t_hi - t_lo)))
    w = np.where(np.abs(s) == 1, 1.0, 0.1)
    u = np.sqrt(k) * g / np.linalg.norm(g, axis=1, keepdims=True)
    pairwise = (w * (u @ u.T / k - s) ** 2).mean()
    quantization = ((u - np.where(u >= 0, 1, -1)) ** 2).mean()
    assert float(out["pairwise"]) == pytest.approx(pairwise, rel=1e-4)
    assert float(out["quantization"]) == pytest.approx(quantization, rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(pairwise + 0.1 * quantization, rel=1e-4)


def test_gradients_equal_plain_global_batch_loss():
    """The ``2 m - m.detach()`` pair term has the gradient of the pair mean with both sides of
    u_i^T u_j differentiated (the DDP test compares workers with this single-process gradient)."""
    torch.manual_seed(0)
    k, d_glob, d_sp = 8, 8, 4
    method = UDMSH(CachedFeatures(d_glob, d_sp), bits=k, num_classes=0)
    feats = torch.randn(10, d_glob + d_sp, requires_grad=True)
    method({"image": feats})["loss"].backward()
    got = [feats.grad.clone()] + [p.grad.clone() for p in method.parameters()]
    feats.grad = None
    method.zero_grad()

    g, sp = feats[:, :d_glob], feats[:, d_glob:]
    s = ssdh_similarity(combined_distance(g.detach(), sp.detach()))
    w = torch.where(s.abs() == 1, 1.0, 0.1)
    u = k**0.5 * torch.nn.functional.normalize(method.hash_layer(g), dim=1)
    plain = (w * (u @ u.T / k - s) ** 2).mean() + 0.1 * ((u - torch.where(u >= 0, 1.0, -1.0)) ** 2).mean()
    plain.backward()
    want = [feats.grad] + [p.grad for p in method.parameters()]
    assert 0 < float((s.abs() == 1).float().mean()) < 1  # confident and graded pairs both present
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_backbone_without_spatial_features_needs_omega_one():
    with pytest.raises(ValueError, match="spatial"):
        UDMSH(CachedFeatures(8, 0), bits=8, num_classes=0)
    UDMSH(CachedFeatures(8, 0), bits=8, num_classes=0, omega=1.0)


def test_overfit_small_batch_without_labels_and_codes_follow_classes():
    torch.manual_seed(0)
    batch = digits_batch(32, classes=4)
    train = {"image": batch["image"]}
    method = build_method("udmsh", backbone=SmallCNN(), bits=16, num_classes=0)
    history = fit(method, lambda epoch: [train], epochs=30, lr=1e-3)
    assert history[-1]["loss"] < 0.2 * history[0]["loss"], [h["loss"] for h in history]
    codes = np.where(Encoder(method).relaxed(train["image"]) >= 0, 1, -1)
    dist = (16 - codes @ codes.T) / 2
    same = (batch["labels"] @ batch["labels"].T).numpy() > 0
    off_diag = ~np.eye(len(same), dtype=bool)
    assert dist[same & off_diag].mean() < dist[~same].mean() - 2


def test_pseudo_labels_follow_the_backbone_as_it_trains_and_stay_put_when_it_is_frozen():
    torch.manual_seed(0)
    images = digits_batch(32, classes=4)["image"]
    method = UDMSH(SmallCNN().set_spatial_grid(2), bits=16, num_classes=0, graded_weight=1.0)
    assert method.backbone.spatial_dim == 256
    method.eval()
    before = method.pseudo_similarity(images)
    fit(method, lambda epoch: [{"image": images}], epochs=5, lr=3e-3)
    method.eval()
    after = method.pseudo_similarity(images)
    assert (after - before).abs().mean() > 1e-3  # the trained backbone's features moved s

    # Frozen (cached) features: the hash layer trains, the pseudo-labels do not move.
    with torch.no_grad():
        feats = method.backbone(images)
    cached = torch.cat([feats.global_, feats.spatial], dim=1)
    frozen = UDMSH(CachedFeatures(128, 256), bits=16, num_classes=0)
    start = frozen.pseudo_similarity(cached)
    weight = frozen.hash_layer.weight.detach().clone()
    fit(frozen, lambda epoch: [{"image": cached}], epochs=2, lr=3e-3)
    assert not torch.equal(weight, frozen.hash_layer.weight)
    torch.testing.assert_close(frozen.pseudo_similarity(cached), start)


def test_graded_weight_scales_only_the_graded_pairs():
    torch.manual_seed(0)
    feats = torch.randn(24, 12)
    batch = {"image": feats}
    light = UDMSH(CachedFeatures(8, 4), bits=8, num_classes=0, graded_weight=0.1)
    heavy = UDMSH(CachedFeatures(8, 4), bits=8, num_classes=0, graded_weight=1.0)
    heavy.load_state_dict(light.state_dict())
    s = ssdh_similarity(combined_distance(feats[:, :8], feats[:, 8:], 0.5))
    u = light._codes(feats[:, :8])
    err = (code_affinity(u, u) - s) ** 2
    graded = s.abs() < 1
    assert graded.any() and (~graded).any()
    for method, w in ((light, 0.1), (heavy, 1.0)):
        expected = (torch.where(graded, w, 1.0) * err).mean()
        assert float(method(batch)["pairwise"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
