"""Where a job's Ray comes from: one rule for every pipeline (Ray is imported only when called)."""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` (else ``RAY_ADDRESS``, else start a new local instance); True if started here.

    Under ``ray job submit`` Ray is reached through ``RAY_ADDRESS``; an already initialised Ray (a
    test, a notebook) is used as it is. Without an address a new local instance with ``num_cpus``
    logical CPUs (None: all cores) is started even when a ``ray start`` head runs on this machine
    (``address="local"``), so a plain run never attaches to someone else's cluster by accident.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, logging_level=logging.WARNING)
    return True
