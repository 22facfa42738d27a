"""A model version's latest evaluation, as ``pipelines/evaluate.py`` tags it and ``pipelines/promote.py``
reads it (tag names in ``hashing.mlflow.names``, layout in ``hashing.mlflow.registry``).

Tag values are strings; metric values are written with ``repr`` so they read back exactly. Tags are
editable by anyone who can write to the registry, so ``verified_evaluation`` (what promotion uses)
only takes the run id from them and reads the metrics from that evaluation run, after checking it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hashing.errors import InputError
from hashing.mlflow.names import (
    EVAL_DATASET,
    EVAL_DATASET_FINGERPRINT,
    EVAL_MAP,
    EVAL_MAP_KEY,
    EVAL_METRIC_PREFIX,
    EVAL_RUN_ID,
    TAG_DATASET,
    TAG_DATASET_FINGERPRINT,
    TAG_JOB,
    TAG_MODEL_NAME,
    TAG_MODEL_VERSION,
)
from hashing.mlflow.registry import ResolvedModel, version_tags

# The metric name that means "the mAP@K of the evaluation, whatever its K" (``promote.metric``).
MAP = "map"


@dataclass(frozen=True)
class VersionEvaluation:
    """The latest evaluation of a model version, as its ``eval_*`` tags hold it.

    ``metrics``: ``{name: value}`` with names as in ``hashing.evaluation`` (``map_at_1000``, ``p_at_r2``);
    ``map_key``: which of them is the mAP@K.
    """

    dataset: str
    dataset_fingerprint: str
    run_id: str
    map_key: str
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.map_key not in self.metrics:
            raise ValueError(f"map_key {self.map_key!r} is not one of the metrics {sorted(self.metrics)}")

    def value(self, metric: str) -> float | None:
        """The value of ``metric`` (``"map"``: the mAP@K, whatever K), None when it was not evaluated."""
        return self.metrics.get(self.map_key if metric == MAP else metric)

    def metric_name(self, metric: str) -> str:
        """``"map"`` -> this evaluation's ``map_key``; any other name as it is."""
        return self.map_key if metric == MAP else metric

    def to_tags(self) -> dict[str, str]:
        """The ``eval_*`` tags of this evaluation."""
        tags = {
            EVAL_DATASET: self.dataset,
            EVAL_DATASET_FINGERPRINT: self.dataset_fingerprint,
            EVAL_RUN_ID: self.run_id,
            EVAL_MAP_KEY: self.map_key,
            EVAL_MAP: repr(self.metrics[self.map_key]),
        }
        tags.update({EVAL_METRIC_PREFIX + name: repr(value) for name, value in self.metrics.items()})
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> VersionEvaluation | None:
        """Read ``to_tags`` output back; None when the version has no evaluation (no ``eval_run_id``).

        Raises:
            InputError (a ValueError): the tags are incomplete or a metric is not a number (names the tag).
        """
        if EVAL_RUN_ID not in tags:
            return None
        missing = [t for t in (EVAL_DATASET, EVAL_DATASET_FINGERPRINT, EVAL_MAP_KEY) if t not in tags]
        if missing:
            raise InputError(f"model version evaluation tags are incomplete: {missing} missing "
                             "(rerun pipelines/evaluate.py for this version)")
        metrics = {}
        for tag, text in tags.items():
            if tag.startswith(EVAL_METRIC_PREFIX):
                try:
                    metrics[tag.removeprefix(EVAL_METRIC_PREFIX)] = float(text)
                except ValueError:
                    raise InputError(f"model version tag {tag}={text!r} is not a number") from None
        return cls(tags[EVAL_DATASET], tags[EVAL_DATASET_FINGERPRINT], tags[EVAL_RUN_ID], tags[EVAL_MAP_KEY],
                   metrics)


def verified_evaluation(model: ResolvedModel) -> VersionEvaluation | None:
    """The latest evaluation of ``model`` as its evaluation run recorded it; None when it has none.

    The ``eval_*`` tags only point at the run (``eval_run_id``): the run must exist, be finished, be an
    evaluate job (tag ``job=evaluate``) of this very model name and version on the dataset fingerprint
    the tags claim, and have logged the mAP@K metric; metrics and dataset name then come from the run.

    Raises:
        InputError (a ValueError): the tags are incomplete, or the run they name is not such an
            evaluation (says why).
    """
    claimed = VersionEvaluation.from_tags(version_tags(model))
    if claimed is None:
        return None
    where = f"models:/{model.name}/{model.version}"
    rerun = f"rerun `pipelines/evaluate.py evaluate.version={model.version}`"
    try:
        run = MlflowClient().get_run(claimed.run_id)
    except MlflowException:
        raise InputError(f"{where}: its evaluation tags name run {claimed.run_id!r}, which does not exist on "
                         f"this tracking server; {rerun}") from None
    expected = {TAG_JOB: "evaluate", TAG_MODEL_NAME: model.name, TAG_MODEL_VERSION: str(model.version),
                TAG_DATASET_FINGERPRINT: claimed.dataset_fingerprint}
    problems = [f"{tag}={run.data.tags.get(tag)!r} (expected {value!r})"
                for tag, value in expected.items() if run.data.tags.get(tag) != value]
    if run.info.status != "FINISHED":
        problems.append(f"status {run.info.status} (expected FINISHED)")
    if claimed.map_key not in run.data.metrics:
        problems.append(f"no metric {claimed.map_key!r}")
    if problems:
        raise InputError(f"{where}: its evaluation tags name run {claimed.run_id}, which is not a finished "
                         f"evaluation of this version on that dataset: {'; '.join(problems)}; {rerun}")
    return VersionEvaluation(run.data.tags.get(TAG_DATASET, claimed.dataset), claimed.dataset_fingerprint,
                             claimed.run_id, claimed.map_key, dict(run.data.metrics))
