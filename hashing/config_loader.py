"""Reading a run config: YAML files with ``include:`` (merged in order, then the file's own keys), then
``key=value`` overrides (YAML values), then validation against the schema of ``hashing.config``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hashing.config import Config, ConfigError, validate_config

_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: nested mappings merge key by key, any other value in ``top`` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (YAML itself keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the first one would be silently ignored)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _UniqueKeyLoader.construct_mapping)


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` with its ``include:`` files (relative to it) merged underneath its own keys."""
    path = path.resolve()
    where = f" (included from {chain[-1]})" if chain else ""
    if path in chain:
        raise ConfigError([f"include cycle: {' -> '.join(map(str, (*chain, path)))}"], str(chain[0]))
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}{where}"], str(path))
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{path}: top level must be a mapping of sections, got {type(data).__name__}"], str(path)
        )
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(
            [f"{path}: 'include' must be a file path or a list of them, got {includes!r}"], str(path)
        )
    merged: dict[str, Any] = {}
    for include in includes:
        merged = _merge(merged, _read_yaml(path.parent / include, (*chain, path)))
    return _merge(merged, data)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in ``data`` in place; the value is YAML (``2``, ``false``, ``[1, 2]``)."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not _OVERRIDE_KEY.match(key):
        raise ConfigError(
            [f"override {override!r}: expected key=value with a dotted key, e.g. train.epochs=2"]
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"override {override!r}: the value is not valid YAML ({exc})"]) from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: i + 1])
            raise ConfigError([f"override {override!r}: {prefix} is a value ({child!r}), not a section"])
        node = child
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (with its includes), apply ``key=value`` overrides, validate.

    Args:
        path: YAML file; None starts from the schema defaults (built-in tiny dataset, IDHN).
        overrides: ``"train.epochs=2"``, ``"model.pretrained=false"``, ``"method.params.alpha=0.2"``.

    Raises:
        ConfigError: a missing/unparsable file or include, a malformed override, or any invalid
            key or value (all of them listed, each with what is allowed).
    """
    overrides = list(overrides)
    data = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(data, override)
    source = str(path) if path is not None else "config (defaults)"
    if overrides:
        # keys only: a value may be something that must not be echoed (the error names bad values itself)
        source += f" with overrides of {', '.join(o.partition('=')[0] for o in overrides)}"
    return validate_config(data, source)
