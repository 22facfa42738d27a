"""The query service on Ray Serve (hashing/serving_app.py) running on 127.0.0.1 with 2 partitions.

One registered IDHN version (alias champion) with code shards (``model_registry``), one Serve app for
the module: its answers by key and by image equal ``hashing search``'s (same keys, distances, labels,
order), and bad requests get 4xx with a message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.pipelines.serve_client import call, encoded_version, expected_hits

pytestmark = pytest.mark.slow

UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def champion(model_registry):
    """An IDHN version with alias champion and its query + database code shards."""
    return encoded_version(model_registry)


@pytest.fixture(scope="module")
def service(model_registry, champion, ray_local) -> Iterator[dict]:
    """The champion's Serve app on a free port of 127.0.0.1, 2 partitions, 0.25 CPU per replica."""
    from ray import serve

    from hashing.serving_app import plan_service, start_service

    model = champion
    config = model_registry.config()
    plan = plan_service(config, partitions=2, max_upload_bytes=UPLOAD_LIMIT, num_cpus=0.25)
    try:
        url = start_service(plan, host="127.0.0.1", port=free_port())
        yield {"url": url, "model": model, "plan": plan}
    finally:
        serve.shutdown()


def _database(model_registry, service, split: str = "database"):
    """The split's codes as the service's version wrote them."""
    return _codes(model_registry, service["model"], split)


def _codes(model_registry, model, split: str = "database"):
    from hashing.code_shards import load_split

    return load_split(f"{model_registry.root}/codes/{model.name}/v{model.version}/{split}")


def test_health_names_the_champion_and_two_partitions_of_the_database(model_registry, service) -> None:
    status, body = call(f"{service['url']}/health")
    assert status == 200
    assert (body["model"], body["version"]) == (service["model"].name, service["model"].version)
    assert [p["partition"] for p in body["partitions"]] == [0, 1]
    shards = model_registry.manifest.split("database").shards
    assert sum(p["parts"] for p in body["partitions"]) == len(shards)
    assert body["size"] == len(_database(model_registry, service)) > 0


@pytest.mark.parametrize(("split", "row", "k"), [("database", 5, 1), ("database", 300, 20),
                                                  ("query", 3, 50), ("query", 10, 1000)])
def test_key_answers_equal_hashing_search(model_registry, service, split, row, k) -> None:
    key = str(_database(model_registry, service, split).keys[row])

    status, body = call(f"{service['url']}/search?key={key}&k={k}")

    assert status == 200, body
    assert (body["model"], body["version"]) == (service["model"].name, service["model"].version)
    expected = expected_hits(model_registry, k, key=key)
    assert body["results"] == expected  # same keys, distances, labels, order (ties in database order)
    assert len(body["results"]) == min(k, len(_database(model_registry, service)))


def test_image_upload_is_encoded_by_the_served_version(model_registry, service, tmp_path: Path) -> None:
    shard = model_registry.manifest.split("database").shards[2]
    with tarfile.open(f"{model_registry.dataset_uri}/{shard.path}") as tar:
        name = next(n for n in tar.getnames() if n.endswith(".png"))
        data = tar.extractfile(name).read()
    (tmp_path / "item.png").write_bytes(data)

    size = len(_database(model_registry, service))  # every item: the upload's own is among them

    status, body = call(f"{service['url']}/search/image?k={size}", data)

    assert status == 200, body
    assert body["results"] == expected_hits(model_registry, size, image=str(tmp_path / "item.png"))
    found = {r["key"]: r["distance"] for r in body["results"]}
    assert found[name.removesuffix(".png")] == 0  # encoded to its stored code, by the served version


def test_bad_requests_get_4xx_with_a_message(service) -> None:
    url = service["url"]
    cases = {
        "not an image": (f"{url}/search/image?k=5", b"this is not an image", 400),
        "oversized upload": (f"{url}/search/image?k=5", b"\x89PNG" + b"\0" * UPLOAD_LIMIT, 413),
        "unknown key": (f"{url}/search?key=no-such-key&k=5", None, 404),
        "text on an image-only model": (f"{url}/search/text?q=dress&k=5", None, 400),
        "k = 0": (f"{url}/search?key=anything&k=0", None, 400),
        "k too large": (f"{url}/search?key=anything&k=1000001", None, 400),
        "k not a number": (f"{url}/search?key=anything&k=ten", None, 400),
    }
    for what, (target, data, expected) in cases.items():
        status, body = call(target, data)
        assert status == expected, (what, status, body)
        assert body["error"], what
    _, body = call(f"{url}/search?key=no-such-key&k=5")
    assert "no-such-key" in body["error"]
    _, body = call(f"{url}/search?key=x&k=0")
    assert "k must be" in body["error"]
    _, body = call(f"{url}/search/text?q=dress&k=5")
    assert "has no text network" in body["error"] and "dsmhn" in body["error"]  # how to fix it


def test_hashing_serve_command_serves_until_interrupted(model_registry, champion, tmp_path: Path) -> None:
    """``hashing serve`` in its own process (its own local Ray, beside the tests' one): prints the URL,
    answers, and on Ctrl-C (SIGINT) shuts Serve and its Ray down and exits 0."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "hashing", "serve", *model_registry.args("ray.num_cpus=2"),
               "--port", str(port), "--partitions", "2", "--duration", "120"]
    with open(log_path, "wb") as log:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never the tests' Ray
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)
    try:
        deadline = time.monotonic() + 120
        while f"at http://127.0.0.1:{port}" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        key = str(_codes(model_registry, champion, "query").keys[0])
        status, body = call(f"http://127.0.0.1:{port}/search?key={key}&k=7")
        assert status == 200, body
        assert body["results"] == expected_hits(model_registry, 7, key=key)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
