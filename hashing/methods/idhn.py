"""IDHN: improved deep hashing with soft pairwise similarity for multi-label images (Zhang et al. 2019).

Follows the original TensorFlow ``train.py`` (pectinid16/IDHN), not the DeepHash-pytorch port.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from hashing.methods.base import Batch, HashingMethod
from hashing.methods.distributed import gather, symmetric_pair_term
from hashing.models.backbone import Backbone


def label_cosine(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """s_ij = <l_i, l_j> / (|l_i| |l_j|): float32[m, n] in [0, 1] from multi-hot float32[m, c], [n, c].

    A row without any label has similarity 0 to everything (the original divides by zero there).
    """
    a = nnf.normalize(labels_a.float(), dim=1)
    b = nnf.normalize(labels_b.float(), dim=1)
    return a @ b.T


def idhn_pair_loss(
    u_rows: torch.Tensor, u_cols: torch.Tensor, s: torch.Tensor, beta: float = 5.0, gamma: float = 0.1
) -> torch.Tensor:
    """Per-pair IDHN loss float32[m, n] for codes u_rows float32[m, K], u_cols float32[n, K], s float32[m, n].

    theta_ij = beta <u_i, u_j> / K.
    Hard pairs (s > 0.99 or s < 0.01): log(1 + e^theta) - s theta (softplus, numerically stable).
    Soft pairs: gamma K ((<u_i, u_j> + K) / (2K) - s)^2.
    """
    k = u_rows.shape[1]
    inner = u_rows @ u_cols.T
    theta = beta * inner / k
    hard = (s > 0.99) | (s < 0.01)
    likelihood = nnf.softplus(theta) - s * theta
    mse = gamma * k * ((inner + k) / (2 * k) - s) ** 2
    return torch.where(hard, likelihood, mse)


class IDHN(HashingMethod):
    """Backbone -> Linear(d, K) -> softsign u = z / (1 + |z|).

    Loss (original form, b items of the global batch, all b x b ordered pairs including i == j):

        L = mean_ij l(u_i, u_j, s_ij) + alpha mean(| |u| - 1 |)

    with ``l`` from ``idhn_pair_loss``, s_ij = cosine of the label vectors, beta = 5, gamma = 0.1,
    alpha = 0.1.

    Theta scale (a recipe choice, not a change of the loss's form): the original theta = beta <u, u'> / K
    with beta = 5 is bounded by +-5 whatever K is, so the likelihood of a hard pair can never push a
    similar pair's probability past sigmoid(5) = 0.993 and stops pulling early at large K.
    ``theta_scale`` = t sets theta = t <u, u'> instead (i.e. beta = t K; t = 0.5 is DPSH's Theta =
    0.5 u^T u); None keeps the original beta / K. The soft-pair term does not depend on it.

    Binary code b = sign(u) with sign(0) = +1 (the original uses 1[u > 0]; they differ only where
    u is exactly 0).

    Sharded data (DDP): each worker pairs its b local rows with the B gathered rows of every worker
    (columns without gradient). Because l is symmetric in (i, j), the gradient of the pair mean on
    the whole batch w.r.t. a local u_i is twice that of the local rows x detached columns block, so
    the pair term is ``2 m - m.detach()`` (value m, gradient 2 dm). After DDP averages the gradients
    of the workers, they equal the single-process gradients on the concatenated batch, and the
    mean of the workers' losses equals its loss.
    """

    name = "idhn"

    def __init__(self, backbone: Backbone, bits: int, num_classes: int, *, alpha: float = 0.1,
                 beta: float = 5.0, gamma: float = 0.1, theta_scale: float | None = None,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        if theta_scale is not None and theta_scale <= 0:
            raise ValueError(f"IDHN theta_scale must be > 0 (or None for beta / K), got {theta_scale}")
        self.alpha = alpha
        self.theta_scale = theta_scale
        # The beta of theta = beta <u, u'> / K that the loss uses.
        self.beta = beta if theta_scale is None else theta_scale * bits
        self.gamma = gamma
        self.hash_layer = nn.Linear(backbone.feature_dim, bits)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Softsign codes u float32[b, K] in (-1, 1)."""
        return nnf.softsign(self.hash_layer(self.backbone(images).global_))

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """``{"loss", "pairwise", "quantization"}`` scalars for the local rows of the global batch."""
        u = self.encode_image(batch["image"])
        labels = batch["labels"]
        s = label_cosine(labels, gather(labels))
        pairs = idhn_pair_loss(u, gather(u), s, self.beta, self.gamma).mean()
        pairwise = symmetric_pair_term(pairs)
        quantization = (u.abs() - 1).abs().mean()
        loss = pairwise + self.alpha * quantization
        return {"loss": loss, "pairwise": pairs.detach(), "quantization": quantization.detach()}
