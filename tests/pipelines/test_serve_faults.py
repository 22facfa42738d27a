"""A partition replica SIGKILLed while clients send requests (hashing/serving_app.py on 127.0.0.1).

No answer may be wrong: a request whose partition failed gets 503 ``{"error": ...}`` with a
``Retry-After`` (never a merge of the other partitions, never a traceback page); Serve restarts the
replica, and the answers after that are exact again. The error rate is printed for 1 and 2 replicas per
partition (with 2, the other replica keeps the partition answering).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.pipelines.serve_client import RequestStream, call, encoded_version, expected_hits, replica_pids

pytestmark = pytest.mark.slow

K = 10
KEYS = 8
CLIENTS = 4
RECOVERY_TIMEOUT_S = 120
# Of the whole stream (from before the kill until after recovery) at most the requests in flight at the
# kill may fail (later ones wait for a replica), and at most this share.
MAX_ERROR_RATE = 0.1


@pytest.fixture(scope="module")
def champion(model_registry):
    """An IDHN version with alias champion and its query + database code shards."""
    return encoded_version(model_registry)


@pytest.fixture(scope="module")
def expected(model_registry, champion) -> dict[str, list[dict]]:
    """Request path -> ``hashing search``'s answer, for query keys across the split."""
    from hashing.code_shards import load_split

    query = load_split(f"{model_registry.root}/codes/{champion.name}/v{champion.version}/query")
    keys = [str(query.keys[i]) for i in range(0, len(query), len(query) // KEYS)][:KEYS]
    return {f"/search?key={key}&k={K}": expected_hits(model_registry, K, key=key) for key in keys}


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-replicas")
def service(request, model_registry, champion, ray_local) -> Iterator[dict]:
    """The champion pinned, 2 partitions of ``request.param`` replicas each."""
    from ray import serve

    from hashing.serving_app import plan_service, start_service

    plan = plan_service(model_registry.config(), partitions=2, num_cpus=0.1, partition_replicas=request.param)
    try:
        yield {"url": start_service(plan, host="127.0.0.1", port=free_port()), "replicas": request.param}
    finally:
        serve.shutdown()


def _healthy(replicas: int, killed: int) -> bool:
    from ray import serve

    pids = replica_pids("hashing-search", "Partition0")
    app = serve.status().applications["hashing-search"]
    return (killed not in pids and len(pids) == replicas
            and app.deployments["Partition0"].status == "HEALTHY")


def test_killed_partition_replica_gives_503s_never_wrong_answers(service, expected) -> None:
    paths = list(expected)
    with RequestStream(service["url"], paths, clients=CLIENTS, timeout=60) as stream:
        time.sleep(2)
        victim = min(replica_pids("hashing-search", "Partition0"))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while not _healthy(service["replicas"], victim):
            assert time.monotonic() - killed < RECOVERY_TIMEOUT_S, "Serve did not restart the replica"
            time.sleep(0.5)
        recovered = time.monotonic()
        time.sleep(2)

    answers = stream.answers
    errors = [a for a in answers if a.status != 200]
    assert all(a.status == 503 and "retry" in a.body["error"] for a in errors), \
        [(a.status, a.body) for a in errors if a.status != 503][:5]
    wrong = [a.path for a in answers if a.status == 200 and a.body["results"] != expected[a.path]]
    assert not wrong, wrong[:5]
    after = [a for a in answers if a.started > recovered]
    assert after and all(a.status == 200 for a in after)
    rate = len(errors) / len(answers)
    slowest = max(a.ended - a.started for a in answers)
    print(f"\n{service['replicas']} replica(s) per partition: {len(errors)} of {len(answers)} requests "
          f"answered 503 ({rate:.1%}); replica restarted after {recovered - killed:.1f} s; slowest request "
          f"{slowest:.1f} s")
    assert len(errors) <= CLIENTS and rate <= MAX_ERROR_RATE
    for path in paths:  # after recovery: exact, for every key
        status, body = call(service["url"] + path)
        assert (status, body["results"]) == (200, expected[path])
