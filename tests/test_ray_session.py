"""hashing.ray_session: what a job passes to the Ray cluster it connects to (no cluster is started)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray
from ray.runtime_env.runtime_env import _merge_runtime_env

from hashing import ray_session, storage

REPO = Path(__file__).resolve().parents[1]
ENDPOINT = "http://minio.storage.svc:9000"
SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def driver_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the environment, no endpoint variable and no submitted job (all restored after)."""
    for var in (*storage.ENDPOINT_ENV, "RAY_ADDRESS", ray_session._JOB_CONFIG_ENV):
        monkeypatch.setenv(var, "")  # recorded first, so monkeypatch also undoes what the test sets
        monkeypatch.delenv(var)
    for var in SECRETS:
        monkeypatch.setenv(var, f"secret-{var}")


@pytest.fixture
def ray_init_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The keyword arguments of every ``ray.init`` call; Ray is never started."""
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    return calls


def test_worker_env_vars_carry_the_endpoint_never_credentials(driver_env) -> None:
    assert ray_session.worker_env_vars() == {}
    storage.use_s3_endpoint(ENDPOINT)  # as every job does with storage.s3_endpoint
    env = ray_session.worker_env_vars()
    assert env == {"AWS_ENDPOINT_URL_S3": ENDPOINT, "MLFLOW_S3_ENDPOINT_URL": ENDPOINT}
    assert not set(env) & set(SECRETS) and not any(v.startswith("secret-") for v in env.values())


def test_init_ray_passes_them_to_a_cluster_only(driver_env, ray_init_calls, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", ENDPOINT)  # from the environment this time
    hook = {"worker_process_setup_hook": ray_session.SETUP_HOOK}
    assert ray_session.init_ray("ray://head:10001", None)
    assert ray_init_calls[-1]["runtime_env"] == {"env_vars": {"AWS_ENDPOINT_URL": ENDPOINT}, **hook}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    ray_session.init_ray(None, None)
    assert ray_init_calls[-1]["address"] == "10.0.0.1:6379"
    assert ray_init_calls[-1]["runtime_env"] == {"env_vars": {"AWS_ENDPOINT_URL": ENDPOINT}, **hook}
    monkeypatch.delenv("RAY_ADDRESS")
    ray_session.init_ray(None, 2)  # a new local instance: its workers inherit this environment
    assert ray_init_calls[-1]["address"] == "local" and ray_init_calls[-1]["runtime_env"] == hook
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    ray_session.init_ray("ray://head:10001", None)
    assert ray_init_calls[-1]["runtime_env"] == hook  # no endpoint to pass: AWS S3
    job = {"runtime_env": {"worker_process_setup_hook": "theirs.setup"}}
    monkeypatch.setenv(ray_session._JOB_CONFIG_ENV, json.dumps(job))
    ray_session.init_ray("ray://head:10001", None)
    assert ray_init_calls[-1]["runtime_env"] is None  # the submitted job's own hook is left alone


def test_submitted_jobs_runtime_env_still_merges(driver_env, monkeypatch) -> None:
    job = {"runtime_env": {"working_dir": ".", "env_vars": {"AWS_ENDPOINT_URL_S3": ENDPOINT, "X": "1"}}}
    monkeypatch.setenv(ray_session._JOB_CONFIG_ENV, json.dumps(job))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", ENDPOINT)  # the job's env_vars are in the driver's environment
    storage.use_s3_endpoint(ENDPOINT)
    env = ray_session.worker_env_vars()
    assert env == {"MLFLOW_S3_ENDPOINT_URL": ENDPOINT}
    merged = _merge_runtime_env(job["runtime_env"], {"env_vars": env})  # what ray.init does; None: conflict
    assert merged is not None and merged["env_vars"]["AWS_ENDPOINT_URL_S3"] == ENDPOINT
    storage.use_s3_endpoint("http://other:9000")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL_S3 differs"):
        ray_session.worker_env_vars()


def test_resource_request_timeout_warning_becomes_one_info_line() -> None:
    """Ray Train's 'Failed to send resource request' warning loses its GetTimeoutError traceback."""
    ray_session.quiet_ray_logs()
    ray_session.quiet_ray_logs()  # installed once
    logger = logging.getLogger(ray_session._RESOURCE_REQUEST_LOGGER)
    assert sum(isinstance(f, ray_session.ResourceRequestTimeoutFilter) for f in logger.filters) == 1
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        try:
            raise ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready.")
        except ray.exceptions.GetTimeoutError:
            logger.warning("Failed to send resource request for %s. If this only happens ...", "abc",
                           exc_info=True)
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    first, other = records
    assert (first.levelname, first.exc_info, first.getMessage()) == (
        "INFO", None,
        ("Ray Train's resource request to its autoscaling coordinator timed out (a busy machine "
                       "while workers start); harmless without an autoscaler, training goes on"))
    assert (other.levelname, other.getMessage()) == ("WARNING", "something else")


WORKER_LOGS = textwrap.dedent("""
    import logging
    import ray
    from hashing.ray_session import _RESOURCE_REQUEST_LOGGER, init_ray

    @ray.remote(num_cpus=0)
    def warn() -> None:
        logger = logging.getLogger(_RESOURCE_REQUEST_LOGGER)
        logger.addHandler(logging.StreamHandler())  # as Ray Train's controller actor prints it
        try:
            raise ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready.")
        except ray.exceptions.GetTimeoutError:
            logger.warning("Failed to send resource request for x.", exc_info=True)
        logger.warning("worker warnings still reach the driver")

    init_ray(None, 1)
    ray.get(warn.remote())
    ray.shutdown()
""")


@pytest.mark.slow
def test_workers_of_a_job_print_no_resource_request_traceback(tmp_path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", WORKER_LOGS], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "worker warnings still reach the driver" in out  # the worker's output is forwarded
    assert "resource request to its autoscaling coordinator timed out" in out
    assert "Failed to send resource request" not in out and "Traceback" not in out


def test_quiet_ray_output_turns_ray_info_and_data_progress_pages_off_unless_debug(monkeypatch) -> None:
    import logging

    import ray.data

    context = ray.data.DataContext.get_current()
    for attr in ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start"):
        monkeypatch.setattr(context, attr, True)
    ray_logger = logging.getLogger("ray")
    monkeypatch.setattr(ray_logger, "level", logging.INFO)

    monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "DEBUG")  # -v: Ray as it is
    ray_session.quiet_ray_output()
    assert context.enable_progress_bars and context.enable_operator_progress_bars
    assert ray_logger.level == logging.INFO

    monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "INFO")
    ray_session.quiet_ray_output()
    assert not (context.enable_progress_bars or context.enable_operator_progress_bars
                or context.print_on_execution_start)
    assert ray_logger.level == logging.WARNING


def test_quiet_ray_output_drops_rays_token_auth_enabled_notice_and_keeps_the_disabled_warning(
    monkeypatch,
) -> None:
    import logging

    from ray._private.authentication import authentication_token_setup as auth

    assert auth.logger.name == ray_session._TOKEN_AUTH_LOGGER  # where Ray logs it
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    auth.logger.addHandler(handler)
    try:
        monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "INFO")
        ray_session.quiet_ray_output()
        ray_session.quiet_ray_output()  # once is enough: the filter is not added twice
        auth._warn_token_auth_enabled()
        auth._warn_token_auth_disabled()
    finally:
        auth.logger.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and messages[0].startswith("Token authentication is disabled"), messages
    assert sum(isinstance(f, ray_session.TokenAuthEnabledFilter) for f in auth.logger.filters) == 1


OTHER_RAY = """
import sys, time, ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
print("up", flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""

STATE_QUERY_IN_A_WORKER = """
import os, ray
from hashing import ray_session

ray_session.init_ray(None, 2)

@ray.remote(num_cpus=0.5)
def own_cluster_actors():
    from ray.util.state import list_actors
    list_actors()  # no address: what Ray Train's PlacementGroupCleaner does
    return os.environ["RAY_ADDRESS"]

assert ray.get(own_cluster_actors.remote()) == ray.get_runtime_context().gcs_address
print("state api ok", flush=True)
"""


@pytest.mark.slow
def test_workers_query_their_own_cluster_when_several_rays_run_on_the_machine(tmp_path) -> None:
    """With a second Ray on the machine, the state API in a job's worker (as Ray Train's
    PlacementGroupCleaner calls it, without an address) answers for the job's own cluster instead of
    failing with "Found multiple active Ray instances"."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], env=env, cwd=tmp_path, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert other.stdout.readline().strip() == "up"
        proc = subprocess.run([sys.executable, "-c", STATE_QUERY_IN_A_WORKER], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert "state api ok" in out and "multiple active Ray instances" not in out
    finally:
        other.stdin.close()
        other.wait(timeout=60)


def test_quiet_env_leaves_a_users_choice_and_debug_alone(monkeypatch) -> None:
    monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "INFO")
    for name in ray_session.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    assert ray_session.quiet_env() == ray_session.QUIET_ENV
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "INFO")  # set by the user: kept
    assert ray_session.quiet_env() == {}
    assert ray_session.train_log_level() == "WARNING"
    monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "DEBUG")
    assert ray_session.quiet_env() == {} and ray_session.train_log_level() == "DEBUG"


WORKER_DATA_LEVEL = textwrap.dedent("""
    import logging
    import ray
    from hashing.ray_session import init_ray

    @ray.remote(num_cpus=0)
    def ray_data_level() -> int:
        import ray.data  # its logging set-up runs now, after the worker's setup hook

        return logging.getLogger("ray.data").level

    init_ray(None, 1)
    print("ray.data level in a worker:", ray.get(ray_data_level.remote()), flush=True)
    ray.shutdown()
""")


@pytest.mark.slow
def test_ray_data_imported_in_a_worker_stays_at_warning(tmp_path) -> None:
    """Ray Data resets its logger's level when imported: the worker hook's level must survive that."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
    for name in ("RAY_DATA_LOG_LEVEL", "HASHING_LOG_LEVEL"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", WORKER_DATA_LEVEL], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"ray.data level in a worker: {logging.WARNING}" in out, out[-3000:]


def test_ray_trains_report_line_logger_is_quieted(monkeypatch) -> None:
    """Ray Train names the logger of its per-report INFO line by file path: quiet_ray_logs finds it."""
    from ray.train.v2._internal.execution import context

    monkeypatch.setenv(ray_session.LOG_LEVEL_ENV, "INFO")
    logger = logging.getLogger(ray_session.train_report_logger_name())
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    ray_session.quiet_ray_logs()
    assert context.logger is logger and not logger.isEnabledFor(logging.INFO)
