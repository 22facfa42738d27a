"""The query service follows the registry: when ``champion`` moves, the running service moves with it.

    url = start_service(plan, host, port, following=True)   # hashing.serving_app: partitions in codes apps
    follower = Follower(config, plan)
    follower.poll()     # every --poll-seconds: one look at the registry, a switch when the alias moved

A poll resolves the configured version again (``plan_service`` with ``encoded_only``: every database
shard has its code part and the version's ``codes_uri`` tag is set, which a finished encode does last).
Unchanged, not encoded yet, or the registry unreachable: the service keeps serving what it serves, and
one log line says why (once per reason, not once per poll). Moved to a version with complete codes:

1. its partitions are deployed as their own Serve applications (``deploy_codes``: returns once every
   replica is healthy), next to the old version's, which keep answering;
2. ``Search.switch`` on the ingress loads the new version's encoder, swaps its bundle (requests that
   start from now on are answered by the new version only) and returns once the requests still
   answering with the old bundle are done;
3. the old version's codes applications are deleted;
4. the ``Search`` application is deployed again with the new plan (Serve replaces its replica by one
   built from the new version, gracefully): a replica that Serve restarts later comes up on the version
   served now, not on the deleted one it was first built with.

If the new partitions fail to deploy or the ingress cannot load the new encoder (it swaps only after
loading), what was deployed of the new version is deleted and the old version stays. The registry not
answering is one more reason to keep serving. A switch that takes longer than ``SWITCH_TIMEOUT_S``
raises: the driver stops, and Serve with it.
"""

import logging
from dataclasses import asdict

from mlflow.exceptions import MlflowException
from ray import serve
from ray.exceptions import RayError

from hashing.config import Config
from hashing.errors import UserError
from hashing.serving_app import (
    APP_NAME,
    ServicePlan,
    build_following_app,
    codes_app_names,
    deploy_codes,
    plan_service,
)

log = logging.getLogger("serve")

SWITCH_TIMEOUT_S = 300.0  # loading the new encoder plus draining the old version's requests
KEPT_OPTIONS = ("max_k", "max_upload_bytes", "num_cpus", "partition_replicas")  # carried to the next plan


class Follower:
    """Moves the service deployed from ``plan`` (``start_service(..., following=True)``) to the version
    ``config`` names whenever ``poll`` finds it changed and fully encoded."""

    def __init__(self, config: Config, plan: ServicePlan) -> None:
        self.config = config
        self.plan = plan
        self._last_reason: str | None = None

    def poll(self) -> bool:
        """One look at the registry; True when the service now serves another version."""
        options = {name: getattr(self.plan, name) for name in KEPT_OPTIONS}
        try:
            new = plan_service(self.config, len(self.plan.partitions), split=self.plan.split,
                               encoded_only=True, **options)
        except (UserError, ConnectionError, MlflowException) as exc:  # not ready, or the registry is down
            self._report(f"keeping models:/{self.plan.model_name}/{self.plan.model_version}: {exc}")
            return False
        if new.model_uri == self.plan.model_uri:
            self._report(f"models:/{new.model_name}/{new.model_version} is still the one to serve")
            return False
        try:
            deploy_codes(new)
            result = serve.get_app_handle(APP_NAME).switch.remote(asdict(new)).result(
                timeout_s=SWITCH_TIMEOUT_S)
        except (RuntimeError, RayError) as exc:  # a partition that cannot start, an encoder that cannot load
            for name in codes_app_names(new):
                serve.delete(name)
            self._report(f"keeping models:/{self.plan.model_name}/{self.plan.model_version}: "
                         f"v{new.model_version} failed to deploy ({exc})")
            return False
        for name in codes_app_names(self.plan):
            serve.delete(name)
        serve.run(build_following_app(new), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("switched models:/%s from v%d to v%d (%d requests of v%d drained)", new.model_name,
                 result["previous"], result["version"], result["drained"], result["previous"])
        self.plan = new
        self._last_reason = None
        return True

    def _report(self, reason: str) -> None:
        if reason != self._last_reason:
            log.info("%s", reason)
            self._last_reason = reason
