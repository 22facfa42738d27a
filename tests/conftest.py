"""Shared fixtures: real services started by the tests, and a tiny ingested dataset.

- ``s3_endpoint`` (session): a ``moto_server`` process on 127.0.0.1 (free port); yields its URL.
  Creates no buckets and sets no environment.
- ``s3_env`` (function): sets the ``AWS_*`` variables (endpoint, dummy credentials, region) for one
  test via ``monkeypatch``; yields the endpoint URL.
- ``s3_bucket`` (function): a fresh empty bucket on that endpoint; yields ``s3://NAME``.
- ``tiny_dataset`` (session): the built-in ``tiny`` preset (seed 0, 32 samples per shard) ingested
  into a temporary folder; yields the dataset root (a local path string). Treat it as read-only.
- ``ray_local`` (session): a new local instance, ``ray.init(address="local", num_cpus=4)`` (logical
  CPUs: 2-core machines need the headroom), no dashboard, quiet logs, Ray Data progress bars off;
  shut down after.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# pipelines/ is a folder of job scripts, not an installed package: let tests `import pipelines.ingest`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_SHARD_SIZE = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server started for the session (``http://127.0.0.1:PORT``)."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read()[-2000:]!r}")
                try:
                    with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not answer on {url} within 30 s") from None
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS environment at ``s3_endpoint`` for one test; returns the endpoint URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    missing = str(REPO / ".no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env: str) -> str:
    """A new empty bucket on the moto endpoint; returns ``s3://NAME``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root folder of the built-in ``tiny`` dataset (seed 0), ingested once per session."""
    from pipelines.ingest import builtin_source, ingest

    root = str(tmp_path_factory.mktemp("tiny") / "builtin-tiny")
    classes, tags, total, records = builtin_source("tiny", seed=0)
    ingest(root, records, name="builtin-tiny", classes=classes, tags=tags, total=total,
           shard_size=TINY_SHARD_SIZE, progress=False)
    return root


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray instance for the session (4 logical CPUs, no dashboard, no usage stats)."""
    import ray
    import ray.data

    previous = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # address="local": always a fresh instance, never a cluster another process started on this machine.
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous
