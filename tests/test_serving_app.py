"""hashing/serving_app.py without a running service: how the code parts are split over partitions, and
the args of ``app_builder`` (the Serve import path of infra/rayservice.yaml)."""

from __future__ import annotations

import pickle

import pytest

from hashing.errors import InputError
from hashing.serving_app import (
    DEFAULT_CPUS,
    MAX_UPLOAD_BYTES,
    PARTITION_SHIFT,
    AppArgs,
    ServicePlan,
    parse_app_args,
    split_contiguous,
)


@pytest.mark.parametrize(("size", "n"), [(1, 1), (4, 2), (5, 2), (16, 3), (7, 7)])
def test_split_contiguous_keeps_order_and_balances(size: int, n: int) -> None:
    items = list(range(size))
    groups = split_contiguous(items, n)
    assert len(groups) == n
    assert [x for g in groups for x in g] == items  # contiguous runs, in order: merge order = database order
    assert all(groups) and max(map(len, groups)) - min(map(len, groups)) <= 1


@pytest.mark.parametrize("n", [0, -1, 5])
def test_split_contiguous_refuses_more_partitions_than_parts(n: int) -> None:
    with pytest.raises(InputError, match=r"partitions must be in \[1, 4\]"):
        split_contiguous([1, 2, 3, 4], n)


def test_plan_travels_to_replicas_and_global_ids_keep_partition_order() -> None:
    plan = ServicePlan(model_name="m", model_version=3, model_uri="models:/m/3", codes_uri="/c",
                       split="database", partitions=[[("database/shard-000000.tar", "ab")]], classes=["a"],
                       tracking_uri="sqlite:///x")
    assert pickle.loads(pickle.dumps(plan)) == plan
    # partition p's rows get ids p << PARTITION_SHIFT | row: every row of p sorts before every row of p + 1
    assert (0 << PARTITION_SHIFT) | (2**PARTITION_SHIFT - 1) < (1 << PARTITION_SHIFT) | 0


def test_app_args_parsed_with_defaults() -> None:
    parsed = parse_app_args({"config": "configs/idhn.yaml"})
    assert parsed == AppArgs(config="configs/idhn.yaml", overrides=[], partitions=2,
                             cpus_per_replica=DEFAULT_CPUS, max_upload_bytes=MAX_UPLOAD_BYTES)
    parsed = parse_app_args({"config": "c.yaml", "overrides": ["search.k=5"], "partitions": 3,
                             "cpus_per_replica": 1, "max_upload_bytes": 1024})
    assert (parsed.overrides, parsed.partitions, parsed.cpus_per_replica, parsed.max_upload_bytes) == (
        ["search.k=5"], 3, 1, 1024)


@pytest.mark.parametrize(("args", "message"), [
    ("config.yaml", "must be a mapping"),
    ({}, "`config`"),
    ({"config": "c.yaml", "partition": 2}, r"unknown app args \['partition'\]"),
    ({"config": 3}, "config has the wrong type"),
    ({"config": "c.yaml", "partitions": "2"}, "partitions has the wrong type"),
    ({"config": "c.yaml", "partitions": True}, "partitions has the wrong type"),
    ({"config": "c.yaml", "partitions": 0}, "partitions must be >= 1"),
    ({"config": "c.yaml", "cpus_per_replica": 0}, "cpus_per_replica must be > 0"),
    ({"config": "c.yaml", "max_upload_bytes": 0}, "max_upload_bytes must be >= 1"),
    ({"config": "c.yaml", "overrides": "search.k=5"}, "overrides has the wrong type"),
    ({"config": "c.yaml", "overrides": ["search.k"]}, "key=value strings"),
])
def test_app_args_rejected(args, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_app_args(args)


def test_app_builder_loads_the_config_and_plans_from_args(monkeypatch, tmp_path) -> None:
    """``app_builder`` called the way Serve calls an import path's builder: config + overrides ->
    ``plan_service`` (stubbed: no registry) -> the bound application (``bind`` needs no Ray)."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from hashing import serving_app

    config_path = tmp_path / "c.yaml"
    config_path.write_text("search:\n  k: 7\n")
    seen = {}
    plan = ServicePlan(model_name="m", model_version=3, model_uri="models:/m/3", codes_uri="/c",
                       split="database", partitions=[[("database/shard-000000.tar", "ab")]] * 3, classes=None,
                       tracking_uri="sqlite:///x")

    def plan_service(config, partitions, **options):
        seen.update(k=config.search.k, alias=config.search.alias, partitions=partitions, **options)
        return plan

    monkeypatch.setattr(serving_app, "plan_service", plan_service)
    app = call_user_app_builder_with_args_if_necessary(
        serving_app.app_builder, {"config": str(config_path), "overrides": ["search.alias=candidate"],
                                  "partitions": 3, "cpus_per_replica": 0.5})
    assert isinstance(app, Application)
    assert seen == {"k": 7, "alias": "candidate", "partitions": 3, "num_cpus": 0.5,
                    "max_upload_bytes": MAX_UPLOAD_BYTES}
    with pytest.raises(InputError):
        serving_app.app_builder({"config": str(config_path), "partitions": -1})
