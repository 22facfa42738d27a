"""hashing.metrics against per-query brute-force references, hand-computed cases and tie enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hashing import metrics
from hashing.metrics import (
    acg,
    mean_average_precision,
    ndcg,
    pr_curve,
    precision_at_n,
    precision_within_radius,
    retrieval_report,
    tie_aware_map,
    weighted_map,
)

# ---------------------------------------------------------------------------------------------
# A straightforward reference: one query at a time, explicit loops, np.argsort(kind="stable").


def reference_rows(q_codes, db_codes, q_labels, db_labels):
    """Per query: (distances, shared labels) over the database, from unpacked bits."""
    q_bits, db_bits = np.unpackbits(q_codes, axis=1), np.unpackbits(db_codes, axis=1)
    for i in range(len(q_codes)):
        distance = (q_bits[i][None, :] != db_bits).sum(axis=1)
        shared = (q_labels[i][None, :].astype(int) & db_labels.astype(int)).sum(axis=1)
        yield distance, shared


def reference_ap(ranked_shared, k):
    hits, total = 0, 0.0
    for rank, r in enumerate(ranked_shared[:k], start=1):
        if r > 0:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


def reference_wap(ranked_shared, k):
    hits, cumulative, total = 0, 0, 0.0
    for rank, r in enumerate(ranked_shared[:k], start=1):
        cumulative += r
        if r > 0:
            hits += 1
            total += cumulative / rank
    return total / hits if hits else 0.0


def reference_dcg(ranked_shared, k):
    return sum((2.0**r - 1) / math.log2(rank + 1) for rank, r in enumerate(ranked_shared[:k], start=1))


def reference_metrics(q_codes, db_codes, q_labels, db_labels, topk, ndcg_k, radius):
    n = len(db_codes)
    k_map = n if topk is None else min(topk, n)
    k_ndcg = min(ndcg_k, n)
    scores = {"map": [], "wmap": [], "ndcg": [], "acg": [], "p@r": []}
    for distance, shared in reference_rows(q_codes, db_codes, q_labels, db_labels):
        ranked = shared[np.argsort(distance, kind="stable")]
        scores["map"].append(reference_ap(ranked, k_map))
        scores["wmap"].append(reference_wap(ranked, k_map))
        ideal = reference_dcg(np.sort(shared)[::-1], k_ndcg)
        scores["ndcg"].append(reference_dcg(ranked, k_ndcg) / ideal if ideal > 0 else 0.0)
        scores["acg"].append(ranked[:k_ndcg].mean())
        inside = distance <= radius
        scores["p@r"].append((shared[inside] > 0).sum() / inside.sum() if inside.any() else 0.0)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def random_case(seed, m, n, bits, classes, density=0.3):
    rng = np.random.default_rng(seed)
    q_codes = rng.integers(0, 256, (m, bits // 8), dtype=np.uint8)
    db_codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    q_labels = (rng.random((m, classes)) < density).astype(np.uint8)
    db_labels = (rng.random((n, classes)) < density).astype(np.uint8)
    return q_codes, db_codes, q_labels, db_labels


CASES = [
    # (seed, m, n, bits, classes, topk, ndcg_k, batch elements): n not a multiple of the batch rows,
    # 8 bits (heavy ties), K = all, K > n, more than 64 classes (two label words).
    (1, 9, 50, 8, 3, 10, 20, 1 << 20),
    (2, 31, 333, 8, 5, None, 50, 1000),
    (3, 20, 1000, 16, 6, 100, 100, 2999),
    (4, 6, 40, 64, 4, 1000, 100, 1 << 20),
    (5, 13, 257, 24, 70, 256, 7, 600),
    (6, 40, 200, 32, 10, None, 1000, 1),
]


@pytest.mark.parametrize(("seed", "m", "n", "bits", "classes", "topk", "ndcg_k", "batch"), CASES)
def test_every_metric_matches_the_per_query_reference(
    monkeypatch, seed, m, n, bits, classes, topk, ndcg_k, batch
) -> None:
    monkeypatch.setattr(metrics, "_BATCH_ELEMENTS", batch)
    case = random_case(seed, m, n, bits, classes)
    expected = reference_metrics(*case, topk, ndcg_k, radius=2)
    assert mean_average_precision(*case, topk=topk) == pytest.approx(expected["map"], abs=1e-12)
    assert weighted_map(*case, topk=topk) == pytest.approx(expected["wmap"], abs=1e-12)
    assert ndcg(*case, k=ndcg_k) == pytest.approx(expected["ndcg"], abs=1e-12)
    assert acg(*case, k=ndcg_k) == pytest.approx(expected["acg"], abs=1e-12)
    assert precision_within_radius(*case, radius=2) == pytest.approx(expected["p@r"], abs=1e-12)
    report = retrieval_report(*case, topk=topk, ndcg_k=ndcg_k, radius=2)
    name = "all" if topk is None else topk
    assert report == {
        f"map@{name}": pytest.approx(expected["map"], abs=1e-12),
        f"map_tie_aware@{name}": pytest.approx(tie_aware_map(*case, topk=topk), abs=1e-12),
        f"wmap@{name}": pytest.approx(expected["wmap"], abs=1e-12),
        f"ndcg@{ndcg_k}": pytest.approx(expected["ndcg"], abs=1e-12),
        f"acg@{ndcg_k}": pytest.approx(expected["acg"], abs=1e-12),
        "p@r2": pytest.approx(expected["p@r"], abs=1e-12),
    }


def test_map_over_all_includes_the_last_item() -> None:
    # The only relevant item is ranked last (farthest): a slicing bug that drops it would score 0.
    q_codes = np.array([[0x00]], np.uint8)
    db_codes = np.array([[0x00], [0x01], [0x03], [0xFF]], np.uint8)
    q_labels = np.array([[1, 0]], np.uint8)
    db_labels = np.array([[0, 1], [0, 1], [0, 1], [1, 0]], np.uint8)
    assert mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=None) == pytest.approx(1 / 4)
    assert mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=3) == 0.0


@pytest.mark.parametrize("radius", [0, 1, 3, 5])
def test_precision_within_radius_matches_the_reference(radius: int) -> None:
    case = random_case(11, 25, 400, 8, 4)
    expected = reference_metrics(*case, topk=10, ndcg_k=10, radius=radius)["p@r"]
    assert precision_within_radius(*case, radius=radius) == pytest.approx(expected, abs=1e-12)


def test_precision_at_n_and_pr_curve_match_the_reference(monkeypatch) -> None:
    monkeypatch.setattr(metrics, "_BATCH_ELEMENTS", 700)
    case = random_case(12, 17, 300, 16, 5)
    ns = [1, 10, 100, 300, 500]
    expected_p_at_n = np.zeros(len(ns))
    expected_precision, expected_recall = np.zeros(17), np.zeros(17)
    for distance, shared in reference_rows(*case):
        relevant = shared[np.argsort(distance, kind="stable")] > 0
        for j, top in enumerate(ns):
            top = min(top, 300)
            expected_p_at_n[j] += relevant[:top].sum() / top / 17
        for radius in range(17):
            inside = distance <= radius
            hits = (shared[inside] > 0).sum()
            expected_precision[radius] += (hits / inside.sum() if inside.any() else 0.0) / 17
            expected_recall[radius] += (hits / (shared > 0).sum() if (shared > 0).any() else 0.0) / 17
    assert np.allclose(precision_at_n(*case, ns=ns), expected_p_at_n, rtol=0, atol=1e-12)
    precision, recall = pr_curve(*case)
    assert precision.shape == recall.shape == (17,)
    assert np.allclose(precision, expected_precision, rtol=0, atol=1e-12)
    assert np.allclose(recall, expected_recall, rtol=0, atol=1e-12)
    assert precision[2] == pytest.approx(precision_within_radius(*case, radius=2), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# One query, five database items, every number worked out by hand.
#   item:      0     1     2     3     4
#   code:    0xC0  0x00  0x80  0x01  0x07   (query 0x00)
#   distance:  2     0     1     1     3
#   labels:   100   001   110   001   010   (query 110)
#   shared r:  1     0     2     0     1
# Ranked (distance, then position): items 1, 2, 3, 0, 4 with r = 0, 2, 0, 1, 1.

HAND = (
    np.array([[0x00]], np.uint8),
    np.array([[0xC0], [0x00], [0x80], [0x01], [0x07]], np.uint8),
    np.array([[1, 1, 0]], np.uint8),
    np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 0]], np.uint8),
)


def test_hand_computed_scalar_metrics() -> None:
    # Hits at ranks 2, 4, 5: AP = (1/2 + 2/4 + 3/5) / 3.
    assert mean_average_precision(*HAND, topk=None) == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    assert mean_average_precision(*HAND, topk=3) == pytest.approx(1 / 2)
    assert mean_average_precision(*HAND, topk=1) == 0.0
    # ACG at the hits: (0+2)/2, (0+2+0+1)/4, (0+2+0+1+1)/5.
    assert weighted_map(*HAND, topk=None) == pytest.approx((1 + 3 / 4 + 4 / 5) / 3)
    assert acg(*HAND, k=3) == pytest.approx(2 / 3)
    # DCG@3 = 3 / log2(3); ideal order r = 2, 1, 1: 3 + 1 / log2(3) + 1 / 2.
    assert ndcg(*HAND, k=3) == pytest.approx((3 / math.log2(3)) / (3 + 1 / math.log2(3) + 1 / 2))
    # Within radius 2: items 1, 2, 3, 0 of which 2 and 0 are relevant.
    assert precision_within_radius(*HAND, radius=2) == pytest.approx(2 / 4)
    assert precision_within_radius(*HAND, radius=1) == pytest.approx(1 / 3)
    assert precision_within_radius(*HAND, radius=0) == 0.0


def test_hand_computed_curves() -> None:
    assert precision_at_n(*HAND, ns=[1, 2, 5, 10]).tolist() == pytest.approx([0, 1 / 2, 3 / 5, 3 / 5])
    precision, recall = pr_curve(*HAND)
    assert precision.tolist() == pytest.approx([0, 1 / 3, 1 / 2] + [3 / 5] * 6)
    assert recall.tolist() == pytest.approx([0, 1 / 3, 2 / 3] + [1] * 6)


def test_hand_computed_tie_aware_map() -> None:
    # Items 2 (relevant) and 3 (not) tie at distance 1; both orders are equally likely.
    # Order 2, 3: hits at ranks 2, 4, 5 -> (1/2 + 2/4 + 3/5) / 3 = 8/15.
    # Order 3, 2: hits at ranks 3, 4, 5 -> (1/3 + 2/4 + 3/5) / 3 = 43/90.
    assert tie_aware_map(*HAND, topk=None) == pytest.approx((8 / 15 + 43 / 90) / 2)
    # K = 2 cuts the tie: order 2, 3 gives AP 1/2, order 3, 2 no hit at all (0).
    assert tie_aware_map(*HAND, topk=2) == pytest.approx(1 / 4)
    # K = 4 ends with item 0, alone at distance 2: hits at ranks 2, 4 or 3, 4.
    assert tie_aware_map(*HAND, topk=4) == pytest.approx(((1 / 2 + 2 / 4) / 2 + (1 / 3 + 2 / 4) / 2) / 2)


# ---------------------------------------------------------------------------------------------
# Tie-aware AP against the definition: the average over every order inside the distance groups.


def enumerated_tie_aware_ap(distance: np.ndarray, relevant: np.ndarray, k: int) -> float:
    groups = [np.flatnonzero(distance == d) for d in np.unique(distance)]
    scores = [
        reference_ap(relevant[np.concatenate(orders)].astype(int), k)
        for orders in itertools.product(*(itertools.permutations(group) for group in groups))
    ]
    return float(np.mean(scores))


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_map_equals_enumeration_of_tie_orders(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    # Few distinct codes (distances 0..3 from the query 0x00), so the groups are large.
    db_codes = np.array([0x00, 0x01, 0x03, 0x07], np.uint8)[rng.integers(0, 4, n)][:, None]
    q_codes = np.zeros((2, 1), np.uint8)
    q_labels = np.array([[1, 0, 0], [0, 1, 1]], np.uint8)
    db_labels = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    distance = np.unpackbits(db_codes, axis=1).sum(axis=1)
    for k in [*range(1, n + 1), None]:
        expected = np.mean(
            [
                enumerated_tie_aware_ap(distance, (db_labels @ q_labels[i]) > 0, n if k is None else k)
                for i in range(2)
            ]
        )
        assert tie_aware_map(q_codes, db_codes, q_labels, db_labels, topk=k) == pytest.approx(
            expected, abs=1e-12
        )


def test_tie_aware_map_agrees_with_monte_carlo_on_large_groups() -> None:
    # 8-bit codes, 400 items: groups of dozens, K = 50 cuts one; the hypergeometric path matters.
    q_codes, db_codes, q_labels, db_labels = random_case(21, 3, 400, 8, 4)
    rng = np.random.default_rng(0)
    samples = 4000
    estimates = []
    for distance, shared in reference_rows(q_codes, db_codes, q_labels, db_labels):
        aps = [reference_ap(shared[np.lexsort((rng.random(400), distance))], 50) for _ in range(samples)]
        estimates.append((np.mean(aps), np.std(aps) / math.sqrt(samples)))
    expected = np.mean([mean for mean, _ in estimates])
    sigma = math.sqrt(sum(se**2 for _, se in estimates)) / len(estimates)
    assert abs(tie_aware_map(q_codes, db_codes, q_labels, db_labels, topk=50) - expected) < 5 * sigma + 1e-9


def test_tie_aware_map_equals_map_without_ties() -> None:
    # Distances 0, 1, ..., 8 to the query, each once: no ties, so both definitions agree.
    db_codes = np.packbits(np.tri(9, 8, -1, dtype=np.uint8)[::-1], axis=1)
    q_codes = np.zeros((1, 1), np.uint8)
    rng = np.random.default_rng(3)
    db_labels = rng.integers(0, 2, (9, 3), dtype=np.uint8)
    q_labels = np.array([[1, 1, 0]], np.uint8)
    for k in (1, 4, None):
        assert tie_aware_map(q_codes, db_codes, q_labels, db_labels, topk=k) == pytest.approx(
            mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=k), abs=1e-12
        )


# ---------------------------------------------------------------------------------------------
# Inputs.


def test_bool_and_uint8_labels_and_hundreds_of_classes_agree() -> None:
    q_codes, db_codes, q_labels, db_labels = random_case(31, 8, 120, 16, 300, density=0.05)
    expected = reference_metrics(q_codes, db_codes, q_labels, db_labels, 30, 30, 2)
    report = retrieval_report(
        q_codes, db_codes, q_labels.astype(bool), db_labels.astype(bool), topk=30, ndcg_k=30
    )
    assert report["map@30"] == pytest.approx(expected["map"], abs=1e-12)
    assert report["ndcg@30"] == pytest.approx(expected["ndcg"], abs=1e-12)
    assert report["wmap@30"] == pytest.approx(expected["wmap"], abs=1e-12)


def test_a_query_without_relevant_items_scores_zero_and_counts() -> None:
    q_codes = np.array([[0x00], [0x00]], np.uint8)
    db_codes = np.array([[0x00], [0x01]], np.uint8)
    q_labels = np.array([[1, 0], [0, 1]], np.uint8)
    db_labels = np.array([[1, 0], [1, 0]], np.uint8)
    report = retrieval_report(q_codes, db_codes, q_labels, db_labels, topk=None, ndcg_k=2, radius=0)
    assert report == pytest.approx(
        {
            "map@all": 0.5,
            "map_tie_aware@all": 0.5,
            "wmap@all": 0.5,
            "ndcg@2": 0.5,
            "acg@2": 0.5,
            "p@r0": 0.5,
        }
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"q_codes": np.zeros((2, 2), np.uint8)}, "code widths differ"),
        ({"db_codes": np.zeros((3, 1), np.int32)}, "database codes must be packed codes uint8"),
        ({"q_labels": np.zeros((3, 2), np.uint8)}, r"query labels must be multi-hot \[2, c >= 1\]"),
        ({"db_labels": np.zeros((3, 4), np.uint8)}, "label widths differ"),
        ({"db_labels": np.full((3, 2), 2, np.uint8)}, "0/1 values"),
        ({"q_labels": np.zeros((2, 2), np.float32)}, "bool or uint8"),
        ({"q_codes": np.zeros((0, 1), np.uint8), "q_labels": np.zeros((0, 2), np.uint8)}, "empty"),
    ],
)
def test_bad_inputs_are_explained(change: dict, message: str) -> None:
    inputs = {
        "q_codes": np.zeros((2, 1), np.uint8),
        "db_codes": np.zeros((3, 1), np.uint8),
        "q_labels": np.zeros((2, 2), np.uint8),
        "db_labels": np.zeros((3, 2), np.uint8),
    } | change
    with pytest.raises(ValueError, match=message):
        retrieval_report(**inputs)
    with pytest.raises(ValueError, match=message):
        pr_curve(**inputs)


def test_bad_cut_offs_are_explained() -> None:
    for topk in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="top-k cut-off"):
            mean_average_precision(*HAND, topk=topk)
    with pytest.raises(ValueError, match="radius must be an int >= 0"):
        precision_within_radius(*HAND, radius=-1)
    with pytest.raises(ValueError, match="ns must be a non-empty list of ints >= 1"):
        precision_at_n(*HAND, ns=[0, 10])
