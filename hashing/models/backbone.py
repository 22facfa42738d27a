"""The backbone contract every image model in this package keeps.

A backbone maps preprocessed images ``float32[b, 3, H, W]`` to two pooled feature vectors:
``global_`` (``float32[b, feature_dim]``, the pooled output of the last stage) and ``spatial``
(``float32[b, spatial_dim]``, globally pooled features of an earlier convolutional stage; UDMSH
uses it). Preprocessing is ``(pixel / 255 - mean) / std`` per channel with the backbone's own
``mean`` and ``std``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Features(NamedTuple):
    """Pooled backbone features: ``global_`` float32[b, feature_dim], ``spatial`` float32[b, spatial_dim]."""

    global_: torch.Tensor
    spatial: torch.Tensor


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement ``forward``.

    Attributes:
        feature_dim: width of ``Features.global_``.
        spatial_dim: width of ``Features.spatial``.
        mean, std: per-channel preprocessing constants (RGB, on pixels scaled to [0, 1]).
        pretrained: True when ImageNet weights were loaded (the trainer then gives the backbone a
            smaller learning rate than the new layers).
    """

    feature_dim: int
    spatial_dim: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pretrained: bool = False

    def forward(self, images: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError
