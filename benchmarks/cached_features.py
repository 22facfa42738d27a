"""A frozen "backbone" over features computed ahead of time: the quality benchmark trains every method on
the same cached features with it, and the method tests train on small feature sets without images.

Importable as ``benchmarks.cached_features`` with the repository root on ``sys.path`` (the benchmark
scripts put it there, as ``tests/conftest.py`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf

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


def check_pooled_grid(grid: int, cached_grid: int) -> None:
    """Raises ValueError unless the model's ``spatial_grid`` ``grid`` can be average-pooled from features
    cached on a ``cached_grid`` x ``cached_grid`` grid (``grid`` divides ``cached_grid``)."""
    if cached_grid % grid:
        raise ValueError(
            f"model.spatial_grid {grid} cannot be pooled from the cached {cached_grid}x{cached_grid} grid"
        )


class CachedStage(Backbone):
    """EfficientNet-Lite0 trained from block ``start`` on, over rows cached by ``cache_rows``.

    A cached row float[b, C*h*w + 112*g*g] holds the output of block ``start - 1`` (float[C, h, w],
    flattened) and the output of the 112-channel stage (block ``spatial_block``) average-pooled to the
    ``cached_grid`` g x g grid. ``forward`` runs blocks ``start..`` and the head conv on the first part
    (they train) and re-pools the second to the model's ``spatial_grid`` (``Features.spatial``), so
    ``forward(cache_rows(x)) == backbone(x)``. Every parameter before block ``start`` is frozen.
    """

    def __init__(self, backbone: Backbone, start: int, image_size: int, cached_grid: int) -> None:
        super().__init__()
        if not start > backbone.spatial_block:
            raise ValueError(
                f"CachedStage start {start} must come after the spatial block {backbone.spatial_block}"
            )
        check_pooled_grid(backbone.spatial_grid, cached_grid)
        self.inner = backbone
        self.start, self.cached_grid = start, cached_grid
        self.feature_dim = backbone.feature_dim
        self.spatial_channels = backbone.spatial_channels
        self.spatial_grid = backbone.spatial_grid
        self.mean, self.std = backbone.mean, backbone.std
        self.pretrained = backbone.pretrained
        was_training = backbone.training
        with torch.no_grad():  # in eval mode: the probe must not move any BatchNorm statistics
            probe = backbone.eval().run_blocks(backbone.stem(torch.zeros(1, 3, image_size, image_size)), 0, start)
        backbone.train(was_training)
        self.stage_shape = tuple(probe.shape[1:])
        trained = [*backbone._blocks[start:], backbone._conv_head, backbone._bn1]
        trained_ids = {id(p) for m in trained for p in m.parameters()}
        for param in backbone.parameters():
            if id(param) not in trained_ids:
                param.requires_grad_(False)

    @property
    def row_width(self) -> int:
        c, h, w = self.stage_shape
        return c * h * w + self.spatial_channels * self.cached_grid**2

    def cache_rows(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images float[b, 3, H, W] -> cached rows float[b, row_width] (frozen blocks only)."""
        inner = self.inner
        spatial_map = inner.run_blocks(inner.stem(images), 0, inner.spatial_block + 1)
        stage = inner.run_blocks(spatial_map, inner.spatial_block + 1, self.start)
        pooled = nnf.adaptive_avg_pool2d(spatial_map, self.cached_grid).flatten(1)
        return torch.cat([stage.flatten(1), pooled], 1)

    def forward(self, images: torch.Tensor) -> Features:
        if images.ndim != 2 or images.shape[1] != self.row_width:
            raise ValueError(
                f"CachedStage expects cached rows float[b, {self.row_width}], got shape {tuple(images.shape)}"
            )
        split = images.shape[1] - self.spatial_channels * self.cached_grid**2
        stage = images[:, :split].reshape(-1, *self.stage_shape)
        cells = images[:, split:].reshape(-1, self.spatial_channels, self.cached_grid, self.cached_grid)
        spatial = self.pool_spatial(cells)
        return self.inner.features_from(stage, self.start, spatial)
