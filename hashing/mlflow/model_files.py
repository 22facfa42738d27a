"""A trained method as two plain files, and back: no pickle anywhere.

    ``state_dict.safetensors``  the method's ``state_dict()`` (tensors only)
    ``config.json``             ``{"format": "hashing-model", "format_version": 1,
                                  "config": <resolved Config>, "model_meta": <model_meta()>}``

These are the artifacts of the logged pyfunc model (``hashing.mlflow.logged_model``); rebuilding needs
only this package and ``hashing.methods.from_config``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashing.config import Config, config_to_dict, validate_config
from hashing.errors import InputError
from hashing.mlflow.names import (
    CONFIG_ARTIFACT,
    CONFIG_FILE,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    STATE_DICT_ARTIFACT,
    STATE_DICT_FILE,
)

if TYPE_CHECKING:
    from hashing.methods.base import HashingMethod


def model_meta(method: HashingMethod, config: Config, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilding ``method`` needs beyond the config, plus ``extra`` (dataset name, fingerprint ...)."""
    return {
        "method": config.method.name,
        "backbone": config.model.backbone,
        "bits": method.bits,
        "num_classes": method.num_classes,
        "tag_vocab_size": method.tag_vocab_size,
        "image_size": config.dataset.image_size,
        "mean": list(method.backbone.mean),
        "std": list(method.backbone.std),
        "modalities": list(method.modalities),
        **(extra or {}),
    }


def save_model_files(
    method: HashingMethod, config: Config, folder: str | os.PathLike, extra: dict | None = None
) -> dict[str, str]:
    """Write ``state_dict.safetensors`` and ``config.json`` for ``method`` into ``folder``.

    Returns ``{"state_dict": path, "config": path}`` (the pyfunc artifacts mapping).
    """
    from safetensors.torch import save_file

    from hashing.methods.base import HashingMethod

    if not isinstance(method, HashingMethod):
        raise TypeError(f"expected a HashingMethod (unwrap DDP with .module), got {type(method).__name__}")
    if method.bits != config.model.bits:
        raise ValueError(f"method has {method.bits} bits but config model.bits is {config.model.bits}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in method.state_dict().items()}
    save_file(tensors, str(folder / STATE_DICT_FILE))
    document = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "config": config_to_dict(config),
        "model_meta": model_meta(method, config, extra),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2))
    return {STATE_DICT_ARTIFACT: str(folder / STATE_DICT_FILE), CONFIG_ARTIFACT: str(folder / CONFIG_FILE)}


def load_model_files(
    state_dict_path: str | os.PathLike, config_path: str | os.PathLike
) -> tuple[HashingMethod, Config]:
    """Rebuild a method from the two model files (see the module docstring); in eval mode, on CPU.

    Raises:
        InputError: ``config_path`` is not a model config of this format, or the weights do not fit the
            method it describes (both name the file).
    """
    from safetensors.torch import load_file

    from hashing.methods import from_config

    document = json.loads(Path(config_path).read_text())
    if document.get("format") != MODEL_FORMAT or document.get("format_version") != MODEL_FORMAT_VERSION:
        raise InputError(
            f"{config_path}: not a {MODEL_FORMAT} v{MODEL_FORMAT_VERSION} file "
            f"(format={document.get('format')!r}, format_version={document.get('format_version')!r})"
        )
    config = validate_config(document["config"], f"model config {config_path}")
    meta = document["model_meta"]
    method = from_config(config, meta["num_classes"], meta["tag_vocab_size"], pretrained=False)
    try:
        method.load_state_dict(load_file(str(state_dict_path)), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{state_dict_path} does not fit method {config.method.name!r}: {exc}") from exc
    return method.eval(), config
