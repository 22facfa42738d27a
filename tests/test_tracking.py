"""hashing.tracking: a logged model round-trips through the registry bit for bit, without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from hashing import tracking
from hashing.codes import pack_signs
from hashing.config import config_to_dict, flatten, load_config, validate_config
from hashing.methods import build_method
from hashing.models import build_backbone

SIZE = 32
BITS = 16
DATASET = "tiny"
NAME = tracking.registered_model_name("idhn", DATASET)


def _digits(n: int) -> torch.Tensor:
    """Real images: scikit-learn's 8x8 digits, scaled to [-1, 1], upsampled to 3 x SIZE x SIZE."""
    digits = torch.as_tensor(load_digits().images[:n], dtype=torch.float32) / 8.0 - 1.0
    images = torch.nn.functional.interpolate(digits[:, None], size=(SIZE, SIZE), mode="bilinear")
    return images.expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A trained-looking IDHN (non-trivial BatchNorm statistics) logged, registered, aliased challenger."""
    root = tmp_path_factory.mktemp("tracking")
    config = load_config(
        None,
        [
            f"run.root={root}",
            "model.backbone=small_cnn",
            f"model.bits={BITS}",
            f"dataset.image_size={SIZE}",
            "method.params.alpha=0.2",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        # setup_tracking / set_experiment export env vars and set MLflow globals: restore them afterwards.
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        uri = tracking.setup_tracking(config)
        experiment_id = tracking.set_experiment(config, DATASET)
        torch.manual_seed(0)
        method = build_method(
            "idhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=10, **config.method.params
        )
        with torch.no_grad():  # move BatchNorm running statistics away from their initial 0 / 1
            method.train()
            for _ in range(3):
                method.encode_image(_digits(64) * 3 + 1)
        method.eval()
        with mlflow.start_run() as run:
            tracking.log_config(config)
            model_uri = tracking.log_hashing_model(method, config, extra={"dataset": DATASET})
        version = tracking.register_model(model_uri, NAME, tags={tracking.TAG_DATASET: DATASET})
        yield {
            "root": root,
            "config": config,
            "tracking_uri": uri,
            "experiment_id": experiment_id,
            "method": method,
            "run_id": run.info.run_id,
            "model_uri": model_uri,
            "version": version,
        }


def _reference_codes(method) -> np.ndarray:
    with torch.no_grad():
        relaxed = method.encode_image(_digits(40)).numpy()
    return pack_signs(relaxed)


def test_default_tracking_uri_is_sqlite_in_run_root(logged):
    assert logged["tracking_uri"] == f"sqlite:///{logged['root']}/mlflow.db"
    assert (Path(logged["root"]) / "mlflow.db").is_file()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    config = load_config(None, [f"run.root={tmp_path}", "model.backbone=small_cnn"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(config) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(config) == "http://127.0.0.1:5999"
    config.tracking.uri = "http://mlflow:5000"
    assert tracking.tracking_uri(config) == "http://mlflow:5000"
    assert tracking.tracking_env(config)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_setup_tracking_does_not_pin_the_next_config(logged, tmp_path):
    """A second config in the same process (another test, a notebook) gets its own default database."""
    other = load_config(None, [f"run.root={tmp_path}", "model.backbone=small_cnn"])
    assert tracking.tracking_uri(other) == f"sqlite:///{tmp_path}/mlflow.db"


def test_experiment_per_dataset_with_artifacts_under_run_root(logged):
    experiment = mlflow.get_experiment(logged["experiment_id"])
    assert experiment.name == "hashing-tiny"
    assert experiment.artifact_location == (Path(logged["root"]) / "mlartifacts").as_uri()


def test_register_sets_challenger_alias(logged):
    assert NAME == "hashing-idhn-tiny"
    assert logged["version"] == 1
    found = MlflowClient().get_model_version_by_alias(NAME, tracking.CHALLENGER)
    assert int(found.version) == 1
    assert found.tags[tracking.TAG_DATASET] == DATASET


def test_load_by_alias_gives_identical_codes(logged):
    method, config = tracking.load_hashing_model(f"models:/{NAME}@{tracking.CHALLENGER}")
    assert config == logged["config"]
    assert config.method.params["alpha"] == 0.2
    assert not method.training
    assert np.array_equal(_reference_codes(method), _reference_codes(logged["method"]))
    for key, value in logged["method"].state_dict().items():
        assert torch.equal(method.state_dict()[key], value), key
    # The check is sensitive to buffers: the same weights with fresh BatchNorm statistics code differently.
    torch.manual_seed(0)
    fresh = build_method("idhn", backbone=build_backbone("small_cnn"), bits=BITS, num_classes=10).eval()
    assert not np.array_equal(_reference_codes(fresh), _reference_codes(logged["method"]))


def test_pyfunc_predict_gives_identical_packed_codes(logged):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{tracking.CHALLENGER}")
    codes = model.predict(_digits(40).numpy())
    assert codes.dtype == np.uint8
    assert codes.shape == (40, BITS // 8)
    assert np.array_equal(codes, _reference_codes(logged["method"]))


def test_model_directory_has_no_pickles(logged, tmp_path):
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=logged["model_uri"], dst_path=str(tmp_path))
    )
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert "artifacts/state_dict.safetensors" in names
    assert "artifacts/config.json" in names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pt", ".pth", ".cloudpickle"))], names
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    # models from code: the model class comes from the copied source file, not a pickled instance
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "serving.py" in names
    document = json.loads((local / "artifacts" / "config.json").read_text())
    assert document["model_meta"]["num_classes"] == 10
    assert document["model_meta"]["tag_vocab_size"] == 0
    assert document["model_meta"]["dataset"] == DATASET


def test_logged_config_and_params(logged, tmp_path):
    run = mlflow.get_run(logged["run_id"])
    expected = flatten(config_to_dict(logged["config"]))
    assert run.data.params["method.params.alpha"] == "0.2"
    assert run.data.params["train.epochs"] == str(expected["train.epochs"])
    assert set(run.data.params) == set(expected)
    text = Path(
        mlflow.artifacts.download_artifacts(run_id=logged["run_id"], artifact_path="config.yaml")
    ).read_text()
    assert validate_config(yaml.safe_load(text)) == logged["config"]


def test_log_png(logged):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    with mlflow.start_run(experiment_id=logged["experiment_id"]) as run:
        tracking.log_png(figure, "plots/pr_curve.png")
    plt.close(figure)
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="plots/pr_curve.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\.png"):
        tracking.log_png(figure, "plots/pr_curve.jpg")


def test_resolve_model_pins_versions(logged):
    by_alias = tracking.resolve_model(NAME, alias=tracking.CHALLENGER)
    assert (by_alias.uri, by_alias.version, by_alias.run_id) == (f"models:/{NAME}/1", 1, logged["run_id"])
    assert tracking.resolve_model(f"models:/{NAME}@challenger") == by_alias
    assert tracking.resolve_model(f"models:/{NAME}/1", alias=None) == by_alias
    assert tracking.resolve_model(logged["model_uri"]).uri == logged["model_uri"]
    ref = logged["config"].encode.model_copy(update={"alias": tracking.CHALLENGER})
    assert tracking.resolve_section_model(ref, "idhn", DATASET) == by_alias
    with pytest.raises(LookupError, match=r"no alias @champion; versions: \[1\]; aliases: @challenger=v1"):
        tracking.resolve_model(NAME, alias=tracking.CHAMPION)
    with pytest.raises(LookupError, match="no version 7"):
        tracking.resolve_model(NAME, version=7)
    with pytest.raises(LookupError, match="no registered model 'hashing-idhn-other'"):
        tracking.resolve_model("hashing-idhn-other")


def test_second_registration_moves_challenger(logged):
    with mlflow.start_run(experiment_id=logged["experiment_id"]):
        uri = tracking.log_hashing_model(logged["method"], logged["config"])
    assert tracking.register_model(uri, NAME) == 2
    assert tracking.resolve_model(NAME, alias=tracking.CHALLENGER).version == 2
    assert tracking.resolve_model(NAME, version=1).uri == f"models:/{NAME}/1"


def test_save_model_files_rejects_mismatch(logged, tmp_path):
    config = logged["config"].model_copy(deep=True)
    config.model.bits = 32
    with pytest.raises(ValueError, match="16 bits but config model.bits is 32"):
        tracking.save_model_files(logged["method"], config, tmp_path)
    with pytest.raises(TypeError, match="unwrap DDP"):
        tracking.save_model_files(torch.nn.Linear(2, 2), logged["config"], tmp_path)


def test_load_rejects_weights_of_another_shape(logged, tmp_path):
    files = tracking.save_model_files(logged["method"], logged["config"], tmp_path)
    document = json.loads(Path(files["config"]).read_text())
    document["model_meta"]["num_classes"] = 10
    document["config"]["model"]["bits"] = 32
    Path(files["config"]).write_text(json.dumps(document))
    with pytest.raises(ValueError, match="does not fit method 'idhn'"):
        tracking.load_model_files(files["state_dict"], files["config"])
