"""The MLflow model registry: registering a logged model, pinning names / aliases to versions, version tags.

A registered model version (``models:/name/N``) carries, besides what training sets (``dataset``,
``dataset_fingerprint``, ``run_id``):

    set by a complete encode (``pipelines/encode.py``)
        codes_uri                    where its code shards are (``{codes_root}/{name}/v{N}``)
        codes_dataset_fingerprint    the dataset they were encoded from
        codes_run_id                 the encode run
    set by ``pipelines/evaluate.py`` (its latest evaluation, ``hashing.mlflow.version_evaluation``)
        eval_dataset, eval_dataset_fingerprint, eval_run_id
        eval_map_key                 the name of its mAP@K metric (``map_at_1000``)
        eval_map                     that metric's value
        eval_metric_<name>           every metric (names as in ``hashing.evaluation``)
    set by ``pipelines/promote.py`` on the challenger it decided about
        promotion_decision           ``promoted`` or ``kept``
        promotion                    the decision as JSON (reasons, both metrics, margin, fingerprint)

The tag names are in ``hashing.mlflow.names``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

from hashing.code_shards import version_uri
from hashing.config import is_remote
from hashing.errors import InputError, MissingError
from hashing.mlflow.names import CHALLENGER, CHAMPION, CODES_URI, registered_model_name

if TYPE_CHECKING:
    from hashing.config import ModelRefSection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """A model pinned to what it resolved to: ``uri`` never moves when an alias moves later."""

    uri: str
    name: str | None = None
    version: int | None = None
    run_id: str | None = None


def register_model(
    model_uri: str, name: str, alias: str | None = CHALLENGER, tags: dict[str, str] | None = None
) -> int:
    """Register ``model_uri`` as a new version of ``name``, move ``alias`` to it; return the version.

    MLflow's own "Successfully registered model" / "Created version" lines (printed, not logged) are
    held back: the one INFO line here says it, with the alias.
    """
    was_enabled = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        version = mlflow.register_model(model_uri, name, tags=tags)
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was_enabled
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s%s", name, version.version, f" as @{alias}" if alias else "")
    return int(version.version)


def resolve_model(
    name_or_uri: str, alias: str | None = CHAMPION, version: int | None = None
) -> ResolvedModel:
    """Pin a model: a registered name (with ``version``, else ``alias``) or a URI.

    ``models:/name@alias`` and ``models:/name/3`` resolve through the registry; other URIs
    (``models:/m-...``, ``runs:/...``) are returned as they are.

    Raises:
        MissingError (a LookupError): the name, version or alias does not exist (the message lists what
            does).
    """
    if name_or_uri.startswith("models:/"):
        ref = name_or_uri.removeprefix("models:/")
        if "@" in ref:
            name_or_uri, alias, version = ref.split("@", 1)[0], ref.split("@", 1)[1], None
        elif "/" in ref and ref.rsplit("/", 1)[1].isdigit():
            name_or_uri, version = ref.rsplit("/", 1)[0], int(ref.rsplit("/", 1)[1])
        else:
            return ResolvedModel(uri=name_or_uri)
    elif is_remote(name_or_uri) or name_or_uri.startswith("runs:/"):
        return ResolvedModel(uri=name_or_uri)
    name = name_or_uri
    client = MlflowClient()
    try:
        if version is not None:
            found = client.get_model_version(name, str(version))
        elif alias:
            found = client.get_model_version_by_alias(name, alias)
        else:
            raise MissingError(f"model {name!r}: give a version or an alias")
    except MlflowException as exc:
        raise MissingError(_missing(client, name, alias, version)) from exc
    return ResolvedModel(
        uri=f"models:/{name}/{found.version}", name=name, version=int(found.version), run_id=found.run_id
    )


def _missing(client: MlflowClient, name: str, alias: str | None, version: int | None) -> str:
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        uri = mlflow.get_tracking_uri()
        return f"no registered model {name!r} at {uri} (train one first: pipelines/train.py)"
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    aliases = ", ".join(f"@{a}=v{v}" for a, v in sorted(registered.aliases.items())) or "none"
    wanted = f"version {version}" if version is not None else f"alias @{alias}"
    return f"model {name!r} has no {wanted}; versions: {versions or 'none'}; aliases: {aliases}"


def resolve_section_model(ref: ModelRefSection, method: str, dataset: str) -> ResolvedModel:
    """Pin the model a job section (``encode``/``evaluate``/``search``) names.

    ``ref.model`` None means ``hashing-{method}-{dataset}``; ``ref.version`` wins over ``ref.alias``.
    """
    return resolve_model(
        ref.model or registered_model_name(method, dataset), alias=ref.alias, version=ref.version
    )


def version_tags(model: ResolvedModel) -> dict[str, str]:
    """The tags of a registered version (``model.name`` and ``model.version`` must be set)."""
    if model.name is None or model.version is None:
        raise InputError(f"{model.uri} is not a registered model version; give a registered name, "
                         "models:/name/N or models:/name@alias")
    return dict(MlflowClient().get_model_version(model.name, str(model.version)).tags)


def codes_location(model: ResolvedModel, codes_root: str) -> str:
    """Where the code shards of ``model`` are: its ``codes_uri`` tag (set by a complete encode), else
    ``{codes_root}/{name}/v{version}`` (where ``pipelines/encode.py`` writes them)."""
    uri = version_tags(model).get(CODES_URI)
    return uri or version_uri(codes_root, model.name, model.version)
