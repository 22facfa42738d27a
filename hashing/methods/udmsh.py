"""UDMSH: unsupervised deep multi-similarity hashing (no labels anywhere).

[recon] No public UDMSH code exists: reconstruction after SSDH (yangerkun/IJCAI2018_SSDH) as
specified in METHODS.md; the similarity builder is ``hashing.methods.similarity``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as nnf
from torch import nn

from hashing.methods.base import Batch, HashingMethod, sign_codes
from hashing.methods.distributed import gather, local_rows, symmetric_pair_term
from hashing.methods.similarity import combined_distance, ssdh_similarity
from hashing.models.backbone import Backbone


def code_affinity(u_a: torch.Tensor, u_b: torch.Tensor) -> torch.Tensor:
    """(1/K) u_i^T u_j: float[m, n] from codes float[m, K], float[n, K].

    For binary codes in {-1, +1}^K it equals 1 - 2 d_H(b_i, b_j) / K exactly (Hamming-isometric).
    """
    return u_a @ u_b.T / u_a.shape[1]


class UDMSH(HashingMethod):
    """Backbone -> Linear(d, K) = z -> u = sqrt(K) z / ||z|| (so ||u|| = sqrt(K)); code b = sign(u),
    sign(0) = +1.

    Loss ([recon], B items of the global batch, all B x B ordered pairs including i == j):

        L = mean_ij w_ij ((1/K) u_i^T u_j - s_ij)^2 + lambda mean((u - sign(u))^2)

    s_ij = ``ssdh_similarity(D)`` in [-1, 1], with D = omega D_global + (1 - omega) D_spatial the cosine
    distances of the L2-normalised backbone ``global_`` and ``spatial`` features (detached: the
    similarity is a target), omega = 0.5. The spatial features keep layout when the backbone pools
    them to a grid (``model.spatial_grid`` 2: the stride-16 stage pooled to 2x2 cells, not one mean).
    w_ij = ``confident_weight`` (1.0) where |s_ij| = 1, ``graded_weight`` on the graded pairs between
    the thresholds (default 0.1; ``configs/udmsh.yaml`` uses 1.0, see there).
    lambda = ``quant_weight`` (0.1).
    Hamming-isometric mapping: ||u|| = sqrt(K) and the quantisation term together make
    (1/K) u_i^T u_j -> 1 - 2 d_H(b_i, b_j) / K, the quantity s_ij is compared with.

    The features come from the training backbone itself (same forward, no gradient), so the
    similarity follows the backbone as it trains; with a pretrained backbone at
    ``pretrained_lr_scale`` (0.01) it moves slowly. ``batch["labels"]`` is never read.

    Sharded data (DDP): s needs the features of many items at once; it is built each step within
    the gathered global batch (every worker gathers the same features and gets the same s), not in
    a dataset-wide pass before each epoch. Each worker pairs its local rows with the gathered codes
    (without gradient); the pair term is symmetric in (i, j), so it is written ``2 m - m.detach()``
    (value m, gradient 2 dm) and DDP's averaged gradients equal the single-process ones on the
    concatenated batch (as in ``IDHN``).
    """

    name = "udmsh"
    uses_labels: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, bits: int, num_classes: int = 0, *, omega: float = 0.5,
                 confident_weight: float = 1.0, graded_weight: float = 0.1, quant_weight: float = 0.1,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        if not 0.0 <= omega <= 1.0:
            raise ValueError(f"UDMSH omega must be in [0, 1], got {omega}")
        if omega < 1.0 and backbone.spatial_dim <= 0:
            raise ValueError(
                f"UDMSH with omega={omega} needs the backbone's spatial features, but its spatial_dim is "
                f"{backbone.spatial_dim}; use a backbone with spatial features or omega=1"
            )
        self.omega = omega
        self.confident_weight = confident_weight
        self.graded_weight = graded_weight
        self.quant_weight = quant_weight
        self.hash_layer = nn.Linear(backbone.feature_dim, bits)

    def _codes(self, global_: torch.Tensor) -> torch.Tensor:
        return math.sqrt(self.bits) * nnf.normalize(self.hash_layer(global_), dim=1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Codes u float32[b, K] with ||u_i|| = sqrt(K); the retrieval code is sign(u)."""
        return self._codes(self.backbone(images).global_)

    @torch.no_grad()
    def pseudo_similarity(self, images: torch.Tensor) -> torch.Tensor:
        """The pseudo-labels s float[b, b] in [-1, 1] that ``forward`` would use for these rows now.

        Built from the current backbone's features, so they change as the backbone trains (a
        diagnostic; uses the backbone's current train/eval mode).
        """
        feats = self.backbone(images)
        spatial = feats.spatial if self.omega < 1.0 else feats.global_
        return ssdh_similarity(combined_distance(feats.global_, spatial, self.omega))

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """``{"loss", "pairwise", "quantization", "confident"}`` scalars for the local rows of the global
        batch.

        ``confident`` is the fraction of global-batch pairs with s = +1 or -1 (a diagnostic).
        """
        self.check_phase(phase)
        feats = self.backbone(batch["image"])
        u = self._codes(feats.global_)
        g_global = gather(feats.global_)
        g_spatial = gather(feats.spatial) if self.omega < 1.0 else g_global
        s_global = ssdh_similarity(combined_distance(g_global, g_spatial, self.omega))
        s = s_global[local_rows(s_global.shape[0], u.shape[0])]
        confident = s.abs() == 1
        w = torch.where(confident, self.confident_weight, self.graded_weight)
        pairs = (w * (code_affinity(u, gather(u)) - s) ** 2).mean()
        pairwise = symmetric_pair_term(pairs)
        quantization = ((u - sign_codes(u)) ** 2).mean()
        loss = pairwise + self.quant_weight * quantization
        return {
            "loss": loss,
            "pairwise": pairs.detach(),
            "quantization": quantization.detach(),
            "confident": (s_global.abs() == 1).float().mean(),
        }
