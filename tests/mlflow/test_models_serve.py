"""``mlflow models serve`` (MLflow's own scoring server) on a registered hashing model answers with the codes
the encode job writes."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hashing.encoding import Encoder
from hashing.mlflow.names import CHALLENGER


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_encoder_codes(logged, services, digits, tmp_path):
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent  # the scoring server runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["tracking_uri"],
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{logged['name']}@{CHALLENGER}",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    images = digits(24).numpy()
    with services.running_service("mlflow models serve", command, f"{url}/ping", tmp_path / "serve.log",
                                  timeout_s=180, env=env):
        body = json.dumps({"inputs": images.tolist()}).encode()
        request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    expected = Encoder(logged["method"], logged["config"].dataset.image_size).encode_images(images)
    assert len(np.unique(expected, axis=0)) > 1
    assert np.array_equal(np.asarray(answer["predictions"], dtype=np.uint8), expected)
