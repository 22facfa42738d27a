"""hashing/serving_app.py and hashing/serving_follow.py without a running service: how the code parts are
split over partitions, the args of ``app_builder`` (the Serve import path of infra/rayservice.yaml), a
failed partition's 503, the version switch's drain, and the follower waiting for complete codes."""

from __future__ import annotations

import asyncio
import json
import pickle
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from hashing.code_shards import CodeShardError
from hashing.errors import InputError
from hashing.serving_app import (
    DEFAULT_CPUS,
    MAX_UPLOAD_BYTES,
    PARTITION_SHIFT,
    RETRY_AFTER_S,
    AppArgs,
    ServiceError,
    ServicePlan,
    VersionBundle,
    codes_app_names,
    fan_out,
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
                             "cpus_per_replica": 1, "max_upload_bytes": 1024, "partition_replicas": 2})
    assert (parsed.overrides, parsed.partitions, parsed.cpus_per_replica, parsed.max_upload_bytes,
            parsed.partition_replicas) == (["search.k=5"], 3, 1, 1024, 2)


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
    ({"config": "c.yaml", "partition_replicas": 0}, "partition_replicas must be >= 1"),
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
                    "max_upload_bytes": MAX_UPLOAD_BYTES, "partition_replicas": 1}
    with pytest.raises(InputError):
        serving_app.app_builder({"config": str(config_path), "partitions": -1})


# --- following the registry, failed partitions (no Ray: fake partition handles) ---------------------------

def _plan(version: int = 3, partitions: int = 2) -> ServicePlan:
    return ServicePlan(model_name="m", model_version=version, model_uri=f"models:/m/{version}",
                       codes_uri="/c", split="database", classes=None, tracking_uri="sqlite:///x",
                       partitions=[[("database/shard-000000.tar", "ab")]] * partitions)


class _Method:
    """A fake partition method: ``remote`` gives an awaitable of ``answer`` (raised if an exception)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def remote(self, *args):
        async def result():
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer
        return result()


class _Partition:
    def __init__(self, answer) -> None:
        self.info = _Method(answer)


def test_codes_apps_are_named_by_version_and_partition() -> None:
    assert codes_app_names(_plan(version=4, partitions=3)) == [
        "hashing-codes-v4-p0", "hashing-codes-v4-p1", "hashing-codes-v4-p2"]


def test_a_failed_partition_is_a_503_with_retry_after_not_a_merge_of_the_others() -> None:
    from ray.exceptions import ActorDiedError

    ok = VersionBundle(_plan(), encoder=None, partitions=[_Partition({"size": 1})] * 2, other_codes={})
    assert asyncio.run(fan_out(ok, "info")) == [{"size": 1}, {"size": 1}]

    broken = VersionBundle(_plan(), encoder=None, other_codes={},
                           partitions=[_Partition({"size": 1}), _Partition(ActorDiedError())])
    with pytest.raises(ServiceError) as failed:
        asyncio.run(fan_out(broken, "info"))
    assert failed.value.status == 503
    assert "partition 1 of m v3" in str(failed.value) and "retry" in str(failed.value)
    response = failed.value.response()
    assert response.status_code == 503 and response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert json.loads(response.body) == {"error": str(failed.value)}


def test_switch_swaps_the_bundle_and_returns_only_when_the_old_ones_requests_are_done(monkeypatch) -> None:
    """``Search.switch`` on a stand-in replica: new requests see the new bundle at once, the call waits
    for the request still running on the old one."""
    from hashing import serving_app

    old = VersionBundle(_plan(version=1), encoder=None, partitions=[], other_codes={})
    new = VersionBundle(_plan(version=2), encoder=None, partitions=[], other_codes={})
    switch = serving_app.Search.func_or_class.switch
    # serve.ingress keeps a cloudpickled copy of the class: its methods see a copy of the module's globals
    monkeypatch.setitem(switch.__globals__, "load_bundle", lambda plan, partitions: new)
    monkeypatch.setitem(switch.__globals__, "partition_handles", lambda plan: [])
    replica = SimpleNamespace(bundle=old)
    events = []

    async def request_on_old_bundle() -> None:
        with replica.bundle.serving():
            await asyncio.sleep(0.2)
            events.append(("old request done", replica.bundle.plan.model_version))

    async def scenario() -> dict:
        running = asyncio.create_task(request_on_old_bundle())
        await asyncio.sleep(0.05)
        result = await switch(replica, asdict(new.plan))
        events.append(("switched", old.in_flight))
        await running
        return result

    result = asyncio.run(scenario())
    assert result == {"version": 2, "previous": 1, "drained": 1}
    assert events == [("old request done", 2), ("switched", 0)]  # the swap came first, the return after
    assert replica.bundle is new


def test_follower_keeps_serving_and_says_why_once_while_codes_are_incomplete(monkeypatch, caplog) -> None:
    from hashing import serving_follow

    def plan_service(config, partitions, split, encoded_only, **options):
        assert (partitions, split, encoded_only) == (2, "database", True)
        raise CodeShardError("models:/m/4 has no codes_uri tag yet: its encode has not finished")

    monkeypatch.setattr(serving_follow, "plan_service", plan_service)
    monkeypatch.setattr(serving_follow, "deploy_codes", lambda plan: pytest.fail("nothing to deploy"))
    follower = serving_follow.Follower(config=None, plan=_plan(version=3))
    with caplog.at_level("INFO", logger="serve"):
        assert not follower.poll()
        assert not follower.poll()
    assert follower.plan.model_version == 3
    assert [r.getMessage() for r in caplog.records] == [
        "keeping models:/m/3: models:/m/4 has no codes_uri tag yet: its encode has not finished"]


def test_follower_removes_a_new_version_that_fails_to_deploy_and_keeps_the_old(monkeypatch, caplog) -> None:
    from hashing import serving_follow

    new = _plan(version=4)
    deleted = []
    monkeypatch.setattr(serving_follow, "plan_service", lambda *args, **kwargs: new)

    def deploy_codes(plan):
        raise RuntimeError("Deploying app 'hashing-codes-v4-p0' failed")

    monkeypatch.setattr(serving_follow, "deploy_codes", deploy_codes)
    monkeypatch.setattr(serving_follow.serve, "delete", deleted.append)
    follower = serving_follow.Follower(config=None, plan=_plan(version=3))
    with caplog.at_level("INFO", logger="serve"):
        assert not follower.poll()
    assert follower.plan.model_version == 3
    assert deleted == ["hashing-codes-v4-p0", "hashing-codes-v4-p1"]  # the new version's, never the old's
    assert "keeping models:/m/3: v4 failed to deploy (Deploying app" in caplog.text


def test_a_bug_in_a_request_is_a_500_json_without_the_traceback() -> None:
    """The ingress's handler for unexpected exceptions, on a FastAPI app of its own."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from hashing.serving_app import internal_error

    app = FastAPI()
    app.add_exception_handler(Exception, internal_error)

    @app.get("/bug")
    async def bug() -> None:
        raise KeyError("secret internals")

    response = TestClient(app, raise_server_exceptions=False).get("/bug")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (KeyError); see the service's log"}
