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

