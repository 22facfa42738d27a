"""The MLflow pyfunc model of a hashing method ("models from code": MLflow runs this file to load it).

Artifacts (written by ``hashing.tracking.log_hashing_model``): ``state_dict`` (safetensors) and
``config`` (JSON). ``predict(images)`` maps preprocessed images float32[n, 3, S, S] (the
backbone's own mean/std, S = ``dataset.image_size``) to packed codes uint8[n, bits // 8]
(``numpy.packbits`` order, see ``hashing.codes``). Nothing is unpickled.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from hashing.codes import pack_signs
from hashing.tracking import load_model_files

BATCH_ROWS = 256  # images per forward pass, bounds memory for large inputs


class HashingPyfunc(PythonModel):
    """Packed image codes from a rebuilt ``HashingMethod`` (eval mode, CPU)."""

    def load_context(self, context: Any) -> None:
        self.method, self.config = load_model_files(
            context.artifacts["state_dict"], context.artifacts["config"]
        )

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """``model_input`` float32[n, 3, S, S] (numpy or torch) -> codes uint8[n, bits // 8]."""
        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        size = self.config.dataset.image_size
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected preprocessed images float32[n, 3, {size}, {size}], got shape {tuple(images.shape)}"
            )
        with torch.inference_mode():
            relaxed = [self.method.encode_image(chunk) for chunk in images.split(BATCH_ROWS)]
        if not relaxed:
            return np.zeros((0, self.config.model.bits // 8), dtype=np.uint8)
        return pack_signs(torch.cat(relaxed).float().numpy())


mlflow.models.set_model(HashingPyfunc())
