"""Where a job's Ray comes from: one rule for every pipeline (Ray is imported only when called)."""

from __future__ import annotations

import json
import logging
import os
import warnings

from hashing import storage

# The job's log level (hashing.jobs.runner.LOG_LEVEL_ENV; not imported from there, to stay a leaf module).
LOG_LEVEL_ENV = "HASHING_LOG_LEVEL"
# Set by ``ray job submit`` in the driver's environment: the job's own runtime_env (and metadata).
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Runs in every worker process of the job (``runtime_env``), before it does any work.
SETUP_HOOK = "hashing.ray_session.setup_worker"
# Ray Train 2.60's controller logs a warning with a full ``GetTimeoutError`` traceback ("Failed to send
# resource request ...") when its autoscaling coordinator actor takes over 5 s to answer, as it does
# while a small machine is busy starting the job's workers; nothing depends on it without an autoscaler.
_RESOURCE_REQUEST_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
_RESOURCE_REQUEST_FAILURES = ("Failed to send resource request", "Failed to cancel resource request")


class ResourceRequestTimeoutFilter(logging.Filter):
    """Turns Ray Train's resource-request timeout warning (with traceback) into one INFO line saying
    what it is; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(_RESOURCE_REQUEST_FAILURES):
            record.msg = ("Ray Train's resource request to its autoscaling coordinator timed out (a busy "
                          "machine "
                          "while workers start); harmless without an autoscaler, training goes on")
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# Ray's notice at ``ray.init`` of a local instance that token authentication is on (its default), with
# how to turn it off: dropped unless DEBUG. Its warning that authentication is *off* stays.
_TOKEN_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_TOKEN_AUTH_ENABLED = "Token authentication is enabled for this Ray cluster"


class TokenAuthEnabledFilter(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" notice; other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TOKEN_AUTH_ENABLED)


def _add_filter_once(logger_name: str, filter_type: type[logging.Filter]) -> None:
    """A ``filter_type()`` on the logger ``logger_name`` unless it has one (the set-up runs per job)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, filter_type) for f in logger.filters):
        logger.addFilter(filter_type())


def debug_logging() -> bool:
    """True when the job runs at DEBUG (``HASHING_LOG_LEVEL``, set by ``--log-level`` / ``-v``): then
    Ray's own INFO lines and progress output stay on."""
    return os.environ.get(LOG_LEVEL_ENV, "INFO").upper() == "DEBUG"


# Set in a process before Ray Data starts there: Ray Data's logging set-up (run when ``ray.data`` is
# imported) resets its logger's level to this variable's. (Not RAY_BACKEND_LOG_LEVEL for the C++ core's
# "constructor arguments in the object store" ERROR lines: setting it prints a line of its own per process.)
QUIET_ENV = {"RAY_DATA_LOG_LEVEL": "WARNING"}


def quiet_env() -> dict[str, str]:
    """``QUIET_ENV`` less what this process's environment already sets (a user's choice wins); {} at
    DEBUG."""
    return {} if debug_logging() else {k: v for k, v in QUIET_ENV.items() if k not in os.environ}


def quiet_ray_logs() -> None:
    """Install ``ResourceRequestTimeoutFilter`` in this process (the job's ``worker_process_setup_hook``);
    unless the job runs at DEBUG: Ray Data's INFO lines off (``QUIET_ENV``, also for a ``ray.data``
    imported later in this process) and the deprecation warning Ray Train's dataset manager triggers in
    Ray Data (``ExecutionOptions.exclude_resources``) ignored."""
    _add_filter_once(_RESOURCE_REQUEST_LOGGER, ResourceRequestTimeoutFilter)
    if debug_logging():
        return
    os.environ.update(quiet_env())
    warnings.filterwarnings("ignore", message=r".*ExecutionOptions\.exclude_resources.* is deprecated")
    # Ray Data runs parts of a job in actors (e.g. Ray Train's SplitCoordinator): their INFO lines too
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger(train_report_logger_name()).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def train_report_logger_name() -> str:
    """The logger of Ray Train's "Reporting training result N: TrainingReport(...)" INFO line (one per
    worker and report): named by its module's file path, so Ray Train's own level (``train_log_level``)
    misses it. Computed from Ray's location, without importing Ray Train."""
    import ray

    return os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py")


def train_log_level() -> str:
    """Ray Train's own console level (``RunConfig(logging_config=...)``): its worker-group, process-group,
    checkpoint and "Reporting training result" lines only at DEBUG; warnings always."""
    return "DEBUG" if debug_logging() else "WARNING"


def setup_worker() -> None:
    """The job's ``worker_process_setup_hook``: ``quiet_ray_logs``, and ``RAY_ADDRESS`` pinned to the
    cluster this worker belongs to. Ray's own actors (Ray Train's ``PlacementGroupCleaner``) query the
    state API without an address; where several Ray instances run on one machine (a test session, a
    ``ray start`` head beside a job's own local Ray) that lookup fails with "Found multiple active Ray
    instances" and a traceback in the job's output."""
    import ray

    quiet_ray_logs()
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def quiet_ray_output() -> None:
    """Ray's INFO logs and Ray Data's operator progress bars off in this process, unless the job runs at
    DEBUG (``HASHING_LOG_LEVEL``, set by ``--log-level`` / ``-v``). Called before ``ray.init`` (the
    ``QUIET_ENV`` variables then reach the local instance's processes too) and after ``import ray``: Ray
    sets its loggers up when imported. The jobs show one progress bar of their own per long step."""
    os.environ.update(quiet_env())
    import ray.data

    if debug_logging():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _add_filter_once(_TOKEN_AUTH_LOGGER, TokenAuthEnabledFilter)
    # its "Progress bars disabled. To enable, set ..." warning, once per process
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` (else ``RAY_ADDRESS``, else start a new local instance); True if started here.

    Under ``ray job submit`` Ray is reached through ``RAY_ADDRESS``; an already initialised Ray (a
    test, a notebook) is used as it is. Without an address a new local instance with ``num_cpus``
    logical CPUs (None: all cores) is started even when a ``ray start`` head runs on this machine
    (``address="local"``), so a plain run never attaches to someone else's cluster by accident.
    A local instance's workers inherit this process's environment; the workers of a cluster get the
    S3 endpoint variables through the job's ``runtime_env`` (``worker_env_vars``). Every worker runs
    ``setup_worker`` first (``SETUP_HOOK``), unless a submitted job brings its own setup hook.
    """
    import ray

    quiet_ray_output()
    if ray.is_initialized():
        return False
    quiet_ray_logs()
    hook = "worker_process_setup_hook"
    runtime_env = {} if hook in _job_runtime_env() else {hook: SETUP_HOOK}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = worker_env_vars()
        if env:
            runtime_env["env_vars"] = env
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env or None)
    else:
        ray.init(address="local", num_cpus=num_cpus, logging_level=logging.WARNING,
                 runtime_env=runtime_env or None)
    return True


def _job_runtime_env() -> dict:
    """The runtime_env of the submitted job this driver runs in (``ray job submit``); {} otherwise."""
    return json.loads(os.environ.get(_JOB_CONFIG_ENV) or "{}").get("runtime_env") or {}


def worker_env_vars() -> dict[str, str]:
    """Environment variables for the job's ``runtime_env`` on a Ray cluster this process connects to.

    The S3 endpoint variables set in this process (``hashing.storage.ENDPOINT_ENV``, e.g. exported from
    ``storage.s3_endpoint`` by ``storage.use_s3_endpoint``), so that workers reach the same store as
    the driver. Never credentials: workers take those from the cluster's own environment / AWS config
    chain. Variables the submitted job's runtime_env already sets (``ray job submit --runtime-env-json``)
    are left to it, since Ray refuses to merge the same variable twice; a different value there than
    here is an error (the driver and its workers would use different stores).
    """
    env = storage.endpoint_env()
    job_env = _job_runtime_env().get("env_vars") or {}
    for name in [n for n in env if n in job_env]:
        if job_env[name] != env[name]:
            raise ValueError(
                f"{name} differs between this driver (storage.s3_endpoint or its environment) and the "
                "submitted job's runtime_env; Ray workers would use another S3 endpoint than the driver: "
                "set it in one place"
            )
        del env[name]
    return env
