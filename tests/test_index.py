"""hashing.index: exact backends agree with topk_hamming (ties included); IVF is approximate but sound."""

from __future__ import annotations

import numpy as np
import pytest

from hashing.codes import hamming_distance, topk_hamming
from hashing.index import BACKENDS, MISSING_DISTANCE, HammingIndex


def clustered_codes(rng: np.random.Generator, n: int, bits: int, clusters: int, flip: float) -> np.ndarray:
    """Codes around a few centres (like trained hash codes): many duplicates and equal distances."""
    centres = rng.integers(0, 2, (clusters, bits), dtype=np.uint8)
    noise = (rng.random((n, bits)) < flip).astype(np.uint8)
    return np.packbits(centres[rng.integers(0, clusters, n)] ^ noise, axis=1)


@pytest.mark.parametrize(
    ("bits", "n", "m", "k"),
    [(8, 5000, 40, 100), (8, 300, 25, 1000), (16, 20000, 300, 64), (64, 3000, 10, 3000)],
)
def test_exact_backends_are_identical_including_tie_order(bits: int, n: int, m: int, k: int) -> None:
    rng = np.random.default_rng(bits * n)
    database = clustered_codes(rng, n, bits, clusters=4, flip=0.1)
    queries = clustered_codes(rng, m, bits, clusters=4, flip=0.1)
    expected_distances, expected_ids = topk_hamming(queries, database, k)
    _, counts = np.unique(expected_distances[0], return_counts=True)
    assert counts.max() > 1  # the case is only meaningful with ties
    for backend in ("numpy", "faiss"):
        distances, ids = HammingIndex(database, backend=backend).search(queries, k)
        assert distances.dtype == np.int32 and ids.dtype == np.int64, backend
        assert np.array_equal(ids, expected_ids), backend
        assert np.array_equal(distances, expected_distances), backend


def test_faiss_ivf_returns_true_distances_sorted_and_finds_most_neighbours() -> None:
    rng = np.random.default_rng(7)
    database = clustered_codes(rng, 4000, 64, clusters=16, flip=0.05)
    queries = database[:50]
    index = HammingIndex(database, backend="faiss-ivf", nlist=16, nprobe=2)
    distances, ids = index.search(queries, 20)
    assert distances.shape == (50, 20)
    found = ids >= 0
    assert np.all(distances[~found] == MISSING_DISTANCE)
    true = hamming_distance(queries, database)
    assert np.array_equal(distances[found], np.take_along_axis(true, np.maximum(ids, 0), axis=1)[found])
    assert np.all(np.diff(distances, axis=1) >= 0)
    exact_distances, _ = topk_hamming(queries, database, 20)
    # Each query is in the database, so its own list is probed and the nearest code is found.
    assert np.array_equal(distances[:, 0], exact_distances[:, 0])
    assert found.mean() > 0.9


def test_faiss_ivf_probing_every_list_is_exact_in_distance() -> None:
    rng = np.random.default_rng(8)
    database = clustered_codes(rng, 2000, 32, clusters=8, flip=0.1)
    queries = clustered_codes(rng, 30, 32, clusters=8, flip=0.1)
    distances, ids = HammingIndex(database, backend="faiss-ivf", nlist=8, nprobe=8).search(queries, 50)
    exact_distances, _ = topk_hamming(queries, database, 50)
    assert np.array_equal(distances, exact_distances)
    assert np.all(ids >= 0)


def test_a_stored_ivf_index_gives_the_same_results_and_must_match_the_codes() -> None:
    rng = np.random.default_rng(9)
    database = clustered_codes(rng, 1000, 32, clusters=8, flip=0.1)
    queries = clustered_codes(rng, 20, 32, clusters=8, flip=0.1)
    built = HammingIndex(database, backend="faiss-ivf", nlist=8, nprobe=2)
    loaded = HammingIndex(database, backend="faiss-ivf", nprobe=2, trained=built.serialized())
    for got, want in zip(loaded.search(queries, 10), built.search(queries, 10), strict=True):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="holds 1000 codes of 32 bits, not these 999"):
        HammingIndex(database[:999], backend="faiss-ivf", trained=built.serialized())


def test_keys_for_maps_ids_and_empty_slots() -> None:
    codes = np.array([[0x00], [0xFF], [0x0F]], dtype=np.uint8)
    index = HammingIndex(codes, keys=["a", "b", "c"])
    _, ids = index.search(np.array([[0x01]], dtype=np.uint8), 2)
    assert index.keys_for(ids).tolist() == [["a", "c"]]
    assert index.keys_for(np.array([[2, -1]])).tolist() == [["c", None]]
    with pytest.raises(ValueError, match="no keys"):
        HammingIndex(codes).keys_for(ids)


def test_k_larger_than_the_index_returns_every_row() -> None:
    codes = np.array([[0x00], [0xFF], [0x0F]], dtype=np.uint8)
    for backend in ("numpy", "faiss"):
        distances, ids = HammingIndex(codes, backend=backend).search(np.array([[0xF0]], np.uint8), 10)
        assert ids.tolist() == [[0, 1, 2]] and distances.tolist() == [[4, 4, 8]], backend


def test_empty_index_returns_empty_results() -> None:
    for backend in ("numpy", "faiss"):
        distances, ids = HammingIndex(np.zeros((0, 2), np.uint8), backend=backend).search(
            np.zeros((3, 2), np.uint8), 5
        )
        assert distances.shape == ids.shape == (3, 0), backend


def test_bits_and_len() -> None:
    index = HammingIndex(np.zeros((5, 4), np.uint8))
    assert index.bits == 32 and len(index) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "annoy"}, "backend must be one of"),
        ({"keys": ["a"]}, "1 keys for 3 codes"),
        ({"backend": "faiss-ivf", "nlist": 4}, r"nlist must be an int in \[1, 3\]"),
        ({"backend": "faiss-ivf", "nprobe": 0}, "nprobe must be an int >= 1"),
    ],
)
def test_bad_construction_is_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HammingIndex(np.zeros((3, 1), np.uint8), **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_queries_are_explained(backend: str) -> None:
    index = HammingIndex(np.arange(24, dtype=np.uint8).reshape(12, 2), backend=backend, nlist=2)
    with pytest.raises(ValueError, match="query codes must have 2 bytes per code"):
        index.search(np.zeros((1, 1), np.uint8), 3)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        index.search(np.zeros((1, 2), np.uint8), 0)
