"""Shallow baselines: cosine ranking, LSH, ITQ (monotone quantisation loss, orthogonal rotation,
neighbourhoods)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hashing.methods.shallow import ITQ, LSH, FloatFeatures, cosine_similarity, topk_cosine


def clustered(
    n_per: int = 60, clusters: int = 6, dim: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random centres, offset from the origin (so centring matters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3 + 5
    y = np.repeat(np.arange(clusters), n_per)
    return centres[y] + rng.normal(size=(len(y), dim)), y


def within_between(codes: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    dist = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return dist[same & off].mean(), dist[~same].mean()


def test_cosine_similarity_and_topk():
    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(3, 5)), rng.normal(size=(7, 5))
    db[4] = 2.5 * q[1]  # same direction as query 1, different length
    scores = cosine_similarity(q, db)
    for i in range(3):
        for j in range(7):
            expected = q[i] @ db[j] / np.linalg.norm(q[i]) / np.linalg.norm(db[j])
            assert scores[i, j] == pytest.approx(expected, rel=1e-5)
    top_scores, ids = topk_cosine(q, db, k=3)
    assert ids.shape == (3, 3) and ids.dtype == np.int64
    assert ids[1, 0] == 4 and top_scores[1, 0] == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(ids, np.argsort(-scores, axis=1, kind="stable")[:, :3])
    assert np.all(np.diff(top_scores, axis=1) <= 0)
    assert topk_cosine(q, db, k=50)[1].shape == (3, 7)


def test_float_features_rank_real_digits_by_class():
    digits = load_digits()
    x, y = digits.data[:400], digits.target[:400]
    encoded = FloatFeatures().fit(x).encode(x)
    np.testing.assert_allclose(np.linalg.norm(encoded, axis=1), 1.0, rtol=1e-5)
    _, ids = FloatFeatures.topk(x[:50], x, k=6)
    neighbours = ids[:, 1:]  # rank 0 is the query itself
    assert (y[neighbours] == y[:50, None]).mean() > 0.8


def test_lsh_codes_preserve_cluster_neighbourhoods():
    x, y = clustered()
    lsh = LSH(bits=32, seed=3).fit(x)
    codes = lsh.encode(x)
    assert codes.shape == (len(x), 32) and codes.dtype == np.float32
    assert set(np.unique(codes)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(codes, LSH(bits=32, seed=3).fit(x).encode(x))  # deterministic from seed
    within, between = within_between(codes, y)
    assert within < 0.6 * between, (within, between)
    with pytest.raises(RuntimeError, match="fit"):
        LSH(bits=8).encode(x)


def test_itq_loss_never_increases_and_rotation_is_orthogonal():
    x, _ = clustered()
    itq = ITQ(bits=16, iterations=50, seed=0).fit(x)
    losses = np.array(itq.loss_history)
    assert len(losses) == 50
    assert np.all(np.diff(losses) <= 1e-9 * losses[:-1])
    assert losses[-1] < 0.97 * losses[0]
    np.testing.assert_allclose(itq.rotation.T @ itq.rotation, np.eye(16), atol=1e-10)
    # The learned rotation quantises better than random orthogonal rotations of the same PCA projection.
    v = (x - itq.mean) @ itq.pca
    rng = np.random.default_rng(1)
    for _ in range(5):
        r, _ = np.linalg.qr(rng.standard_normal((16, 16)))
        vr = v @ r
        assert ((np.where(vr >= 0, 1, -1) - vr) ** 2).sum() / len(x) > losses[-1]


def test_itq_codes_preserve_neighbourhoods_on_clusters_and_digits():
    x, y = clustered()
    codes = ITQ(bits=16, seed=0).fit(x).encode(x)
    assert codes.dtype == np.float32 and set(np.unique(codes)) <= {-1.0, 1.0}
    within, between = within_between(codes, y)
    assert within < 0.5 * between, (within, between)
    digits = load_digits()
    codes = ITQ(bits=16, seed=0).fit(digits.data[:600]).encode(digits.data[:600])
    within, between = within_between(codes, digits.target[:600])
    assert within < 0.75 * between, (within, between)


def test_itq_rejects_too_many_bits_and_wrong_width():
    x, _ = clustered(n_per=2, clusters=3, dim=8)
    with pytest.raises(ValueError, match="16 bits"):
        ITQ(bits=16).fit(x)
    itq = ITQ(bits=4).fit(x)
    with pytest.raises(ValueError, match="float\\[n, 8\\]"):
        itq.encode(np.zeros((2, 5)))


def test_itq_and_lsh_methods_give_the_numpy_baselines_codes_and_round_trip_their_state():
    import torch

    from benchmarks.cached_features import CachedFeatures
    from hashing.methods import build_method
    from hashing.methods.shallow import ITQ, LSH

    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((200, 24)), rng.standard_normal((30, 24))
    for name, reference in (("itq", ITQ(8, seed=3).fit(train)), ("lsh", LSH(8, seed=3).fit(train))):
        method = build_method(name, backbone=CachedFeatures(24, 0), bits=8, num_classes=0, seed=3)
        assert not method.trainable and not method.uses_labels
        method.fit_features(train)
        codes = method.encode_image(torch.tensor(test, dtype=torch.float32)).numpy()
        agree = (np.where(codes >= 0, 1.0, -1.0) == reference.encode(test)).mean()
        assert agree > 0.99, name  # float32 vs float64 may flip a sign right at 0
        fresh = build_method(name, backbone=CachedFeatures(24, 0), bits=8, num_classes=0)
        fresh.load_state_dict(method.state_dict(), strict=True)
        torch.testing.assert_close(
            fresh.encode_image(torch.tensor(test, dtype=torch.float32)), torch.tensor(codes)
        )
        with pytest.raises(RuntimeError, match="fit_features"):
            method({"image": torch.zeros(2, 24)})


def test_cosine_ranking_report_matches_the_benchmark_ranking_on_cosine_scores():
    from benchmarks.quality import ranking_report
    from hashing.methods.shallow import cosine_ranking_report, cosine_similarity

    rng = np.random.default_rng(1)
    q, db = rng.standard_normal((40, 6)), rng.standard_normal((300, 6))
    q_labels, db_labels = ((rng.random((n, 4)) < 0.3).astype(np.uint8) for n in (40, 300))
    expected = ranking_report(cosine_similarity(q, db), q_labels, db_labels, topk=50, ndcg_k=20)
    got = cosine_ranking_report(q, db, q_labels, db_labels, topk=50, ndcg_k=20, chunk=7)
    # the benchmark's ranking names its columns map@1000 / ndcg@100 whatever K it is given
    assert got["map@50"] == pytest.approx(expected["map@1000"], abs=1e-6)
    assert got["ndcg@20"] == pytest.approx(expected["ndcg@100"], abs=1e-6)
