"""The one wrapper every job runs in: log set-up, config, S3 endpoint, tracking check, errors -> exit codes.

``run_job(spec, argv)`` parses the job's command line (``hashing.cli`` builds the parser without
importing torch, Ray or MLflow, so ``--help`` answers at once), sets up logging (``--log-level``,
``-v``), loads the config (a bad one: one message, exit 2), makes ``storage.s3_endpoint`` the process's
S3 endpoint, checks that an ``http(s)://`` tracking server answers (within seconds, before Ray or
MLflow's own minutes of retries), then imports the job module and calls its ``run_cli(config, args)``.

Exit codes: what ``run_cli`` returns (0 on success); 2 for a ``hashing.errors.UserError`` (bad input,
config, an unreachable S3 endpoint or tracking server: one message, no traceback); anything else is a
bug and ends with its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hashing.cli_args import config_from_args
from hashing.config import Config
from hashing.errors import UserError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# The level the job was started with, for the processes and modules that set up logging later (Ray).
LOG_LEVEL_ENV = "HASHING_LOG_LEVEL"
# Loggers of libraries that are chatty at INFO; WARNING unless the job runs at DEBUG (-v).
NOISY_LOGGERS = ("ray", "faiss", "filelock", "urllib3", "botocore", "numexpr")


@dataclass(frozen=True)
class JobSpec:
    """One job of the ``hashing`` command: its module (``hashing.jobs.<name>``), its parser, an optional
    hook that turns job flags into config overrides (``prepare(parser, args)``) before the config is
    loaded, and whether the job talks to the tracking server (then it is checked first)."""

    name: str
    build_parser: Callable[[], argparse.ArgumentParser]
    prepare: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None
    tracking: bool = True


def log_level(args: argparse.Namespace) -> str:
    """``DEBUG`` with ``-v``, else ``--log-level``, else ``HASHING_LOG_LEVEL``, else ``INFO``."""
    if getattr(args, "verbose", False):
        return "DEBUG"
    return getattr(args, "log_level", None) or os.environ.get(LOG_LEVEL_ENV) or "INFO"


def setup_logging(level: str) -> None:
    """Our loggers at ``level``; Ray's and faiss' INFO lines only at DEBUG. Exported as ``HASHING_LOG_LEVEL``
    so child processes (the demo's steps) and ``hashing.ray_session`` follow it."""
    logging.basicConfig(format=LOG_FORMAT)  # a handler unless there is one (pytest's, an embedding app's)
    logging.getLogger().setLevel(level)
    os.environ[LOG_LEVEL_ENV] = level
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def parse_job_args(spec: JobSpec, argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    """The job's command line -> ``(config, args)``, logging set up; a bad command line or config ends in
    ``parser.error`` (one message, ``SystemExit(2)``). ``argv`` None: ``sys.argv[1:]``."""
    parser = spec.build_parser()
    args = parser.parse_intermixed_args(None if argv is None else list(argv))  # flags may follow overrides
    setup_logging(log_level(args))
    if spec.prepare is not None:
        spec.prepare(parser, args)
    return config_from_args(parser, args), args


def run_job(spec: JobSpec, argv: Sequence[str] | None) -> int:
    """Run one job (see the module docstring); its exit code."""
    config, args = parse_job_args(spec, argv)
    try:
        from hashing import storage

        storage.use_s3_endpoint(config.storage.s3_endpoint)
        if spec.tracking:
            from hashing.mlflow.runs import check_tracking_server

            check_tracking_server(config)
        job = importlib.import_module(f"hashing.jobs.{spec.name}")
        return job.run_cli(config, args)
    except UserError as exc:
        logging.getLogger(spec.name).error("%s", exc)
        return 2
