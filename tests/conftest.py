"""Shared fixtures: real services started by the tests, and a tiny ingested dataset.

- ``services`` (session): ``free_port()``, ``running_service(...)`` (a context manager running a
  server process until its URL answers, stopping its process group after) and ``stop_process_group``,
  for the fixtures of other test files (MLflow server, Ray head).
- ``s3_endpoint`` (session): a ``moto_server`` process on 127.0.0.1 (free port); yields its URL.
  Creates no buckets and sets no environment.
- ``s3_env`` (function): sets the ``AWS_*`` variables (endpoint, dummy credentials, region) for one
  test via ``monkeypatch``; yields the endpoint URL.
- ``s3_bucket`` (function): a fresh empty bucket on that endpoint; yields ``s3://NAME``.
- ``tiny_dataset`` (session): the built-in ``tiny`` preset (seed 0, 32 samples per shard) ingested
  into a temporary folder; yields the dataset root (a local path string). Treat it as read-only.
- ``ray_local`` (session): a new local instance, ``ray.init(address="local", num_cpus=4)`` (logical
  CPUs: 2-core machines need the headroom), no dashboard, quiet logs, Ray Data progress bars off;
  shut down after. Its workers get the moto dummy credentials (``s3_env``'s) in their environment:
  Ray workers resolve S3 credentials themselves, and the S3 tests set theirs after ``ray.init``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# pipelines/ is a folder of job scripts, not an installed package: let tests `import pipelines.ingest`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_SHARD_SIZE = 32


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(name: str, command: list[str], ready_url: str, log_path: Path, timeout_s: float = 60,
                    **popen: Any) -> Iterator[None]:
    """Run ``command`` (its own process group, output to ``log_path``) until ``ready_url`` answers; stop
    the whole group after (SIGTERM, then SIGKILL after 30 s). A process that exits or never answers
    raises with the end of its log."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                **popen)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer on {ready_url} within {timeout_s} s: "
                                       f"{log_path.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM ``proc``'s process group (started with ``start_new_session=True``), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def services() -> SimpleNamespace:
    """``free_port``, ``running_service`` and ``stop_process_group`` for fixtures and tests in other files."""
    return SimpleNamespace(free_port=free_port, running_service=running_service,
                           stop_process_group=stop_process_group)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server started for the session (``http://127.0.0.1:PORT``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with running_service("moto_server", command, url + "/moto-api/", log, timeout_s=30):
        yield url


# moto accepts any credentials: these dummy ones are no secret.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_REGION": "us-east-1",
                    "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS environment at ``s3_endpoint`` for one test; returns the endpoint URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    for name, value in MOTO_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
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
    from hashing.data.ingest import ingest
    from hashing.data.sources import builtin_source

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
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": MOTO_CREDENTIALS})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous
