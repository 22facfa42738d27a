"""Exact k-nearest-neighbour Hamming search with multi-index hashing (MIH).

Norouzi, Punjani and Fleet, "Fast exact search in Hamming space with multi-index hashing", TPAMI 2014.

Each b-bit code is split into m contiguous substrings of ``floor(b/m)`` or ``ceil(b/m)`` bits (the
first ``b mod m`` are the longer ones), and each substring position gets one table. A query probes
the tables at substring radius ``s = 0, 1, 2, ...``: at radius s, table j returns every code whose
substring j is at distance exactly s from the query's substring j (the query substring XOR each of
the ``C(L_j, s)`` precomputed masks of popcount s, looked up in the table).

**The bound (pigeonhole, the paper's Proposition 1 applied incrementally).** After probing tables
``0..j`` at radius s and tables ``j+1..m-1`` at radius ``s-1``, a code not yet found has substring
distances ``>= s+1`` in tables ``0..j`` and ``>= s`` in the others, so its full distance is at least
``(j+1)(s+1) + (m-j-1)s = m*s + j + 1``. Every code at distance ``< m*s + j + 1`` has been found. The
search stops as soon as it holds k candidates and the k-th one's distance is ``< m*s + j + 1``: every
code at a distance ``<=`` the k-th one's has then been seen, so the k best by (distance, database
position) are final, ties in the same order as the linear scan (``hashing.codes.topk_hamming``).

**No set of seen ids.** A code can turn up in several tables; it is counted only in the first probe
that finds it, decided from its own substring distances (it is new at probe (s, j) iff its substring
distance is ``> s`` in every table before j and ``>= s`` in every table after j). So a search keeps no
per-query state of size n and is safe to run from several threads at once.

**Choosing m** (the paper's Section 4.4): substrings of about ``log2(n)`` bits, ``m = b / log2(n)``,
rounded up here (``choose_m``), so substrings have at most ``log2(n)`` bits and each table is a dense
array of at most ~2n bucket offsets: one array read per lookup. Rounding down instead (64-bit codes
at 1M: m = 3 instead of 4) measured 1.7x slower on random codes (no faster on clustered ones) and
needs sorted substrings + binary search or 16 MB of offsets per table. m is at least
``ceil(b / 32)`` (substrings of at most 32 bits). Pass ``m=`` to override.

**State (bytes per code, besides the caller's codes, which are referenced, not copied).** Per table:
the database positions sorted by substring value (``uint32`` ids: 4 bytes per code; ``uint64`` past
2**32 codes) and either direct offsets (``uint32[2**L + 1]``, one bucket per substring value; used
when that is no larger than the sorted substrings) or the sorted substring values themselves (2
bytes per code for L <= 16, else 4), searched with ``numpy.searchsorted``. With ``choose_m``'s m every
table is direct (``2**L <= 2n``): about ``4m`` bytes per code plus at most ``8m`` for the offsets; for
64-bit codes 12.3 bytes per code at 100M (m = 3) and 17 at 1M (m = 4). ``MultiIndexHash.state_bytes``
reports it exactly. Building a table
needs the substring column and its argsort (12 bytes per code) as temporaries, one table at a time.

**Falling back to the scan.** Where MIH would examine more than ``fallback_work`` lookups +
candidates for a query (k close to n, or codes so spread out that the k-th neighbour is far), the
query is answered by the linear scan instead, which gives the same result; ``last_stats`` counts them.
A probe of more than ``MAX_SHELL`` masks (4M) always falls back, so memory stays bounded.

**faiss** has no exact k-NN in Hamming space besides the linear scan (``IndexBinaryFlat``): its
``IndexBinaryMultiHash`` (and ``IndexBinaryHash``) probe a fixed number of bit flips (``nflip``) per
substring and rank only what those buckets hold, so its k-NN is approximate (it misses neighbours
whose substrings all differ by more than ``nflip`` and returns fewer than k when the buckets hold
fewer); there is no progressive radius with a stopping bound. Checked with faiss 1.15 on 100000
random 64-bit codes, 3 hashes of 21 bits, k = 10: nflip = 0..3 matched 0%, 0%, 2%, 11% of
``IndexBinaryFlat``'s ids. Hence this module.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hashing.codes import check_codes, topk_hamming

logger = logging.getLogger(__name__)

MAX_SUBSTRING_BITS = 32
# Rows per chunk when extracting substrings during the build (bounds the temporaries).
_BUILD_CHUNK_ROWS = 1 << 22
# A probe of more masks than this (32 MB of int64) always falls back to the scan, whatever fallback_work says.
MAX_SHELL = 1 << 22


def substring_bounds(bits: int, m: int) -> list[tuple[int, int]]:
    """Bit ranges ``[start, stop)`` of the m substrings: lengths ``ceil(bits/m)`` first, then ``floor``."""
    if not 1 <= m <= bits:
        raise ValueError(f"m must be in [1, {bits}] for {bits}-bit codes, got {m}")
    base, extra = divmod(bits, m)
    bounds, start = [], 0
    for j in range(m):
        stop = start + base + (j < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def choose_m(bits: int, n: int) -> int:
    """The paper's ``m = b / log2(n)``, rounded up: substrings of at most ``log2(n)`` bits, so a table has
    at most about n buckets and is a dense offsets array; at least ``ceil(bits / 32)``, at most ``bits``."""
    lowest = -(-bits // MAX_SUBSTRING_BITS)
    if n < 2:
        return lowest
    return min(bits, max(lowest, math.ceil(bits / math.log2(n))))


@functools.lru_cache(maxsize=512)
def shell_masks(length: int, radius: int) -> np.ndarray:
    """Every ``length``-bit value with exactly ``radius`` bits set, as read-only ``int64[C(length, radius)]``.

    Built level by level: each mask of radius ``r - 1`` is extended by one bit above its highest one.
    """
    if not 0 <= radius <= length <= 62:
        raise ValueError(f"need 0 <= radius <= length <= 62, got radius {radius}, length {length}")
    if radius == 0:
        out = np.zeros(1, dtype=np.int64)
    else:
        previous = shell_masks(length, radius - 1)
        _, exponent = np.frexp(previous.astype(np.float64))  # exact: values < 2**53
        highest = exponent.astype(np.int64) - 1  # -1 for the zero mask
        counts = length - 1 - highest
        total = int(counts.sum())
        first = np.cumsum(counts) - counts
        bit = np.arange(total, dtype=np.int64) - np.repeat(first - highest - 1, counts)
        out = np.repeat(previous, counts) | (np.int64(1) << bit)
    out.flags.writeable = False
    return out


def _word_view(codes: np.ndarray) -> np.ndarray:
    """Codes ``uint8[n, B]`` as ``uint{64,32,16,8}[n, W]`` (the widest word dividing B): a view, no copy."""
    width = codes.shape[1]
    for dtype in (np.uint64, np.uint32, np.uint16):
        size = np.dtype(dtype).itemsize
        if width % size == 0:
            return codes.view(dtype)
    return codes


def _substring_values(codes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Bits ``[start, stop)`` of each code (``numpy.packbits`` order, first bit highest), uint64[n]."""
    first, last = start // 8, (stop - 1) // 8
    value = np.zeros(codes.shape[0], dtype=np.uint64)
    for byte in range(first, last + 1):
        value <<= np.uint64(8)
        value |= codes[:, byte]
    value >>= np.uint64(8 * (last + 1) - stop)
    value &= np.uint64((1 << (stop - start)) - 1)
    return value


@dataclass
class _Table:
    """One substring table: bits ``[start, stop)``; ``ids`` = database positions sorted by substring
    value (ascending positions within a value); ``offsets`` (direct) or ``values`` (sorted substrings)."""

    start: int
    stop: int
    ids: np.ndarray
    offsets: np.ndarray | None
    values: np.ndarray | None
    mask: np.ndarray = field(repr=False)  # the substring's bits in word layout, for substring distances

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + sum(a.nbytes for a in (self.offsets, self.values) if a is not None)

    def buckets(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, lengths)`` int64 of the buckets of substring values ``keys`` in ``ids``."""
        if self.offsets is not None:
            starts = self.offsets[keys].astype(np.int64)
            return starts, self.offsets[keys + 1] - starts
        keys = keys.astype(self.values.dtype)
        starts = np.searchsorted(self.values, keys, side="left")
        return starts, np.searchsorted(self.values, keys, side="right") - starts


@dataclass
class SearchStats:
    """What the last ``search`` did: queries, lookups (buckets probed), candidates (codes whose distance
    was computed), the largest substring radius reached, and queries answered by the scan fallback."""

    queries: int = 0
    lookups: int = 0
    candidates: int = 0
    max_radius: int = 0
    fallbacks: int = 0


class MultiIndexHash:
    """Exact top-k Hamming search over packed codes with m substring tables (see the module docstring).

    Args:
        codes: database codes ``uint8[n, B]`` (``numpy.packbits`` order); referenced, not copied, when
            C-contiguous.
        m: number of substrings (tables); None: ``choose_m(bits, n)``.
        fallback_work: lookups + candidates after which a query is answered by the linear scan instead
            (same result); None: ``n // 8`` (the scan touches every code, but sequentially, several
            times cheaper per code than a candidate's random access); 0 never falls back (except for a
            probe of more than ``MAX_SHELL`` masks).
    """

    def __init__(self, codes: np.ndarray, m: int | None = None, fallback_work: int | None = None) -> None:
        check_codes(codes, "index codes")
        self.codes = np.ascontiguousarray(codes)
        n, width = self.codes.shape
        bits = width * 8
        if n >= 2**63:
            raise ValueError(f"too many codes: {n}")
        if m is None:
            m = choose_m(bits, n)
        lowest = -(-bits // MAX_SUBSTRING_BITS)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not lowest <= m <= bits:
            raise ValueError(f"m must be in [{lowest}, {bits}] for {bits}-bit codes "
                             f"(substrings of 1 to {MAX_SUBSTRING_BITS} bits), got {m!r}")
        self.m = int(m)
        self.fallback_work = n // 8 if fallback_work is None else int(fallback_work)
        self._words = _word_view(self.codes)
        self._id_dtype = np.uint32 if n <= 2**32 else np.uint64
        self._shift = max(1, (n - 1).bit_length())
        self.tables = [self._build_table(start, stop) for start, stop in substring_bounds(bits, m)]
        self.last_stats = SearchStats()
        logger.info("MIH over %d codes of %d bits: m=%d, substrings %s, %.1f state bytes per code",
                    n, bits, m, [t.length for t in self.tables], self.state_bytes_per_code)

    @property
    def bits(self) -> int:
        """Code length b."""
        return self.codes.shape[1] * 8

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def state_bytes(self) -> int:
        """Bytes the index holds besides the codes (ids, offsets or sorted substrings of every table)."""
        return sum(t.nbytes for t in self.tables)

    @property
    def state_bytes_per_code(self) -> float:
        """``state_bytes / n`` (0 for an empty index)."""
        return self.state_bytes / len(self) if len(self) else 0.0

    def _build_table(self, start: int, stop: int) -> _Table:
        n = len(self)
        length = stop - start
        value_dtype = np.uint16 if length <= 16 else np.uint32
        values = np.empty(n, dtype=value_dtype)
        for i in range(0, n, _BUILD_CHUNK_ROWS):
            rows = slice(i, i + _BUILD_CHUNK_ROWS)
            values[rows] = _substring_values(self.codes[rows], start, stop)
        order = np.argsort(values, kind="stable")  # stable: positions ascend within a bucket
        ids = order.astype(self._id_dtype)
        direct = 2**length <= 2 * n  # always with choose_m's m
        if direct:
            counts = np.bincount(values, minlength=2**length)
            offsets = np.zeros(2**length + 1, dtype=self._id_dtype)
            np.cumsum(counts, out=offsets[1:])
            del values
            sorted_values = None
        else:
            offsets = None
            sorted_values = values[order]
        del order
        bit_mask = np.zeros((1, self.codes.shape[1] * 8), dtype=np.uint8)
        bit_mask[0, start:stop] = 1
        mask = _word_view(np.packbits(bit_mask, axis=1))[0]
        return _Table(start, stop, ids, offsets, sorted_values, mask)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query, exactly as ``hashing.codes.topk_hamming`` returns them.

        Args:
            queries: codes ``uint8[q, B]`` (same B as the index).
            k: neighbours per query (>= 1); more than n returns all n.

        Returns:
            ``(distances int32[q, min(k, n)], ids int64[q, min(k, n)])`` ordered by (distance, id).
        """
        check_codes(queries, "query codes", width=self.codes.shape[1])
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        n, q = len(self), queries.shape[0]
        k = min(int(k), n)
        stats = SearchStats(queries=q)
        self.last_stats = stats
        distances = np.zeros((q, k), dtype=np.int32)
        ids = np.zeros((q, k), dtype=np.int64)
        if k == 0 or q == 0:
            return distances, ids
        queries = np.ascontiguousarray(queries)
        q_words = _word_view(queries)
        q_subs = [_substring_values(queries, t.start, t.stop).astype(np.int64) for t in self.tables]
        scan = []
        for i in range(q):
            keys = self._search_one(q_words[i], [int(s[i]) for s in q_subs], k, stats)
            if keys is None:
                scan.append(i)
                continue
            distances[i] = keys >> self._shift
            ids[i] = keys & ((1 << self._shift) - 1)
        if scan:
            stats.fallbacks = len(scan)
            distances[scan], ids[scan] = topk_hamming(queries[scan], self.codes, k)
        return distances, ids

    def _search_one(self, q_words: np.ndarray, q_subs: list[int], k: int,
                    stats: SearchStats) -> np.ndarray | None:
        """Sorted keys ``distance << shift | id`` of the k best, or None: fall back to the scan."""
        m, shift, tables = self.m, self._shift, self.tables
        budget = self.fallback_work
        work = 0
        best = np.empty(0, dtype=np.int64)
        kth_key = np.iinfo(np.int64).max  # keys below it can enter (full best: its largest key)
        one_word = self._words.shape[1] == 1
        db = self._words[:, 0] if one_word else self._words
        q_word = q_words[0] if one_word else q_words
        for s in range(max(t.length for t in tables) + 1):
            stats.max_radius = max(stats.max_radius, s)
            for j, table in enumerate(tables):
                if s <= table.length:
                    size = math.comb(table.length, s)
                    if size > MAX_SHELL or (budget and work + size > budget):
                        return None
                    probe = shell_masks(table.length, s) ^ q_subs[j]
                    starts, lengths = table.buckets(probe)
                    work += probe.size
                    stats.lookups += probe.size
                    found = lengths > 0
                    if found.any():
                        starts, lengths = starts[found], lengths[found]
                        total = int(lengths.sum())
                        work += total
                        stats.candidates += total
                        ends = np.cumsum(lengths)
                        positions = np.repeat(starts - (ends - lengths), lengths)
                        positions += np.arange(total, dtype=np.int64)
                        candidates = table.ids[positions]
                        x = db[candidates] ^ q_word
                        d = np.bitwise_count(x)
                        if not one_word:
                            d = d.sum(axis=1, dtype=np.uint16)
                        if best.size == k:  # only a distance <= the k-th one's can enter
                            near = np.flatnonzero(d <= (kth_key >> shift))
                            candidates, x, d = candidates[near], x[near], d[near]
                        if m > 1 and candidates.size:
                            new = self._first_found(x, j, s, one_word)
                            candidates, d = candidates[new], d[new]
                        keys = (d.astype(np.int64) << shift) | candidates.astype(np.int64, copy=False)
                        keys = keys[keys < kth_key]
                        if keys.size:
                            best = np.concatenate([best, keys])
                            if best.size > k:
                                best = np.partition(best, k - 1)[:k]
                            if best.size == k:
                                kth_key = int(best.max())
                # Codes still unseen are at distance >= m*s + j + 1 (module docstring).
                if best.size == k and (kth_key >> shift) < m * s + j + 1:
                    return np.sort(best)
        return np.sort(best)  # every table probed at every radius: everything was seen

    def _first_found(self, x: np.ndarray, j: int, s: int, one_word: bool) -> np.ndarray:
        """Which candidates (``x`` = code XOR query) probe (s, j) is the first to find: substring
        distance ``> s`` in every table before j and ``>= s`` in every table after j."""
        keep = np.ones(x.shape[0], dtype=bool)
        for other, table in enumerate(self.tables):
            if other == j or (other > j and s == 0):
                continue
            masked = np.bitwise_count(x & table.mask[0] if one_word else x & table.mask)
            d = masked if one_word else masked.sum(axis=1)
            keep &= d > s if other < j else d >= s
        return keep


def build_from_split(split_root: str, m: int | None = None,
                     **kwargs: Any) -> tuple[MultiIndexHash, np.ndarray]:
    """``(index, keys)`` over every code-shard part under ``split_root`` (``hashing.code_shards``), rows in
    the order ``load_split`` reads them; the index references the loaded codes (one copy in memory)."""
    from hashing.code_shards import load_split

    split = load_split(split_root)
    return MultiIndexHash(split.codes, m=m, **kwargs), split.keys
