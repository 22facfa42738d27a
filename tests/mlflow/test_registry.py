"""hashing.mlflow.registry: registering moves the alias, names / aliases / URIs pin to versions."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hashing.mlflow.logged_model import log_hashing_model
from hashing.mlflow.names import CHALLENGER, CHAMPION, TAG_DATASET
from hashing.mlflow.registry import register_model, resolve_model, resolve_section_model


def test_register_sets_challenger_alias(logged):
    assert logged["name"] == "hashing-idhn-tiny"
    assert logged["version"] == 1
    found = MlflowClient().get_model_version_by_alias(logged["name"], CHALLENGER)
    assert int(found.version) == 1
    assert found.tags[TAG_DATASET] == "tiny"


def test_resolve_model_pins_versions(logged):
    name = logged["name"]
    by_alias = resolve_model(name, alias=CHALLENGER)
    assert (by_alias.uri, by_alias.version, by_alias.run_id) == (f"models:/{name}/1", 1, logged["run_id"])
    assert resolve_model(f"models:/{name}@challenger") == by_alias
    assert resolve_model(f"models:/{name}/1", alias=None) == by_alias
    assert resolve_model(logged["model_uri"]).uri == logged["model_uri"]
    ref = logged["config"].encode.model_copy(update={"alias": CHALLENGER})
    assert resolve_section_model(ref, "idhn", "tiny") == by_alias
    with pytest.raises(LookupError, match=r"no alias @champion; versions: \[1\]; aliases: @challenger=v1"):
        resolve_model(name, alias=CHAMPION)
    with pytest.raises(LookupError, match="no version 7"):
        resolve_model(name, version=7)
    with pytest.raises(LookupError, match="no registered model 'hashing-idhn-other'"):
        resolve_model("hashing-idhn-other")


def test_second_registration_moves_challenger(logged, capfd):
    name = logged["name"]
    with mlflow.start_run(experiment_id=logged["experiment_id"]):
        uri = log_hashing_model(logged["method"], logged["config"])
    capfd.readouterr()
    assert register_model(uri, name) == 2
    printed = capfd.readouterr()
    assert "Created version" not in printed.out + printed.err  # MLflow's own lines held back (issue 15)
    assert resolve_model(name, alias=CHALLENGER).version == 2
    assert resolve_model(name, version=1).uri == f"models:/{name}/1"
