"""hashing.storage on a local folder and on a real S3 endpoint (moto_server)."""

from __future__ import annotations

import logging
import os
import pickle
import socket

import boto3
import botocore.exceptions
import pyarrow.fs as pafs
import pytest

from hashing import storage
from hashing.config import load_config


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 3)
    monkeypatch.setattr(storage, "RETRY_INITIAL_WAIT_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_WAIT_S", 0.02)


def _roundtrip(root: str) -> None:
    a, b = storage.join(root, "x", "a.bin"), storage.join(root, "x/y/", "/b.json")
    assert not storage.exists(a)
    assert storage.list_files(storage.join(root, "x")) == []
    storage.write_bytes(a, b"\x00\x01" * 1000)
    storage.write_bytes(b, b"{}")
    storage.write_bytes(a, b"new")  # overwrite
    assert storage.read_bytes(a) == b"new"
    assert storage.read_bytes(b) == b"{}"
    assert storage.exists(a) and storage.exists(storage.join(root, "x"))
    assert storage.list_files(storage.join(root, "x")) == [a, storage.join(root, "x/y/b.json")]
    with storage.open_input(b) as f:
        assert f.read(1) == b"{" and f.read() == b"}"
    storage.delete(a)
    storage.delete(a)  # deleting what is gone is not an error
    assert not storage.exists(a)
    with pytest.raises(FileNotFoundError, match="a.bin"):
        storage.read_bytes(a)
    with pytest.raises(FileNotFoundError, match="a.bin"):
        storage.open_input(a)


def test_join_and_scheme() -> None:
    assert storage.join("s3://b/p/", "train", "shard-000000.tar") == "s3://b/p/train/shard-000000.tar"
    assert storage.join("/data", "/x/") == "/data/x/"
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/s3://x")
    fs, path = storage.filesystem("file:///tmp/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == "/tmp/x"
    with pytest.raises(ValueError, match="s3://bucket/key"):
        storage.filesystem("s3://")


def test_local_roundtrip(tmp_path) -> None:
    _roundtrip(str(tmp_path / "root"))
    assert not [p for p in (tmp_path / "root").rglob("*") if p.name.startswith(".tmp-")]


def test_local_failed_write_keeps_old_content(tmp_path) -> None:
    uri = str(tmp_path / "f.bin")
    storage.write_bytes(uri, b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(uri, "not bytes")  # fails inside the write
    assert storage.read_bytes(uri) == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


def test_put_file_local(tmp_path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    dst = str(tmp_path / "out" / "dst.bin")
    storage.put_file(str(src), dst)
    assert storage.read_bytes(dst) == src.read_bytes() and src.exists()


def test_put_file_local_failure_keeps_old_content(tmp_path) -> None:
    dst = str(tmp_path / "dst.bin")
    storage.write_bytes(dst, b"old")
    with pytest.raises(FileNotFoundError):
        storage.put_file(str(tmp_path / "missing.bin"), dst)  # fails after the temporary file exists
    assert storage.read_bytes(dst) == b"old"
    assert os.listdir(tmp_path) == ["dst.bin"]  # no temporary file left behind


def test_s3_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    s = storage.s3_settings()
    assert s == storage.S3Settings("http://127.0.0.1:9", "eu-west-3")
    assert s.pyarrow_kwargs() == {"region": "eu-west-3", "endpoint_override": "127.0.0.1:9", "scheme": "http"}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.org")
    assert storage.s3_settings().endpoint == "https://s3.example.org"
    assert storage.s3_settings("minio:9000").pyarrow_kwargs()["scheme"] == "https"


def test_s3_roundtrip(s3_bucket: str) -> None:
    _roundtrip(storage.join(s3_bucket, "prefix"))


def test_s3_put_file_multipart(s3_bucket: str, tmp_path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 << 20))  # above boto3's 8 MiB multipart threshold
    uri = storage.join(s3_bucket, "big.bin")
    storage.put_file(str(src), uri)
    assert storage.read_bytes(uri) == src.read_bytes()


def test_s3_non_transient_error_is_not_retried(s3_env: str, fast_retries, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hashing.storage"), \
            pytest.raises(botocore.exceptions.ClientError, match="NoSuchBucket"):
        storage.write_bytes("s3://no-such-bucket/k", b"x")
    assert "retrying" not in caplog.text


def test_s3_unreachable_endpoint_is_retried_then_raises(s3_env: str, fast_retries, caplog,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # boto3's own retries off: count ours
    with caplog.at_level(logging.WARNING, logger="hashing.storage"), \
            pytest.raises(storage.StorageUnavailableError,
                          match=f"S3 endpoint http://127.0.0.1:{port} did not answer after 3 "
                                "attempts") as exc:
        storage.write_bytes("s3://bucket/k", b"x")
    assert isinstance(exc.value.__cause__, botocore.exceptions.EndpointConnectionError)
    assert caplog.text.count("retrying") == storage.RETRY_ATTEMPTS - 1


def test_ray_filesystem_carries_no_credentials(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = storage.join(s3_bucket, "obj")
    storage.write_bytes(uri, b"payload")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "driver-only-secret-0123")
    fs, path = storage.ray_filesystem(uri)
    assert path == uri.removeprefix("s3://")
    pickled = pickle.dumps(fs)
    assert b"driver-only-secret-0123" not in pickled and b"testing" not in pickled
    # A worker resolves its own credentials (here: its environment), and the endpoint travels with the object.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with pickle.loads(pickled).open_input_stream(path) as f:
        assert f.read() == b"payload"


def test_ray_filesystem_without_credentials_is_a_clear_error(s3_env: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    with pytest.raises(PermissionError, match="no AWS credentials found for 's3://b/x'"):
        storage.ray_filesystem("s3://b/x")


def _fail_upload_parts(monkeypatch: pytest.MonkeyPatch, error: Exception, times: int) -> dict:
    """Make the first ``times`` UploadPart requests of storage's boto3 clients raise ``error``."""
    state = {"failed": 0}

    def fail(**_: object) -> None:
        if state["failed"] < times:
            state["failed"] += 1
            raise error

    def client(endpoint: str | None = None):
        settings = storage.s3_settings(endpoint)  # a fresh client: storage's own are cached
        c = boto3.session.Session().client("s3", endpoint_url=settings.endpoint, region_name=settings.region)
        c.meta.events.register("before-send.s3.UploadPart", fail)
        return c

    monkeypatch.setattr(storage, "_s3_client", client)
    return state


def test_s3_failed_multipart_upload_leaves_no_object(s3_bucket: str, tmp_path, monkeypatch) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 << 20))
    uri = storage.join(s3_bucket, "half.bin")
    state = _fail_upload_parts(monkeypatch, RuntimeError("disk on fire"), times=100)
    with pytest.raises(Exception, match="disk on fire"):
        storage.put_file(str(src), uri)
    assert state["failed"] >= 1
    assert not storage.exists(uri)
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    assert client.list_multipart_uploads(Bucket=s3_bucket.removeprefix("s3://")).get("Uploads", []) == []


def test_s3_transient_upload_failure_is_retried(s3_bucket: str, tmp_path, monkeypatch, fast_retries) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 << 20))
    uri = storage.join(s3_bucket, "retried.bin")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    error = botocore.exceptions.ConnectionClosedError(endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    state = _fail_upload_parts(monkeypatch, error, times=1)
    storage.put_file(str(src), uri)
    assert state["failed"] == 1
    assert storage.read_bytes(uri) == src.read_bytes()


@pytest.fixture
def no_endpoint_env(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3_bucket`` with no endpoint variable left in the environment (credentials stay); returns the bucket.

    Each variable is set before it is deleted so that monkeypatch also undoes what ``use_s3_endpoint`` sets.
    """
    for var in storage.ENDPOINT_ENV:
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a request that goes astray fails fast
    return s3_bucket


def test_config_s3_endpoint_reaches_the_store(no_endpoint_env: str, s3_endpoint: str, fast_retries) -> None:
    uri = storage.join(no_endpoint_env, "cfg/obj.bin")
    storage.use_s3_endpoint(load_config(None).storage.s3_endpoint)  # no storage.s3_endpoint: AWS, not moto
    assert storage.s3_settings().endpoint is None
    assert "amazonaws.com" in storage._s3_client().meta.endpoint_url
    assert "endpoint_override" not in storage.s3_settings().pyarrow_kwargs()

    config = load_config(None, [f"storage.s3_endpoint={s3_endpoint}"])
    storage.use_s3_endpoint(config.storage.s3_endpoint)
    storage.write_bytes(uri, b"payload")
    assert storage.read_bytes(uri) == b"payload"
    assert storage.list_files(storage.join(no_endpoint_env, "cfg")) == [uri]
    moto = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    assert moto.get_object(Bucket=no_endpoint_env.removeprefix("s3://"),
                           Key="cfg/obj.bin")["Body"].read() == b"payload"
    assert os.environ["AWS_ENDPOINT_URL_S3"] == os.environ["MLFLOW_S3_ENDPOINT_URL"] == s3_endpoint


def test_config_s3_endpoint_wins_over_the_environment(no_endpoint_env: str, s3_endpoint: str, fast_retries,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://artifacts.example.org:9000")
    uri = storage.join(no_endpoint_env, "obj")
    with pytest.raises(storage.StorageUnavailableError, match=dead):
        storage.write_bytes(uri, b"x")
    storage.use_s3_endpoint(s3_endpoint)
    storage.write_bytes(uri, b"x")
    assert storage.read_bytes(uri) == b"x"
    # set by the user: kept
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://artifacts.example.org:9000"
