"""A frozen "backbone" over features computed ahead of time: the quality benchmark trains every method on
the same cached features with it, and the method tests train on small feature sets without images.

Importable as ``benchmarks.cached_features`` with the repository root on ``sys.path`` (the benchmark
scripts put it there, as ``tests/conftest.py`` does).
"""

from __future__ import annotations

import torch

from hashing.models.backbone import Backbone, Features


class CachedFeatures(Backbone):
    """A frozen backbone whose features were computed ahead of time.

    Input ``float32[b, feature_dim + spatial_dim]`` (global features, then spatial) is split and
    returned as is; it has no parameters. Benchmarks use it to train many methods on the same
    frozen features without running the convolutional network again.
    """

    def __init__(self, feature_dim: int, spatial_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.spatial_channels = spatial_dim  # already pooled: grid 1, the width is what was cached

    def forward(self, images: torch.Tensor) -> Features:
        if images.ndim != 2 or images.shape[1] != self.feature_dim + self.spatial_dim:
            raise ValueError(
                f"cached backbone expects float[b, {self.feature_dim + self.spatial_dim}] feature rows, "
                f"got shape {tuple(images.shape)}"
            )
        return Features(images[:, : self.feature_dim], images[:, self.feature_dim :])
