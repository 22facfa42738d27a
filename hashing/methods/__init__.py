"""Hashing methods by name. ``build_method(name, ...)`` is the one way the rest of the code makes one."""

from __future__ import annotations

import importlib

from hashing.methods.base import Batch, HashingMethod

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


__all__ = ["METHODS", "Batch", "HashingMethod", "build_method", "method_class"]
