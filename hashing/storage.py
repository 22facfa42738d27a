"""Local folders and ``s3://`` URIs in one place: read, write (whole objects only), list, delete.

A URI is either a local path (``/data/ds``, ``runs/ds`` or ``file:///data/ds``) or ``s3://bucket/key``.

S3 settings come from the environment (a job's ``storage.s3_endpoint`` config key is exported there
first, by ``use_s3_endpoint``):

- endpoint: the ``endpoint`` argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (for
  S3-compatible stores such as MinIO or moto; ``http://`` endpoints get ``scheme="http"``);
- region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else the AWS config file, else ``us-east-1``;
- credentials: the standard AWS chain (environment, ``~/.aws`` files, instance metadata). They are
  never logged.

Reads, listing and deletes go through ``pyarrow.fs.S3FileSystem``. S3 writes go through boto3: a
single PUT, or a managed multipart upload that is aborted on failure, so an object is either whole
or absent (pyarrow's output stream completes a multipart upload on close, even after an error).
Local writes go to a temporary file in the target folder, then ``os.replace``. Transient S3 errors
(connection failures, timeouts, 5xx, throttling) are retried with exponential backoff and jitter; one
that outlasts the retries raises ``StorageUnavailableError`` naming the endpoint.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import tenacity

from hashing.errors import InputError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)

S3_PREFIX = "s3://"
DEFAULT_REGION = "us-east-1"

# Retry policy for S3 calls (module constants so tests and tools can tighten them).
RETRY_ATTEMPTS = 5
RETRY_INITIAL_WAIT_S = 0.5
RETRY_MAX_WAIT_S = 8.0

_TRANSIENT_MESSAGE = re.compile(
    r"NETWORK_CONNECTION|curlCode|connect|timed? ?out|timeout|reset by peer|broken pipe|"
    r"SlowDown|Throttl|ServiceUnavailable|Service Unavailable|InternalError|INTERNAL_FAILURE|"
    r"HTTP response code 5\d\d|\b50[0234]\b",
    re.IGNORECASE,
)
_TRANSIENT_S3_CODES = {
    "500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown",
    "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
}

T = TypeVar("T")


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return uri.startswith(S3_PREFIX)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or ``s3://`` URI with ``/`` (no normalisation of ``..``)."""
    out = uri
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


@dataclass(frozen=True)
class S3Settings:
    """Where S3 requests go. ``endpoint`` is a full URL (``http://127.0.0.1:9000``) or None for AWS."""

    endpoint: str | None
    region: str

    def pyarrow_kwargs(self) -> dict:
        """``endpoint_override``/``scheme``/``region`` keyword arguments for ``pyarrow.fs.S3FileSystem``."""
        kwargs: dict = {"region": self.region}
        if self.endpoint:
            scheme, _, host = self.endpoint.partition("://")
            if not host:
                scheme, host = "https", self.endpoint
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        return kwargs


# The S3 endpoint variables (never credentials): what other processes need to reach the same store.
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def use_s3_endpoint(endpoint: str | None) -> None:
    """Make ``endpoint`` (a job's ``storage.s3_endpoint``) the S3 endpoint of this process and of every
    process it starts afterwards; None changes nothing (the environment decides, else AWS).

    The config wins over the environment: ``AWS_ENDPOINT_URL_S3`` is set in ``os.environ`` (it comes
    before ``AWS_ENDPOINT_URL`` for ``s3_settings`` and boto3 alike), so this module, boto3, child
    processes and the workers of a local Ray instance started later all use it. ``MLFLOW_S3_ENDPOINT_URL``
    (MLflow's S3 artifact store) is set too unless it is already set. Workers of a Ray cluster this
    process connects to get these variables through ``hashing.ray_session.init_ray``. Call it once,
    right after the config is parsed, before any S3 access and before Ray starts.
    """
    if not endpoint:
        return
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", endpoint)


def endpoint_env() -> dict[str, str]:
    """The S3 endpoint variables (``ENDPOINT_ENV``) set in this process; never credentials."""
    return {name: os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)}


def s3_settings(endpoint: str | None = None) -> S3Settings:
    """Resolve the S3 endpoint and region from ``endpoint`` and the environment (see module docstring)."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        import boto3

        region = boto3.session.Session().region_name or DEFAULT_REGION
    return S3Settings(endpoint=endpoint or None, region=region)


def _split_local(uri: str) -> str:
    return os.path.abspath(uri.removeprefix("file://"))


def _s3_path(uri: str) -> str:
    path = uri[len(S3_PREFIX):].rstrip("/")
    if not path or path.startswith("/"):
        raise InputError(f"invalid S3 URI {uri!r}: expected s3://bucket/key")
    return path


def filesystem(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(pyarrow filesystem, path within it)`` for ``uri``.

    S3 paths come back as ``bucket/key``; local paths as absolute paths. S3 credentials are resolved
    by pyarrow from the standard AWS chain (and refreshed when they are temporary).
    """
    if is_s3(uri):
        return pafs.S3FileSystem(**s3_settings(endpoint).pyarrow_kwargs()), _s3_path(uri)
    return pafs.LocalFileSystem(), _split_local(uri)


def ray_filesystem(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``filesystem`` for Ray workers: pass it as ``filesystem=`` to ``ray.data.read_*`` (or as Ray
    Train's ``storage_filesystem``) with the returned path(s).

    The pickled S3 filesystem carries the driver's endpoint and region but no credentials: each worker
    resolves its own from the standard AWS chain (its environment, its pod's Secret or role), so no
    secret travels in task arguments or reaches spilled objects, and temporary credentials are
    refreshed where they are used. Workers of a local Ray started by the job inherit the driver's
    environment; a cluster's workers need their own (``infra/``). The driver checks that it has
    credentials at all, so a missing setup fails here with a message, not in a worker with a 403.
    """
    if not is_s3(uri):
        return filesystem(uri)
    import boto3

    if boto3.session.Session().get_credentials() is None:
        raise PermissionError(
            f"no AWS credentials found for {uri!r}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE / ~/.aws/credentials) in the environment"
        )
    return filesystem(uri, endpoint)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    try:
        import botocore.exceptions as bexc
    except ImportError:  # pragma: no cover - boto3 is a dependency
        bexc = None
    if bexc is not None:
        if isinstance(exc, bexc.ClientError):
            return str(exc.response.get("Error", {}).get("Code")) in _TRANSIENT_S3_CODES
        if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError)):
            return True
    return isinstance(exc, OSError) and bool(_TRANSIENT_MESSAGE.search(str(exc)))


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("transient storage error (attempt %d/%d), retrying: %s",
                state.attempt_number, RETRY_ATTEMPTS, exc)


class StorageUnavailableError(UnavailableError):
    """The S3 store did not answer (connection failures, timeouts, 5xx) through every retry."""


def _retry(fn: Callable[[], T]) -> T:
    """Call ``fn`` with the module's S3 retry policy; non-transient errors propagate at once.

    Raises ``StorageUnavailableError`` naming the endpoint when a transient error outlasts the retries.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
        wait=tenacity.wait_exponential_jitter(initial=RETRY_INITIAL_WAIT_S, max=RETRY_MAX_WAIT_S),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as exc:
        if not _is_transient(exc):
            raise
        endpoint = s3_settings().endpoint or "AWS S3"
        raise StorageUnavailableError(
            f"S3 endpoint {endpoint} did not answer after {RETRY_ATTEMPTS} attempts "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _not_found(uri: str, exc: BaseException) -> NotFoundError:
    return NotFoundError(f"{uri!r} does not exist ({exc})")


def read_bytes(uri: str) -> bytes:
    """The whole content of the file or object at ``uri``. Raises FileNotFoundError naming ``uri``."""
    fs, path = filesystem(uri)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    try:
        return _retry(read) if is_s3(uri) else read()
    except FileNotFoundError as exc:
        raise _not_found(uri, exc) from exc


def open_input(uri: str) -> pa.NativeFile:
    """A readable binary stream (``read(n)``; use as a context manager). Opening is retried on S3."""
    fs, path = filesystem(uri)
    try:
        return _retry(lambda: fs.open_input_stream(path)) if is_s3(uri) else fs.open_input_stream(path)
    except FileNotFoundError as exc:
        raise _not_found(uri, exc) from exc


# Environment variables that change which credentials / retry settings a boto3 client uses.
_CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


def _s3_client(endpoint: str | None = None):
    """A boto3 S3 client (cached: creating one costs ~0.2 s) for the current settings and environment."""
    settings = s3_settings(endpoint)
    env = hashlib.sha256(repr([os.environ.get(v) for v in _CLIENT_ENV]).encode()).hexdigest()
    return _cached_client(settings, env)


@functools.lru_cache(maxsize=8)
def _cached_client(settings: S3Settings, env_digest: str):
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=settings.endpoint, region_name=settings.region)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` as a whole: readers see the old content, or all of the new one."""
    if is_s3(uri):
        bucket, _, key = _s3_path(uri).partition("/")
        client = _s3_client()
        _retry(lambda: client.put_object(Bucket=bucket, Key=key, Body=data))
        return
    _replace_local(_split_local(uri), lambda f: f.write(data))


def put_file(local_path: str, uri: str) -> None:
    """Copy the local file ``local_path`` to ``uri`` as a whole object/file (see ``write_bytes``).

    S3: a managed (multipart for large files) upload that is aborted on failure. Local: copy to a
    temporary file next to the target, then ``os.replace``. ``local_path`` is left in place.
    """
    if is_s3(uri):
        bucket, _, key = _s3_path(uri).partition("/")
        client = _s3_client()
        _retry(lambda: client.upload_file(local_path, bucket, key))
        return

    def copy(out: BinaryIO) -> None:
        with open(local_path, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    _replace_local(_split_local(uri), copy)


def _replace_local(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Fill a temporary file next to ``path`` with ``write``, fsync it, then ``os.replace`` it onto ``path``
    (folders created): readers see the old file or the whole new one; a failure removes the temporary file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def exists(uri: str) -> bool:
    """True when a file/object (or a folder/prefix) exists at ``uri``."""
    fs, path = filesystem(uri)
    info = _retry(lambda: fs.get_file_info(path)) if is_s3(uri) else fs.get_file_info(path)
    return info.type != pafs.FileType.NotFound


def list_files(prefix_uri: str) -> list[str]:
    """URIs of all files under the folder/prefix ``prefix_uri`` (recursive, sorted); [] if none."""
    fs, path = filesystem(prefix_uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    infos = _retry(lambda: fs.get_file_info(selector)) if is_s3(prefix_uri) else fs.get_file_info(selector)
    base = prefix_uri.rstrip("/")
    out = [join(base, info.path[len(path):].lstrip("/")) for info in infos if info.type == pafs.FileType.File]
    return sorted(out)


def delete(uri: str) -> None:
    """Delete the file/object at ``uri``; no error when it does not exist."""
    fs, path = filesystem(uri)
    try:
        _retry(lambda: fs.delete_file(path)) if is_s3(uri) else fs.delete_file(path)
    except FileNotFoundError:
        pass
