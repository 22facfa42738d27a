"""hashing.codes: bit layout, packing, Hamming distances and top-k search against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashing.codes import (
    check_bits,
    check_codes,
    hamming_distance,
    pack_bits,
    pack_signs,
    signs_to_bits,
    topk_hamming,
    unpack_bits,
)


def brute_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    bits_a, bits_b = np.unpackbits(a, axis=1), np.unpackbits(b, axis=1)
    return np.array([[int((x != y).sum()) for y in bits_b] for x in bits_a], dtype=np.int64).reshape(
        len(a), len(b)
    )


def random_codes(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (n, width), dtype=np.uint8)


@pytest.mark.parametrize("bits", [8, 16, 64, 120, 1024])
def test_check_bits_accepts_multiples_of_8_in_range(bits: int) -> None:
    assert check_bits(bits) == bits
    assert check_bits(np.int64(bits)) == bits


@pytest.mark.parametrize("bits", [0, 4, 12, 1032, -8, 8.0, True, "64", None])
def test_check_bits_rejects_other_values_naming_them(bits: object) -> None:
    with pytest.raises(ValueError, match=r"multiple of 8 in \[8, 1024\]") as error:
        check_bits(bits)
    assert repr(bits) in str(error.value)


def test_signs_to_bits_maps_zero_and_negative_zero_to_one() -> None:
    u = np.array([[0.5, -0.5, 0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0]], dtype=np.float32)
    assert signs_to_bits(u).tolist() == [[1, 0, 1, 1, 1, 0, 1, 0]]
    assert signs_to_bits(u).dtype == np.uint8


def test_signs_to_bits_accepts_torch_tensors_with_grad() -> None:
    u = torch.tensor([[0.2, -0.1, 0.0, -4.0, 1.0, 1.0, -1.0, 0.3]], requires_grad=True)
    assert signs_to_bits(u).tolist() == [[1, 0, 1, 0, 1, 1, 0, 1]]
    assert np.array_equal(pack_signs(u), pack_signs(u.detach().numpy()))
    assert np.array_equal(pack_signs(u.to(torch.bfloat16)), pack_signs(u.detach().numpy()))


@pytest.mark.parametrize(
    ("u", "message"),
    [
        (np.zeros(8, dtype=np.float32), "2-D"),
        (np.zeros((2, 8), dtype=np.int64), "float"),
        (np.zeros((2, 12), dtype=np.float32), "multiple of 8"),
        (np.array([[np.nan] + [0.0] * 7]), "NaN"),
        ([[0.0] * 8], "numpy array or torch tensor"),
    ],
)
def test_signs_to_bits_rejects_bad_input(u: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        signs_to_bits(u)


def test_pack_bits_is_big_endian_within_a_byte() -> None:
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0]], dtype=np.uint8)
    assert pack_bits(bits).tolist() == [[0x81, 0x02]]


def test_pack_signs_sets_the_first_byte_from_the_first_bits() -> None:
    u = np.array([[1.0, -1, -1, -1, -1, -1, -1, -1] + [-1.0] * 7 + [0.0]])
    assert pack_signs(u).tolist() == [[0x80, 0x01]]


def test_pack_unpack_round_trip() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (37, 128), dtype=np.uint8)
    codes = pack_bits(bits)
    assert codes.shape == (37, 16) and codes.dtype == np.uint8
    assert np.array_equal(unpack_bits(codes, 128), bits)
    assert np.array_equal(pack_bits(bits.astype(bool)), codes)


def test_pack_and_unpack_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        pack_bits(np.full((1, 8), 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 or bool"):
        pack_bits(np.zeros((1, 8), dtype=np.int32))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(np.zeros((1, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 bytes per code"):
        unpack_bits(np.zeros((3, 4), dtype=np.uint8), 16)


def test_check_codes_names_the_input() -> None:
    with pytest.raises(ValueError, match="query codes must be packed codes uint8"):
        check_codes(np.zeros((2, 2), dtype=np.int8), "query codes")
    with pytest.raises(ValueError, match="database codes must have 4 bytes"):
        check_codes(np.zeros((2, 2), dtype=np.uint8), "database codes", width=4)


def test_hamming_distance_hand_computed() -> None:
    a = np.array([[0x00], [0xFF]], dtype=np.uint8)
    b = np.array([[0x00], [0x0F], [0xFF], [0x81]], dtype=np.uint8)
    assert hamming_distance(a, b).tolist() == [[0, 4, 8, 2], [8, 4, 0, 6]]


@pytest.mark.parametrize("width", [1, 3, 8, 9, 16, 128])
def test_hamming_distance_matches_brute_force(width: int) -> None:
    rng = np.random.default_rng(width)
    a, b = random_codes(rng, 23, width), random_codes(rng, 4099, width)
    distances = hamming_distance(a, b)
    assert distances.dtype == np.int32 and distances.shape == (23, 4099)
    assert np.array_equal(distances, brute_hamming(a, b))
    assert np.array_equal(hamming_distance(b[:23], a), distances[:, :23].T)


def test_hamming_distance_of_non_contiguous_slices() -> None:
    rng = np.random.default_rng(5)
    codes = random_codes(rng, 50, 16)
    a, b = codes[::3, :8], codes[1::2, 8:]
    assert np.array_equal(hamming_distance(a, b), brute_hamming(a, b))


def test_hamming_distance_rejects_mismatched_widths_and_dtypes() -> None:
    with pytest.raises(ValueError, match="queries have 16 bits, database has 8 bits"):
        hamming_distance(np.zeros((1, 2), np.uint8), np.zeros((1, 1), np.uint8))
    with pytest.raises(ValueError, match="database codes must be packed codes uint8"):
        hamming_distance(np.zeros((1, 2), np.uint8), np.zeros((1, 2), np.int64))


@pytest.mark.parametrize("width", [0, 129])
def test_distance_and_topk_reject_code_lengths_outside_8_to_1024_bits(width: int) -> None:
    codes = np.zeros((2, width), np.uint8)
    with pytest.raises(ValueError, match=rf"query codes have {width} bytes per code \({width * 8} bits\); "
                                         r"codes are 8 to 1024 bits"):
        hamming_distance(codes, codes)
    with pytest.raises(ValueError, match="codes are 8 to 1024 bits"):
        topk_hamming(codes, codes, k=1)


def reference_topk(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = brute_hamming(queries, database)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.mark.parametrize(
    ("width", "n", "k", "chunk_size"),
    [(1, 1000, 50, 65536), (1, 1000, 50, 7), (1, 300, 300, 64), (2, 2500, 10, 999), (8, 333, 1000, 100)],
)
def test_topk_hamming_matches_stable_sort_with_ties(width: int, n: int, k: int, chunk_size: int) -> None:
    rng = np.random.default_rng(n + k)
    queries, database = random_codes(rng, 17, width), random_codes(rng, n, width)
    distances, ids = topk_hamming(queries, database, k, chunk_size=chunk_size)
    expected_distances, expected_ids = reference_topk(queries, database, k)
    assert distances.dtype == np.int32 and ids.dtype == np.int64
    assert distances.shape == (17, min(k, n))
    assert np.array_equal(ids, expected_ids)
    assert np.array_equal(distances, expected_distances)


def test_topk_hamming_breaks_ties_by_database_position() -> None:
    database = np.array([[0x0F], [0x00], [0x00], [0xF0], [0x00]], dtype=np.uint8)
    distances, ids = topk_hamming(np.array([[0x00]], dtype=np.uint8), database, 4, chunk_size=2)
    assert ids.tolist() == [[1, 2, 4, 0]]
    assert distances.tolist() == [[0, 0, 0, 4]]


def test_topk_hamming_rejects_bad_k() -> None:
    codes = np.zeros((3, 1), np.uint8)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be an int >= 1"):
            topk_hamming(codes, codes, k)
    with pytest.raises(ValueError, match="chunk_size"):
        topk_hamming(codes, codes, 1, chunk_size=0)


def test_topk_hamming_of_an_empty_database_is_empty() -> None:
    distances, ids = topk_hamming(np.zeros((2, 1), np.uint8), np.zeros((0, 1), np.uint8), 5)
    assert distances.shape == (2, 0) and ids.shape == (2, 0)
