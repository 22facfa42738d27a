"""Retrieval metrics for binary codes, exactly as METHODS.md "Evaluation protocol" defines them.

Inputs everywhere: query and database codes ``uint8[m, B]`` / ``uint8[n, B]`` (packed, see
``hashing.codes``) and multi-hot labels ``uint8|bool[m, c]`` / ``uint8|bool[n, c]``.

- Relevant: the database item shares at least one label with the query. Graded relevance
  ``r`` = number of shared labels.
- Ranking: by Hamming distance, ties in database order (deterministic; a stable sort).
- Every per-query score is averaged over *all* queries; a query without any hit scores 0.

Queries are processed in batches of ``m_batch x n`` distances (about 1M), so memory stays bounded.
Instead of sorting every row, each batch turns (distance, position) into one integer key
``distance << shift | position`` and selects the top K keys with a linear-time partition; the
size of a Hamming distance group (a tie group) is a count of keys in a range, and the ideal
ranking for NDCG comes from counts over the distinct label rows of the database.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hashing.codes import check_codes, common_bits_into, hamming_distance_into, to_words

logger = logging.getLogger(__name__)

# Query rows x database rows held at once (int32 keys: about 4 MB, cache friendly).
_BATCH_ELEMENTS = 1 << 20


@dataclass
class _Database:
    """Database-side arrays prepared once per metric call.

    words: uint64[n, W] codes as 64-bit words; label_words: uint64[n, L] packed multi-hot labels
    (label_words_t: its transpose uint64[L, n]); shift: bits of a key that hold the position.
    """

    shift: int
    words: np.ndarray
    label_words: np.ndarray
    label_words_t: np.ndarray
    shared_dtype: type

    @property
    def n(self) -> int:
        return self.words.shape[0]

    @cached_property
    def patterns(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct label rows uint64[u, L] and how many items hold each, int64[u].

        Only NDCG's ideal ranking needs them, so they are computed on first use.
        """
        if self.label_words.shape[1] == 1:  # one word: a 1-D unique is ~50x faster than axis=0
            rows, counts = np.unique(self.label_words[:, 0], return_counts=True)
            return rows[:, None], counts
        return np.unique(self.label_words, axis=0, return_counts=True)


@dataclass
class _Batch:
    """One batch of queries ranked against the whole database.

    keys: int32|int64[mb, n], ``distance << db.shift | position`` for every database item.
    top: same dtype as keys [mb, depth], the ``depth`` smallest keys of each row, ascending.
    label_words: uint64[mb, L], the queries' packed labels.
    """

    keys: np.ndarray
    top: np.ndarray
    label_words: np.ndarray
    db: _Database

    @property
    def n(self) -> int:
        return self.db.n

    def key(self, distance: np.ndarray | int) -> np.ndarray | int:
        """The smallest key of the given Hamming distance(s)."""
        return distance << self.db.shift

    @property
    def top_distance(self) -> np.ndarray:
        """int[mb, depth]: Hamming distance of the ranked items."""
        return self.top >> self.db.shift

    @cached_property
    def top_shared(self) -> np.ndarray:
        """uint8|uint16[mb, depth]: shared labels r of the ranked items (counted for those only)."""
        positions = self.top & ((1 << self.db.shift) - 1)
        shared = np.zeros(self.top.shape, dtype=self.db.shared_dtype)
        for w, database_word in enumerate(self.db.label_words_t):
            ranked = np.take(database_word, positions)
            np.bitwise_and(ranked, self.label_words[:, w : w + 1], out=ranked)
            shared += np.bitwise_count(ranked)
        return shared

    @cached_property
    def relevant(self) -> np.ndarray:
        """bool[mb, n]: the item shares a label with the query."""
        shared = np.empty(self.keys.shape, dtype=self.db.shared_dtype)
        common_bits_into(self.label_words, self.db.label_words, shared)
        return shared > 0

    def count_at_least(self) -> np.ndarray:
        """int64[mb, top_r + 2]: column v = database items sharing >= v labels with the query.

        top_r = most labels a query of the batch has; columns 0 and top_r + 1 are 0. Counted over
        the distinct label rows of the database, so it costs mb x (distinct rows), not mb x n.
        """
        top_r = int(np.bitwise_count(self.label_words).sum(axis=1).max())
        patterns, pattern_counts = self.db.patterns
        shared = np.empty((self.keys.shape[0], patterns.shape[0]), dtype=self.db.shared_dtype)
        common_bits_into(self.label_words, patterns, shared)
        counts = np.zeros((shared.shape[0], top_r + 2), dtype=np.int64)
        for v in range(1, top_r + 1):
            counts[:, v] = (shared >= v) @ pattern_counts
        return counts

    def count_within(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items with ``low <= distance < high`` per row (low, high: int[mb]): (all, relevant) int64[mb]."""
        inside = (self.keys >= self.key(low)[:, None]) & (self.keys < self.key(high)[:, None])
        return np.count_nonzero(inside, axis=1), np.count_nonzero(inside & self.relevant, axis=1)


def mean_average_precision(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = None,
) -> float:
    """mAP@K: mean over queries of AP = mean over hits j in the top K of ``j / rank of the j-th hit``.

    ``topk=None`` ranks the whole database (the last item included). Ties: database order.
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(topk, db_codes)
    scores = [
        _average_precision(b.top_shared) for b in _batches(q_codes, db_codes, q_labels, db_labels, depth)
    ]
    return float(np.concatenate(scores).mean())


def tie_aware_map(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = None,
) -> float:
    """Tie-aware mAP@K (He et al., CVPR 2018): the exact expectation of AP@K over random orders
    within each Hamming distance group, averaged over queries. See ``_tie_aware_ap``."""
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(topk, db_codes)
    scores = [_tie_aware_ap(b) for b in _batches(q_codes, db_codes, q_labels, db_labels, depth)]
    return float(np.concatenate(scores).mean())


def ndcg(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, k: int = 100
) -> float:
    """NDCG@k with gain ``2**r - 1`` and discount ``1 / log2(rank + 1)``, per query then averaged.

    The ideal DCG ranks the whole database by r; a query with no relevant item scores 0.
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(k, db_codes)
    scores = [_ndcg(b, depth) for b in _batches(q_codes, db_codes, q_labels, db_labels, depth)]
    return float(np.concatenate(scores).mean())


def acg(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, k: int = 100
) -> float:
    """ACG@k: mean number of shared labels r over the top k, averaged over queries."""
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(k, db_codes)
    scores = [b.top_shared.mean(axis=1) for b in _batches(q_codes, db_codes, q_labels, db_labels, depth)]
    return float(np.concatenate(scores).mean())


def weighted_map(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = None,
) -> float:
    """Weighted mAP@K (Zhao et al., DSRH, CVPR 2015; used by IDHN): per query,
    ``wAP = (1 / hits in top K) * sum over hits at rank i <= K of ACG@i``, ``ACG@i = (r_1 + ... + r_i) / i``.

    It is AP with the hit count j replaced by the cumulative shared-label count; 0 without hits.
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(topk, db_codes)
    scores = [_weighted_ap(b.top_shared) for b in _batches(q_codes, db_codes, q_labels, db_labels, depth)]
    return float(np.concatenate(scores).mean())


def precision_within_radius(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, radius: int = 2
) -> float:
    """Mean over queries of relevant / retrieved among items with Hamming distance <= radius (0 if none)."""
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    _check_radius(radius)
    scores = [_precision_within(b, radius) for b in _batches(q_codes, db_codes, q_labels, db_labels, 0)]
    return float(np.concatenate(scores).mean())


def precision_at_n(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    ns: list[int] | np.ndarray = (100, 200, 500, 1000),
) -> np.ndarray:
    """Precision@N curve: float64[len(ns)], mean over queries of (relevant in the top N) / N.

    N larger than the database is clipped to its size. Ties: database order.
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    ns = np.asarray(ns)
    if ns.ndim != 1 or ns.size == 0 or not np.issubdtype(ns.dtype, np.integer) or (ns < 1).any():
        raise ValueError(f"ns must be a non-empty list of ints >= 1, got {ns.tolist()}")
    clipped = np.minimum(ns, db_codes.shape[0])
    depth = int(clipped.max())
    rows = []
    for batch in _batches(q_codes, db_codes, q_labels, db_labels, depth):
        hits = np.cumsum(batch.top_shared > 0, axis=1)
        rows.append(hits[:, clipped - 1] / clipped)
    return np.concatenate(rows).mean(axis=0)


def pr_curve(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of Hamming-ball retrieval at every radius 0..K.

    Returns:
        ``(precision, recall)``, each float64[K + 1] indexed by radius: the mean over queries of
        relevant/retrieved (0 when nothing is retrieved, as ``precision_within_radius``) and of
        relevant retrieved / relevant in the database (0 for a query without relevant items).
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    bits = db_codes.shape[1] * 8
    groups = bits + 1
    precision, recall, m = np.zeros(groups), np.zeros(groups), 0
    for batch in _batches(q_codes, db_codes, q_labels, db_labels, 0):
        mb = batch.keys.shape[0]
        group = (batch.keys >> batch.db.shift).astype(np.int64) + (np.arange(mb) * groups)[:, None]
        retrieved = np.bincount(group.ravel(), minlength=mb * groups).reshape(mb, groups).cumsum(axis=1)
        hits = np.bincount(group[batch.relevant], minlength=mb * groups).reshape(mb, groups).cumsum(axis=1)
        precision += (hits / np.maximum(retrieved, 1)).sum(axis=0)
        recall += (hits / np.maximum(hits[:, -1:], 1)).sum(axis=0)
        m += mb
    return precision / m, recall / m


def retrieval_report(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    q_labels: np.ndarray,
    db_labels: np.ndarray,
    topk: int | None = 1000,
    ndcg_k: int = 100,
    radius: int = 2,
) -> dict[str, float]:
    """All scalar metrics in one pass over query batches.

    Returns:
        ``{"map@K", "map_tie_aware@K", "wmap@K", "ndcg@k", "acg@k", "p@rR"}`` with K = ``topk``
        (``"all"`` when None), k = ``ndcg_k``, R = ``radius``; each value the mean over queries.
    """
    _check_inputs(q_codes, db_codes, q_labels, db_labels)
    depth = _depth(topk, db_codes)
    k = _depth(ndcg_k, db_codes)
    _check_radius(radius)
    name = "all" if topk is None else str(topk)
    columns: dict[str, list[np.ndarray]] = {
        f"map@{name}": [],
        f"map_tie_aware@{name}": [],
        f"wmap@{name}": [],
        f"ndcg@{ndcg_k}": [],
        f"acg@{ndcg_k}": [],
        f"p@r{radius}": [],
    }
    for batch in _batches(q_codes, db_codes, q_labels, db_labels, max(depth, k)):
        ranked = batch.top_shared[:, :depth]
        columns[f"map@{name}"].append(_average_precision(ranked))
        columns[f"map_tie_aware@{name}"].append(_tie_aware_ap(batch, depth))
        columns[f"wmap@{name}"].append(_weighted_ap(ranked))
        columns[f"ndcg@{ndcg_k}"].append(_ndcg(batch, k))
        columns[f"acg@{ndcg_k}"].append(batch.top_shared[:, :k].mean(axis=1))
        columns[f"p@r{radius}"].append(_precision_within(batch, radius))
    report = {key: float(np.concatenate(values).mean()) for key, values in columns.items()}
    logger.info("retrieval report over %d queries: %s", q_codes.shape[0], report)
    return report


def _average_precision(ranked_shared: np.ndarray) -> np.ndarray:
    """AP per row of ranked r values int[mb, K]: float64[mb]."""
    hits = ranked_shared > 0
    hit_number = np.cumsum(hits, axis=1, dtype=np.int32)
    count = hit_number[:, -1].copy()
    hit_number *= hits
    return (hit_number @ _inverse_ranks(hits.shape[1])) / np.maximum(count, 1)


def _weighted_ap(ranked_shared: np.ndarray) -> np.ndarray:
    """Weighted AP per row of ranked r values int[mb, K]: float64[mb]."""
    hits = ranked_shared > 0
    shared_through = np.cumsum(ranked_shared, axis=1, dtype=np.int64)
    shared_through *= hits
    return (shared_through @ _inverse_ranks(hits.shape[1])) / np.maximum(hits.sum(axis=1), 1)


def _inverse_ranks(k: int) -> np.ndarray:
    """float64[k]: 1 / rank for ranks 1..k."""
    return 1.0 / np.arange(1, k + 1)


def _ndcg(batch: _Batch, k: int) -> np.ndarray:
    """NDCG@k per query: float64[mb]."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (np.exp2(batch.top_shared[:, :k], dtype=np.float64) - 1.0) @ discount
    # Ideal ranking from counts: the items with r >= v take the first at_least[:, v] ranks.
    at_least = batch.count_at_least()
    top_r = at_least.shape[1] - 2
    cumulative_discount = np.concatenate([[0.0], np.cumsum(discount)])
    filled = cumulative_discount[np.minimum(at_least, k)]  # discount mass of the ranks taken by r >= v
    gains = np.exp2(np.arange(top_r + 2)) - 1.0
    ideal = (gains[1 : top_r + 1] * (filled[:, 1 : top_r + 1] - filled[:, 2 : top_r + 2])).sum(axis=1)
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)


def _precision_within(batch: _Batch, radius: int) -> np.ndarray:
    """Precision among items with distance <= radius per query (0 when none): float64[mb]."""
    inside = batch.keys < batch.key(radius + 1)
    retrieved = np.count_nonzero(inside, axis=1)
    return np.count_nonzero(inside & batch.relevant, axis=1) / np.maximum(retrieved, 1)


def _tie_aware_ap(batch: _Batch, depth: int | None = None) -> np.ndarray:
    """Tie-aware AP@K per query: float64[mb]; the expectation of AP@K over uniformly random orders
    inside every Hamming distance group (He et al., "Hashing as Tie-Aware Learning to Rank", 2018).

    Groups that end before rank K contribute their expected precision-at-hit sum A in closed form:
    at position t of a group with n_g items, p_g relevant, after N items of which R relevant, the
    item is a hit with probability p_g / n_g and then expects R + 1 + (t - 1)(p_g - 1)/(n_g - 1)
    hits up to it. The group holding rank K (the boundary group: n_b items, p_b relevant, s of its
    slots inside the top K) contributes h ~ Hypergeometric(n_b, p_b, s) hits; given h its expected
    sum is ``(h/s) [(R + 1) S0 + (h - 1)/(s - 1) S1]`` with ``S0 = sum_t 1/(N + t)`` and
    ``S1 = sum_t (t - 1)/(N + t)``, and AP@K = (A + that) / (R + h). The result is the exact sum over h.
    """
    mb = batch.top.shape[0]
    k = batch.top.shape[1] if depth is None else depth
    distance = batch.top_distance[:, :k]
    hits = batch.top_shared[:, :k] > 0
    index = np.arange(k)
    ranks = index + 1.0

    # Per ranked item: where its distance group starts and ends inside the top K.
    change = distance[:, 1:] != distance[:, :-1]
    starts = np.concatenate([np.ones((mb, 1), bool), change], axis=1)
    ends = np.concatenate([change, np.ones((mb, 1), bool)], axis=1)
    start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    end = np.minimum.accumulate(np.where(ends, index, k)[:, ::-1], axis=1)[:, ::-1]
    hits_through = np.cumsum(hits, axis=1)
    hits_before = hits_through - hits
    before = np.take_along_axis(hits_before, start, axis=1)  # R of the item's group
    group_hits = np.take_along_axis(hits_through, end, axis=1) - before
    group_size = end - start + 1
    position = index - start  # t - 1

    boundary = distance[:, -1]
    complete = distance < boundary[:, None]
    expected_hit = (group_hits / group_size) * (
        before + 1 + position * (group_hits - 1) / np.maximum(group_size - 1, 1)
    )
    a = np.where(complete, expected_hit / ranks, 0.0).sum(axis=1)

    # The boundary group, counted over the whole database.
    n_before = complete.sum(axis=1)
    r_before = (hits & complete).sum(axis=1)
    slots = k - n_before
    n_b, p_b = batch.count_within(boundary, boundary + 1)
    s0 = np.where(complete, 0.0, 1.0 / ranks).sum(axis=1)
    s1 = np.where(complete, 0.0, (index - n_before[:, None]) / ranks).sum(axis=1)

    low = np.maximum(0, slots - (n_b - p_b))
    high = np.minimum(slots, p_b)
    h = low[:, None] + np.arange(int((high - low).max()) + 1)
    weight = _hypergeometric_weights(h, high, n_b, p_b, slots)
    hit_sum = (h / slots[:, None]) * (
        ((r_before + 1) * s0)[:, None] + (h - 1) * (s1 / np.maximum(slots - 1, 1))[:, None]
    )
    found = r_before[:, None] + h
    ap = np.where(found > 0, (a[:, None] + hit_sum) / np.maximum(found, 1), 0.0)
    return (weight * ap).sum(axis=1)


def _hypergeometric_weights(
    h: np.ndarray, high: np.ndarray, population: np.ndarray, successes: np.ndarray, draws: np.ndarray
) -> np.ndarray:
    """P(H = h) for H ~ Hypergeometric(population, successes, draws), per row.

    ``h``: int[mb, J], consecutive values starting at the lowest possible one; entries above
    ``high`` (the largest possible value) get 0. Built from the ratio P(h + 1) / P(h) in log space
    and normalised, which stays accurate for large populations.
    """
    hs = h[:, :-1]
    valid = hs < high[:, None]
    numerator = (successes[:, None] - hs) * (draws[:, None] - hs)
    denominator = (hs + 1) * (population[:, None] - successes[:, None] - draws[:, None] + hs + 1)
    step = np.where(valid, np.log(np.maximum(numerator, 1)) - np.log(np.maximum(denominator, 1)), -np.inf)
    log_weight = np.concatenate([np.zeros((h.shape[0], 1)), np.cumsum(step, axis=1)], axis=1)
    weight = np.exp(log_weight - log_weight.max(axis=1, keepdims=True))
    return weight / weight.sum(axis=1, keepdims=True)


def _batches(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray, depth: int
) -> Iterator[_Batch]:
    """Rank the database for batches of queries; ``depth`` = how many top keys to select (0: none).

    Inputs must have passed ``_check_inputs``. The batches share their key buffer: use a batch
    before asking for the next one (every metric here reduces it to per-query scores at once).
    """
    m, n = q_codes.shape[0], db_codes.shape[0]
    bits = db_codes.shape[1] * 8
    shift = max(1, (n - 1).bit_length())
    key_dtype = np.int32 if (bits + 1) << shift <= np.iinfo(np.int32).max else np.int64
    positions = np.arange(n, dtype=key_dtype)
    q_words = to_words(q_codes)
    q_label_words = to_words(np.packbits(q_labels.astype(bool), axis=1))
    db_label_words = to_words(np.packbits(db_labels.astype(bool), axis=1))
    db = _Database(
        shift=shift,
        words=to_words(db_codes),
        label_words=db_label_words,
        label_words_t=np.ascontiguousarray(db_label_words.T),
        shared_dtype=np.uint8 if q_labels.shape[1] < 256 else np.uint16,
    )
    rows = min(m, max(1, _BATCH_ELEMENTS // n))
    # Two buffers for all batches (fresh multi-MB arrays per batch cost page faults): the keys, and
    # a copy that is partitioned in place.
    key_buffer = np.empty((rows, n), dtype=key_dtype)
    work_buffer = np.empty((rows, n), dtype=key_dtype) if 0 < depth < n else None
    for i in range(0, m, rows):
        keys = key_buffer[: min(rows, m - i)]
        hamming_distance_into(q_words[i : i + rows], db.words, keys)
        keys <<= shift
        keys |= positions
        if depth == 0:
            top = keys[:, :0]
        elif work_buffer is not None:
            work = work_buffer[: keys.shape[0]]
            np.copyto(work, keys)
            work.partition(depth - 1, axis=1)
            top = np.sort(work[:, :depth], axis=1)
        else:
            top = np.sort(keys, axis=1)
        yield _Batch(keys=keys, top=top, label_words=q_label_words[i : i + rows], db=db)


def _depth(k: int | None, db_codes: np.ndarray) -> int:
    """Ranks to evaluate: ``k`` clipped to the database size; None means all."""
    if k is None:
        return int(db_codes.shape[0])
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top-k cut-off must be None (whole database) or an int >= 1, got {k!r}")
    return min(int(k), int(db_codes.shape[0]))


def _check_radius(radius: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an int >= 0, got {radius!r}")


def _check_inputs(
    q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray
) -> None:
    for name, codes in (("query codes", q_codes), ("database codes", db_codes)):
        check_codes(codes, name)
        if codes.shape[0] == 0:
            raise ValueError(f"{name} are empty: metrics need at least one query and one database item")
    if q_codes.shape[1] != db_codes.shape[1]:
        raise ValueError(
            f"code widths differ: queries have {q_codes.shape[1] * 8} bits, database has "
            f"{db_codes.shape[1] * 8}"
        )
    for name, labels, codes in (
        ("query labels", q_labels, q_codes),
        ("database labels", db_labels, db_codes),
    ):
        if (
            not isinstance(labels, np.ndarray)
            or labels.ndim != 2
            or labels.shape[0] != codes.shape[0]
            or labels.shape[1] == 0
        ):
            raise ValueError(
                f"{name} must be multi-hot [{codes.shape[0]}, c >= 1] (one row per code), "
                f"got shape {getattr(labels, 'shape', None)}"
            )
        if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} must be bool or uint8 multi-hot, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() > 1):
            raise ValueError(f"{name} must be multi-hot (0/1 values), found values outside 0..1")
    if q_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(
            f"label widths differ: queries have {q_labels.shape[1]} classes, database has "
            f"{db_labels.shape[1]}"
        )
