"""Move the ``champion`` alias to the ``challenger`` version when its evaluation beats the champion's.

    python pipelines/promote.py --config configs/idhn.yaml [promote.margin=0.01] [promote.metric=ndcg_at_100]
    python pipelines/promote.py --config configs/idhn.yaml --dry-run       (decide and print, change nothing)

Recipe: config -> the registered model (``promote.model``, else ``hashing-{method}-{dataset name}``) ->
``challenger`` and ``champion`` versions and their latest evaluations (the ``eval_*`` version tags that
``pipelines/evaluate.py`` writes name the evaluation run; the metrics are read from that run after
checking it is a finished evaluation of that version on that dataset, ``verified_evaluation``,
so edited tags alone move nothing) -> the decision (``decide``) -> unless dry-run: an MLflow run
(``job=promote``, ``promotion.json``), the decision as tags on the challenger version
(``promotion_decision``, ``promotion``), and the alias move when promoted -> the decision printed.

Rules: the challenger must have been evaluated (else exit 2). With no champion, an evaluated challenger
is promoted. Otherwise the champion's evaluation must be on the same dataset fingerprint and have the
same metric (same ``evaluate.topk`` for ``map``), and the challenger must exceed it by more than
``promote.margin``; anything else keeps the champion. Promoted and kept both exit 0: a decision, not
an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass

import mlflow
from mlflow.tracking import MlflowClient

from hashing.config import Config
from hashing.data.schema import load_manifest
from hashing.errors import InputError
from hashing.mlflow import names
from hashing.mlflow.registry import ResolvedModel, resolve_model
from hashing.mlflow.runs import check_tracking_server, set_experiment, setup_tracking
from hashing.mlflow.version_evaluation import MAP, VersionEvaluation, verified_evaluation

log = logging.getLogger("promote")

PROMOTED = "promoted"
KEPT = "kept"


@dataclass
class Decision:
    """The outcome for one challenger: ``decision`` is ``PROMOTED`` or ``KEPT``; ``metric`` the metric
    name compared (``map_at_1000``); values are None where a side has no such evaluation."""

    model: str
    decision: str
    reasons: list[str]
    metric: str
    margin: float
    challenger_version: int
    challenger_value: float
    dataset_fingerprint: str
    champion_version: int | None = None
    champion_value: float | None = None
    dry_run: bool = False
    run_id: str | None = None

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED


def main(argv: list[str] | None = None) -> int:
    """``hashing promote ...``: 0 for a decision (promoted or kept), 2 on bad input (no or unevaluated
    challenger)."""
    from hashing.cli import main as cli_main

    return cli_main(["promote", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing promote`` runs it (``hashing.jobs.runner``): results printed, exit code
    returned."""
    decision = run_promote(config, dry_run=args.dry_run or config.promote.dry_run)
    champion = "none" if decision.champion_version is None else f"v{decision.champion_version}"
    champion_value = "-" if decision.champion_value is None else f"{decision.champion_value:.4f}"
    print(f"model:      {decision.model}")
    print(f"challenger: v{decision.challenger_version}, {decision.metric} = {decision.challenger_value:.4f}")
    print(f"champion:   {champion}, {decision.metric} = {champion_value} (margin {decision.margin})")
    print(f"decision:   {decision.decision}{' (dry run: nothing changed)' if decision.dry_run else ''}")
    for reason in decision.reasons:
        print(f"  - {reason}")
    return 0


def run_promote(config: Config, dry_run: bool = False) -> Decision:
    """Decide about the challenger and, unless ``dry_run``, record the decision and move the alias.

    Raises:
        LookupError: no such registered model, or no ``challenger`` alias.
        ConnectionError: no MLflow server answers at an ``http(s)://`` tracking URI; S3 does not answer.
        ValueError: the challenger has no evaluation, or none with ``promote.metric``, or its evaluation
            tags do not name a finished evaluation run of it (forged or stale tags).
        FileNotFoundError: ``promote.model`` is unset and there is no dataset at ``dataset.uri``.
    """
    check_tracking_server(config)
    setup_tracking(config)
    name = config.promote.model or names.registered_model_name(
        config.method.name, load_manifest(config.dataset.uri).name)
    challenger = resolve_model(name, alias=names.CHALLENGER)
    challenger_eval = verified_evaluation(challenger)
    if challenger_eval is None:
        raise InputError(f"challenger models:/{name}/{challenger.version} has not been evaluated; run "
                         f"`pipelines/evaluate.py evaluate.version={challenger.version}` first")
    champion = _champion(name)
    champion_eval = None if champion is None else _champion_evaluation(champion)
    decision = decide(name, challenger, challenger_eval, champion, champion_eval, config.promote.metric,
                      config.promote.margin)
    decision.dry_run = dry_run
    if not dry_run:
        record(decision, config, challenger_eval.dataset)
    log.info("%s: %s", decision.decision, "; ".join(decision.reasons))
    return decision


def _champion_evaluation(champion: ResolvedModel) -> VersionEvaluation | None:
    """The champion's verified evaluation; None (logged) when it has none or its tags do not hold up."""
    try:
        return verified_evaluation(champion)
    except ValueError as exc:
        log.warning("champion evaluation not usable: %s", exc)
        return None


def _champion(name: str) -> ResolvedModel | None:
    """The version under ``champion``, None when the alias is not set (the model itself exists)."""
    try:
        return resolve_model(name, alias=names.CHAMPION)
    except LookupError:
        return None


def decide(name: str, challenger: ResolvedModel, challenger_eval: VersionEvaluation,
           champion: ResolvedModel | None, champion_eval: VersionEvaluation | None, metric: str,
           margin: float) -> Decision:
    """The promotion rules (module docstring) as a pure function of the two versions and their evaluations.

    Raises:
        ValueError: the challenger's evaluation has no ``metric`` (the message lists what it has).
    """
    metric_name = challenger_eval.metric_name(metric)
    value = challenger_eval.value(metric)
    if value is None:
        raise InputError(f"promote.metric={metric!r}: the challenger's evaluation has no {metric_name!r}; "
                         f"it has {MAP!r} or one of {sorted(challenger_eval.metrics)}")
    fingerprint = challenger_eval.dataset_fingerprint
    decision = Decision(name, KEPT, [], metric_name, margin, challenger.version, value, fingerprint)
    if champion is None:
        decision.decision = PROMOTED
        decision.reasons.append(f"no champion yet: the first one needs only an evaluation "
                                f"(v{challenger.version} has {metric_name} = {value:.4f})")
        return decision
    decision.champion_version = champion.version
    if champion.version == challenger.version:
        decision.reasons.append(f"v{challenger.version} is already the champion")
        return decision
    if champion_eval is None:
        decision.reasons.append(f"champion v{champion.version} has no evaluation to compare with; run "
                                f"`pipelines/evaluate.py evaluate.version={champion.version}` on the same "
                                "dataset")
        return decision
    if champion_eval.dataset_fingerprint != fingerprint:
        decision.reasons.append(
            f"evaluated on different datasets: challenger on {challenger_eval.dataset} "
            f"({fingerprint[:12]}...), "
            f"champion on {champion_eval.dataset} ({champion_eval.dataset_fingerprint[:12]}...); evaluate "
            "both on "
            "the same dataset")
        return decision
    decision.champion_value = champion_eval.metrics.get(metric_name)
    if decision.champion_value is None:
        decision.reasons.append(f"champion v{champion.version}'s evaluation has no {metric_name} (evaluated "
                                f"with other settings, e.g. evaluate.topk); evaluate both with the same ones")
        return decision
    comparison = (f"{metric_name} {value:.4f} vs champion v{champion.version}'s "
                  f"{decision.champion_value:.4f} "
                  f"+ margin {margin}")
    if value > decision.champion_value + margin:
        decision.decision = PROMOTED
        decision.reasons.append(f"beats the champion: {comparison}")
    else:
        decision.reasons.append(f"does not beat the champion: {comparison}")
    return decision


def record(decision: Decision, config: Config, dataset: str) -> None:
    """An MLflow run with ``promotion.json``, the decision tags on the challenger, the alias move if
    promoted."""
    set_experiment(config, dataset)
    version = str(decision.challenger_version)
    with mlflow.start_run(run_name=config.run.name or f"promote-{decision.model}-v{version}") as run:
        decision.run_id = run.info.run_id
        mlflow.set_tags({names.TAG_JOB: "promote", names.TAG_MODEL_NAME: decision.model,
                         names.TAG_MODEL_VERSION: version, names.PROMOTION_DECISION: decision.decision})
        mlflow.log_dict(asdict(decision), "promotion.json")
    client = MlflowClient()
    client.set_model_version_tag(decision.model, version, names.PROMOTION_DECISION, decision.decision)
    client.set_model_version_tag(decision.model, version, names.PROMOTION, json.dumps(asdict(decision)))
    if decision.promoted:
        client.set_registered_model_alias(decision.model, names.CHAMPION, version)
        log.info("models:/%s@%s -> v%s", decision.model, names.CHAMPION, version)


if __name__ == "__main__":
    sys.exit(main())
