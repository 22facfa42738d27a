"""DSMHN: deep semantic multimodal hashing (image + text tags).

[recon] No public DSMHN code exists: this is our reconstruction after DCMH (Jiang & Li, CVPR 2017,
jiangqy/DCMH-CVPR2017) as specified in METHODS.md, with the similarity term pluggable (the paper's point).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as nnf
from torch import nn

from hashing.methods.base import Batch, HashingMethod, label_graph, sign_codes
from hashing.methods.distributed import gather, gather_with_grad, world
from hashing.models.backbone import Backbone

SIMILARITY_LOSSES = ("nll", "squared", "contrastive")
TEXT_ENCODERS = ("bow", "minilm")
MINILM_DIM = 384


def similarity_pair_loss(
    f: torch.Tensor, g: torch.Tensor, s: torch.Tensor, kind: str = "nll", margin: float = 0.5
) -> torch.Tensor:
    """Cross-modal pair loss float32[m, n] for image codes f float32[m, K], text codes g float32[n, K].

    ``s`` float32[m, n]: S_ij = 1[l_i^T l_j > 0]. Kinds:
        ``nll``:          log(1 + e^Theta) - S Theta, Theta = 0.5 f_i^T g_j (DCMH's likelihood).
        ``squared``:      (S±_ij - f_i^T g_j / K)^2 with S± = 2S - 1, i.e. ||K S± - F G^T||^2 / K^2 per pair.
        ``contrastive``:  S d + (1 - S) max(0, margin - d), d = ||f_i - g_j||^2 / (4K) (the normalised
                          Hamming distance when f, g are +-1 codes).
    """
    k = f.shape[1]
    inner = f @ g.T
    if kind == "nll":
        theta = 0.5 * inner
        return nnf.softplus(theta) - s * theta
    if kind == "squared":
        return (2 * s - 1 - inner / k) ** 2
    if kind == "contrastive":
        sq = (f**2).sum(1, keepdim=True) + (g**2).sum(1) - 2 * inner
        d = sq.clamp(min=0) / (4 * k)
        return s * d + (1 - s) * nnf.relu(margin - d)
    raise ValueError(f"unknown similarity_loss {kind!r}; allowed: {', '.join(SIMILARITY_LOSSES)}")


def bit_balance(x: torch.Tensor) -> torch.Tensor:
    """J_bal for one modality: ||X^T 1||^2 / (B^2 K) = mean over bits of (column mean)^2 over the global
    batch.

    ``x`` float32[b, K] local rows; zero when every bit sums to zero over the global batch of B rows.
    Under DDP the local rows carry the gradient and DDP divides by the world size W, so the
    gradient is scaled by W (value unchanged) to equal the single-process gradient.
    """
    bal = (gather_with_grad(x).mean(dim=0) ** 2).mean()
    size = world()[1]
    return size * bal - (size - 1) * bal.detach()


class DSMHN(HashingMethod):
    """Image net f: backbone -> Linear(d, K) = F; text net g: tags float32[b, V] -> 8192, ReLU -> K = G.

    Unified codes of the batch's training items B = sign(F + G) (sign(0) = +1, no gradient).
    Loss ([recon], every term normalised to a mean so that it does not grow with batch size or K):

        J = J_sim + lambda J_label + gamma J_quant + eta J_bal
        J_sim   = mean over image i x text j pairs of the chosen ``similarity_pair_loss`` (F_i, G_j, S_ij)
        J_label = BCE(sigmoid(F W + c), L) + BCE(sigmoid(G W + c), L): one linear classifier shared by
                  both modalities, multi-label sigmoid cross-entropy, mean over b x c entries
        J_quant = ||B - F||^2 / (bK) + ||B - G||^2 / (bK)
        J_bal   = ||F^T 1||^2 / (B^2 K) + ||G^T 1||^2 / (B^2 K)   (each bit half +1, half -1)

    lambda = gamma = eta = 1. Retrieval codes: sign(F) for images, sign(G) for texts.

    Text encoders (``text_encoder``, a config choice): ``bow`` (default, as the papers) feeds the
    bag-of-words tags float[b, V] to the MLP V -> ``text_hidden`` -> K. ``minilm`` [recon] feeds it
    the MiniLM (all-MiniLM-L6-v2, frozen) sentence embeddings of the item's tags instead: each
    vocabulary word is embedded once (``tag_embeddings`` float[V, 384], a buffer, so it is saved
    with the model and a loaded model needs neither the vocabulary nor the MiniLM package), and an
    item's text vector is the L2-normalised mean of its tags' embeddings, BoW E / |BoW|. It works
    from the same bag-of-words batch as ``bow`` (the text search path is unchanged) and puts
    synonyms ("sneaker", "trainers") near each other before any training. The vocabulary is given
    with ``set_tag_vocabulary(words)`` (the training job does it from ``dataset.json``'s ``tags``).

    Sharded data (DDP): J_sim pairs local images with the gathered texts of every worker and the
    gathered images with the local texts (gathered sides without gradient); the sum of both blocks
    has exactly this worker's share of the global-batch gradient, and half of it is the loss value.
    J_bal uses the global column means (see ``bit_balance``); J_label and J_quant are per-row means.
    After DDP averages the workers' gradients they equal the single-process ones on the whole batch.
    """

    name = "dsmhn"
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")

    def __init__(
        self,
        backbone: Backbone,
        bits: int,
        num_classes: int,
        *,
        similarity_loss: str = "nll",
        lam: float = 1.0,
        gamma: float = 1.0,
        eta: float = 1.0,
        text_hidden: int = 8192,
        margin: float = 0.5,
        text_encoder: str = "bow",
        **common: Any,
    ) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        if self.tag_vocab_size <= 0:
            raise ValueError(
                "DSMHN needs text tags: tag_vocab_size must be > 0 (a dataset with a `tags` vocabulary)"
            )
        if similarity_loss not in SIMILARITY_LOSSES:
            raise ValueError(
                f"unknown similarity_loss {similarity_loss!r}; allowed: {', '.join(SIMILARITY_LOSSES)}"
            )
        if text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"unknown text_encoder {text_encoder!r}; allowed: {', '.join(TEXT_ENCODERS)}")
        self.text_encoder = text_encoder
        self.similarity_loss = similarity_loss
        self.lam = lam
        self.gamma = gamma
        self.eta = eta
        self.margin = margin
        self.image_head = nn.Linear(backbone.feature_dim, bits)
        text_in = self.tag_vocab_size
        if text_encoder == "minilm":
            text_in = MINILM_DIM
            self.register_buffer("tag_embeddings", torch.zeros(self.tag_vocab_size, MINILM_DIM))
        self.text_net = nn.Sequential(
            nn.Linear(text_in, text_hidden), nn.ReLU(), nn.Linear(text_hidden, bits)
        )
        self.classifier = nn.Linear(bits, num_classes)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image codes F float32[b, K] (linear output)."""
        return self.image_head(self.backbone(images).global_)

    def set_tag_vocabulary(self, words: list[str], encoder=None) -> None:
        """Embed each tag word with MiniLM into ``tag_embeddings`` (``text_encoder="minilm"``).

        A no-op for ``bow``.

        ``encoder``: a ``hashing.models.text.MiniLMEncoder`` (default: load the packaged one).
        """
        if self.text_encoder != "minilm":
            return
        if len(words) != self.tag_vocab_size:
            raise ValueError(f"DSMHN has {self.tag_vocab_size} tag words, got a vocabulary of {len(words)}")
        if encoder is None:
            from hashing.models.text import MiniLMEncoder

            encoder = MiniLMEncoder()
        emb = torch.as_tensor(encoder.encode(list(words)), dtype=torch.float32)
        self.tag_embeddings.copy_(emb.to(self.tag_embeddings.device))

    def text_features(self, tags: torch.Tensor) -> torch.Tensor:
        """The text net's input: the bag of words itself (``bow``) or the normalised mean MiniLM tag
        embedding (``minilm``)."""
        tags = tags.float()
        if self.text_encoder == "bow":
            return tags
        return nnf.normalize(tags @ self.tag_embeddings, dim=1)

    def encode_text(self, tags: torch.Tensor) -> torch.Tensor:
        """Text codes G float32[b, K] from bag-of-words ``tags`` float32[b, V]."""
        if tags.ndim != 2 or tags.shape[1] != self.tag_vocab_size:
            raise ValueError(
                f"DSMHN expects tags float[b, {self.tag_vocab_size}], got shape {tuple(tags.shape)}"
            )
        return self.text_net(self.text_features(tags))

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """``{"loss", "sim", "label", "quant", "bal"}`` scalars for the local rows of the global batch."""
        if "tags" not in batch:
            raise KeyError(
                "DSMHN needs batch['tags'] (bag-of-words float[b, V]); the dataset has no tags column"
            )
        f = self.encode_image(batch["image"])
        g = self.encode_text(batch["tags"])
        labels = batch["labels"].float()
        s = label_graph(labels, gather(labels))

        def pairs(a: torch.Tensor, b: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
            return similarity_pair_loss(a, b, sim, self.similarity_loss, self.margin).mean()

        blocks = pairs(f, gather(g), s) + pairs(gather(f), g, s.T)
        j_sim = blocks - 0.5 * blocks.detach()
        codes = sign_codes(f + g)
        j_quant = ((codes - f) ** 2).mean() + ((codes - g) ** 2).mean()
        j_bal = bit_balance(f) + bit_balance(g)
        j_label = sum(nnf.binary_cross_entropy_with_logits(self.classifier(x), labels) for x in (f, g))
        loss = j_sim + self.lam * j_label + self.gamma * j_quant + self.eta * j_bal
        return {
            "loss": loss,
            "sim": j_sim.detach(),
            "label": j_label.detach(),
            "quant": j_quant.detach(),
            "bal": j_bal.detach(),
        }
