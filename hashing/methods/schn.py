"""SCHN: semantically cycle-consistent hashing (ACM TOMM version, with discriminators).

Follows JalinWang/SCHN ``main_tomm.py`` (network widths, losses, DCC code update). The code matrix B is
a choice (``codes``): ``"batch"`` (the default, works sharded) solves B_b per global batch; ``"dataset"``
(the reference's, single process) keeps B for the whole training set and updates it between epochs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as nnf
from torch import nn

from hashing.errors import InputError
from hashing.methods.base import Batch, HashingMethod, label_graph, sign_codes
from hashing.methods.distributed import gather, local_rows, world
from hashing.models.backbone import Backbone

LABEL_WIDTH = 512  # F_lab, and the width of the latent attention
LATENT_WIDTH = 1024  # H


def _mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(cin, cout))
    return nn.Sequential(*layers)


def soft_similarity(labels: torch.Tensor) -> torch.Tensor:
    """S~ float32[n, n] for DCC: +1 for pairs sharing a label, -n_pos / n_neg otherwise.

    n_pos / n_neg count the similar / dissimilar entries of the whole n x n matrix (diagonal
    included), as the reference's "soft similarity matrix". Without dissimilar pairs S~ is all +1.
    """
    s = label_graph(labels, labels)
    n_pos = s.sum()
    n_neg = s.numel() - n_pos
    if n_neg == 0:
        return s
    return torch.where(s > 0, 1.0, -n_pos / n_neg)


def dcc_objective(b: torch.Tensor, u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """J(B) = ||B U^T||_F^2 - 2 tr(B^T Q): the DCC objective up to a constant independent of B.

    ``b`` float[n, K] in {-1, +1}, ``u`` float[n, K], ``q`` float[n, K]. With
    Q = K S~^T U + gamma U + alpha U_lab + beta U_lat it equals
    ||U B^T - K S~||^2 + gamma ||B - U||^2 + alpha ||B - U_lab||^2 + beta ||B - U_lat||^2 + const
    (||B||^2 = nK is constant for binary B). Returns a scalar tensor.
    """
    return ((b @ u.T) ** 2).sum() - 2 * (b * q).sum()


@torch.no_grad()
def dcc_codes(
    q: torch.Tensor, u: torch.Tensor, sweeps: int = 3, start: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary codes B float[n, K] in {-1, +1} minimising ``dcc_objective`` by discrete cyclic coordinate
    descent.

    Starts from ``start`` (float[n, K] in {-1, +1}; not modified) or, without it, from sign(Q), and
    updates one bit column at a time, ``sweeps`` passes over the K columns:
    B[:, k] = sign(Q[:, k] - B' U'^T U[:, k]) with B', U' the other columns (ADSH). Each column
    update is the exact minimiser given the others, so J never increases from the start. Deterministic:
    the same inputs give the same B on every worker.
    """
    if q.shape != u.shape:
        raise ValueError(f"DCC needs Q and U of the same shape, got {tuple(q.shape)} and {tuple(u.shape)}")
    if start is not None and start.shape != q.shape:
        raise ValueError(f"DCC start codes {tuple(start.shape)} do not match Q {tuple(q.shape)}")
    b = sign_codes(q) if start is None else start.clone()
    gram = u.T @ u  # K x K: B' U'^T u_k = B G[:, k] - B[:, k] G[k, k]
    for _ in range(sweeps):
        for k in range(q.shape[1]):
            others = b @ gram[:, k] - b[:, k] * gram[k, k]
            b[:, k] = sign_codes(q[:, k] - others)
    return b


class SCHN(HashingMethod):
    """Three spaces, a cycle module and two discriminators (d = backbone.feature_dim, c classes, K bits).

    Networks (widths as in the reference, where F_img is AlexNet fc7):
        visual space:   F_img = backbone global_ float[b, d],  U_img = tanh(Linear(d, K)(F_img))
        semantic space: F_lab = MLP c-1024-512 with ReLUs (ReLU after the last layer too),
                        U_lab = tanh(Linear(512, K)(F_lab))
        latent space:   A = one-head attention across the samples of the batch, queries/keys F_lab,
                        values F_img, width 512 -> float[b, 512];
                        H = ReLU(S_b A W + bias), W float[512, 1024] (a graph convolution over the
                        batch label graph S_b = 1[l l^T > 0], unnormalised, as the reference)
                        -> float[b, 1024];
                        U_lat = sigmoid(Linear(1024, K)(dropout 0.5 (H)))  (in (0, 1), as the reference)
        cycle module:   Û_img = tanh(MLP 1024-1024-512-K(attention(q = k = H, v = F_lab, width 1024)))
                        Û_lab = tanh(MLP 1024-1024-512-K(attention(q = k = H, v = F_img, width 1024)))
        discriminators: D_img, D_lab = MLP K-1024-512-1, probability sigmoid(logit) (the reference maps
                        tanh to [0, 1] with (t + 1) / 2 = sigmoid(2 z), the same family).
    As in the reference, the latent space and the cycle module read F_img and F_lab detached: they
    train their own weights, and the backbone and label net learn only from U_img and U_lab.

    Loss of the "main" phase (backbone, hash layers, label net, latent space, cycle module):

        L = l(U_img) + l(U_lab) + l(U_lat) + mean((Û_img - U_img)^2) + mean((Û_lab - U_lab)^2)
            + BCE([D_img(Û_img), D_lab(Û_lab)], 1)
        l(U) = (12 / K) mean((K S_b - U B_b^T)^2) + gamma mean((U - B_b)^2)

    (BCE over a list = mean over the concatenated 2b outputs, as the reference.)
    The adversarial terms use the discriminators with detached parameters, so this phase gives
    them no gradient; only the latent space's attention and graph layers and the cycle module learn
    from them (their inputs are detached; ``latent_hash`` does not). The reconstruction term's targets
    U_img/U_lab are not detached (as the reference's ``CycleLoss``), so it also trains the image and
    label networks. "discriminator" phase: BCE([D_img(U_img), D_lab(U_lab)], 1) (real) +
    BCE([D_img(Û_img), D_lab(Û_lab)], 0) (cycled), all inputs detached: only the discriminators learn.

    Codes, ``codes="batch"`` (the default) [recon]: the reference keeps a dataset-wide B and after each
    outer iteration updates it by DCC from Q = K S~^T U_img + gamma U_img + alpha U_lab + beta U_lat
    (S~ from ``soft_similarity``; the loss itself uses the 0/1 S_b, as the reference). Sharded across
    workers that would need sample indices and an all-to-all sync of B, so here B_b is solved per step
    for the gathered global batch (no gradient) from the gathered U_img, U_lab, U_lat, starting at
    sign(Q) with ``dcc_sweeps`` passes: deterministic and identical on every worker. In l(U) above,
    S_b is float[b, B] (local rows x global batch) and U B_b^T pairs the local rows with the global
    batch's codes.

    Codes, ``codes="dataset"`` (the reference's, ADSH-style asymmetric): a buffer ``train_codes`` B
    float[n, K] in {-1, +1} for the n = ``train_size`` training rows (and ``train_labels``
    float[n, c], their labels). Batches carry ``batch["index"]`` int64[b], the rows' positions in the
    training set. As the reference (ADSH's ``calc_loss``), l(U) pairs the batch rows with **all** of
    B: S_b = 1[l l_train^T > 0] float[b, n], U B^T float[b, n], and the quantisation term uses
    B[index]; the same (12 / K) mean and gamma mean as above. B is no parameter and changes only in
    ``update_codes(batches)``, which the caller runs once before training (B must exist for the first
    loss; the reference starts from zeros, which the asymmetric loss cannot use) and after every epoch
    (the reference's outer iteration): U_img, U_lab, U_lat of every training row (eval mode, no
    gradient; the latent space over each given batch), Q over the whole training set with the n x n
    S~, then ``dcc_sweeps`` DCC passes warm-started from the previous B (as the reference), so the
    DCC objective never increases. Single process only: Ray Train's shards have no global row index.
    alpha = 2, beta = 0.1, gamma = 10. Reference optimiser: Adam lr 4e-5, weight decay 1e-5, batch 64.
    The discriminator phase recomputes the spaces without gradient, so in train mode a backbone's
    BatchNorm running statistics see each batch twice per step.

    Sharded data (DDP): the latent space and cycle module run on the gathered global batch of
    (detached) features, each worker keeps its local rows; S_b pairs local rows with the global
    batch; every loss term is a per-row mean with constants on the other side, so DDP's averaged
    gradients equal the single-process gradients on the concatenated batch (up to dropout masks).
    Both phases leave some parameters without gradient: wrap in DDP with ``find_unused_parameters=True``.

    Retrieval: query and database codes are sign(U_img) from ``encode_image`` (no labels needed); with
    ``codes="dataset"``, ``train_codes`` is also the paper's database code matrix for the training set.
    """

    name = "schn"
    phases: ClassVar[tuple[str, ...]] = ("main", "discriminator")

    def __init__(self, backbone: Backbone, bits: int, num_classes: int, *, alpha: float = 2.0,
                 beta: float = 0.1, gamma: float = 10.0, dropout: float = 0.5, dcc_sweeps: int = 3,
                 codes: Literal["batch", "dataset"] = "batch", train_size: int | None = None,
                 **common: Any) -> None:
        super().__init__(backbone, bits, num_classes, **common)
        if num_classes <= 0:
            raise ValueError(f"SCHN needs labels: num_classes must be > 0, got {num_classes}")
        if codes not in ("batch", "dataset"):
            raise InputError(f"SCHN method.params.codes must be 'batch' or 'dataset', got {codes!r}")
        if codes == "dataset" and (train_size is None or train_size < 1):
            raise InputError(
                "SCHN with method.params.codes 'dataset' needs method.params.train_size, the number of "
                f"training rows (>= 1), got {train_size!r}"
            )
        if codes == "batch" and train_size is not None:
            raise InputError("SCHN method.params.train_size is used only with codes 'dataset'")
        self.codes = codes
        if codes == "dataset":
            self.register_buffer("train_codes", torch.zeros(train_size, bits))  # zeros until update_codes
            self.register_buffer("train_labels", torch.zeros(train_size, num_classes))
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.dcc_sweeps = dcc_sweeps
        d = backbone.feature_dim
        self.image_hash = nn.Linear(d, bits)
        self.label_net = nn.Sequential(_mlp(num_classes, 1024, LABEL_WIDTH), nn.ReLU())
        self.label_hash = nn.Linear(LABEL_WIDTH, bits)
        self.latent_attention = nn.MultiheadAttention(LABEL_WIDTH, 1, kdim=LABEL_WIDTH, vdim=d)
        self.graph_weight = nn.Linear(LABEL_WIDTH, LATENT_WIDTH, bias=False)
        self.graph_bias = nn.Parameter(torch.zeros(LATENT_WIDTH))
        self.latent_dropout = nn.Dropout(dropout)
        self.latent_hash = nn.Linear(LATENT_WIDTH, bits)
        self.image_rec_attention = nn.MultiheadAttention(LATENT_WIDTH, 1, kdim=LATENT_WIDTH, vdim=LABEL_WIDTH)
        self.label_rec_attention = nn.MultiheadAttention(LATENT_WIDTH, 1, kdim=LATENT_WIDTH, vdim=d)
        self.image_rec = _mlp(LATENT_WIDTH, 1024, 512, bits)
        self.label_rec = _mlp(LATENT_WIDTH, 1024, 512, bits)
        self.discriminators = nn.ModuleDict({space: _mlp(bits, 1024, 512, 1) for space in ("image", "label")})

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """U_img float32[b, K] in (-1, 1); the retrieval code is sign(U_img)."""
        return torch.tanh(self.image_hash(self.backbone(images).global_))

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """Phase ``main``: every parameter but the discriminators'; ``discriminator``: only theirs."""
        disc = list(self.discriminators.parameters())
        if phase == "discriminator":
            return disc
        self.check_phase(phase)
        disc_ids = {id(p) for p in disc}
        return [p for p in self.parameters() if id(p) not in disc_ids]

    def _spaces(self, batch: Batch) -> dict[str, torch.Tensor]:
        """U_img, U_lab, U_lat, Û_img, Û_lab float[b, K] of the local rows, and the labels float[b, c]."""
        if "labels" not in batch:
            raise KeyError("SCHN needs batch['labels'] (multi-hot float[b, c])")
        labels = batch["labels"].float()
        f_img = self.backbone(batch["image"]).global_
        f_lab = self.label_net(labels)
        u_img = torch.tanh(self.image_hash(f_img))
        u_lab = torch.tanh(self.label_hash(f_lab))
        # Latent space and cycle module: detached features of the whole global batch.
        g_img, g_lab, g_labels = gather(f_img), gather(f_lab), gather(labels)
        a, _ = self.latent_attention(g_lab, g_lab, g_img, need_weights=False)
        h = torch.relu(label_graph(g_labels, g_labels) @ self.graph_weight(a) + self.graph_bias)
        u_lat = torch.sigmoid(self.latent_hash(self.latent_dropout(h)))
        r_img, _ = self.image_rec_attention(h, h, g_lab, need_weights=False)
        r_lab, _ = self.label_rec_attention(h, h, g_img, need_weights=False)
        rows = local_rows(g_img.shape[0], f_img.shape[0])
        return {
            "labels": labels,
            "u_img": u_img,
            "u_lab": u_lab,
            "u_lat": u_lat[rows],
            "rec_img": torch.tanh(self.image_rec(r_img[rows])),
            "rec_lab": torch.tanh(self.label_rec(r_lab[rows])),
        }

    def _discriminate(self, u_img: torch.Tensor, u_lab: torch.Tensor, train: bool) -> torch.Tensor:
        """Logits float[2b]: [D_img(u_img), D_lab(u_lab)]; with detached discriminator weights unless
        ``train``."""
        logits = []
        for space, u in (("image", u_img), ("label", u_lab)):
            net = self.discriminators[space]
            if train:
                logits.append(net(u))
            else:
                params = {name: p.detach() for name, p in net.named_parameters()}
                logits.append(torch.func.functional_call(net, params, (u,)))
        return torch.cat(logits).squeeze(1)

    def _code_loss(
        self, u: torch.Tensor, s: torch.Tensor, b_global: torch.Tensor, b_local: torch.Tensor
    ) -> torch.Tensor:
        """l(U) = (12 / K) mean((K S - U B^T)^2) + gamma mean((U - B_local)^2); U, B_local float[b, K],
        S float[b, m], B float[m, K] (m: the global batch, or the training set with codes 'dataset')."""
        k = self.bits
        return 12 / k * ((k * s - u @ b_global.T) ** 2).mean() + self.gamma * ((u - b_local) ** 2).mean()

    def _dcc_target(
        self, labels: torch.Tensor, u_img: torch.Tensor, u_lab: torch.Tensor, u_lat: torch.Tensor
    ) -> torch.Tensor:
        """Q = K S~^T U_img + gamma U_img + alpha U_lab + beta U_lat float[n, K] for n rows."""
        return (
            self.bits * soft_similarity(labels).T @ u_img
            + self.gamma * u_img
            + self.alpha * u_lab
            + self.beta * u_lat
        )

    def _check_dataset_codes(self) -> None:
        if self.codes != "dataset":
            raise InputError("SCHN keeps a training-set code matrix only with method.params.codes 'dataset'")
        if world()[1] > 1:
            raise InputError(
                "SCHN with codes 'dataset' runs in a single process only: Ray Train's shards have no "
                "global row index to address the code matrix B; use codes 'batch' with train.num_workers > 1"
            )

    def _row_index(self, batch: Batch) -> torch.Tensor:
        """``batch["index"]`` int64[b], checked to address rows of the training set."""
        n = self.train_codes.shape[0]
        index = batch.get("index")
        if index is None:
            raise InputError(
                "SCHN with codes 'dataset' needs batch['index'] (int64[b], the rows' positions in the "
                f"training set, 0..{n - 1})"
            )
        if index.dtype != torch.int64 or index.ndim != 1 or len(index) != len(batch["image"]):
            raise InputError(
                f"batch['index'] must be int64[b] with b = {len(batch['image'])} rows, got "
                f"{index.dtype}{list(index.shape)}"
            )
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
            raise InputError(
                f"batch['index'] must be in 0..{n - 1} (train_size {n}), got "
                f"{int(index.min())}..{int(index.max())}"
            )
        return index.to(self.train_codes.device)

    @torch.no_grad()
    def dataset_targets(self, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, U_img, labels) float[n, K], float[n, K], float[n, c] of every training row, in index order.

        ``batches`` must cover every training row exactly once (``batch["index"]``). The spaces are
        computed in eval mode (no dropout), the latent space over each given batch; the mode is then
        restored. Raises InputError for a row missing or given twice.
        """
        self._check_dataset_codes()
        n, k = self.train_codes.shape
        device = self.train_codes.device
        u = {key: torch.zeros(n, k, device=device) for key in ("u_img", "u_lab", "u_lat")}
        labels = torch.zeros_like(self.train_labels)
        seen = torch.zeros(n, dtype=torch.bool, device=device)
        was_training = self.training
        self.eval()
        try:
            for batch in batches:
                index = self._row_index(batch)
                if seen[index].any() or len(torch.unique(index)) < len(index):
                    raise InputError("SCHN update_codes: a training row appears twice in the batches")
                sp = self._spaces(batch)
                for key, rows in u.items():
                    rows[index] = sp[key]
                labels[index] = sp["labels"]
                seen[index] = True
        finally:
            self.train(was_training)
        if not seen.all():
            missing = (~seen).nonzero().flatten()
            raise InputError(
                f"SCHN update_codes needs every training row once: {len(missing)} of {n} rows missing "
                f"(first: {int(missing[0])})"
            )
        return self._dcc_target(labels, u["u_img"], u["u_lab"], u["u_lat"]), u["u_img"], labels

    @torch.no_grad()
    def update_codes(self, batches: Iterable[Batch]) -> float:
        """DCC update of B (``train_codes``) over the whole training set; returns the fraction of bits
        that changed (1.0 on the first call, when B is still zeros).

        ``batches``: every training row once, with ``batch["index"]`` (see ``dataset_targets``).
        Warm-starts from the previous B (from sign(Q) on the first call); ``dcc_sweeps`` passes.
        """
        q, u_img, labels = self.dataset_targets(batches)
        learned = bool(self.train_codes.any())
        new = dcc_codes(q, u_img, self.dcc_sweeps, start=self.train_codes if learned else None)
        changed = float((new != self.train_codes).float().mean())
        self.train_codes.copy_(new)
        self.train_labels.copy_(labels)
        return changed

    def _dataset_code_losses(self, sp: dict[str, torch.Tensor], batch: Batch) -> list[torch.Tensor]:
        """l(U_img), l(U_lab), l(U_lat) against all of B (``codes="dataset"``)."""
        self._check_dataset_codes()
        index = self._row_index(batch)
        if not self.train_codes.any():
            raise InputError(
                "SCHN with codes 'dataset': run update_codes(batches over the training set) before the "
                "first training step (B is learned from the network's outputs)"
            )
        s = label_graph(sp["labels"], self.train_labels)
        b_rows = self.train_codes[index]
        return [self._code_loss(sp[key], s, self.train_codes, b_rows) for key in ("u_img", "u_lab", "u_lat")]

    def _batch_code_losses(self, sp: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """l(U_img), l(U_lab), l(U_lat) against B_b solved for the global batch (``codes="batch"``)."""
        g_labels, g_img = gather(sp["labels"]), gather(sp["u_img"])
        q = self._dcc_target(g_labels, g_img, gather(sp["u_lab"]), gather(sp["u_lat"]))
        b_global = dcc_codes(q, g_img, self.dcc_sweeps)
        b_local = b_global[local_rows(b_global.shape[0], sp["u_img"].shape[0])]
        s = label_graph(sp["labels"], g_labels)
        return [self._code_loss(sp[key], s, b_global, b_local) for key in ("u_img", "u_lab", "u_lat")]

    def forward(self, batch: Batch, phase: str = "main") -> dict[str, torch.Tensor]:
        """Scalars for the local rows of the global batch.

        Phase ``main``: ``{"loss", "code_img", "code_lab", "code_lat", "recon", "adversarial"}``;
        phase ``discriminator``: ``{"loss", "real", "fake"}``.
        """
        if phase == "discriminator":
            with torch.no_grad():
                sp = self._spaces(batch)
            real = self._discriminate(sp["u_img"], sp["u_lab"], train=True)
            fake = self._discriminate(sp["rec_img"], sp["rec_lab"], train=True)
            loss_real = nnf.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            loss_fake = nnf.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
            return {"loss": loss_real + loss_fake, "real": loss_real.detach(), "fake": loss_fake.detach()}
        if phase != "main":
            raise ValueError(f"method {self.name!r} has no phase {phase!r}; phases: {self.phases}")

        sp = self._spaces(batch)
        if self.codes == "dataset":
            code_img, code_lab, code_lat = self._dataset_code_losses(sp, batch)
        else:
            code_img, code_lab, code_lat = self._batch_code_losses(sp)
        recon = ((sp["rec_img"] - sp["u_img"]) ** 2).mean() + ((sp["rec_lab"] - sp["u_lab"]) ** 2).mean()
        fake = self._discriminate(sp["rec_img"], sp["rec_lab"], train=False)
        adversarial = nnf.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        loss = code_img + code_lab + code_lat + recon + adversarial
        return {
            "loss": loss,
            "code_img": code_img.detach(),
            "code_lab": code_lab.detach(),
            "code_lat": code_lat.detach(),
            "recon": recon.detach(),
            "adversarial": adversarial.detach(),
        }
