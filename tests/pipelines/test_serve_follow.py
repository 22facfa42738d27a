"""The query service follows the registry (hashing/serving_follow.py) and answers text queries, on a
running Serve app on 127.0.0.1 (2 partitions, 0.25 CPU per replica).

Two DSMHN versions of one registered model (random weights, seeds 7 and 8: different codes): the service
starts on v1 (champion); ``champion`` moves to v2 before v2 is encoded (the service stays on v1), then
v2 is encoded and the follower switches while clients send a steady stream of requests. Every answer
must be exactly ``hashing search``'s for the version it names, and none may fail.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port
from tests.pipelines.serve_client import RequestStream, call, encoded_version, expected_hits, replica_pids

pytestmark = pytest.mark.slow

DSMHN = ("method.name=dsmhn", "method.params.text_hidden=64")
K = 20
KEYS = 6  # query keys whose answers the stream asks for
TEXTS = ["dress, handbag", "Ankle boot bag", "sandal"]


@pytest.fixture(scope="module")
def versions(model_registry) -> dict:
    """v1 (champion, encoded) and v2 (registered as challenger, not encoded yet)."""
    v1 = encoded_version(model_registry, "dsmhn", seed=7)
    v2 = model_registry.register("dsmhn", seed=8, alias="challenger")
    return {"v1": v1, "v2": v2}


@pytest.fixture(scope="module")
def service(model_registry, versions, ray_local) -> Iterator[dict]:
    """v1's partitions in their own codes apps, the Search ingress in front, and its Follower."""
    from ray import serve

    from hashing.serving_app import plan_service, start_service
    from hashing.serving_follow import Follower

    config = model_registry.config(*DSMHN)
    plan = plan_service(config, partitions=2, num_cpus=0.25)
    try:
        url = start_service(plan, host="127.0.0.1", port=free_port(), following=True)
        yield {"url": url, "follower": Follower(config, plan)}
    finally:
        serve.shutdown()


def _paths(model_registry, model) -> list[str]:
    from hashing.code_shards import load_split

    query = load_split(f"{model_registry.root}/codes/{model.name}/v{model.version}/query")
    keys = [str(query.keys[i]) for i in range(0, len(query), len(query) // KEYS)][:KEYS]
    return ([f"/search?key={key}&k={K}" for key in keys]
            + [f"/search/text?q={urllib.parse.quote(text)}&k={K}" for text in TEXTS])


def _expected(model_registry, model, path: str) -> list[dict]:
    """``hashing search``'s answer of ``model`` (pinned by version) to a service request path."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    pinned = (*DSMHN, f"search.version={model.version}")
    if "key" in query:
        return expected_hits(model_registry, K, *pinned, key=query["key"][0])
    return expected_hits(model_registry, K, *pinned, text=query["q"][0])


def _promote(model) -> None:
    MlflowClient().set_registered_model_alias(model.name, "champion", str(model.version))


def test_text_queries_equal_hashing_search_text(model_registry, versions, service) -> None:
    v1 = versions["v1"]
    for text in TEXTS:
        path = f"/search/text?q={urllib.parse.quote(text)}&k={K}"
        status, body = call(service["url"] + path)
        assert status == 200, body
        assert body["version"] == v1.version
        assert body["results"] == _expected(model_registry, v1, path)
        assert len(body["results"]) == K


@pytest.mark.parametrize(("q", "message"), [("", "give tags"),
                                            ("sparkly, shiny", "no tag of the vocabulary")])
def test_text_without_a_known_tag_is_a_400_that_lists_the_tags(service, q: str, message: str) -> None:
    status, body = call(f"{service['url']}/search/text?q={urllib.parse.quote(q)}&k=5")
    assert status == 400
    assert message in body["error"]
    if q:
        assert "dress" in body["error"]  # the tags one could use


def test_champion_moving_to_unencoded_codes_keeps_the_service_on_v1(model_registry, versions, service,
                                                                     caplog) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    follower = service["follower"]
    assert not follower.poll()  # champion unchanged

    _promote(v2)
    model_registry.encode(v2, splits=("query",))  # parts of one split only, and no codes_uri tag yet...
    with caplog.at_level("INFO", logger="serve"):
        assert not follower.poll()
        assert not follower.poll()
    assert follower.plan.model_version == v1.version
    waiting = [r for r in caplog.records if f"v{v2.version}" in r.getMessage()]
    assert len(waiting) == 1, caplog.text  # one line, not one per poll
    assert "codes_uri tag" in waiting[0].getMessage() or "no code part" in waiting[0].getMessage()
    status, body = call(f"{service['url']}/health")
    assert (status, body["version"]) == (200, v1.version)


def test_switch_under_load_drops_nothing_and_every_answer_is_one_versions(model_registry, versions,
                                                                          service) -> None:
    """v2 encoded (tag set) -> the poll during a steady request stream switches; no request fails, each
    answer equals ``hashing search``'s of the version it reports, and answers started after the switch
    are v2's."""
    from ray import serve

    v1, v2 = versions["v1"], versions["v2"]
    model_registry.encode(v2)
    paths = _paths(model_registry, v1)
    expected = {v.version: {p: _expected(model_registry, v, p) for p in paths} for v in (v1, v2)}
    assert all(expected[v1.version][p] != expected[v2.version][p] for p in paths)  # tells them apart

    with RequestStream(service["url"], paths, clients=4) as stream:
        time.sleep(2)
        assert service["follower"].poll()
        switched = time.monotonic()
        time.sleep(2)

    answers = stream.answers
    failed = [(a.path, a.status, a.body) for a in answers if a.status != 200]
    assert not failed, failed[:5]
    wrong = [a.path for a in answers if a.body["results"] != expected[a.body["version"]][a.path]]
    assert not wrong, wrong[:5]
    versions_seen = [a.body["version"] for a in answers]
    assert versions_seen.count(v1.version) > 0 and versions_seen.count(v2.version) > 0
    after = [a.body["version"] for a in answers if a.started > switched]
    assert after and set(after) == {v2.version}
    print(f"\n{len(answers)} requests during the switch: {versions_seen.count(v1.version)} by "
          f"v{v1.version}, {versions_seen.count(v2.version)} by v{v2.version}, none failed")
    apps = set(serve.status().applications)
    assert not any(name.startswith(f"hashing-codes-v{v1.version}-") for name in apps), apps  # old deleted
    status, body = call(f"{service['url']}/health")
    assert (status, body["version"]) == (200, v2.version)


def test_a_restarted_ingress_comes_back_on_the_version_served_now(versions, service) -> None:
    """After the switch the Search app was redeployed with v2's plan: SIGKILL its replica, and the one
    Serve starts instead serves v2 (v1's partitions are gone)."""
    v2 = versions["v2"]
    (victim,) = replica_pids("hashing-search", "Search")
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        try:
            status, body = call(f"{service['url']}/health", timeout=10)
        except OSError:
            status, body = 0, {}
        if status == 200 and replica_pids("hashing-search", "Search") - {victim}:
            break
        assert time.monotonic() < deadline, (status, body)
        time.sleep(0.5)
    assert body["version"] == v2.version
