"""Hashing methods by name. ``from_config(config, ...)`` is the one way the rest of the code makes a
configured method; ``build_method(name, ...)`` makes one from explicit parts (tests, benchmarks)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hashing.methods.base import Batch, HashingMethod
from hashing.models import build_backbone

if TYPE_CHECKING:
    from hashing.config import Config

# name -> "module:Class"; imported lazily so one method's dependencies never slow another's import.
METHODS: dict[str, str] = {
    "idhn": "hashing.methods.idhn:IDHN",
    "schn": "hashing.methods.schn:SCHN",
    "dsmhn": "hashing.methods.dsmhn:DSMHN",
    "udmsh": "hashing.methods.udmsh:UDMSH",
    "dpsh": "hashing.methods.dpsh:DPSH",
    "lsh": "hashing.methods.shallow:LSHMethod",
    "itq": "hashing.methods.shallow:ITQMethod",
}


def method_class(name: str) -> type[HashingMethod]:
    """The class implementing method ``name`` (one of ``METHODS``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_method(name: str, **kwargs) -> HashingMethod:
    """Instantiate method ``name``; ``kwargs`` go to its constructor (backbone, bits, num_classes, ...)."""
    return method_class(name)(**kwargs)


def from_config(config: Config, num_classes: int, tag_vocab_size: int,
                tag_vocabulary: Sequence[str] | None = None, pretrained: bool | None = None) -> HashingMethod:
    """The method ``config.method`` over the backbone ``config.model`` for ``num_classes`` classes and
    ``tag_vocab_size`` tag words, initialised from ``torch.manual_seed(config.run.seed)`` (so the same on
    every worker and on every call with the same config).

    Args:
        config: a validated config; reads ``run.seed``, ``model.backbone``, ``model.pretrained``,
            ``model.spatial_grid``, ``model.bits``, ``method.name`` and ``method.params``.
        num_classes: c, width of ``batch["labels"]``.
        tag_vocab_size: V, width of ``batch["tags"]`` (0 without tags).
        tag_vocabulary: the V tag words, for a method that embeds them (DSMHN with
            ``text_encoder: minilm``: ``set_tag_vocabulary``); the other methods ignore them.
        pretrained: load the backbone's ImageNet weights; None follows ``config.model.pretrained``. A
            model about to get its trained state dict passes False (the weights would be overwritten).
    """
    torch.manual_seed(config.run.seed)
    backbone = build_backbone(
        config.model.backbone,
        pretrained=bool(config.model.pretrained if pretrained is None else pretrained),
        spatial_grid=config.model.spatial_grid,
    )
    method = build_method(
        config.method.name,
        backbone=backbone,
        bits=config.model.bits,
        num_classes=num_classes,
        tag_vocab_size=tag_vocab_size,
        **config.method.params,
    )
    if tag_vocabulary is not None and hasattr(method, "set_tag_vocabulary"):
        method.set_tag_vocabulary(list(tag_vocabulary))
    return method


__all__ = ["METHODS", "Batch", "HashingMethod", "build_method", "from_config", "method_class"]
