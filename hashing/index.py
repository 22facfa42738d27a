"""Top-k Hamming search over packed codes: exact scans, exact sub-linear MIH, approximate IVF.

Backends:
- ``"numpy"``: ``hashing.codes.topk_hamming``; exact, results ordered by (distance, row).
- ``"faiss"``: ``faiss.IndexBinaryFlat``; exact and identical to ``"numpy"``, tie order included
  (faiss's result heap breaks distance ties by the smaller id; ``tests/test_index.py`` checks it on
  codes with many ties, so a faiss upgrade that changes this fails the tests).
- ``"mih"``: ``hashing.mih.MultiIndexHash`` (multi-index hashing, Norouzi et al. 2014); exact and
  identical to ``"numpy"``, tie order included, and sub-linear: m substring tables probed at
  increasing radius until the k-th distance is proven final. Fastest where neighbours are near
  (learned, clustered codes): at 100M clustered 64-bit codes, 258x the scan's queries/s, single-threaded
  (``benchmarks/README.md``). Its tables take about 4 bytes per code per table (m = 3-4 for 64 bits).
  faiss has no exact equivalent (``IndexBinaryMultiHash`` probes a fixed radius: approximate).
- ``"faiss-ivf"``: ``faiss.IndexBinaryIVF``; **approximate**. The codes are clustered into ``nlist``
  inverted lists (binary k-means) and a query scans only the ``nprobe`` nearest lists, so a search
  costs about ``n * nprobe / nlist`` distances instead of ``n``. It can miss true neighbours and
  return fewer than k: missing slots have id -1 and distance ``MISSING_DISTANCE``. For corpora too
  large for an exact scan per query; raise ``nprobe`` to trade speed for recall.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hashing.codes import check_codes, topk_hamming

logger = logging.getLogger(__name__)

BACKENDS = ("numpy", "faiss", "mih", "faiss-ivf")
# Distance faiss reports for the empty slots of an approximate search (INT32_MAX).
MISSING_DISTANCE = int(np.iinfo(np.int32).max)


class HammingIndex:
    """Top-k Hamming search over codes ``uint8[n, bits // 8]``, optionally with one key per row.

    Args:
        codes: database codes uint8[n, B] (``numpy.packbits`` order, see ``hashing.codes``).
        keys: optional sample keys, one per row (e.g. WebDataset ``__key__``).
        backend: one of ``BACKENDS`` (see the module docstring).
        nlist: inverted lists for ``"faiss-ivf"`` (default ``round(sqrt(n))``, at most n).
        nprobe: lists a ``"faiss-ivf"`` query scans (clipped to nlist).
        chunk_size: database rows per chunk for ``"numpy"``.
        trained: for ``"faiss-ivf"``, the bytes of ``serialized()`` of an index built over these same
            codes earlier: loaded instead of clustering again (``nlist`` is then the stored one).
        mih_m: substrings (tables) for ``"mih"``; None: ``hashing.mih.choose_m`` (the paper's b / log2 n).
    """

    def __init__(
        self,
        codes: np.ndarray,
        keys: Sequence[str] | np.ndarray | None = None,
        backend: str = "numpy",
        nlist: int | None = None,
        nprobe: int = 8,
        chunk_size: int = 65536,
        trained: bytes | None = None,
        mih_m: int | None = None,
    ) -> None:
        check_codes(codes, "index codes")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if keys is not None and len(keys) != codes.shape[0]:
            raise ValueError(
                f"keys must have one entry per code: {len(keys)} keys for {codes.shape[0]} codes"
            )
        self.codes = np.ascontiguousarray(codes)
        self.keys = None if keys is None else np.asarray(keys, dtype=object)
        self.backend = backend
        self.chunk_size = chunk_size
        self._faiss_index: Any = None
        self._mih: Any = None
        if backend == "mih":
            from hashing.mih import MultiIndexHash

            self._mih = MultiIndexHash(self.codes, m=mih_m)
        elif backend == "faiss":
            self._faiss_index = _flat_index(self.codes)
        elif backend == "faiss-ivf":
            self._faiss_index = _ivf_index(self.codes, nlist, nprobe, trained)

    @property
    def bits(self) -> int:
        """Code length K."""
        return self.codes.shape[1] * 8

    def __len__(self) -> int:
        return self.codes.shape[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query.

        Args:
            queries: codes uint8[m, B] (same B as the index).
            k: neighbours per query (>= 1); more than ``len(self)`` returns all rows.

        Returns:
            ``(distances int32[m, k], ids int64[m, k])`` ordered by (distance, id); ids are rows of
            ``codes``. Only ``"faiss-ivf"`` can leave slots empty (id -1, ``MISSING_DISTANCE``).
        """
        check_codes(queries, "query codes", width=self.codes.shape[1])
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if self._mih is not None:
            return self._mih.search(queries, k)
        if self._faiss_index is None or len(self) == 0:
            return topk_hamming(queries, self.codes, k, chunk_size=self.chunk_size)
        distances, ids = self._faiss_index.search(np.ascontiguousarray(queries), min(int(k), len(self)))
        return distances.astype(np.int32, copy=False), ids.astype(np.int64, copy=False)

    def serialized(self) -> bytes:
        """The faiss index as bytes (to store next to the codes and pass back as ``trained=``)."""
        import faiss

        if self._faiss_index is None:
            raise ValueError(f"backend {self.backend!r} has no faiss index to serialise")
        return faiss.serialize_index_binary(self._faiss_index).tobytes()

    def keys_for(self, ids: np.ndarray) -> np.ndarray:
        """Keys of result ids: object[same shape as ids]; None where the id is -1 (an empty slot)."""
        if self.keys is None:
            raise ValueError("this index has no keys: pass keys=... when building the HammingIndex")
        ids = np.asarray(ids)
        found = ids >= 0
        out = np.full(ids.shape, None, dtype=object)
        out[found] = self.keys[ids[found]]
        return out


def _flat_index(codes: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    return index


def _ivf_index(codes: np.ndarray, nlist: int | None, nprobe: int, trained: bytes | None = None) -> Any:
    import faiss

    n = codes.shape[0]
    if trained is not None:
        index = faiss.deserialize_index_binary(np.frombuffer(trained, dtype=np.uint8))
        if index.ntotal != n or index.d != codes.shape[1] * 8:
            raise ValueError(f"the stored faiss index holds {index.ntotal} codes of {index.d} bits, "
                             f"not these {n} codes of {codes.shape[1] * 8} bits: build it anew")
        index.nprobe = min(int(nprobe), int(index.nlist))
        return index
    if n == 0:
        raise ValueError("backend 'faiss-ivf' needs at least one code to train its inverted lists")
    nlist = max(1, round(math.sqrt(n))) if nlist is None else nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= n:
        raise ValueError(f"nlist must be an int in [1, {n}] (the number of codes), got {nlist!r}")
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise ValueError(f"nprobe must be an int >= 1, got {nprobe!r}")
    bits = codes.shape[1] * 8
    quantizer = faiss.IndexBinaryFlat(bits)
    index = faiss.IndexBinaryIVF(quantizer, bits, int(nlist))  # the wrapper keeps quantizer alive
    index.train(codes)
    index.add(codes)
    index.nprobe = min(int(nprobe), int(nlist))
    logger.info("faiss-ivf index: %d codes, %d bits, nlist=%d, nprobe=%d", n, bits, nlist, index.nprobe)
    return index


def merge_topk(results: Sequence[tuple[np.ndarray, np.ndarray, int]],
               k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over partitions of one database from each partition's own top-k.

    The building block of a fan-out search (e.g. one index per replica over a contiguous range of
    rows): partition p holds database rows ``offset_p .. offset_p + n_p - 1`` and answered with its
    rows' top-k (``search`` output, local ids). Because every partition returned its k best by
    (distance, local id) and offsets preserve row order, the k best of the union by (distance, global
    id) are exactly the whole database's top-k, ties in database order.

    Args:
        results: ``(distances int[q, k_p], ids int[q, k_p], offset)`` per partition; empty slots
            (id -1, from ``"faiss-ivf"``) sort last.
        k: neighbours per query (>= 1).

    Returns:
        ``(distances int32[q, k'], ids int64[q, k'])``, ``k' = min(k, sum of k_p)``; global ids, empty
        slots as id -1 with ``MISSING_DISTANCE``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if not results:
        raise ValueError("merge_topk needs at least one partition's results")
    q = results[0][0].shape[0]
    distances = np.concatenate([np.asarray(d, dtype=np.int64).reshape(q, -1) for d, _, _ in results], axis=1)
    ids = np.concatenate([np.where(np.asarray(i) >= 0, np.asarray(i, dtype=np.int64) + offset, -1)
                          .reshape(q, -1) for _, i, offset in results], axis=1)
    missing = ids < 0
    distances = np.where(missing, MISSING_DISTANCE, distances)
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids), distances), axis=1)[:, : int(k)]
    return (np.take_along_axis(distances, order, axis=1).astype(np.int32),
            np.take_along_axis(ids, order, axis=1))
