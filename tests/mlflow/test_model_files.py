"""hashing.mlflow.model_files: a method as safetensors + config.json and back, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hashing.codes import pack_signs
from hashing.config import load_config
from hashing.errors import InputError
from hashing.methods import from_config
from hashing.mlflow.model_files import load_model_files, save_model_files


def test_round_trip_honours_the_configured_backbone(tmp_path, digits):
    """The rebuilt method is the one the config describes: ``model.spatial_grid`` included."""
    config = load_config(None, [f"run.root={tmp_path}", "model.backbone=small_cnn", "model.bits=16",
                                "dataset.image_size=32", "model.spatial_grid=2"])
    method = from_config(config, num_classes=10, tag_vocab_size=0, pretrained=False).eval()
    files = save_model_files(method, config, tmp_path / "model")
    loaded, loaded_config = load_model_files(files["state_dict"], files["config"])
    assert loaded_config == config
    assert loaded.backbone.spatial_grid == 2
    with torch.no_grad():
        assert np.array_equal(pack_signs(loaded.encode_image(digits(8)).numpy()),
                              pack_signs(method.encode_image(digits(8)).numpy()))


def test_save_model_files_rejects_mismatch(logged, tmp_path):
    config = logged["config"].model_copy(deep=True)
    config.model.bits = 32
    with pytest.raises(ValueError, match="16 bits but config model.bits is 32"):
        save_model_files(logged["method"], config, tmp_path)
    with pytest.raises(TypeError, match="unwrap DDP"):
        save_model_files(torch.nn.Linear(2, 2), logged["config"], tmp_path)


def test_load_rejects_weights_of_another_shape(logged, tmp_path):
    files = save_model_files(logged["method"], logged["config"], tmp_path)
    document = json.loads(Path(files["config"]).read_text())
    document["config"]["model"]["bits"] = 32
    Path(files["config"]).write_text(json.dumps(document))
    with pytest.raises(InputError, match="does not fit method 'idhn'"):
        load_model_files(files["state_dict"], files["config"])


def test_load_rejects_a_file_of_another_format(logged, tmp_path):
    files = save_model_files(logged["method"], logged["config"], tmp_path)
    document = json.loads(Path(files["config"]).read_text())
    document["format_version"] = 99
    Path(files["config"]).write_text(json.dumps(document))
    with pytest.raises(InputError, match=r"config\.json: not a hashing-model v1 file .*format_version=99"):
        load_model_files(files["state_dict"], files["config"])
