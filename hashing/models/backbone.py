"""The backbone contract every image model in this package keeps.

A backbone maps preprocessed images ``float32[b, 3, H, W]`` to two pooled feature vectors:
``global_`` (``float32[b, feature_dim]``, the pooled output of the last stage) and ``spatial``
(``float32[b, spatial_dim]``, features of an earlier convolutional stage average-pooled to a
``spatial_grid`` x ``spatial_grid`` grid and flattened channel-major, so that with a grid > 1 they
keep the layout of the image: which region holds what; UDMSH uses it). ``spatial_dim`` =
``spatial_channels * spatial_grid ** 2``; grid 1 is one global mean.

Preprocessing is ``(pixel / 255 - mean) / std`` per channel with the backbone's own ``mean`` and
``std``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as nnf
from torch import nn


class Features(NamedTuple):
    """Pooled backbone features: ``global_`` float32[b, feature_dim], ``spatial`` float32[b, spatial_dim]."""

    global_: torch.Tensor
    spatial: torch.Tensor


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement ``forward``.

    Attributes:
        feature_dim: width of ``Features.global_``.
        spatial_channels: channels of the earlier stage that ``Features.spatial`` pools.
        spatial_grid: side G of the pooling grid of ``Features.spatial`` (1: a global mean).
        spatial_dim: width of ``Features.spatial`` (``spatial_channels * G * G``).
        mean, std: per-channel preprocessing constants (RGB, on pixels scaled to [0, 1]).
        pretrained: True when ImageNet weights were loaded (the trainer then gives the backbone a
            smaller learning rate than the new layers).
    """

    feature_dim: int
    spatial_channels: int = 0
    spatial_grid: int = 1
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pretrained: bool = False

    @property
    def spatial_dim(self) -> int:
        """Width of ``Features.spatial``: ``spatial_channels * spatial_grid ** 2``."""
        return self.spatial_channels * self.spatial_grid**2

    def set_spatial_grid(self, grid: int) -> Backbone:
        """Pool ``Features.spatial`` to a ``grid`` x ``grid`` grid from now on (no parameter changes).

        Returns self."""
        if not isinstance(grid, int) or grid < 1:
            raise ValueError(f"spatial_grid must be an integer >= 1, got {grid!r}")
        self.spatial_grid = grid
        return self

    def pool_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map float[b, C, h, w] -> float[b, C * G * G]: average-pooled to the G x G grid,
        flattened channel-major."""
        if self.spatial_grid == 1:
            return x.mean(dim=(2, 3))
        return nnf.adaptive_avg_pool2d(x, self.spatial_grid).flatten(1)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The early layers up to and including the stage ``Features.spatial`` pools: a map float[b, C, h, w].

        With ``from_trunk``, ``from_trunk(trunk(x)) == forward(x)``; the quality benchmark caches the
        trunk's output once and trains only the rest (``CachedTrunk``).
        """
        raise NotImplementedError(f"{type(self).__name__} has no trunk / from_trunk split")

    def from_trunk(self, x: torch.Tensor) -> Features:
        """The rest of the network on a ``trunk`` output ``x``; ``spatial`` is ``pool_spatial(x)``."""
        raise NotImplementedError(f"{type(self).__name__} has no trunk / from_trunk split")

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Parameters used by ``trunk`` (frozen by ``CachedTrunk``)."""
        raise NotImplementedError(f"{type(self).__name__} has no trunk / from_trunk split")

    def forward(self, images: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError


class CachedTrunk(Backbone):
    """A backbone whose frozen early layers ran ahead of time: the input is ``backbone.trunk(images)``
    float[b, C, h, w] (cached once), ``forward`` runs ``backbone.from_trunk`` (the trainable later
    stages and the head). Holds the whole backbone, so its state dict is the backbone's; the trunk's
    parameters are frozen (``requires_grad=False``) and never run here.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.inner = backbone
        self.feature_dim = backbone.feature_dim
        self.spatial_channels = backbone.spatial_channels
        self.spatial_grid = backbone.spatial_grid
        self.mean, self.std = backbone.mean, backbone.std
        self.pretrained = backbone.pretrained
        for param in backbone.trunk_parameters():
            param.requires_grad_(False)

    def set_spatial_grid(self, grid: int) -> Backbone:
        super().set_spatial_grid(grid)
        self.inner.set_spatial_grid(grid)
        return self

    def forward(self, images: torch.Tensor) -> Features:
        if images.ndim != 4:
            raise ValueError(
                f"CachedTrunk expects trunk outputs float[b, C, h, w], got shape {tuple(images.shape)}"
            )
        return self.inner.from_trunk(images)
