"""The base class of the errors a user can fix: bad input, config or environment (exit code 2).

A job's entry point (``hashing.jobs.runner.run_job``) prints the message of a ``UserError`` alone and
exits with 2; any other exception is a bug and keeps its traceback (exit code 1). Each subclass also
derives from the builtin it refines (``ValueError``, ``LookupError``, ...), so ``except ValueError``
in callers keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, config or environment, with a message that says which key / file and what was expected."""


class InputError(UserError, ValueError):
    """A value or a file's content is not what was expected."""


class NotFoundError(UserError, FileNotFoundError):
    """A file, folder or object the user named does not exist."""


class AlreadyExistsError(UserError, FileExistsError):
    """The output exists and the user did not ask to replace it."""


class MissingError(UserError, LookupError):
    """A named thing (model, version, alias, key) does not exist."""


class UnavailableError(UserError, ConnectionError):
    """A service (MLflow tracking server, S3 endpoint) does not answer."""
