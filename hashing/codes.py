"""Binary codes: the one place that knows the bit layout.

A code of K bits is stored packed as ``uint8[K // 8]`` in ``numpy.packbits`` order: bit k of the
code is bit ``7 - k % 8`` (big-endian within a byte) of byte ``k // 8``. Bit value 1 means a
non-negative relaxed value (``sign(0) = +1``). Hamming distances are XOR + popcount over 64-bit words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_BITS = 8
MAX_BITS = 1024
# Elements (query rows x database rows) in one block of the distance kernels: keeps the uint64
# temporaries (2 MB) inside the CPU cache instead of allocating m x n of them.
_BLOCK_ELEMENTS = 1 << 18
_BLOCK_COLUMNS = 16384
# Distances held at once by topk_hamming (query block x database chunk).
_TOPK_BLOCK_ELEMENTS = 1 << 20


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a valid code length K: an int multiple of 8 in [8, 1024]."""
    is_int = isinstance(bits, (int, np.integer)) and not isinstance(bits, (bool, np.bool_))
    if not is_int or bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int multiple of 8 in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return int(bits)


def check_codes(codes: np.ndarray, name: str, width: int | None = None) -> None:
    """Raise ValueError unless ``codes`` is packed codes uint8[n, B] (B = ``width`` when given).

    ``name`` says which input it is in the message (e.g. "query codes").
    """
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
        shape = getattr(codes, "shape", None)
        dtype = getattr(codes, "dtype", type(codes).__name__)
        raise ValueError(f"{name} must be packed codes uint8[n, bits // 8], got {dtype} with shape {shape}")
    if width is not None and codes.shape[1] != width:
        raise ValueError(f"{name} must have {width} bytes per code ({width * 8} bits), got {codes.shape[1]}")
    if not MIN_BITS <= codes.shape[1] * 8 <= MAX_BITS:
        raise ValueError(f"{name} have {codes.shape[1]} bytes per code ({codes.shape[1] * 8} bits); "
                         f"codes are {MIN_BITS} to {MAX_BITS} bits "
                         f"({MIN_BITS // 8} to {MAX_BITS // 8} bytes)")


def signs_to_bits(u: Any) -> np.ndarray:
    """Bits of the signs of relaxed codes.

    Args:
        u: float[n, K] numpy array or torch tensor (any device; gradients are ignored).

    Returns:
        uint8[n, K] with 1 where ``u >= 0`` (``sign(0) = +1``) and 0 where ``u < 0``.
    """
    array = _to_numpy(u)
    if array.ndim != 2:
        raise ValueError(f"relaxed codes must be 2-D float[n, K], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"relaxed codes must be a float array, got dtype {array.dtype}")
    check_bits(array.shape[1])
    if np.isnan(array).any():
        raise ValueError("relaxed codes contain NaN: the model diverged or the input was not finite")
    return (array >= 0).astype(np.uint8)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack 0/1 bits ``uint8[n, K]`` into codes ``uint8[n, K // 8]`` (``numpy.packbits`` order)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.dtype not in (np.uint8, np.bool_):
        raise ValueError(f"bits must be uint8 or bool [n, K], got {bits.dtype} with shape {bits.shape}")
    check_bits(bits.shape[1])
    if bits.dtype == np.uint8 and bits.size and bits.max() > 1:
        raise ValueError(f"bits must be 0 or 1, found the value {int(bits.max())}")
    return np.packbits(bits, axis=1)


def unpack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unpack codes ``uint8[n, bits // 8]`` into 0/1 bits ``uint8[n, bits]``."""
    check_bits(bits)
    check_codes(codes, "codes", width=bits // 8)
    return np.unpackbits(codes, axis=1)


def pack_signs(u: Any) -> np.ndarray:
    """Codes ``uint8[n, K // 8]`` from relaxed codes float[n, K] (numpy or torch): ``pack(sign(u))``."""
    return np.packbits(signs_to_bits(u), axis=1)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances.

    Args:
        a: codes uint8[m, B].
        b: codes uint8[n, B] (same B).

    Returns:
        int32[m, n], ``out[i, j]`` = number of differing bits between ``a[i]`` and ``b[j]``.
        Temporary memory is bounded (blocks of rows); only the output is m x n.
    """
    _check_pair(a, b)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    hamming_distance_into(to_words(a), to_words(b), out)
    return out


def to_words(codes: np.ndarray) -> np.ndarray:
    """View codes ``uint8[n, B]`` as 64-bit words ``uint64[n, ceil(B / 8)]`` (zero-padded copy if needed)."""
    n, width = codes.shape
    words = -(-width // 8)
    if width % 8 == 0 and codes.flags.c_contiguous:
        return codes.view(np.uint64)
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, :width] = codes
    return padded.view(np.uint64)


def hamming_distance_into(a_words: np.ndarray, b_words: np.ndarray, out: np.ndarray) -> None:
    """Write Hamming distances into ``out``: the kernel behind ``hamming_distance``.

    Args:
        a_words: uint64[m, W] from ``to_words``.
        b_words: uint64[n, W] from ``to_words``.
        out: integer [m, n] (int32 or wider), overwritten with the distances.
    """
    _popcount_pairs(np.bitwise_xor, a_words, b_words, out)


def common_bits_into(a_words: np.ndarray, b_words: np.ndarray, out: np.ndarray) -> None:
    """Write the number of bits set in both vectors (popcount of AND) into ``out``.

    With multi-hot label rows packed by ``to_words(np.packbits(labels, axis=1))`` this counts the
    labels two items share.

    Args:
        a_words: uint64[m, W] from ``to_words``.
        b_words: uint64[n, W] from ``to_words``.
        out: unsigned or signed integer [m, n] wide enough for 64 * W, overwritten.
    """
    _popcount_pairs(np.bitwise_and, a_words, b_words, out)


def _popcount_pairs(op: np.ufunc, a_words: np.ndarray, b_words: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j] = popcount(op(a_words[i], b_words[j]))`` summed over words, in cache-sized blocks.

    Counts are summed in the narrowest dtype that holds them (uint8 up to 192 bits, else uint16) and
    cast into ``out`` once per block: cheaper than adding into a wide ``out`` word by word.
    """
    words = a_words.shape[1]
    if words != b_words.shape[1]:
        raise ValueError(f"word counts differ: {words} vs {b_words.shape[1]}")
    m, n = out.shape
    b_words_t = np.ascontiguousarray(b_words.T)
    n_block = min(max(n, 1), _BLOCK_COLUMNS)
    m_block = max(1, _BLOCK_ELEMENTS // n_block)
    combined = np.empty((m_block, n_block), dtype=np.uint64)
    total_dtype = np.uint8 if 64 * words <= 255 else np.uint16
    direct = out.dtype == total_dtype  # sum straight into out, no cast needed
    total = None if direct else np.empty((m_block, n_block), dtype=total_dtype)
    count = np.empty((m_block, n_block), dtype=np.uint8)
    for i in range(0, m, m_block):
        rows = a_words[i : i + m_block]
        for j in range(0, n, n_block):
            cols = slice(j, min(j + n_block, n))
            x = combined[: rows.shape[0], : cols.stop - j]
            target = out[i : i + rows.shape[0], cols]
            t = target if direct else total[: rows.shape[0], : cols.stop - j]
            c = count[: rows.shape[0], : cols.stop - j]
            for w in range(words):
                op(rows[:, w : w + 1], b_words_t[w, cols], out=x)
                if w == 0:
                    np.bitwise_count(x, out=t)
                else:
                    np.bitwise_count(x, out=c)
                    np.add(t, c, out=t)
            if not direct:
                target[...] = t


def topk_hamming(
    queries: np.ndarray, database: np.ndarray, k: int, chunk_size: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k nearest database codes by Hamming distance, with deterministic ties.

    Results are ordered by (distance, database position) ascending, so equal distances come in
    database order. The database is scanned in chunks of ``chunk_size`` rows and queries in blocks;
    once a query holds k candidates, a chunk row can only enter with a distance below the query's
    current k-th distance, so later chunks cost a distance pass and a comparison, not a selection.
    Temporary memory stays near ``2**20`` distances (plus k keys per query) however large the database is.

    Args:
        queries: codes uint8[m, B].
        database: codes uint8[n, B].
        k: neighbours per query (>= 1); ``k > n`` returns all n.
        chunk_size: database rows per chunk (>= 1).

    Returns:
        ``(distances int32[m, k], ids int64[m, k])``, ids are row positions in ``database``.
    """
    _check_pair(queries, database)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    m, n = queries.shape[0], database.shape[0]
    k = min(int(k), n)
    if k == 0 or m == 0:
        return np.zeros((m, k), dtype=np.int32), np.zeros((m, k), dtype=np.int64)
    # One sortable key per (distance, position): distance << shift | position. Sorting keys sorts
    # by distance, then position, and the keys are unique, so no tie needs fixing afterwards.
    bits = database.shape[1] * 8
    shift = max(1, (n - 1).bit_length())
    key_dtype = np.int32 if (bits + 1) << shift <= np.iinfo(np.int32).max else np.int64
    q_words = to_words(queries)
    db_words = to_words(database)
    chunk = min(int(chunk_size), n)
    query_block = max(1, _TOPK_BLOCK_ELEMENTS // chunk)
    distances = np.empty((min(query_block, m), chunk), dtype=np.uint8 if bits <= 255 else np.uint16)
    best_keys = np.empty((m, k), dtype=key_dtype)
    for i in range(0, m, query_block):
        q = q_words[i : i + query_block]
        best = np.empty((q.shape[0], 0), dtype=key_dtype)
        for j in range(0, n, chunk):
            block = db_words[j : j + chunk]
            d = distances[: q.shape[0], : block.shape[0]]
            hamming_distance_into(q, block, d)
            best = _merge_chunk(best, d, j, k, shift)
        best_keys[i : i + q.shape[0]] = np.sort(best, axis=1)
    distances_out = (best_keys >> shift).astype(np.int32)
    ids = (best_keys & ((1 << shift) - 1)).astype(np.int64)
    return distances_out, ids


def _merge_chunk(best: np.ndarray, d: np.ndarray, start: int, k: int, shift: int) -> np.ndarray:
    """The k smallest keys of ``best`` (int keys [q, <= k], unordered) and a chunk's distances.

    ``d``: uint8|uint16[q, c], distances to database rows ``start .. start + c - 1``. Returns keys
    [q, min(k, kept + c)], unordered.
    """
    key_dtype = best.dtype
    if best.shape[1] < k:  # fewer than k kept so far: every row of the chunk is a candidate
        keys = d.astype(key_dtype) << shift
        keys |= np.arange(start, start + d.shape[1], dtype=key_dtype)
        keys = np.concatenate([best, keys], axis=1)
        return np.partition(keys, k - 1, axis=1)[:, :k] if keys.shape[1] > k else keys
    # A chunk row beats the k-th kept key only with a smaller distance: at an equal distance its
    # position, later than every kept one, loses the tie.
    limit = (best.max(axis=1) >> shift).astype(d.dtype)
    entering = np.flatnonzero(d < limit[:, None])  # 1-D: much faster than a 2-D nonzero
    if entering.size == 0:
        return best
    rows, cols = np.divmod(entering, d.shape[1])
    counts = np.bincount(rows, minlength=d.shape[0])
    slots = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within its row
    candidates = np.full((d.shape[0], int(counts.max())), np.iinfo(key_dtype).max, dtype=key_dtype)
    candidates[rows, slots] = (d[rows, cols].astype(key_dtype) << shift) | (cols + start).astype(key_dtype)
    return np.partition(np.concatenate([best, candidates], axis=1), k - 1, axis=1)[:, :k]


def _to_numpy(u: Any) -> np.ndarray:
    if isinstance(u, np.ndarray):
        return u
    if hasattr(u, "detach") and hasattr(u, "cpu"):
        tensor = u.detach().cpu()
        if tensor.is_floating_point() and tensor.element_size() == 2:
            tensor = tensor.float()  # bfloat16 has no numpy dtype; widening keeps every sign
        return tensor.numpy()
    raise ValueError(f"relaxed codes must be a numpy array or torch tensor, got {type(u).__name__}")


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    check_codes(a, "query codes")
    check_codes(b, "database codes")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"code widths differ: queries have {a.shape[1] * 8} bits, database has {b.shape[1] * 8} bits"
        )
