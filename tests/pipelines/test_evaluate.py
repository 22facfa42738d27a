"""pipelines/evaluate.py: metrics from the code shards of a model version, logged against the version."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hashing.code_shards import list_parts, load_split, read_part, split_uri, write_part
from hashing.metrics import precision_at_n, retrieval_report
from hashing.mlflow import names
from hashing.mlflow.names import PR_CURVE_PNG, PRECISION_AT_N_PNG
from hashing.mlflow.version_evaluation import VersionEvaluation
from pipelines.evaluate import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(model_registry) -> dict:
    """One model version with code shards, evaluated by ``main``: the model, its codes, the version's tags
    right after the evaluation and what was printed."""
    model = model_registry.register(seed=1)
    codes_uri = model_registry.encode(model)
    with pytest.MonkeyPatch.context() as mp:
        out = io.StringIO()
        mp.setattr("sys.stdout", out)
        code = main(model_registry.args(f"evaluate.version={model.version}"))
    return {"model": model, "codes_uri": codes_uri, "code": code, "tags": model_registry.tags(model),
            "out": out.getvalue()}


def test_metrics_plots_and_version_tags_match_the_code_shards(model_registry, evaluated) -> None:
    model, codes_uri, tags = evaluated["model"], evaluated["codes_uri"], evaluated["tags"]
    assert evaluated["code"] == 0
    config = model_registry.config()
    ev = config.evaluate
    classes = len(model_registry.manifest.classes)
    query = load_split(f"{codes_uri}/query")
    database = load_split(f"{codes_uri}/database")
    q_labels, db_labels = query.multi_hot(classes), database.multi_hot(classes)
    expected = {k.replace("@", "_at_"): v for k, v in retrieval_report(
        query.codes, database.codes, q_labels, db_labels, topk=ev.topk, ndcg_k=ev.ndcg_k,
        radius=ev.radius).items()}
    curve = precision_at_n(query.codes, database.codes, q_labels, db_labels, ev.precision_at)
    expected.update({f"p_at_{n}": p for n, p in zip(ev.precision_at, curve, strict=True)})
    assert set(expected) >= {"map_at_100", "ndcg_at_50", "p_at_r2", "p_at_10", "p_at_100"}

    run = MlflowClient().get_run(tags[names.EVAL_RUN_ID])
    assert run.data.metrics == pytest.approx(expected, abs=1e-12)
    assert run.data.tags["job"] == "evaluate"
    assert run.data.tags["model_name"] == model.name and run.data.tags["model_version"] == str(model.version)
    assert run.data.tags["dataset_fingerprint"] == model_registry.manifest.fingerprint
    assert run.data.params["queries"] == str(len(query)) == "64"
    assert run.data.params["database"] == str(len(database)) == "512"
    for png in (PR_CURVE_PNG, PRECISION_AT_N_PNG):
        path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=png)
        with open(path, "rb") as f:
            assert f.read(8) == PNG_MAGIC, png

    evaluation = VersionEvaluation.from_tags(tags)
    assert evaluation.dataset_fingerprint == model_registry.manifest.fingerprint
    assert evaluation.map_key == "map_at_100"
    assert evaluation.value("map") == expected["map_at_100"]
    assert evaluation.metrics == expected  # exact: tags round-trip floats
    out = evaluated["out"]
    assert f"models:/{model.name}/{model.version}" in out
    assert re.search(rf"map_at_100 +{expected['map_at_100']:.4f}\n", out)


def test_codes_of_another_dataset_version_are_refused(model_registry, caplog) -> None:
    model = model_registry.register(seed=2)
    codes_uri = model_registry.encode(model, splits=("query",))
    # One query part as if encoded before the dataset changed: another source checksum and fingerprint.
    uri = next(iter(list_parts(f"{codes_uri}/query").values()))
    part = read_part(uri)
    write_part(uri, part.keys.tolist(), part.codes, part.labels,
               dataclasses.replace(part.meta, source_sha256="0" * 64, dataset_fingerprint="f" * 64))

    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args(f"evaluate.version={model.version}")) == 2
    message = caplog.text
    assert "query codes" in message and model_registry.manifest.fingerprint[:12] in message
    assert "stale" in message and "pipelines/encode.py" in message
    assert names.EVAL_RUN_ID not in model_registry.tags(model)


def test_codes_written_by_another_version_are_refused(model_registry, evaluated, caplog) -> None:
    first = evaluated["model"]
    second = model_registry.register(seed=4)
    MlflowClient().set_model_version_tag(second.name, str(second.version), names.CODES_URI,
                                         evaluated["codes_uri"])

    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args(f"evaluate.version={second.version}")) == 2
    assert f"written by {first.uri}, not {second.uri}" in caplog.text


def test_a_version_without_codes_or_an_unknown_version_is_a_clear_error(model_registry, caplog) -> None:
    model = model_registry.register(seed=5)
    with caplog.at_level(logging.ERROR):
        assert main(model_registry.args(f"evaluate.version={model.version}")) == 2
        assert "have no code part" in caplog.text and "pipelines/encode.py" in caplog.text
        caplog.clear()
        assert main(model_registry.args("evaluate.version=99")) == 2
        assert "has no version 99" in caplog.text


def test_evaluation_by_alias_uses_the_default_codes_location(model_registry, evaluated) -> None:
    model = evaluated["model"]
    client = MlflowClient()
    client.set_registered_model_alias(model.name, "under-test", str(model.version))
    client.delete_model_version_tag(model.name, str(model.version), names.CODES_URI)
    codes = split_uri(str(model_registry.root / "codes"), model.name, model.version, "query")
    assert list_parts(codes)

    assert main(model_registry.args("evaluate.alias=under-test", "evaluate.plots=false",
                                    "evaluate.topk=null")) == 0
    tags = model_registry.tags(model)
    assert tags[names.EVAL_MAP_KEY] == "map_at_all"
    run = client.get_run(tags[names.EVAL_RUN_ID])
    assert json.loads(run.data.params["precision_at"]) == [10, 50, 100]
    assert not [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
