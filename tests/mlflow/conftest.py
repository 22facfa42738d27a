"""Fixtures of the hashing.mlflow tests: one small trained-looking model, logged and registered.

- ``digits`` (session): ``digits(n)`` real images float32[n, 3, 32, 32]: scikit-learn's 8x8 digits scaled
  to [-1, 1] and upsampled.
- ``logged`` (module): an IDHN (small CNN, 16 bits, non-trivial BatchNorm statistics) logged in a run,
  registered as ``hashing-idhn-tiny`` v1 with alias ``challenger``, with MLflow on a sqlite file in a
  fresh run root. A dict: ``root``, ``config``, ``tracking_uri``, ``experiment_id``, ``method``,
  ``run_id``, ``model_uri``, ``name``, ``version``. MLflow's process-wide state is restored after the module.
"""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import pytest
import torch
from sklearn.datasets import load_digits

from hashing.config import load_config
from hashing.methods import build_method
from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.names import TAG_DATASET, registered_model_name
from hashing.mlflow.registry import register_model
from hashing.mlflow.runs import log_config, set_experiment, setup_tracking
from hashing.models import build_backbone

SIZE = 32
BITS = 16
DATASET = "tiny"
NAME = registered_model_name("idhn", DATASET)


def _digits(n: int) -> torch.Tensor:
    images = torch.as_tensor(load_digits().images[:n], dtype=torch.float32) / 8.0 - 1.0
    images = torch.nn.functional.interpolate(images[:, None], size=(SIZE, SIZE), mode="bilinear")
    return images.expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="session")
def digits() -> Callable[[int], torch.Tensor]:
    """``digits(n)``: the first ``n`` digits as float32[n, 3, SIZE, SIZE] in [-1, 1]."""
    return _digits


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A trained-looking IDHN logged, registered and aliased challenger (see the module docstring)."""
    root = tmp_path_factory.mktemp("tracking")
    config = load_config(None, [f"run.root={root}", "model.backbone=small_cnn", f"model.bits={BITS}",
                                f"dataset.image_size={SIZE}", "method.params.alpha=0.2"])
    with pytest.MonkeyPatch.context() as mp:
        # setup_tracking / set_experiment export env vars and set MLflow globals: restore them afterwards.
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        uri = setup_tracking(config)
        experiment_id = set_experiment(config, DATASET)
        torch.manual_seed(0)
        method = build_method("idhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=10,
                              **config.method.params)
        with torch.no_grad():  # move BatchNorm running statistics away from their initial 0 / 1
            method.train()
            for _ in range(3):
                method.encode_image(_digits(64) * 3 + 1)
        method.eval()
        with mlflow.start_run() as run:
            log_config(config)
            model_uri = log_hashing_model(method, config, extra={"dataset": DATASET})
        version = register_model(model_uri, NAME, tags={TAG_DATASET: DATASET})
        yield {"root": root, "config": config, "tracking_uri": uri, "experiment_id": experiment_id,
               "method": method, "run_id": run.info.run_id, "model_uri": model_uri, "name": NAME,
               "version": version}
