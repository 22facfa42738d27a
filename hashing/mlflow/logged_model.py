"""A trained method logged as an MLflow pyfunc model, and loaded back through MLflow's own loader.

The model is "models from code": ``hashing/mlflow/model_code.py`` is its code, the two files of
``hashing.mlflow.model_files`` its artifacts, this package (``hashing/``) its ``code_paths`` (a fresh
environment with ``PIP_REQUIREMENTS`` installed imports it from the model's ``code/`` folder), with a
tensor signature and a one-image input example. So MLflow's tools work on it as they are:
``mlflow.pyfunc.load_model(uri).predict(images)`` and ``mlflow models serve -m <uri>`` give packed codes.
"""

from __future__ import annotations

import logging
import tempfile
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from hashing.config import Config
from hashing.errors import InputError
from hashing.mlflow.model_files import save_model_files
from hashing.mlflow.names import MODEL_NAME_IN_RUN

if TYPE_CHECKING:
    from mlflow.models.signature import ModelSignature

    from hashing.methods.base import HashingMethod

log = logging.getLogger(__name__)

MODEL_CODE = str(Path(__file__).with_name("model_code.py"))
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # hashing/, copied into the model's code/ folder
# What loading and predicting imports beyond MLflow (which MLflow adds itself) and the standard library;
# tests/mlflow/test_logged_model.py checks it against a real load. Pinned where it matters, short
# (STACK.md: an explicit list cuts log_model from seconds to 0.1 s).
PIP_REQUIREMENTS = [
    f"torch=={distribution_version('torch').split('+')[0]}",
    "numpy",
    "safetensors",
    "pyyaml",
    "pydantic>=2",
    "pyarrow",
    "pillow",
    "tenacity",
]


def model_signature(config: Config) -> ModelSignature:
    """Input float32[-1, 3, S, S] (S = ``dataset.image_size``), output uint8[-1, bits // 8]."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = config.dataset.image_size
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, config.model.bits // 8))]),
    )


def input_example(config: Config) -> np.ndarray:
    """One preprocessed image float32[1, 3, S, S]: a horizontal ramp from -1 to 1 in steps of 0.5, the same in
    every channel (values with short JSON forms: the example is stored twice as indented JSON)."""
    size = config.dataset.image_size
    ramp = np.round(np.linspace(-1.0, 1.0, size, dtype=np.float32) * 2) / 2
    return np.broadcast_to(ramp, (1, 3, size, size)).copy()


def log_hashing_model(
    method: HashingMethod, config: Config, name: str = MODEL_NAME_IN_RUN, extra: dict | None = None
) -> str:
    """Log ``method`` to the active run as a pyfunc models-from-code model; return its model URI.

    ``extra`` goes into ``model_meta`` (e.g. ``{"dataset": name, "dataset_fingerprint": fp}``).
    """
    with tempfile.TemporaryDirectory(prefix="hashing-model-") as tmp:
        artifacts = save_model_files(method, config, tmp, extra)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=MODEL_CODE,
            artifacts=artifacts,
            code_paths=[PACKAGE_DIR],
            pip_requirements=PIP_REQUIREMENTS,
            signature=model_signature(config),
            input_example=input_example(config),
        )
    log.info("logged model %s (%s, %d bits)", info.model_uri, config.method.name, config.model.bits)
    return info.model_uri


def load_hashing_model(model_uri: str) -> tuple[HashingMethod, Config]:
    """Load ``model_uri`` (``models:/name@alias``, ``models:/name/3``, ``models:/m-...``, ``runs:/...``) with
    ``mlflow.pyfunc.load_model``; the rebuilt method (eval mode, CPU) and the config it was trained with.

    Raises:
        InputError: the model is not a hashing model (another pyfunc, another flavor).
    """
    from hashing.mlflow.pyfunc import HashingPyfunc

    with tempfile.TemporaryDirectory(prefix="hashing-model-") as tmp:
        loaded = mlflow.pyfunc.load_model(model_uri, dst_path=tmp)
    try:
        model = loaded.unwrap_python_model()
    except MlflowException:
        model = None
    if not isinstance(model, HashingPyfunc):
        raise InputError(f"{model_uri} is not a hashing model (its pyfunc model is {type(model).__name__}, "
                         f"expected {HashingPyfunc.__name__}; log it with hashing.mlflow.logged_model)")
    return model.method, model.config
