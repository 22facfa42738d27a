"""Query-vs-database retrieval evaluation: the metrics every job logs under one set of names, and the plots.

``pipelines/train.py`` (final evaluation of a training run) and ``pipelines/evaluate.py`` (from the code
shards of a model version) both call ``evaluate_codes`` and ``hashing.mlflow.runs.log_evaluation``, so
their MLflow metric names are the same (``@`` is not allowed in MLflow names, see ``metric_key``):

    map_at_K, map_tie_aware_at_K, wmap_at_K   mAP@K, tie-aware mAP@K, weighted mAP@K (K = evaluate.topk,
                                              ``all`` when None)
    ndcg_at_k, acg_at_k                       NDCG@k, ACG@k (k = evaluate.ndcg_k)
    p_at_rR                                   precision within Hamming radius R (R = evaluate.radius)
    p_at_N                                    precision of the top N, for N in evaluate.precision_at
                                              (N past the database size is clipped to it, the name is not)

Plots: ``pr_figure`` (Hamming-ball retrieval at every radius) and ``precision_at_n_figure``, logged as
``plots/pr_curve.png`` and ``plots/precision_at_n.png`` (``hashing.mlflow.names``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hashing.metrics import pr_curve, precision_at_n, retrieval_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hashing.config import EvaluateSection

def metric_key(name: str) -> str:
    """MLflow-safe metric name (no ``@``): ``map@100`` -> ``map_at_100``, ``p@r2`` -> ``p_at_r2``."""
    return name.replace("@", "_at_")


def map_key(topk: int | None) -> str:
    """The name of mAP@K for ``evaluate.topk``: ``map_at_1000``, ``map_at_all`` (None)."""
    return metric_key(f"map@{'all' if topk is None else topk}")


@dataclass
class RetrievalEvaluation:
    """One evaluation: ``metrics`` ``{name: value}`` (names as in the module docstring); ``ns`` int64[p]
    and ``precision_at`` float64[p], the P@N curve; ``precision`` / ``recall`` float64[K + 1] indexed by
    Hamming radius (None when curves were not asked for)."""

    metrics: dict[str, float]
    ns: np.ndarray
    precision_at: np.ndarray
    precision: np.ndarray | None = None
    recall: np.ndarray | None = None


def evaluate_codes(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                   ev: EvaluateSection, pr: bool = True) -> RetrievalEvaluation:
    """All metrics of ``ev`` for query codes uint8[m, B] against database codes uint8[n, B].

    Args:
        q_labels, db_labels: multi-hot labels uint8|bool[m, c] / [n, c].
        ev: the ``evaluate`` config section (topk, ndcg_k, radius, precision_at).
        pr: also compute the PR curve (one pass over all m x n distances).
    """
    report = retrieval_report(q_codes, db_codes, q_labels, db_labels, topk=ev.topk, ndcg_k=ev.ndcg_k,
                              radius=ev.radius)
    metrics = {metric_key(k): v for k, v in report.items()}
    ns = np.asarray(ev.precision_at, dtype=np.int64)
    curve = precision_at_n(q_codes, db_codes, q_labels, db_labels, ns)
    metrics.update({metric_key(f"p@{n}"): float(p) for n, p in zip(ns, curve, strict=True)})
    result = RetrievalEvaluation(metrics, ns, curve)
    if pr:
        result.precision, result.recall = pr_curve(q_codes, db_codes, q_labels, db_labels)
    return result


def pr_figure(precision: np.ndarray, recall: np.ndarray, title: str) -> Figure:
    """Precision-recall curve of Hamming-ball retrieval (one point per radius 0..K)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.plot(recall, precision, marker=".")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR curve ({title})")
    ax.grid(alpha=0.3)
    return figure


def precision_at_n_figure(ns: np.ndarray, precision: np.ndarray, title: str) -> Figure:
    """Precision of the top N retrieved items against N."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4))
    ax = figure.subplots()
    ax.plot(ns, precision, marker="o")
    ax.set(xlabel="N (items retrieved)", ylabel="precision@N", ylim=(0, 1.02), title=f"P@N ({title})")
    ax.grid(alpha=0.3)
    return figure
