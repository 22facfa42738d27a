"""Search benchmark: exact top-k Hamming search, ours vs ``faiss.IndexBinaryFlat``, same results.

    .venv/bin/python benchmarks/search.py [--n 1000000] [--queries 200] [--bits 64] [--k 100]
        [--builtin default|small|tiny|none] [--repeats 3] [--seed 0]

Two databases:
- random: ``--n`` uniformly random codes of ``--bits`` bits, ``--queries`` random queries.
- built-in: the built-in dataset's database split as codes (LSH, 64 bits, over the 28x28 downsampled
  mosaics: clustered codes with many equal distances, like trained ones), its query split as queries.

Implementations: ours (``hashing.index.HammingIndex(backend="numpy")``: single-threaded numpy,
chunked XOR + popcount, one partition per chunk on ``distance << s | row`` keys) and faiss
``IndexBinaryFlat`` with 1 thread and with every core (OpenMP). Each search is the whole query
batch at once; the fastest of ``--repeats`` runs is kept.

Columns: queries/s; whether ids and distances equal ours exactly (same tie order), else how many
query rows differ; memory: ``held`` = bytes the index keeps besides the caller's codes, ``search
peak`` = temporary memory at the peak of one search (ours: numpy allocations seen by tracemalloc;
faiss: growth of the process's peak RSS, as its C++ allocations are invisible to tracemalloc), and
``peak / 1M codes`` = (codes + held + search peak) per million database codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_time, machine, markdown_table
from hashing.codes import pack_signs
from hashing.data.builtin import PRESETS, builtin_samples
from hashing.index import HammingIndex
from hashing.methods.shallow import LSH

log = logging.getLogger("bench.search")

OURS = "ours (numpy, 1 thread)"
BUILTIN_BITS = 64
MB = 1 << 20


def random_case(n: int, queries: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(queries uint8[m, B], database uint8[n, B])`` of uniform random codes."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (queries, bits // 8), dtype=np.uint8),
            rng.integers(0, 256, (n, bits // 8), dtype=np.uint8))


def builtin_case(preset: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(query codes, database codes)`` uint8[*, 8]: LSH codes of the built-in ``preset``'s mosaics."""
    def pixels(split: str) -> np.ndarray:
        images = [s.image for s in builtin_samples(split, PRESETS[preset][split], seed)]
        stacked = np.stack(images).astype(np.float32) / 255.0
        return stacked.reshape(len(images), 28, 2, 28, 2).mean(axis=(2, 4)).reshape(len(images), -1)

    database = pixels("database")
    lsh = LSH(BUILTIN_BITS, seed=seed).fit(database)
    return pack_signs(lsh.encode(pixels("query"))), pack_signs(lsh.encode(database))


def peak_rss_growth(fn: Callable[[], object]) -> int:
    """Bytes the process's resident set grew by at its peak while ``fn`` ran (Linux: resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - before) * 1024


def peak_traced(fn: Callable[[], object]) -> int:
    """Peak bytes of Python/numpy allocations (tracemalloc) while ``fn`` ran."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def flat_index(database: np.ndarray):
    """A faiss ``IndexBinaryFlat`` holding ``database``."""
    import faiss

    index = faiss.IndexBinaryFlat(database.shape[1] * 8)
    index.add(database)
    return index


def compare(case: str, queries: np.ndarray, database: np.ndarray, k: int,
            repeats: int) -> list[dict[str, object]]:
    """One row per implementation on one database, ours first; results compared with ours."""
    import faiss

    n = database.shape[0]
    ours = HammingIndex(database, backend="numpy")
    timing, (distances, ids) = best_time(lambda: ours.search(queries, k), repeats)
    held = 0 if np.shares_memory(ours.codes, database) else ours.codes.nbytes
    rows = [_row(case, OURS, n, queries.shape[0], timing.wall, timing.cpu, True, True, 0, held,
                 peak_traced(lambda: ours.search(queries, k)), database.nbytes)]

    index = flat_index(database)
    held = int(index.ntotal * index.code_size)
    threads_before = faiss.omp_get_max_threads()
    try:
        for threads in sorted({1, os.cpu_count() or 1}):
            faiss.omp_set_num_threads(threads)
            timing, (f_distances, f_ids) = best_time(lambda: index.search(queries, k), repeats)
            differing = int((~(f_ids == ids).all(axis=1) | ~(f_distances == distances).all(axis=1)).sum())
            rows.append(_row(case, f"faiss IndexBinaryFlat ({threads} thread{'s' * (threads > 1)})", n,
                             queries.shape[0], timing.wall, timing.cpu, bool(np.array_equal(f_ids, ids)),
                             bool(np.array_equal(f_distances, distances)), differing, held,
                             peak_rss_growth(lambda: index.search(queries, k)), database.nbytes))
    finally:
        faiss.omp_set_num_threads(threads_before)
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
    return rows


def _row(case: str, name: str, n: int, m: int, seconds: float, cpu: float, same_ids: bool,
         same_distances: bool, differing: int, held: int, search_peak: int, code_bytes: int) -> dict[str, object]:
    return {"database": case, "implementation": name, "n": n, "queries": m, "seconds": seconds, "cpu": cpu,
            "queries_per_s": m / seconds, "same_ids": same_ids, "same_distances": same_distances,
            "differing_rows": differing, "held_mb": held / MB, "search_peak_mb": search_peak / MB,
            "peak_mb_per_million": (code_bytes + held + search_peak) / MB / (n / 1e6)}


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 when faiss's results equal ours everywhere, 1 otherwise, 2 on bad arguments."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="random database codes")
    parser.add_argument("--queries", type=int, default=200, help="random queries")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--builtin", default="default", choices=[*PRESETS, "none"],
                        help="built-in dataset preset for the second database (none: skip it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.n, args.queries, args.k, args.repeats) < 1 or args.bits % 8 or args.bits < 8:
        log.error("--n, --queries, --k, --repeats must be >= 1 and --bits a multiple of 8")
        return 2

    print(f"# Search: exact top-{args.k} Hamming, whole query batch per search (best of {args.repeats})")
    print(machine())
    rows = compare(f"random {args.bits}-bit", *random_case(args.n, args.queries, args.bits, args.seed), args.k,
                   args.repeats)
    if args.builtin != "none":
        rows += compare(f"built-in {args.builtin} (LSH {BUILTIN_BITS}-bit)", *builtin_case(args.builtin, args.seed),
                        args.k, args.repeats)
    print(markdown_table(
        ["database", "n", "queries", "implementation", "queries/s", "CPU s / wall s", "vs ours", "same ids",
         "same distances", "held MB", "search peak MB", "peak MB / 1M codes"],
        [[r["database"], r["n"], r["queries"], r["implementation"], f"{r['queries_per_s']:.0f}",
          f"{r['cpu'] / r['seconds']:.2f}", f"{r['speedup']:.2f}x",
          "yes" if r["same_ids"] else f"no ({r['differing_rows']} rows)", "yes" if r["same_distances"] else "no",
          f"{r['held_mb']:.1f}", f"{r['search_peak_mb']:.1f}", f"{r['peak_mb_per_million']:.1f}"] for r in rows],
    ))
    identical = all(r["same_ids"] and r["same_distances"] for r in rows)
    print(f"results identical to ours (ids, distances, tie order): {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
