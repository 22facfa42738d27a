"""The MLflow pyfunc model of a hashing method: preprocessed images in, packed codes out.

MLflow builds it from ``hashing/mlflow/model_code.py`` (models from code) and the two artifacts of
``hashing.mlflow.model_files`` (``state_dict``, ``config``); nothing is unpickled.
``predict(images)`` maps preprocessed images float32[n, 3, S, S] (the backbone's own mean/std,
S = ``dataset.image_size``) to packed codes uint8[n, bits // 8] (``numpy.packbits`` order, see
``hashing.codes``), exactly what ``hashing.encoding.Encoder.encode_images`` (the encode job) writes.
``mlflow.pyfunc.load_model(uri).unwrap_python_model()`` gives the instance: ``.method`` (eval mode,
CPU) and ``.config`` (the resolved config it was trained with).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from hashing.encoding import Encoder
from hashing.mlflow.model_files import load_model_files
from hashing.mlflow.names import CONFIG_ARTIFACT, STATE_DICT_ARTIFACT


class HashingPyfunc(PythonModel):
    """Packed image codes from a rebuilt ``HashingMethod`` (eval mode, CPU)."""

    def load_context(self, context: Any) -> None:
        self.method, self.config = load_model_files(
            context.artifacts[STATE_DICT_ARTIFACT], context.artifacts[CONFIG_ARTIFACT]
        )
        self.encoder = Encoder(self.method, self.config.dataset.image_size)

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """``model_input`` float32[n, 3, S, S] (numpy or torch) -> codes uint8[n, bits // 8]."""
        return self.encoder.encode_images(np.asarray(model_input, dtype=np.float32))
