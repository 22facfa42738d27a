"""hashing.mlflow.logged_model: the logged model works with MLflow's own loader and in a fresh environment.

A logged model round-trips bit for bit without pickle; ``mlflow.pyfunc.load_model`` gives the codes the
encode job writes (``hashing.encoding.Encoder``); a process without this package installed loads it
from the model's ``code/`` folder and imports nothing beyond ``requirements.txt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hashing.codes import pack_signs
from hashing.encoding import Encoder
from hashing.errors import InputError
from hashing.methods import build_method
from hashing.mlflow.logged_model import PIP_REQUIREMENTS, load_hashing_model
from hashing.mlflow.names import CHALLENGER
from hashing.mlflow.pyfunc import HashingPyfunc
from hashing.models import build_backbone


def _reference_codes(method, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return pack_signs(method.encode_image(images).numpy())


def test_load_by_alias_gives_identical_codes(logged, digits):
    method, config = load_hashing_model(f"models:/{logged['name']}@{CHALLENGER}")
    assert config == logged["config"]
    assert config.method.params["alpha"] == 0.2
    assert not method.training
    images = digits(40)
    assert np.array_equal(_reference_codes(method, images), _reference_codes(logged["method"], images))
    for key, value in logged["method"].state_dict().items():
        assert torch.equal(method.state_dict()[key], value), key
    # The check is sensitive to buffers: the same weights with fresh BatchNorm statistics code differently.
    torch.manual_seed(0)
    fresh = build_method("idhn", backbone=build_backbone("small_cnn"), bits=16, num_classes=10).eval()
    assert not np.array_equal(_reference_codes(fresh, images), _reference_codes(logged["method"], images))


def test_pyfunc_predict_gives_the_encoder_codes(logged, digits):
    images = digits(40).numpy()
    model = mlflow.pyfunc.load_model(f"models:/{logged['name']}@{CHALLENGER}")
    codes = model.predict(images)
    expected = Encoder(logged["method"], logged["config"].dataset.image_size).encode_images(images)
    assert codes.dtype == np.uint8
    assert codes.shape == (40, 2)
    assert len(np.unique(expected, axis=0)) > 1
    assert np.array_equal(codes, expected)
    unwrapped = model.unwrap_python_model()
    assert isinstance(unwrapped, HashingPyfunc)
    assert unwrapped.config == logged["config"]
    with pytest.raises(MlflowException, match=r"does not match expected shape \(-1, 3, 32, 32\)"):
        model.predict(images[:, 0])  # the signature is enforced


def test_model_directory_has_code_example_requirements_and_no_pickles(logged, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged["model_uri"],
                                                     dst_path=str(tmp_path)))
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert {"artifacts/state_dict.safetensors", "artifacts/config.json", "model_code.py",
            "code/hashing/mlflow/pyfunc.py", "code/hashing/encoding.py"} <= set(names)
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pt", ".pth", ".cloudpickle", ".pyc"))]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    # models from code: the model class comes from the copied source, not a pickled instance
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert flavor["code"] == "code"
    example = np.asarray(json.loads((local / "input_example.json").read_text()))
    assert example.shape == (1, 3, 32, 32)
    assert example.min() == -1.0 and example.max() == 1.0
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == [f"mlflow=={mlflow.__version__}", *PIP_REQUIREMENTS]
    document = json.loads((local / "artifacts" / "config.json").read_text())
    assert document["model_meta"]["num_classes"] == 10
    assert document["model_meta"]["tag_vocab_size"] == 0
    assert document["model_meta"]["dataset"] == "tiny"


def test_load_rejects_a_model_that_is_not_a_hashing_model(logged, tmp_path):
    code = tmp_path / "echo_model.py"
    code.write_text("import mlflow\n\n\nclass Echo(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input: list[str], params=None) -> list[str]:\n"
                    "        return model_input\n\n\n"
                    "mlflow.models.set_model(Echo())\n")
    with mlflow.start_run(experiment_id=logged["experiment_id"]):
        info = mlflow.pyfunc.log_model(name="echo", python_model=str(code), pip_requirements=[])
    with pytest.raises(InputError, match=r"is not a hashing model \(its pyfunc model is Echo"):
        load_hashing_model(info.model_uri)


# Run in a fresh interpreter: no installed ``hashing`` (the editable install's finders dropped), so the
# model must bring it; prints what it imported besides the standard library.
FRESH_LOAD = r"""
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
sys.path_importer_cache.clear()
installed = importlib.util.find_spec("hashing") is not None
import mlflow.pyfunc
import numpy as np
before = set(sys.modules)
model = mlflow.pyfunc.load_model(sys.argv[1])
codes = model.predict(np.zeros((2, 3, 32, 32), np.float32))
import hashing
new = {name.split(".")[0] for name in set(sys.modules) - before} - set(sys.stdlib_module_names)
print(json.dumps({"installed": installed, "hashing": hashing.__file__, "shape": list(codes.shape),
                  "modules": sorted(new)}))
"""


def _closure(distribution: str) -> set[str]:
    """``distribution`` and everything it requires (without extras), canonical names."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_a_fresh_environment_loads_it_from_its_code_folder_with_its_requirements(logged, tmp_path):
    local = mlflow.artifacts.download_artifacts(artifact_uri=logged["model_uri"], dst_path=str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", FRESH_LOAD, local], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["installed"] is False
    assert Path(report["hashing"]).is_relative_to(Path(local, "code", "hashing"))
    assert report["shape"] == [2, 2]
    distributions = packages_distributions()
    imported = {canonicalize_name(d) for module in report["modules"] if module != "hashing"  # in code/
                for d in distributions.get(module, [])}
    listed = {canonicalize_name(Requirement(r).name) for r in PIP_REQUIREMENTS}
    assert {"torch", "safetensors"} <= imported
    assert imported - listed - _closure("mlflow") == set()
