"""The evaluation after training, in this process: a split read in batches, encoded, ranked query vs
database (``hashing.evaluation``) and logged to the active MLflow run.

- ``evaluate``: a trained method's codes of the query and database splits -> the metrics and plots.
- ``fit_and_evaluate_baseline``: LSH / ITQ fitted on the backbone's pooled train features, then evaluated
  like ``evaluate``, plus the float-feature ceiling (cosine ranking of the same features).
- ``split_batches`` / ``encode_split`` / ``split_features``: one split as tensor batches, codes or features.
- ``make_preprocess``: the image transform a configured backbone expects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import mlflow
import numpy as np
import torch

from hashing.codes import pack_signs
from hashing.config import Config
from hashing.data.quarantine import Quarantine
from hashing.data.read import TORCH_COLUMNS, iter_split
from hashing.data.transforms import Preprocess
from hashing.encoding import Encoder
from hashing.errors import InputError
from hashing.evaluation import evaluate_codes, metric_key
from hashing.methods.base import HashingMethod
from hashing.methods.shallow import ShallowHashing, cosine_ranking_report
from hashing.mlflow.runs import log_evaluation
from hashing.models import build_backbone

EVAL_BATCH_ROWS = 256  # images per forward pass in the final evaluation


def make_preprocess(config: Config) -> Preprocess:
    """Image uint8[H, W, 3] -> float32[3, S, S] with the backbone's own mean/std (S = dataset.image_size)."""
    backbone = build_backbone(config.model.backbone, pretrained=False)
    return Preprocess(config.dataset.image_size, backbone.mean, backbone.std)


def fit_and_evaluate_baseline(method: ShallowHashing, config: Config,
                              preprocess: Preprocess) -> tuple[dict[str, float], dict[str, float]]:
    """Fit ``method``'s projection on the pooled backbone features of the train split, evaluate its codes
    query vs database and the float-feature ceiling; all logged to the active run (``train/fit_seconds``,
    ``train/samples``, ``train/<fit info>``, the metrics of ``evaluate``, ``float_ceiling/<metric>``).

    Returns ``(metrics, ceiling)``: ``{name: value}`` as ``evaluate`` names them, and the ceiling as
    ``cosine_ranking_report`` names it (``map@K``, ``ndcg@k``).
    """
    started = time.perf_counter()
    train_features, _ = split_features(method, config, "train", preprocess)
    info = method.fit_features(train_features)
    mlflow.log_metrics({"train/fit_seconds": time.perf_counter() - started,
                        "train/samples": float(len(train_features)),
                        **{f"train/{k}": v for k, v in info.items()}})
    q_feats, q_labels = split_features(method, config, "query", preprocess)
    db_feats, db_labels = split_features(method, config, "database", preprocess)
    with torch.no_grad():
        q_codes = pack_signs(method.codes_from_features(torch.from_numpy(q_feats)).numpy())
        db_codes = pack_signs(method.codes_from_features(torch.from_numpy(db_feats)).numpy())
    result = evaluate_codes(q_codes, db_codes, q_labels, db_labels, config.evaluate,
                            pr=config.evaluate.plots)
    log_evaluation(result, f"{config.method.name}, {config.model.bits} bits")
    ceiling = cosine_ranking_report(q_feats, db_feats, q_labels, db_labels, config.evaluate.topk,
                                    config.evaluate.ndcg_k)
    mlflow.log_metrics({f"float_ceiling/{metric_key(k)}": v for k, v in ceiling.items()})
    return result.metrics, ceiling


@torch.no_grad()
def split_features(method: HashingMethod, config: Config, split: str,
                   preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features float32[n, d] (eval mode) and multi-hot labels uint8[n, c] of ``split``."""
    method.eval()
    features, labels = [], []
    for batch in split_batches(config, split, preprocess):
        features.append(method.backbone(batch["image"]).global_.float().numpy())
        labels.append(batch["labels"].numpy().astype(np.uint8))
    if not features:
        raise InputError(f"split {split!r} of {config.dataset.uri} has no samples")
    return np.concatenate(features), np.concatenate(labels)


def split_batches(config: Config, split: str, preprocess: Preprocess) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``EVAL_BATCH_ROWS`` samples of ``split``: ``image`` float32[b, 3, S, S], ``labels``,
    ``tags``."""
    rows: list[dict] = []
    quarantine = Quarantine(strict=config.data.strict, max_bad_fraction=config.data.max_bad_fraction)
    for sample in iter_split(config.dataset.uri, split, preprocess, quarantine=quarantine):
        rows.append(sample)
        if len(rows) == EVAL_BATCH_ROWS:
            yield {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in TORCH_COLUMNS}
            rows = []
    if rows:
        yield {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in TORCH_COLUMNS}
    quarantine.check()


def encode_split(method: HashingMethod, config: Config, split: str,
                 preprocess: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8[n, bits // 8] and multi-hot labels uint8[n, c] of every good sample of ``split``."""
    labels: list[np.ndarray] = []

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for batch in split_batches(config, split, preprocess):
            labels.append(batch["labels"].numpy().astype(np.uint8))
            yield batch

    codes = pack_signs(Encoder(method, batch_size=EVAL_BATCH_ROWS).relaxed_batches(batches()))
    return codes, np.concatenate(labels)


def evaluate(method: HashingMethod, config: Config, preprocess: Preprocess) -> dict[str, float]:
    """Query vs database retrieval metrics (``hashing.evaluation``) and PR / P@N plots, logged to the run."""
    q_codes, q_labels = encode_split(method, config, "query", preprocess)
    db_codes, db_labels = encode_split(method, config, "database", preprocess)
    result = evaluate_codes(q_codes, db_codes, q_labels, db_labels, config.evaluate, pr=config.evaluate.plots)
    log_evaluation(result, f"{config.method.name}, {config.model.bits} bits")
    return result.metrics
