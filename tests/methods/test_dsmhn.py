"""DSMHN [recon]: loss against an independent plain formula, bit balance, pluggable J_sim, cross-modal
retrieval."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits

from benchmarks.cached_features import CachedFeatures
from hashing.encoding import Encoder
from hashing.methods.dsmhn import DSMHN, bit_balance, similarity_pair_loss
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit

torch.set_num_threads(1)

VOCAB = 20  # 10 digit words, even/odd, big/small, 6 noise words


def digits_with_tags(n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real digits as 3x16x16 images, one-hot digit labels and noisy bag-of-words tags float[n, 20]."""
    rng = np.random.default_rng(seed)
    digits = load_digits()
    idx = rng.choice(len(digits.target), n, replace=False)
    img = np.kron(digits.images[idx] / 16.0, np.ones((2, 2)))
    y = digits.target[idx]
    labels = np.eye(10, dtype=np.float32)[y]
    tags = np.zeros((n, VOCAB), dtype=np.float32)
    tags[np.arange(n), y] = rng.random(n) > 0.2  # the digit word, dropped 20% of the time
    tags[np.arange(n), 10 + y % 2] = 1
    tags[np.arange(n), 12 + (y >= 5)] = 1
    tags[:, 14:] = rng.random((n, 6)) < 0.15
    return {
        "image": torch.tensor((img - 0.5) / 0.5, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1),
        "labels": torch.tensor(labels),
        "tags": torch.tensor(tags),
    }


def mean_average_precision(
    query: np.ndarray, db: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray
) -> float:
    """Plain per-query AP over the whole database ranked by Hamming distance (stable order)."""
    aps = []
    for code, label in zip(query, q_labels, strict=True):
        order = np.argsort((code != db).sum(1), kind="stable")
        hits = (db_labels[order] @ label) > 0
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks) if len(ranks) else 0.0)
    return float(np.mean(aps))


def test_bit_balance_zero_when_balanced_and_grows_with_imbalance():
    k = 8
    balanced = torch.tensor(np.tile([[1.0], [-1.0]], (8, k)))  # every column half +1, half -1
    assert float(bit_balance(balanced)) == pytest.approx(0.0, abs=1e-12)
    values = []
    for flipped in range(9):  # flip `flipped` of the 8 "-1" rows of every column to +1
        codes = balanced.clone()
        codes[1 : 2 * flipped : 2] = 1.0
        expected = np.mean(codes.numpy().mean(axis=0) ** 2)
        values.append(float(bit_balance(codes)))
        assert values[-1] == pytest.approx(expected)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["nll", "squared", "contrastive"])
def test_similarity_pair_loss_matches_numpy(kind):
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    s = (rng.random((4, 5)) > 0.5).astype(np.float64)
    got = similarity_pair_loss(torch.tensor(f), torch.tensor(g), torch.tensor(s), kind, margin=0.5).numpy()
    expected = np.zeros((4, 5))
    for i in range(4):
        for j in range(5):
            if kind == "nll":
                theta = 0.5 * f[i] @ g[j]
                expected[i, j] = np.log1p(np.exp(theta)) - s[i, j] * theta
            elif kind == "squared":
                expected[i, j] = (8 * (2 * s[i, j] - 1) - f[i] @ g[j]) ** 2 / 64
            else:
                d = np.sum((f[i] - g[j]) ** 2) / 32
                expected[i, j] = s[i, j] * d + (1 - s[i, j]) * max(0.0, 0.5 - d)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_loss_and_gradients_equal_plain_formula():
    torch.manual_seed(0)
    method = DSMHN(CachedFeatures(16, 0), bits=8, num_classes=10, tag_vocab_size=VOCAB, text_hidden=64)
    batch = digits_with_tags(12)
    batch["image"] = torch.randn(12, 16)
    out = method(batch)
    out["loss"].backward()
    got = {name: p.grad.clone() for name, p in method.named_parameters()}
    method.zero_grad()

    f = method.image_head(batch["image"])
    g = method.text_net(batch["tags"])
    labels = batch["labels"]
    s = (labels @ labels.T > 0).float()
    theta = 0.5 * f @ g.T
    j_sim = (torch.log1p(torch.exp(theta)) - s * theta).mean()
    b = torch.sign(f + g).detach()
    j_quant = ((b - f) ** 2).mean() + ((b - g) ** 2).mean()
    j_bal = (f.mean(0) ** 2).mean() + (g.mean(0) ** 2).mean()
    j_label = sum(nnf.binary_cross_entropy(torch.sigmoid(method.classifier(x)), labels) for x in (f, g))
    plain = j_sim + j_label + j_quant + j_bal
    plain.backward()
    assert float(out["loss"].detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    assert float(out["sim"]) == pytest.approx(float(j_sim.detach()), rel=1e-5)
    assert float(out["bal"]) == pytest.approx(float(j_bal.detach()), rel=1e-5)
    for name, p in method.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradients_reach_both_networks_and_backbone():
    torch.manual_seed(0)
    method = DSMHN(SmallCNN(), bits=16, num_classes=10, tag_vocab_size=VOCAB)
    out = method(digits_with_tags(16))
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for param in (method.image_head.weight, method.text_net[0].weight, method.backbone.stage1[0].weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_bad_configuration_and_batch_are_reported():
    with pytest.raises(ValueError, match="tag_vocab_size"):
        DSMHN(SmallCNN(), bits=16, num_classes=10)
    with pytest.raises(ValueError, match="similarity_loss"):
        DSMHN(SmallCNN(), bits=16, num_classes=10, tag_vocab_size=VOCAB, similarity_loss="cosine")
    method = DSMHN(SmallCNN(), bits=16, num_classes=10, tag_vocab_size=VOCAB, text_hidden=32)
    batch = digits_with_tags(4)
    with pytest.raises(KeyError, match="tags"):
        method({"image": batch["image"], "labels": batch["labels"]})
    with pytest.raises(ValueError, match="float\\[b, 20\\]"):
        method.encode_text(torch.zeros(4, 7))


@pytest.mark.parametrize("kind", ["nll", "squared", "contrastive"])
def test_each_similarity_loss_overfits_small_batch(kind):
    torch.manual_seed(0)
    batch = digits_with_tags(32)
    method = DSMHN(
        SmallCNN(), bits=16, num_classes=10, tag_vocab_size=VOCAB, similarity_loss=kind, text_hidden=512
    )
    history = fit(method, lambda epoch: [batch], epochs=25, lr=3e-3)
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.8 * losses[0], losses


def test_image_to_text_retrieval_after_training():
    torch.manual_seed(0)
    batch = digits_with_tags(48, seed=1)
    method = DSMHN(SmallCNN(), bits=16, num_classes=10, tag_vocab_size=VOCAB)
    labels = batch["labels"].numpy()

    def cross_modal_map() -> float:
        encoder = Encoder(method)
        img = encoder.relaxed(batch["image"]) >= 0
        txt = encoder.relaxed(batch["tags"], "text") >= 0
        return mean_average_precision(img, txt, labels, labels)

    before = cross_modal_map()
    fit(method, lambda epoch: [batch], epochs=30, lr=1e-3)
    after = cross_modal_map()
    assert after > 0.6 and after > before + 0.2, (before, after)


def test_minilm_text_encoder_embeds_the_tags_and_saves_them_with_the_model():
    from hashing.models.text import MiniLMEncoder

    words = ["sneaker", "trainers", "handbag", "purse", "coat", "sale"]
    torch.manual_seed(0)
    method = DSMHN(CachedFeatures(8, 0), bits=16, num_classes=3, tag_vocab_size=len(words), text_hidden=32,
                   text_encoder="minilm")
    assert method.text_net[0].in_features == 384
    method.set_tag_vocabulary(words, MiniLMEncoder())
    bow = torch.eye(len(words))
    feats = method.text_features(bow)
    assert feats.shape == (6, 384) and torch.allclose(feats.norm(dim=1), torch.ones(6), atol=1e-5)
    cos = feats @ feats.T
    # synonyms are closer before any training than unrelated words
    assert cos[0, 1] > cos[0, 2] and cos[2, 3] > cos[2, 4]
    # two tags: the normalised mean of their embeddings
    both = method.text_features(bow[0:1] + bow[2:3])
    torch.testing.assert_close(both, nnf.normalize(feats[0:1] + feats[2:3], dim=1), rtol=1e-5, atol=1e-6)
    # the embeddings are in the state dict: a model rebuilt without the vocabulary encodes the same
    fresh = DSMHN(CachedFeatures(8, 0), bits=16, num_classes=3, tag_vocab_size=len(words), text_hidden=32,
                  text_encoder="minilm")
    fresh.load_state_dict(method.state_dict(), strict=True)
    torch.testing.assert_close(fresh.encode_text(bow), method.encode_text(bow))
    batch = {"image": torch.randn(6, 8), "labels": torch.eye(3)[[0, 0, 1, 1, 2, 2]], "tags": bow}
    assert torch.isfinite(method(batch)["loss"])
    with pytest.raises(ValueError, match="text_encoder"):
        DSMHN(CachedFeatures(8, 0), bits=16, num_classes=3, tag_vocab_size=4, text_encoder="bert")


def test_bow_text_encoder_is_unchanged_and_ignores_the_vocabulary():
    method = DSMHN(CachedFeatures(8, 0), bits=16, num_classes=3, tag_vocab_size=5, text_hidden=32)
    method.set_tag_vocabulary(["a", "b"])  # no-op for bag-of-words (no MiniLM load, no size check)
    assert "tag_embeddings" not in method.state_dict() and method.text_net[0].in_features == 5
    tags = torch.eye(5)
    torch.testing.assert_close(method.text_features(tags), tags)
