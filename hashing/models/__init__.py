"""Backbones by name. ``build_backbone(name, pretrained)`` is the one way the rest of the code makes one."""

from __future__ import annotations

from hashing.models.backbone import Backbone, Features


def build_backbone(name: str, pretrained: bool = True, spatial_grid: int = 1) -> Backbone:
    """Return the backbone called ``name``, its ``Features.spatial`` pooled to a ``spatial_grid`` grid.

    Names: ``small_cnn`` (random init, for tests), ``efficientnet_lite0`` and ``mobilenet_v2``
    (ImageNet weights from pip packages when ``pretrained``). The grid changes no parameter, so a
    state dict loads whatever grid the backbone was built with.
    """
    return _build(name, pretrained).set_spatial_grid(spatial_grid)


def _build(name: str, pretrained: bool) -> Backbone:
    if name == "small_cnn":
        from hashing.models.small_cnn import SmallCNN

        return SmallCNN()
    if name == "efficientnet_lite0":
        from hashing.models.efficientnet_lite import efficientnet_lite0

        return efficientnet_lite0(pretrained=pretrained)
    if name == "mobilenet_v2":
        from hashing.models.mobilenet_v2 import mobilenet_v2

        return mobilenet_v2(pretrained=pretrained)
    raise ValueError(f"unknown backbone {name!r}; allowed: small_cnn, efficientnet_lite0, mobilenet_v2")


__all__ = ["Backbone", "Features", "build_backbone"]
