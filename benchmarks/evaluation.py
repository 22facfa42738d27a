"""Evaluation benchmark: our mAP@K vs the classic per-query numpy loop, same codes, same value.

    .venv/bin/python benchmarks/evaluation.py [--queries 1000] [--database 20000] [--bits 64]
        [--classes 10] [--topk 1000] [--repeats 3] [--seed 0]

Codes and labels are synthetic but shaped like trained codes: every item has 1-3 of ``--classes``
labels, and its code is the code of one of its classes with a quarter of the bits flipped, so
distances cluster and tie a lot (ties are where a wrong order would show).

Rows (each the fastest of ``--repeats`` runs):
- classic: DeepHash-pytorch's ``CalcTopMap`` recipe, written out: codes as +-1 floats, per query
  Hamming distances ``0.5 * (K - B q)``, relevance ``L l > 0``, ``np.argsort(kind="stable")``, the
  top K (the last item included), AP. This is the reference the target (>= 20x) is measured against.
- per-query loop on packed codes: the same loop with XOR + popcount distances as uint16, for
  which numpy's stable argsort is a radix sort: how far a per-query loop gets with the right dtype.
- ours: ``hashing.metrics.mean_average_precision`` (batched, partition on distance|position keys).
- ours, every scalar metric: ``hashing.metrics.retrieval_report`` (mAP, tie-aware mAP, wMAP, NDCG,
  ACG, P@r2 in one pass); its mAP column is compared.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_time, machine, markdown_table
from hashing.metrics import mean_average_precision, retrieval_report

log = logging.getLogger("bench.evaluation")

SPEEDUP_TARGET = 20.0
CLASSIC = "classic (DeepHash-pytorch: +-1 float dot, stable argsort)"
PACKED_LOOP = "per-query loop on packed codes (uint16 distances)"
OURS = "ours: hashing.metrics.mean_average_precision"
OURS_REPORT = "ours: retrieval_report (6 metrics)"


def make_case(
    queries: int, database: int, bits: int, classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered codes and multi-hot labels: ``(q_codes uint8[m, B], db_codes uint8[n, B],
    q_labels uint8[m, c], db_labels uint8[n, c])``, B = bits // 8 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 2, (classes, bits), dtype=np.uint8)

    def items(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.zeros((count, classes), dtype=np.uint8)
        first = rng.integers(0, classes, count)
        labels[np.arange(count), first] = 1
        for _ in range(2):
            extra = rng.random(count) < 0.5
            labels[np.flatnonzero(extra), rng.integers(0, classes, int(extra.sum()))] = 1
        flips = (rng.random((count, bits)) < 0.25).astype(np.uint8)
        return np.packbits(prototypes[first] ^ flips, axis=1), labels

    q_codes, q_labels = items(queries)
    db_codes, db_labels = items(database)
    return q_codes, db_codes, q_labels, db_labels


def classic_map(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                topk: int) -> float:
    """mAP@topk the DeepHash-pytorch way (one query at a time, float +-1 codes, stable argsort)."""
    bits = q_codes.shape[1] * 8
    q_signs = np.unpackbits(q_codes, axis=1).astype(np.float32) * 2 - 1
    db_signs = np.unpackbits(db_codes, axis=1).astype(np.float32) * 2 - 1
    q_float, db_float = q_labels.astype(np.float32), db_labels.astype(np.float32)
    total = 0.0
    for i in range(q_codes.shape[0]):
        relevant = db_float @ q_float[i] > 0
        distance = 0.5 * (bits - db_signs @ q_signs[i])
        ranked = relevant[np.argsort(distance, kind="stable")][:topk]
        hit_ranks = np.flatnonzero(ranked) + 1.0
        if hit_ranks.size:
            total += float(np.mean(np.arange(1, hit_ranks.size + 1) / hit_ranks))
    return total / q_codes.shape[0]


def packed_loop_map(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                    topk: int) -> float:
    """The same per-query loop over packed codes: XOR + popcount distances (uint16: radix argsort)."""
    q_labels, db_labels = q_labels.astype(bool), db_labels.astype(bool)
    total = 0.0
    for i in range(q_codes.shape[0]):
        relevant = (db_labels & q_labels[i]).any(axis=1)
        distance = np.bitwise_count(db_codes ^ q_codes[i]).sum(axis=1, dtype=np.uint16)
        ranked = relevant[np.argsort(distance, kind="stable")][:topk]
        hit_ranks = np.flatnonzero(ranked) + 1.0
        if hit_ranks.size:
            total += float(np.mean(np.arange(1, hit_ranks.size + 1) / hit_ranks))
    return total / q_codes.shape[0]


def run(queries: int, database: int, bits: int, classes: int, topk: int, repeats: int,
        seed: int) -> list[dict[str, float | str]]:
    """Time every implementation on one case; one row per implementation, the classic first."""
    case = make_case(queries, database, bits, classes, seed)
    implementations = {
        CLASSIC: lambda: classic_map(*case, topk),
        PACKED_LOOP: lambda: packed_loop_map(*case, topk),
        OURS: lambda: mean_average_precision(*case, topk=topk),
        OURS_REPORT: lambda: retrieval_report(*case, topk=topk)[f"map@{topk}"],
    }
    rows: list[dict[str, float | str]] = []
    for name, fn in implementations.items():
        timing, value = best_time(fn, repeats)
        rows.append({"implementation": name, "seconds": timing.wall, "cpu_seconds": timing.cpu,
                     "value": value})
        log.info("%s: %.3f s, mAP@%d = %.6f", name, timing.wall, topk, value)
    reference = rows[0]
    for row in rows:
        row["queries_per_s"] = queries / row["seconds"]
        row["abs_diff"] = abs(row["value"] - reference["value"])
        row["speedup"] = reference["seconds"] / row["seconds"]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when every value matches the classic to 1e-9, 1 otherwise, 2 on bad arguments."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=20000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.queries, args.database, args.classes, args.topk,
           args.repeats) < 1 or args.bits % 8 or args.bits < 8:
        log.error("--queries, --database, --classes, --topk, --repeats must be >= 1 and --bits a multiple of "
                  "8")
        return 2

    print(f"# Evaluation: mAP@{args.topk}, {args.queries} queries x {args.database} database, {args.bits} "
          "bits, "
          f"{args.classes} classes (best of {args.repeats})")
    print(machine())
    rows = run(args.queries, args.database, args.bits, args.classes, args.topk, args.repeats, args.seed)
    print(markdown_table(
        ["implementation", "seconds", "CPU s", "queries/s", f"mAP@{args.topk}", "|diff| vs classic",
         "speed-up vs classic"],
        [[r["implementation"], f"{r['seconds']:.3f}", f"{r['cpu_seconds']:.3f}", f"{r['queries_per_s']:.0f}",
          f"{r['value']:.9f}",
          f"{r['abs_diff']:.1e}", f"{r['speedup']:.1f}x"] for r in rows],
    ))
    same = all(r["abs_diff"] <= 1e-9 for r in rows)
    ours = next(r for r in rows if r["implementation"] == OURS)
    print(f"same value (1e-9): {'yes' if same else 'NO'}; target >= {SPEEDUP_TARGET:.0f}x vs classic: "
          f"{'met' if ours['speedup'] >= SPEEDUP_TARGET else 'not met'} ({ours['speedup']:.1f}x)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
