"""Search benchmark: exact top-k Hamming search, ours vs ``faiss.IndexBinaryFlat``, same results.

    .venv/bin/python benchmarks/search.py [--n 1000000] [--queries 200] [--bits 64] [--k 100]
        [--builtin default|small|tiny|none] [--repeats 3] [--seed 0]
    .venv/bin/python benchmarks/search.py --sizes 1000000,10000000[,100000000] [--queries 200]
        [--scan-queries N] [--clusters 4096] [--flip-log2 4] [--k 100] [--repeats 3]

With ``--sizes``, the scale table instead (see ``scale_rows``): multi-index hashing
(``hashing.mih.MultiIndexHash``, exact) vs our scan vs faiss ``IndexBinaryFlat`` (1 thread) at each
size, on random codes and on clustered ones (``--clusters`` centres, each bit flipped with probability
``2**-flip_log2``, as learned codes are); build time, memory per million codes, results identical,
and the growth exponent of each implementation's cost per query from the smallest to the largest size.
Columns: ``held MB`` = what the index keeps besides the caller's codes (MIH: its tables; faiss: its
copy of the codes); ``peak temp MB`` = tracemalloc peak of building MIH (tables + sort temporaries),
of one scan query (ours), not measured for faiss; ``work`` = MIH's lookups and candidates per query.

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
import math
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_time, machine, markdown_table
from hashing.codes import pack_signs, topk_hamming
from hashing.data.builtin import PRESETS, builtin_samples
from hashing.index import HammingIndex
from hashing.methods.shallow import LSH
from hashing.mih import MultiIndexHash

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


def random_codes(n: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8[n, bits // 8]`` uniformly random codes (random bytes: fast at 100M)."""
    return np.frombuffer(rng.bytes(n * (bits // 8)), dtype=np.uint8).reshape(n, bits // 8)


def clustered_codes(n: int, centres: np.ndarray, flip_log2: int, rng: np.random.Generator,
                    chunk: int = 1 << 22) -> np.ndarray:
    """``uint8[n, B]``: each code a random one of ``centres`` (uint8[c, B]) with every bit flipped with
    probability ``2**-flip_log2`` (the AND of ``flip_log2`` random bytes). Vectorised, ``chunk`` rows
    at a time."""
    width = centres.shape[1]
    out = np.empty((n, width), dtype=np.uint8)
    for i in range(0, n, chunk):
        rows = min(chunk, n - i)
        noise = random_codes(rows, width * 8, rng).copy()
        for _ in range(flip_log2 - 1):
            noise &= random_codes(rows, width * 8, rng)
        np.bitwise_xor(centres[rng.integers(0, len(centres), rows)], noise, out=out[i: i + rows])
    return out


def scale_case(kind: str, n: int, queries: int, bits: int, clusters: int, flip_log2: int,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, database)`` for the scale table: ``random`` codes, or ``clustered`` around ``clusters``
    random centres (queries drawn around the same centres, as held-out items of the same data)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return random_codes(queries, bits, rng), random_codes(n, bits, rng)
    centres = random_codes(clusters, bits, rng)
    return clustered_codes(queries, centres, flip_log2, rng), clustered_codes(n, centres, flip_log2, rng)


def scale_rows(kind: str, queries: np.ndarray, database: np.ndarray, k: int, scan_queries: int,
               repeats: int) -> list[dict[str, object]]:
    """MIH (every query), our scan and faiss ``IndexBinaryFlat`` with 1 thread (the first
    ``scan_queries`` queries) on one database; MIH and faiss results compared with the scan's."""
    import faiss

    n = database.shape[0]
    scan_q = queries[:scan_queries]
    timing, (distances, ids) = best_time(lambda: topk_hamming(scan_q, database, k), repeats)
    rows = [{"database": kind, "n": n, "implementation": "our scan (numpy)", "queries": len(scan_q),
             "seconds": timing.wall, "identical": True, "build_s": 0.0, "held_mb": 0.0,
             "peak_mb": peak_traced(lambda: topk_hamming(scan_q[:1], database, k)) / MB, "detail": ""}]

    tracemalloc.start()
    started = time.perf_counter()
    index = MultiIndexHash(database)
    build = time.perf_counter() - started
    build_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    timing, (m_distances, m_ids) = best_time(lambda: index.search(queries, k), repeats)
    stats = index.last_stats
    rows.append({"database": kind, "n": n, "implementation": f"MIH (m={index.m})", "queries": len(queries),
                 "seconds": timing.wall,
                 "identical": bool(np.array_equal(m_ids[:scan_queries], ids)
                                   and np.array_equal(m_distances[:scan_queries], distances)),
                 "build_s": build, "held_mb": index.state_bytes / MB, "peak_mb": build_peak / MB,
                 "detail": f"{stats.lookups / stats.queries:.0f} lookups + "
                           f"{stats.candidates / stats.queries:.0f} candidates per query, "
                           f"radius <= {stats.max_radius}, {stats.fallbacks} scan fallbacks"})
    index = None  # frees the tables before faiss copies the codes

    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        started = time.perf_counter()
        flat = flat_index(database)
        build = time.perf_counter() - started
        timing, (f_distances, f_ids) = best_time(lambda: flat.search(scan_q, k), repeats)
        rows.append({"database": kind, "n": n, "implementation": "faiss IndexBinaryFlat (1 thread)",
                     "queries": len(scan_q), "seconds": timing.wall,
                     "identical": bool(np.array_equal(f_ids, ids) and np.array_equal(f_distances, distances)),
                     "build_s": build, "held_mb": flat.ntotal * flat.code_size / MB, "peak_mb": 0.0,
                     "detail": ""})
        flat = None
    finally:
        faiss.omp_set_num_threads(threads_before)
    scan_rate = rows[0]["queries"] / rows[0]["seconds"]
    for row in rows:
        row["queries_per_s"] = row["queries"] / row["seconds"]
        row["vs_scan"] = row["queries_per_s"] / scan_rate
        row["mb_per_million"] = (database.nbytes + row["held_mb"] * MB) / MB / (n / 1e6)
    return rows


def growth_exponents(rows: list[dict[str, object]]) -> dict[tuple[str, str], float]:
    """``{(database, implementation): a}``: least-squares slope of log(seconds per query) on log(n) over
    the sizes measured (cost ~ n**a; the scan's a is ~1, sub-linear below 1)."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        name = str(r["implementation"]).split(" (m=")[0]
        point = (math.log(r["n"]), math.log(1 / r["queries_per_s"]))
        groups.setdefault((str(r["database"]), name), []).append(point)
    out = {}
    for key, points in groups.items():
        if len({x for x, _ in points}) > 1:
            x, y = np.array(points).T
            out[key] = float(np.polyfit(x, y, 1)[0])
    return out


def run_scale(sizes: list[int], queries: int, scan_queries: int | None, bits: int, k: int, clusters: int,
              flip_log2: int, repeats: int, seed: int) -> tuple[list[dict[str, object]], dict]:
    """Every (size, random/clustered) row of the scale table and the growth exponents."""
    rows: list[dict[str, object]] = []
    for n in sizes:
        for kind in ("random", "clustered"):
            q, database = scale_case(kind, n, queries, bits, clusters, flip_log2, seed)
            scan = scan_queries if scan_queries is not None else (
                queries if n <= 1_000_000 else max(10, round(queries * 1_000_000 / n)))
            log.warning("%s %d codes: %d MIH queries, %d scan/faiss queries", kind, n, queries,
                        min(scan, queries))
            rows += scale_rows(f"{kind} {bits}-bit", q, database, k, min(scan, queries), repeats)
            del q, database
    return rows, growth_exponents(rows)


def print_scale(rows: list[dict[str, object]], exponents: dict) -> bool:
    """Print the scale table and exponents; True when every result equals the scan's."""
    print(markdown_table(
        ["database", "n", "implementation", "queries", "queries/s", "vs scan", "identical to scan", "build s",
         "held MB", "MB / 1M codes (codes + held)", "peak temp MB", "work"],
        [[r["database"], r["n"], r["implementation"], r["queries"], f"{r['queries_per_s']:.1f}",
          f"{r['vs_scan']:.1f}x", "yes" if r["identical"] else "NO", f"{r['build_s']:.1f}",
          f"{r['held_mb']:.0f}",
          f"{r['mb_per_million']:.1f}", f"{r['peak_mb']:.0f}", r["detail"]] for r in rows]))
    for (database, name), a in sorted(exponents.items()):
        print(f"cost per query ~ n^{a:.2f}: {name}, {database}")
    identical = all(r["identical"] for r in rows)
    print(f"results identical to the scan (ids, distances, tie order): {'yes' if identical else 'NO'}")
    return identical


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
         same_distances: bool, differing: int, held: int, search_peak: int,
         code_bytes: int) -> dict[str, object]:
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
    parser.add_argument("--sizes", help="comma-separated database sizes for the MIH scale table "
                        "(e.g. 1000000,10000000,100000000); given: only that table")
    parser.add_argument("--scan-queries", type=int, help="queries timed for the scan and faiss in the scale "
                        "table (default: all up to 1M codes, else max(10, queries * 1M / n))")
    parser.add_argument("--clusters", type=int, default=4096, help="centres of the clustered codes")
    parser.add_argument("--flip-log2", type=int, default=4, help="clustered codes flip each bit with "
                        "probability 2**-flip_log2 (4: 1/16, about 4 of 64 bits)")
    args = parser.parse_args(argv)
    if min(args.n, args.queries, args.k, args.repeats) < 1 or args.bits % 8 or args.bits < 8:
        log.error("--n, --queries, --k, --repeats must be >= 1 and --bits a multiple of 8")
        return 2
    if args.sizes:
        try:
            sizes = [int(float(x)) for x in args.sizes.split(",")]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1 or args.clusters < 1 or args.flip_log2 < 1 or (
                args.scan_queries is not None and args.scan_queries < 1):
            log.error("--sizes must be comma-separated ints >= 1; "
                      "--clusters, --flip-log2, --scan-queries >= 1")
            return 2
        print(f"# Search at scale: exact top-{args.k} Hamming, single-threaded, best of {args.repeats}; "
              f"clustered: {args.clusters} centres, bits flipped with p = 2^-{args.flip_log2}")
        print(machine())
        rows, exponents = run_scale(sizes, args.queries, args.scan_queries, args.bits, args.k, args.clusters,
                                    args.flip_log2, args.repeats, args.seed)
        return 0 if print_scale(rows, exponents) else 1

    print(f"# Search: exact top-{args.k} Hamming, whole query batch per search (best of {args.repeats})")
    print(machine())
    rows = compare(f"random {args.bits}-bit", *random_case(args.n, args.queries, args.bits, args.seed),
                   args.k, args.repeats)
    if args.builtin != "none":
        rows += compare(f"built-in {args.builtin} (LSH {BUILTIN_BITS}-bit)",
                        *builtin_case(args.builtin, args.seed), args.k, args.repeats)
    print(markdown_table(
        ["database", "n", "queries", "implementation", "queries/s", "CPU s / wall s", "vs ours", "same ids",
         "same distances", "held MB", "search peak MB", "peak MB / 1M codes"],
        [[r["database"], r["n"], r["queries"], r["implementation"], f"{r['queries_per_s']:.0f}",
          f"{r['cpu'] / r['seconds']:.2f}", f"{r['speedup']:.2f}x",
          "yes" if r["same_ids"] else f"no ({r['differing_rows']} rows)",
          "yes" if r["same_distances"] else "no",
          f"{r['held_mb']:.1f}", f"{r['search_peak_mb']:.1f}", f"{r['peak_mb_per_million']:.1f}"]
         for r in rows],
    ))
    identical = all(r["same_ids"] and r["same_distances"] for r in rows)
    print(f"results identical to ours (ids, distances, tie order): {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
