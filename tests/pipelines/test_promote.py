"""pipelines/promote.py: champion moves to the challenger only when its evaluation beats the champion's.

The decision tests record evaluations as ``pipelines/evaluate.py`` does (a finished evaluate run, and the
``eval_*`` tags naming it, ``hashing.mlflow.version_evaluation.VersionEvaluation``) with chosen values;
the last test runs register -> encode -> evaluate -> promote against a real ``mlflow server`` process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from hashing.mlflow import names
from hashing.mlflow.names import CHALLENGER, CHAMPION
from hashing.mlflow.registry import ResolvedModel, resolve_model
from hashing.mlflow.version_evaluation import VersionEvaluation, verified_evaluation
from pipelines import evaluate, promote

FINGERPRINT = "a" * 64
OTHER_FINGERPRINT = "b" * 64


def _evaluated(model: ResolvedModel, map_value: float, fingerprint: str = FINGERPRINT,
               map_key: str = "map_at_100") -> VersionEvaluation:
    """Record an evaluation of ``model`` with mAP ``map_value`` as ``pipelines/evaluate.py`` does: a finished
    evaluate run (tags naming the version and dataset, the metrics) and the version's ``eval_*`` tags."""
    metrics = {map_key: map_value, "ndcg_at_50": map_value / 2}
    with mlflow.start_run() as run:
        mlflow.set_tags({"job": "evaluate", "model_name": model.name, "model_version": str(model.version),
                         "dataset": "tiny", "dataset_fingerprint": fingerprint})
        mlflow.log_metrics(metrics)
    evaluation = VersionEvaluation("tiny", fingerprint, run.info.run_id, map_key, metrics)
    _tag(model, evaluation.to_tags())
    return evaluation


def _tag(model: ResolvedModel, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model.name, str(model.version), key, value)


def _pair(model_registry, name: str, champion_map: float | None, challenger_map: float | None,
          champion_fingerprint: str = FINGERPRINT) -> tuple[ResolvedModel, ResolvedModel]:
    """v1 = champion, v2 = challenger of ``name``, each evaluated unless its mAP is None."""
    champion = model_registry.register(name=name, seed=11, alias=CHAMPION)
    challenger = model_registry.register(name=name, seed=12, alias=CHALLENGER)
    if champion_map is not None:
        _evaluated(champion, champion_map, champion_fingerprint)
    if challenger_map is not None:
        _evaluated(challenger, challenger_map)
    return champion, challenger


def _champion_version(name: str) -> int:
    return resolve_model(name, alias=CHAMPION).version


def _recorded(model_registry, model: ResolvedModel) -> dict | None:
    """The promotion JSON recorded on ``model`` (None if none), checked against its decision tag and run."""
    tags = model_registry.tags(model)
    if names.PROMOTION not in tags:
        assert names.PROMOTION_DECISION not in tags
        return None
    record = json.loads(tags[names.PROMOTION])
    assert tags[names.PROMOTION_DECISION] == record["decision"]
    run = MlflowClient().get_run(record["run_id"])
    assert run.data.tags["job"] == "promote" and run.data.tags["model_version"] == str(model.version)
    assert run.data.tags[names.PROMOTION_DECISION] == record["decision"]
    return record


def test_first_champion_needs_only_an_evaluation(model_registry, capsys) -> None:
    model = model_registry.register(name="first", seed=10)
    _evaluated(model, 0.3)

    assert promote.main(model_registry.args("promote.model=first")) == 0

    assert _champion_version("first") == model.version
    record = _recorded(model_registry, model)
    assert record["decision"] == "promoted" and record["champion_version"] is None
    assert record["metric"] == "map_at_100" and record["challenger_value"] == 0.3
    assert "no champion yet" in record["reasons"][0]
    assert "decision:   promoted" in capsys.readouterr().out


def test_challenger_better_by_more_than_the_margin_is_promoted(model_registry) -> None:
    champion, challenger = _pair(model_registry, "better", champion_map=0.50, challenger_map=0.56)

    assert promote.main(model_registry.args("promote.model=better", "promote.margin=0.05")) == 0

    assert _champion_version("better") == challenger.version
    record = _recorded(model_registry, challenger)
    assert record["decision"] == "promoted"
    assert (record["champion_version"], record["champion_value"], record["margin"]) == (champion.version, 0.5,
                                                                                        0.05)
    assert record["dataset_fingerprint"] == FINGERPRINT


@pytest.mark.parametrize(("margin", "metric"), [(0.1, "map"), (0.0, "ndcg_at_50")])
def test_challenger_not_better_by_the_margin_keeps_the_champion(model_registry, margin, metric) -> None:
    name = f"not-better-{metric}"
    champion_map = 0.60 if metric == "ndcg_at_50" else 0.50
    champion, challenger = _pair(model_registry, name, champion_map=champion_map, challenger_map=0.56)

    assert promote.main(model_registry.args(f"promote.model={name}", f"promote.margin={margin}",
                                            f"promote.metric={metric}")) == 0

    assert _champion_version(name) == champion.version
    record = _recorded(model_registry, challenger)
    assert record["decision"] == "kept" and "does not beat the champion" in record["reasons"][0]
    assert record["metric"] == ("map_at_100" if metric == "map" else metric)


def test_evaluations_on_different_datasets_are_not_compared(model_registry) -> None:
    champion, challenger = _pair(model_registry, "other-data", champion_map=0.1, challenger_map=0.9,
                                 champion_fingerprint=OTHER_FINGERPRINT)

    assert promote.main(model_registry.args("promote.model=other-data")) == 0

    assert _champion_version("other-data") == champion.version
    record = _recorded(model_registry, challenger)
    assert record["decision"] == "kept" and "evaluated on different datasets" in record["reasons"][0]
    assert record["champion_value"] is None


def test_champion_evaluated_with_another_topk_is_not_compared(model_registry) -> None:
    champion, challenger = _pair(model_registry, "other-topk", champion_map=None, challenger_map=0.9)
    _evaluated(champion, 0.1, map_key="map_at_1000")

    assert promote.main(model_registry.args("promote.model=other-topk")) == 0

    assert _champion_version("other-topk") == champion.version
    assert "has no map_at_100" in _recorded(model_registry, challenger)["reasons"][0]


def test_unevaluated_or_missing_challenger_is_bad_input(model_registry, caplog) -> None:
    champion, challenger = _pair(model_registry, "unevaluated", champion_map=0.5, challenger_map=None)

    with caplog.at_level(logging.ERROR):
        assert promote.main(model_registry.args("promote.model=unevaluated")) == 2
        assert f"models:/unevaluated/{challenger.version} has not been evaluated" in caplog.text
        caplog.clear()
        assert promote.main(model_registry.args("promote.model=no-such-model")) == 2
        assert "no registered model 'no-such-model'" in caplog.text

    assert _champion_version("unevaluated") == champion.version
    assert _recorded(model_registry, challenger) is None


def test_forged_evaluation_tags_do_not_move_the_champion(model_registry, caplog) -> None:
    """Issue 14 row 14: metrics come from the evaluation run the tags name, checked, not from the tags."""
    champion, challenger = _pair(model_registry, "hashing-idhn-forged", 0.5, None)
    champion_run = verified_evaluation(champion).run_id
    forged = VersionEvaluation("tiny", FINGERPRINT, "0" * 32, "map_at_100", {"map_at_100": 0.99})
    cases = [(forged.to_tags(), "does not exist on this tracking server"),  # no such run
             ({**forged.to_tags(), names.EVAL_RUN_ID: champion_run}, "model_version='1' (expected '2')")]
    for tags, reason in cases:
        _tag(challenger, tags)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert promote.main(model_registry.args("promote.model=hashing-idhn-forged")) == 2
        assert reason in caplog.text and "not" in caplog.text
        assert _champion_version("hashing-idhn-forged") == champion.version

    real = _evaluated(challenger, 0.3)  # a real, worse evaluation, then its tags edited upwards
    _tag(challenger, {names.EVAL_MAP: "0.99", f"{names.EVAL_METRIC_PREFIX}map_at_100": "0.99"})
    decision = promote.run_promote(model_registry.config("promote.model=hashing-idhn-forged"))
    assert decision.decision == promote.KEPT
    assert decision.challenger_value == real.metrics["map_at_100"] == 0.3
    assert _champion_version("hashing-idhn-forged") == champion.version

    _tag(champion, forged.to_tags())  # a champion whose evaluation does not hold up is not compared
    _evaluated(challenger, 0.3)
    with caplog.at_level(logging.WARNING):
        decision = promote.run_promote(model_registry.config("promote.model=hashing-idhn-forged"))
    assert decision.decision == promote.KEPT and "champion evaluation not usable" in caplog.text


def test_dry_run_decides_but_moves_and_records_nothing(model_registry, capsys) -> None:
    champion, challenger = _pair(model_registry, "dry", champion_map=0.2, challenger_map=0.8)

    assert promote.main(model_registry.args("promote.model=dry", "--dry-run")) == 0

    assert "decision:   promoted (dry run: nothing changed)" in capsys.readouterr().out
    assert _champion_version("dry") == champion.version
    assert _recorded(model_registry, challenger) is None
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.job = 'promote'",
                              output_format="list")
    assert not [r for r in runs if r.data.tags.get("model_name") == "dry"]


@pytest.fixture
def mlflow_server(tmp_path: Path, services) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, proxied artifacts, one worker) on 127.0.0.1; its URL."""
    port = services.free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
               str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
               "--artifacts-destination", str(tmp_path / "artifacts")]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true")
    with services.running_service("mlflow server", command, f"{url}/health", tmp_path / "server.log",
                                  timeout_s=90, env=env, cwd=tmp_path):
        yield url


@pytest.mark.slow
def test_evaluate_then_promote_through_a_tracking_server(mlflow_server, model_registry_at) -> None:
    reg = model_registry_at(mlflow_server)
    first = reg.register(seed=21)
    reg.encode(first)
    assert evaluate.main(reg.args(f"evaluate.version={first.version}")) == 0
    assert promote.main(reg.args()) == 0
    assert _champion_version(first.name) == first.version

    second = reg.register(seed=22)
    reg.encode(second)
    assert evaluate.main(reg.args(f"evaluate.version={second.version}")) == 0
    maps = [VersionEvaluation.from_tags(reg.tags(m)).value("map") for m in (first, second)]
    assert maps[0] != maps[1]
    assert promote.main(reg.args()) == 0

    winner = second if maps[1] > maps[0] else first
    assert _champion_version(first.name) == winner.version
    record = json.loads(reg.tags(second)[names.PROMOTION])
    assert (record["challenger_value"], record["champion_value"]) == (maps[1], maps[0])
    assert record["decision"] == ("promoted" if winner is second else "kept")
    assert MlflowClient().tracking_uri == mlflow_server
