"""Label-free pairwise similarity from feature distances (UDMSH, after SSDH's semantic structure).

[recon] SSDH (Yang et al., IJCAI 2018; yangerkun/IJCAI2018_SSDH ``main.py``) builds its pseudo
labels once from the cosine distances of all training items' fc7 features:
  1. histogram of the distances in 100 bins of width 0.01 (features are non-negative, so the
     cosine distance is in [0, 1]); m = left edge of the fullest bin;
  2. left = distances <= m, right = distances > m; each side is mirrored around m
     (left + (2m - left), (2m - right) + right) and fitted with a normal (``scipy.stats.norm.fit``,
     maximum likelihood): the mirrored mean is exactly m, sigma^2 = mean((x - m)^2) over the side;
  3. s = +1 where d < mu_l - 2 sigma_l, -1 where d > mu_r + 2 sigma_r, 0 otherwise (and 0-weighted).
Our reconstruction of UDMSH's multi-level version: 100 bins on [0, 2] (cosine distances of
arbitrary features), the diagonal (d_ii = 0) left out of the fit, and a linear ramp from +1 at
mu_l - 2 sigma_l to -1 at mu_r + 2 sigma_r instead of 0 between the thresholds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

BINS = 100
MAX_DISTANCE = 2.0


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    """1 - cos(x_i, x_j): float[n, n] in [0, 2] from features float[n, d] (rows L2-normalised here)."""
    x = nnf.normalize(x.float(), dim=1)
    return (1 - x @ x.T).clamp(0.0, MAX_DISTANCE)


def combined_distance(global_: torch.Tensor, spatial: torch.Tensor, omega: float = 0.5) -> torch.Tensor:
    """D = omega D_global + (1 - omega) D_spatial: float[n, n] in [0, 2], cosine distances.

    ``global_`` float[n, feature_dim] (pooled last stage), ``spatial`` float[n, spatial_dim]
    (pooled earlier stage); a side with weight 0 is not computed.
    """
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega must be in [0, 1], got {omega}")
    if omega == 1.0:
        return cosine_distance(global_)
    if omega == 0.0:
        return cosine_distance(spatial)
    return omega * cosine_distance(global_) + (1 - omega) * cosine_distance(spatial)


def ssdh_thresholds(distances: torch.Tensor, bins: int = BINS) -> tuple[float, float]:
    """(mu_l - 2 sigma_l, mu_r + 2 sigma_r) from the off-diagonal entries of ``distances`` float[n, n].

    Histogram on [0, 2] in ``bins`` bins, m = left edge of the fullest bin (the first on ties),
    normals fitted to each side mirrored around m (so mu_l = mu_r = m). A side without entries
    gets sigma = 0.
    """
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1] or distances.shape[0] < 2:
        raise ValueError(
            f"distances must be a square float[n, n] with n >= 2, got shape {tuple(distances.shape)}"
        )
    n = distances.shape[0]
    off = (
        distances[~torch.eye(n, dtype=torch.bool, device=distances.device)].double().clamp(0.0, MAX_DISTANCE)
    )
    counts = torch.histc(off, bins=bins, min=0.0, max=MAX_DISTANCE)
    m = float(torch.argmax(counts)) * MAX_DISTANCE / bins
    left, right = off[off <= m], off[off > m]
    sigma_l = float(((left - m) ** 2).mean().sqrt()) if left.numel() else 0.0
    sigma_r = float(((right - m) ** 2).mean().sqrt()) if right.numel() else 0.0
    return m - 2 * sigma_l, m + 2 * sigma_r


def ssdh_similarity(distances: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Multi-level pseudo similarity s float[n, n] in [-1, 1] from distances float[n, n] in [0, 2].

    s = +1 where d < t_lo, -1 where d > t_hi, 1 - 2 (d - t_lo) / (t_hi - t_lo) in between, with
    (t_lo, t_hi) = ``ssdh_thresholds(distances)``. Uses nothing but the distances (no labels);
    no gradient flows through it.
    """
    t_lo, t_hi = ssdh_thresholds(distances, bins)
    d = distances.detach().float()
    ramp = 1 - 2 * (d - t_lo) / max(t_hi - t_lo, 1e-12)
    return torch.where(d < t_lo, 1.0, torch.where(d > t_hi, -1.0, ramp.clamp(-1.0, 1.0)))
