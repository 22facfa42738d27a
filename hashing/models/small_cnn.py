"""A small randomly initialised CNN: the fast backbone for tests and smoke runs (no pretrained weights)."""

from __future__ import annotations

import torch
from torch import nn

from hashing.models.backbone import Backbone, Features


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(Backbone):
    """Three conv stages (32, 64, 128 channels), any input size >= 8 px.

    ``spatial`` = output of stage 2 (64 channels) pooled to the G x G ``spatial_grid`` (64 G^2 wide),
    ``global_`` = pooled output of stage 3 (128 wide).
    """

    feature_dim = 128
    spatial_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = _stage(3, 32)
        self.stage2 = _stage(32, 64)
        self.stage3 = _stage(64, 128)

    def forward(self, images: torch.Tensor) -> Features:
        return self.from_trunk(self.trunk(images))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Stages 1-2: float[b, 64, H/4, W/4]."""
        return self.stage2(self.stage1(images))

    def from_trunk(self, x: torch.Tensor) -> Features:
        """Stage 3 on a ``trunk`` output."""
        return Features(self.stage3(x).mean(dim=(2, 3)), self.pool_spatial(x))

    def trunk_parameters(self) -> list[nn.Parameter]:
        return [*self.stage1.parameters(), *self.stage2.parameters()]


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
