"""Non-deep baselines on backbone features (numpy): float features with cosine ranking, LSH, ITQ.

Codes come out as float32 signs in {-1, +1} (sign(0) = +1), the same form as a deep method's
relaxed codes, so ``hashing.codes.pack_signs`` packs them and the same metrics apply.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def _check_features(features: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected features float[n, d], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"expected features float[n, {dim}] (the width seen by fit), got shape {x.shape}")
    return x


def _signs(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32)


def cosine_similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Cosine similarity float32[m, n] between float[m, d] and float[n, d] rows (zero rows score 0)."""
    q = _check_features(queries)
    db = _check_features(database, q.shape[1])
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    return (q @ db.T).astype(np.float32)


def topk_cosine(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k database rows by cosine similarity: ``(scores float32[m, k], ids int64[m, k])``.

    Sorted by decreasing score; ties keep database order (stable), as the Hamming search does.
    ``k`` is capped at the database size.
    """
    scores = cosine_similarity(queries, database)
    k = min(k, scores.shape[1])
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    return np.take_along_axis(scores, ids, axis=1), ids


class FloatFeatures:
    """The ceiling baseline: rank by cosine similarity of the backbone features themselves.

    ``encode`` gives L2-normalised float32[n, d] rows; ``similarity`` / ``topk`` rank them.
    Float features need a score matrix for mAP (higher = more similar), not Hamming distances.
    """

    def fit(self, features: np.ndarray) -> FloatFeatures:
        """No parameters to learn; kept for the common fit/encode interface."""
        _check_features(features)
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """L2-normalised features float32[n, d]."""
        x = _check_features(features)
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    @staticmethod
    def similarity(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
        """Scores float32[m, n] (cosine); see ``cosine_similarity``."""
        return cosine_similarity(queries, database)

    @staticmethod
    def topk(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32[m, k], ids int64[m, k])``; see ``topk_cosine``."""
        return topk_cosine(queries, database, k)


class LSH:
    """Sign random projections (Charikar 2002) of mean-centred features: b = sign((x - mu) W).

    ``W`` float64[d, K] has i.i.d. standard normal entries drawn from ``seed`` at ``fit``.
    """

    def __init__(self, bits: int, seed: int = 0) -> None:
        self.bits = bits
        self.seed = seed
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, features: np.ndarray) -> LSH:
        """Learn the mean of ``features`` float[n, d] and draw the hyperplanes."""
        x = _check_features(features)
        self.mean = x.mean(axis=0)
        self.projection = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.bits))
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Codes float32[n, K] in {-1, +1}."""
        if self.projection is None:
            raise RuntimeError("LSH.encode called before fit(features)")
        x = _check_features(features, self.projection.shape[0])
        return _signs((x - self.mean) @ self.projection)


class ITQ:
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011): PCA to K dims, then an orthogonal rotation R.

    With V = (X - mu) P (P: top-K principal directions, float64[d, K]), alternate for ``iterations``:
    B = sign(V R); R = argmin over orthogonal R of ||B - V R||_F^2 (orthogonal Procrustes:
    SVD V^T B = U S W^T, R = U W^T). ``loss_history`` holds ||B - V R||_F^2 / n after each R update,
    which never increases. Codes: sign((x - mu) P R).
    """

    def __init__(self, bits: int, iterations: int = 50, seed: int = 0) -> None:
        self.bits = bits
        self.iterations = iterations
        self.seed = seed
        self.mean: np.ndarray | None = None
        self.pca: np.ndarray | None = None
        self.rotation: np.ndarray | None = None
        self.loss_history: list[float] = []

    def fit(self, features: np.ndarray) -> ITQ:
        """Learn mean, PCA and rotation from ``features`` float[n, d] (needs n >= K and d >= K)."""
        x = _check_features(features)
        n, d = x.shape
        if self.bits > min(n, d):
            raise ValueError(
                f"ITQ with {self.bits} bits needs at least {self.bits} rows and feature dims, got {x.shape}"
            )
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)
        self.pca = eigvecs[:, np.argsort(eigvals)[::-1][: self.bits]]
        v = centred @ self.pca
        rng = np.random.default_rng(self.seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((self.bits, self.bits)))
        self.loss_history = []
        for _ in range(self.iterations):
            b = np.where(v @ rotation >= 0, 1.0, -1.0)
            u, _, wt = np.linalg.svd(v.T @ b)
            rotation = u @ wt
            self.loss_history.append(float(((b - v @ rotation) ** 2).sum() / n))
        self.rotation = rotation
        log.debug("ITQ quantisation loss %s -> %s", self.loss_history[:1], self.loss_history[-1:])
        return self

    def project(self, features: np.ndarray) -> np.ndarray:
        """Rotated PCA projection float64[n, K] (the relaxed codes)."""
        if self.rotation is None:
            raise RuntimeError("ITQ.encode called before fit(features)")
        x = _check_features(features, self.pca.shape[0])
        return (x - self.mean) @ self.pca @ self.rotation

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Codes float32[n, K] in {-1, +1}."""
        return _signs(self.project(features))
