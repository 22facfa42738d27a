"""DPSH: deep pairwise-supervised hashing (Li, Wang, Kang, IJCAI 2016), the classic deep baseline.

Constants and normalisation as in the DeepHash-pytorch version (eta = 0.1, means over pairs and
entries); pairs span the global batch instead of its whole-training-set memory bank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from hashing.methods.base import Batch, HashingMethod, label_graph, sign_codes
from hashing.methods.distributed import gather, symmetric_pair_term
from hashing.models.backbone import Backbone


def dpsh_pair_loss(u_rows: torch.Tensor, u_cols: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per pair float32[m, n]: log(1 + e^Theta) - S Theta, Theta = 0.5 u_i^T u_j.

    ``u_rows`` float32[m, K], ``u_cols`` float32[n, K], ``s`` float32[m, n] in {0, 1}.
    """
    theta = 0.5 * (u_rows @ u_cols.T)
    return nnf.softplus(theta) - s * theta


class DPSH(HashingMethod):
    """Backbone -> Linear(d, K) = u (no squashing); code b = sign(u), sign(0) = +1.

    Loss over the b x b ordered pairs of the global batch (including i == j):

        L = mean_ij [log(1 + e^Theta_ij) - S_ij Theta_ij] + eta mean((u - sign(u))^2),
        Theta_ij = 0.5 u_i^T u_j,  S_ij = 1[l_i^T l_j > 0],  eta = 0.1.

    Sharded data (DDP): local rows x gathered columns without gradient; the pair term is symmetric,
    so it is written ``2 m - m.detach()`` (value m, gradient 2 dm) and DDP's averaged gradients
    equal the single-process gradients on the concatenated batch (as in ``IDHN``).
    """

    name = "dpsh"

    def __init__(self, backbone: Backbone, bits: int, num_classes: int, *, eta: float = 0.1,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        self.eta = eta
        self.hash_layer = nn.Linear(backbone.feature_dim, bits)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Real-valued codes u float32[b, K] (linear output)."""
        return self.hash_layer(self.backbone(images).global_)

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """``{"loss", "likelihood", "quantization"}`` scalars for the local rows of the global batch."""
        u = self.encode_image(batch["image"])
        labels = batch["labels"]
        s = label_graph(labels, gather(labels))
        pairs = dpsh_pair_loss(u, gather(u), s).mean()
        quantization = ((u - sign_codes(u)) ** 2).mean()
        loss = symmetric_pair_term(pairs) + self.eta * quantization
        return {"loss": loss, "likelihood": pairs.detach(), "quantization": quantization.detach()}
