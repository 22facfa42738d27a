"""hashing.mih: multi-index hashing returns exactly the linear scan's top-k (ids, distances, tie order)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hashing import code_shards
from hashing.codes import topk_hamming
from hashing.index import MISSING_DISTANCE, HammingIndex
from hashing.mih import (
    MAX_SUBSTRING_BITS,
    MultiIndexHash,
    build_from_split,
    choose_m,
    shell_masks,
    substring_bounds,
)


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)


def clustered_codes(rng: np.random.Generator, n: int, bits: int, centres: np.ndarray,
                    flip: float) -> np.ndarray:
    """Codes around ``centres`` (0/1 bits [c, bits]) with each bit flipped with probability ``flip``."""
    noise = (rng.random((n, bits)) < flip).astype(np.uint8)
    return np.packbits(centres[rng.integers(0, len(centres), n)] ^ noise, axis=1)


def assert_same_as_scan(index: MultiIndexHash, queries: np.ndarray, database: np.ndarray, k: int) -> None:
    distances, ids = index.search(queries, k)
    expected_distances, expected_ids = topk_hamming(queries, database, k)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    assert distances.shape == expected_distances.shape == (len(queries), min(k, len(database)))
    assert np.array_equal(distances, expected_distances), f"distances differ at k={k}"
    assert np.array_equal(ids, expected_ids), f"ids differ at k={k}"


@pytest.mark.parametrize("bits", [32, 64, 128])
@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("fallback_work", [None, 0])  # 0: never fall back to the scan, MIH all the way
def test_identical_to_the_scan_for_k_from_1_to_more_than_the_database(bits: int, kind: str,
                                                                      fallback_work: int | None) -> None:
    rng = np.random.default_rng(bits + len(kind))
    n = 1500
    if kind == "random":
        database, queries = random_codes(rng, n, bits), random_codes(rng, 12, bits)
    else:
        centres = rng.integers(0, 2, (6, bits), dtype=np.uint8)
        database = clustered_codes(rng, n, bits, centres, 0.04)
        queries = np.concatenate([clustered_codes(rng, 10, bits, centres, 0.04), database[:2]])
        _, counts = np.unique(topk_hamming(queries, database, 50)[0][0], return_counts=True)
        assert counts.max() > 5  # many ties: tie order is exercised
    index = MultiIndexHash(database, fallback_work=fallback_work)
    assert index.m == choose_m(bits, n)
    for k in (1, 2, 10, 100, n - 1, n, n + 7):
        assert_same_as_scan(index, queries, database, k)


@pytest.mark.parametrize(("bits", "m"), [(64, 1 + 1), (64, 3), (64, 5), (40, 3), (24, 2), (128, 6), (16, 16)])
def test_unequal_substrings_and_any_m_give_the_same_results(bits: int, m: int) -> None:
    rng = np.random.default_rng(m * bits)
    centres = rng.integers(0, 2, (4, bits), dtype=np.uint8)
    database = clustered_codes(rng, 800, bits, centres, 0.05)
    queries = clustered_codes(rng, 8, bits, centres, 0.05)
    index = MultiIndexHash(database, m=m, fallback_work=0)
    assert [stop - start for start, stop in substring_bounds(bits, m)] == [t.length for t in index.tables]
    for k in (1, 33, 800):
        assert_same_as_scan(index, queries, database, k)


def test_duplicates_and_all_equal_codes_come_in_database_order() -> None:
    rng = np.random.default_rng(3)
    database = np.repeat(random_codes(rng, 5, 64), 40, axis=0)[rng.permutation(200)]
    queries = np.concatenate([database[:3], random_codes(rng, 3, 64)])
    index = MultiIndexHash(database, fallback_work=0)
    for k in (1, 40, 41, 199, 200, 500):
        assert_same_as_scan(index, queries, database, k)
    same = np.zeros((50, 8), dtype=np.uint8)
    distances, ids = MultiIndexHash(same).search(np.zeros((1, 8), np.uint8), 10)
    assert ids.tolist() == [list(range(10))] and distances.tolist() == [[0] * 10]


def test_edge_cases_k_zero_rejected_empty_database_no_queries() -> None:
    rng = np.random.default_rng(4)
    database = random_codes(rng, 30, 64)
    index = MultiIndexHash(database)
    for bad in (0, -1, True, 2.0, None):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            index.search(database[:1], bad)
    with pytest.raises(ValueError, match="query codes must have 8 bytes per code"):
        index.search(np.zeros((1, 4), np.uint8), 3)
    distances, ids = index.search(np.zeros((0, 8), np.uint8), 5)
    assert distances.shape == ids.shape == (0, 5)
    empty = MultiIndexHash(np.zeros((0, 8), np.uint8))
    distances, ids = empty.search(database[:3], 5)
    assert distances.shape == ids.shape == (3, 0) and empty.state_bytes_per_code == 0
    one = MultiIndexHash(database[:1])
    assert one.search(database[5:7], 3)[1].tolist() == [[0], [0]]
    with pytest.raises(ValueError, match=r"m must be in \[2, 64\]"):
        MultiIndexHash(random_codes(rng, 10, 64), m=1)  # a 64-bit substring: over MAX_SUBSTRING_BITS
    with pytest.raises(ValueError, match="index codes must be packed codes"):
        MultiIndexHash(np.zeros((3, 8), np.int64))


def test_the_bound_stops_early_on_clustered_codes() -> None:
    """Near neighbours end the search at a small substring radius, after examining a small part of n."""
    rng = np.random.default_rng(5)
    n = 50000
    centres = rng.integers(0, 2, (200, 64), dtype=np.uint8)
    database = clustered_codes(rng, n, 64, centres, 1 / 16)
    queries = clustered_codes(rng, 20, 64, centres, 1 / 16)
    index = MultiIndexHash(database)
    assert_same_as_scan(index, queries, database, 10)
    stats = index.last_stats
    assert stats.fallbacks == 0 and stats.max_radius <= 3
    assert stats.candidates / stats.queries < n / 20


def test_fallback_to_the_scan_gives_the_same_results_and_is_counted() -> None:
    rng = np.random.default_rng(6)
    database, queries = random_codes(rng, 3000, 64), random_codes(rng, 5, 64)
    index = MultiIndexHash(database, fallback_work=10)
    assert_same_as_scan(index, queries, database, 20)
    assert index.last_stats.fallbacks == 5


def test_choose_m_is_b_over_log2_n_rounded_up_and_tables_are_dense_with_4_bytes_per_code() -> None:
    assert choose_m(64, 10**6) == 4 and choose_m(64, 10**7) == 3 and choose_m(64, 10**8) == 3
    assert choose_m(32, 10**8) == 2 and choose_m(128, 10**6) == 7 and choose_m(1024, 10) == 309
    assert choose_m(64, 0) == choose_m(64, 1) == 2
    for bits, n in [(64, 2**16), (64, 5000), (128, 3000), (32, 100)]:
        m = choose_m(bits, n)
        assert max(stop - start for start, stop in substring_bounds(bits, m)) <= min(MAX_SUBSTRING_BITS,
                                                                                      math.ceil(math.log2(n)))
    index = MultiIndexHash(random_codes(np.random.default_rng(7), 2**16, 64))
    assert index.m == 4 and all(t.offsets is not None and t.values is None for t in index.tables)
    assert index.state_bytes == 4 * 4 * (2**16 + 2**16 + 1)  # 4 tables of 16 bits: uint32 ids + offsets
    sparse = MultiIndexHash(random_codes(np.random.default_rng(7), 1000, 64), m=2)  # 32-bit substrings
    assert all(t.offsets is None and t.values.dtype == np.uint32 for t in sparse.tables)
    assert sparse.state_bytes_per_code == 2 * (4 + 4)


def test_shell_masks_are_every_value_of_that_popcount_once() -> None:
    for length, radius in [(1, 0), (1, 1), (7, 3), (16, 4), (21, 2), (32, 1)]:
        masks = shell_masks(length, radius)
        assert masks.size == math.comb(length, radius) == np.unique(masks).size
        assert np.all(np.bitwise_count(masks) == radius) and np.all(masks < 2**length)
    assert not shell_masks(8, 2).flags.writeable


def test_hamming_index_mih_backend_and_tables_from_parquet_code_shards(tmp_path) -> None:
    rng = np.random.default_rng(8)
    centres = rng.integers(0, 2, (5, 64), dtype=np.uint8)
    parts = [clustered_codes(rng, n, 64, centres, 0.05) for n in (300, 1, 250)]
    split_root = str(tmp_path / "database")
    for i, codes in enumerate(parts):
        shard = f"database/shard-{i:06d}.tar"
        meta = code_shards.PartMeta(64, "idhn", "models:/m/1", "fp", shard, "0" * 64)
        keys = [f"k{i}-{j}" for j in range(len(codes))]
        code_shards.write_part(code_shards.part_uri(split_root, shard), keys, codes, None, meta)
    database = np.concatenate(parts)
    queries = clustered_codes(rng, 6, 64, centres, 0.05)
    index, keys = build_from_split(split_root)
    assert len(index) == len(keys) == 551 and keys[300] == "k1-0"
    assert_same_as_scan(index, queries, database, 25)
    hamming = HammingIndex(database, keys=keys, backend="mih")
    for got, want in zip(hamming.search(queries, 600), topk_hamming(queries, database, 600), strict=True):
        assert np.array_equal(got, want)


def test_search_config_accepts_the_mih_backend() -> None:
    from hashing.config import Config

    assert Config.model_validate({"search": {"backend": "mih"}}).search.backend == "mih"


def test_faiss_multi_hash_is_not_exact_knn() -> None:
    """Why MIH is ours: faiss's IndexBinaryMultiHash probes a fixed flip radius, so its k-NN misses."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    database, queries = random_codes(rng, 20000, 64), random_codes(rng, 10, 64)
    multi = faiss.IndexBinaryMultiHash(64, 3, 21)
    multi.add(database)
    multi.nflip = 2
    _, faiss_ids = multi.search(queries, 10)
    expected_distances, expected_ids = topk_hamming(queries, database, 10)
    assert not np.array_equal(faiss_ids, expected_ids)
    distances, ids = MultiIndexHash(database).search(queries, 10)
    assert np.array_equal(ids, expected_ids) and np.array_equal(distances, expected_distances)


def test_the_scale_benchmark_runs_on_tiny_sizes_with_identical_results(capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("faiss")
    from benchmarks import search

    centres = np.zeros((3, 8), np.uint8)
    codes = search.clustered_codes(5000, centres, 4, np.random.default_rng(0), chunk=1000)
    assert codes.shape == (5000, 8) and 0.04 < np.unpackbits(codes).mean() < 0.09  # p = 1/16 per bit
    assert search.main(["--sizes", "3000,6000", "--queries", "8", "--scan-queries", "4", "--k", "20",
                        "--clusters", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "MIH (m=" in out and "clustered 64-bit" in out and "cost per query ~ n^" in out
    assert "results identical to the scan (ids, distances, tie order): yes" in out
    assert search.main(["--sizes", "0"]) == 2


def test_the_search_job_builds_an_mih_index_over_the_code_shards(tmp_path) -> None:
    """hashing.retrieval.build_index (the search job's index) with search.backend=mih: the ranking of the
    default faiss backend."""
    from hashing.config import Config
    from hashing.retrieval import build_index

    rng = np.random.default_rng(10)
    centres = rng.integers(0, 2, (4, 64), dtype=np.uint8)
    split_root = str(tmp_path / "database")
    for i, n in enumerate((400, 350)):
        shard = f"database/shard-{i:06d}.tar"
        meta = code_shards.PartMeta(64, "idhn", "models:/m/1", "fp", shard, "0" * 64)
        code_shards.write_part(code_shards.part_uri(split_root, shard), [f"k{i}-{j}" for j in range(n)],
                               clustered_codes(rng, n, 64, centres, 0.05), None, meta)
    codes = code_shards.load_split(split_root)
    queries = codes.codes[::50]
    def config(backend: str) -> Config:
        return Config.model_validate({"search": {"backend": backend}})

    mih = build_index(codes, str(tmp_path), "database", config("mih"))
    flat = build_index(codes, str(tmp_path), "database", config("faiss"))
    assert mih.backend == "mih" and isinstance(mih._mih, MultiIndexHash)
    for got, want in zip(mih.search(queries, 30), flat.search(queries, 30), strict=True):
        assert np.array_equal(got, want)
    assert mih.keys_for(mih.search(queries[:1], 1)[1])[0, 0] == "k0-0"


def test_merging_partition_results_gives_the_whole_database_top_k() -> None:
    """A fan-out over contiguous partitions (one MIH per partition) merges to the global scan's top-k."""
    from hashing.index import merge_topk

    rng = np.random.default_rng(11)
    centres = rng.integers(0, 2, (3, 64), dtype=np.uint8)
    database = clustered_codes(rng, 3000, 64, centres, 0.03)
    queries = np.concatenate([clustered_codes(rng, 6, 64, centres, 0.03), database[:2]])
    bounds = [0, 700, 701, 2200, 3000]
    for k in (1, 50, 999, 4000):
        results = [(*MultiIndexHash(database[a:b]).search(queries, k), a)
                   for a, b in itertools.pairwise(bounds)]
        distances, ids = merge_topk(results, k)
        expected_distances, expected_ids = topk_hamming(queries, database, k)
        assert np.array_equal(ids, expected_ids) and np.array_equal(distances, expected_distances)
        assert distances.dtype == np.int32 and ids.dtype == np.int64
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        merge_topk(results, 0)
    # Empty slots (an approximate backend's id -1) sort last and stay empty.
    part = (np.array([[3, MISSING_DISTANCE]]), np.array([[0, -1]]), 10)
    distances, ids = merge_topk([part, (np.array([[1]]), np.array([[4]]), 0)], 3)
    assert ids.tolist() == [[4, 10, -1]] and distances.tolist() == [[1, 3, MISSING_DISTANCE]]
