"""Non-deep baselines on backbone features (numpy): float features with cosine ranking, LSH, ITQ.

Codes come out as float32 signs in {-1, +1} (sign(0) = +1), the same form as a deep method's
relaxed codes, so ``hashing.codes.pack_signs`` packs them and the same metrics apply.

``LSHMethod`` / ``ITQMethod`` (``method.name=lsh`` / ``itq``) wrap them as ``HashingMethod``s over a
frozen backbone: a fitted linear map x -> (x - mean) W of the backbone's pooled features kept in
buffers, so the model is saved, registered, encoded and searched like any deep method.
``cosine_ranking_report`` scores the float-feature ceiling with the metrics' definitions.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from hashing.methods.base import Batch, HashingMethod
from hashing.models.backbone import Backbone

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


def cosine_ranking_report(queries: np.ndarray, database: np.ndarray, q_labels: np.ndarray,
                          db_labels: np.ndarray, topk: int | None = 1000, ndcg_k: int = 100,
                          chunk: int = 256) -> dict[str, float]:
    """mAP@topk and NDCG@ndcg_k of ranking ``database`` float[n, d] by cosine similarity to each query
    float[m, d] (ties in database order), with the definitions of ``hashing.metrics``: relevant =
    shares a label, gain 2^r - 1 with r = shared labels, a query without hits scores 0.

    Returns ``{"map@K": ..., "ndcg@k": ...}`` (K = ``topk``, ``all`` when None). Queries are scored
    ``chunk`` at a time (memory m x n per chunk).
    """
    db = FloatFeatures().encode(database)
    q_all = FloatFeatures().encode(queries)
    n = len(db)
    depth_k = n if topk is None else min(topk, n)
    aps, ndcgs = [], []
    for start in range(0, len(q_all), chunk):
        scores = q_all[start : start + chunk] @ db.T
        shared = q_labels[start : start + chunk].astype(np.float64) @ db_labels.astype(np.float64).T
        depth = min(max(depth_k, ndcg_k), n)
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        ranked = np.take_along_axis(shared, ids, axis=1)
        hits = ranked[:, :depth_k] > 0
        hit_number = np.cumsum(hits, axis=1) * hits
        precision_at_hits = (hit_number / np.arange(1, hits.shape[1] + 1)).sum(axis=1)
        aps.append(precision_at_hits / np.maximum(hits.sum(axis=1), 1))
        k = min(ndcg_k, depth)
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        dcg = (np.exp2(ranked[:, :k]) - 1) @ discount
        best = -np.sort(-shared, axis=1)[:, :k]  # the ideal ranking: most shared labels first
        ideal = (np.exp2(best) - 1) @ discount
        ndcgs.append(np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0))
    name = "all" if topk is None else topk
    return {f"map@{name}": float(np.concatenate(aps).mean()),
            f"ndcg@{ndcg_k}": float(np.concatenate(ndcgs).mean())}


class ShallowHashing(HashingMethod):
    """A frozen backbone and a fitted linear map of its pooled features: u = (global_ - mean) W.

    ``mean`` float32[d] and ``projection`` W float32[d, K] are buffers (so they are in the state
    dict, saved and loaded like weights); ``fit_features`` sets them. Code b = sign(u), sign(0) = +1.
    Not trained by gradient steps (``trainable = False``); labels are never used.
    """

    trainable: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, bits: int, num_classes: int = 0, *, seed: int = 0,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        self.seed = seed
        backbone.requires_grad_(False)
        self.register_buffer("mean", torch.zeros(backbone.feature_dim))
        self.register_buffer("projection", torch.zeros(backbone.feature_dim, bits))

    def _fit(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def fit_features(self, features: np.ndarray) -> dict[str, float]:
        """Fit on the backbone's pooled train features float[n, d]; returns diagnostics to log."""
        mean, projection, info = self._fit(_check_features(features, self.backbone.feature_dim))
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.projection.copy_(torch.as_tensor(projection, dtype=torch.float32))
        return info

    def codes_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """u float32[b, K] from pooled features float[b, d]."""
        return (features.float() - self.mean) @ self.projection

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """u float32[b, K] = (global_ - mean) W; the code is sign(u)."""
        return self.codes_from_features(self.backbone(images).global_)

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        raise RuntimeError(f"method {self.name!r} has no training step: it is fitted with fit_features")


class LSHMethod(ShallowHashing):
    """``method.name=lsh``: sign random projections of the centred backbone features (``LSH``)."""

    name = "lsh"

    def _fit(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        lsh = LSH(self.bits, seed=self.seed).fit(features)
        return lsh.mean, lsh.projection, {}


class ITQMethod(ShallowHashing):
    """``method.name=itq``: PCA to K dims + the learned ITQ rotation of the backbone features (``ITQ``)."""

    name = "itq"

    def __init__(self, backbone: Backbone, bits: int, num_classes: int = 0, *, iterations: int = 50,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        self.iterations = iterations

    def _fit(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        itq = ITQ(self.bits, iterations=self.iterations, seed=self.seed).fit(features)
        loss = itq.loss_history[-1] if itq.loss_history else float("nan")
        return itq.mean, itq.pca @ itq.rotation, {"itq_quantisation_loss": loss}
