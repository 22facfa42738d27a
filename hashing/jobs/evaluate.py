"""Evaluate a registered model version from its code shards and log the result against the version.

    python pipelines/evaluate.py --config configs/idhn.yaml [evaluate.alias=champion | evaluate.version=3]

Recipe: config -> dataset.json -> the model pinned to a version (``evaluate.version``, else
``evaluate.alias``) -> its code shards (the version's ``codes_uri`` tag, else
``{encode.codes_root}/{model}/v{version}``) -> the ``query`` and ``database`` splits, each part checked
against this dataset's shards (same source shard checksums, so both splits come from the dataset of
this fingerprint, and written by this model version) -> metrics (``hashing.evaluation``: mAP@K,
NDCG@k, precision within radius R, P@N, same names as training runs) -> an MLflow run (tags ``job``,
model name and version, dataset fingerprint; PR and P@N plots as PNG) -> ``eval_*`` tags on the model
version (``hashing.mlflow.version_evaluation.VersionEvaluation``) that ``pipelines/promote.py`` reads
-> a short table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass

import mlflow
from mlflow.tracking import MlflowClient

from hashing import storage
from hashing.code_shards import CodeShardError, SplitCodes, load_split
from hashing.config import Config
from hashing.data.schema import DatasetManifest, load_manifest
from hashing.evaluation import RetrievalEvaluation, evaluate_codes, map_key
from hashing.mlflow import names
from hashing.mlflow.registry import ResolvedModel, codes_location, resolve_section_model
from hashing.mlflow.runs import log_evaluation, set_experiment, setup_tracking, tracking_uri
from hashing.mlflow.version_evaluation import VersionEvaluation

log = logging.getLogger("evaluate")


@dataclass
class EvaluateResult:
    """What one evaluation did: the pinned model, where its codes were, the sizes, the metrics, the run."""

    model: ResolvedModel
    codes_uri: str
    dataset: DatasetManifest
    queries: int
    database: int
    evaluation: RetrievalEvaluation
    run_id: str


def main(argv: list[str] | None = None) -> int:
    """``hashing evaluate ...``: 0 on success, 2 on bad input (no model, no or mismatched code shards)."""
    from hashing.cli import main as cli_main

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


def run_cli(config: Config, args: argparse.Namespace) -> int:
    """The job as ``hashing evaluate`` runs it (``hashing.jobs.runner``): results printed, exit code
    returned."""
    result = run_evaluate(config)
    print(f"model:   models:/{result.model.name}/{result.model.version}")
    print(f"codes:   {result.codes_uri}")
    print(f"dataset: {result.dataset.name} (fingerprint {result.dataset.fingerprint[:12]}...), "
          f"{result.queries} queries x {result.database} database items")
    width = max(len(k) for k in result.evaluation.metrics)
    for name, value in result.evaluation.metrics.items():
        print(f"  {name:<{width}}  {value:.4f}")
    print(f"run:     {result.run_id} at {tracking_uri(config)}")
    return 0


def run_evaluate(config: Config) -> EvaluateResult:
    """Evaluate, log and tag one model version (see the module docstring).

    Raises:
        FileNotFoundError / ValueError: no or a bad dataset at ``dataset.uri``.
        LookupError: the model, version or alias does not exist.
        CodeShardError (a ValueError): missing code shards, or shards not encoded from this dataset
            or by this model version.
    """
    manifest = load_manifest(config.dataset.uri)
    setup_tracking(config)
    set_experiment(config, manifest.name)
    model = resolve_section_model(config.evaluate, config.method.name, manifest.name)
    codes_uri = codes_location(model, config.encode.codes_root)
    query = load_checked_split(codes_uri, "query", manifest, model)
    database = load_checked_split(codes_uri, "database", manifest, model)
    num_classes = len(manifest.classes)
    ev = config.evaluate
    evaluation = evaluate_codes(query.codes, database.codes, query.multi_hot(num_classes),
                                database.multi_hot(num_classes), ev, pr=ev.plots)

    with mlflow.start_run(run_name=config.run.name or f"evaluate-{model.name}-v{model.version}") as run:
        mlflow.set_tags({
            names.TAG_JOB: "evaluate", names.TAG_METHOD: query.method, names.TAG_MODEL_NAME: model.name,
            names.TAG_MODEL_VERSION: str(model.version), names.TAG_DATASET: manifest.name,
            names.TAG_DATASET_FINGERPRINT: manifest.fingerprint, names.TAG_CODES_URI: codes_uri,
        })
        mlflow.log_params({"model_uri": model.uri, "bits": query.bits, "topk": ev.topk, "ndcg_k": ev.ndcg_k,
                           "radius": ev.radius, "precision_at": json.dumps(ev.precision_at),
                           "queries": len(query), "database": len(database)})
        log_evaluation(evaluation, f"{model.name} v{model.version}, {query.bits} bits")
    tags = VersionEvaluation(manifest.name, manifest.fingerprint, run.info.run_id, map_key(ev.topk),
                             evaluation.metrics).to_tags()
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model.name, str(model.version), key, value)
    log.info("tagged models:/%s/%d with its evaluation (run %s)", model.name, model.version, run.info.run_id)
    return EvaluateResult(model, codes_uri, manifest, len(query), len(database), evaluation, run.info.run_id)


def load_checked_split(codes_uri: str, split: str, manifest: DatasetManifest,
                       model: ResolvedModel) -> SplitCodes:
    """The codes of ``split`` under ``codes_uri``: one finished part per shard of the dataset's split (same
    source checksum, so the codes are of the dataset with ``manifest.fingerprint``), written by ``model``."""
    shards = {s.path: s.sha256 for s in manifest.split(split).shards}
    try:
        codes = load_split(storage.join(codes_uri, split), expected=shards)
    except CodeShardError as exc:
        raise CodeShardError(f"no usable {split} codes of models:/{model.name}/{model.version} for dataset "
                             f"{manifest.name!r} (fingerprint {manifest.fingerprint[:12]}...): "
                             f"{exc}") from None
    if codes.model_uri != model.uri:
        raise CodeShardError(f"{codes_uri}/{split} was written by {codes.model_uri}, not {model.uri}; "
                             f"re-encode with `pipelines/encode.py encode.version={model.version} --force`")
    return codes


if __name__ == "__main__":
    sys.exit(main())
