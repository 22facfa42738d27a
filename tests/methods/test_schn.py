"""SCHN: DCC code solver, soft similarity, phase separation (main vs discriminator), cycle and
adversarial gradient routing, overfit on real digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from hashing.encoding import Encoder
from hashing.errors import InputError
from hashing.methods import build_method
from hashing.methods.base import label_graph
from hashing.methods.schn import SCHN, dcc_codes, dcc_objective, soft_similarity
from hashing.models.small_cnn import SmallCNN
from hashing.training import fit, make_optimizers
from tests.methods.digits import digits_batch

torch.set_num_threads(1)


def dcc_problem(n: int = 12, k: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random U, U_lab, U_lat float64[n, k], multi-hot labels and
    Q = K S~^T U + 10 U + 2 U_lab + 0.1 U_lat."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, k, generator=g, dtype=torch.float64).tanh()
    u_lab = torch.randn(n, k, generator=g, dtype=torch.float64).tanh()
    u_lat = torch.rand(n, k, generator=g, dtype=torch.float64)
    labels = (torch.rand(n, 3, generator=g) > 0.6).double()
    s = soft_similarity(labels).double()
    q = k * s.T @ u + 10 * u + 2 * u_lab + 0.1 * u_lat
    return u, u_lab, u_lat, s, q


def test_soft_similarity_is_one_for_shared_labels_and_minus_npos_over_nneg_otherwise():
    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    shared = np.array([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 1]], dtype=bool)
    n_pos, n_neg = shared.sum(), (~shared).sum()
    expected = np.where(shared, 1.0, -n_pos / n_neg)
    np.testing.assert_allclose(soft_similarity(labels).numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(label_graph(labels, labels).numpy(), shared.astype(np.float32))


def test_soft_similarity_without_dissimilar_pairs_is_all_ones():
    labels = torch.ones(3, 2)
    np.testing.assert_array_equal(soft_similarity(labels).numpy(), np.ones((3, 3)))


def test_dcc_objective_differs_from_the_full_objective_by_a_constant():
    u, u_lab, u_lat, s, q = dcc_problem()
    k = u.shape[1]

    def full(b: torch.Tensor) -> float:
        return float(
            ((u @ b.T - k * s) ** 2).sum()
            + 10 * ((b - u) ** 2).sum()
            + 2 * ((b - u_lab) ** 2).sum()
            + 0.1 * ((b - u_lat) ** 2).sum()
        )

    g = torch.Generator().manual_seed(1)
    b1, b2 = (torch.randint(0, 2, u.shape, generator=g).double() * 2 - 1 for _ in range(2))
    assert full(b1) - full(b2) == pytest.approx(
        float(dcc_objective(b1, u, q) - dcc_objective(b2, u, q)), rel=1e-9
    )


def test_dcc_codes_are_binary_and_beat_random_codes_and_the_start():
    u, _, _, _, q = dcc_problem()
    b = dcc_codes(q, u)
    assert set(torch.unique(b).tolist()) <= {-1.0, 1.0}
    assert b.shape == q.shape
    j = float(dcc_objective(b, u, q))
    assert j <= float(dcc_objective(torch.where(q >= 0, 1.0, -1.0).double(), u, q))
    g = torch.Generator().manual_seed(2)
    randoms = [
        float(dcc_objective(torch.randint(0, 2, u.shape, generator=g).double() * 2 - 1, u, q))
        for _ in range(50)
    ]
    assert j < min(randoms)


def test_dcc_converged_codes_cannot_be_improved_by_one_bit_flip():
    u, _, _, _, q = dcc_problem(n=10, k=6, seed=3)
    b = dcc_codes(q, u, sweeps=30)
    j = float(dcc_objective(b, u, q))
    for i in range(b.shape[0]):
        for k in range(b.shape[1]):
            flipped = b.clone()
            flipped[i, k] *= -1
            assert float(dcc_objective(flipped, u, q)) >= j - 1e-9, (i, k)


def test_phase_parameters_split_all_parameters_between_main_and_discriminator():
    method = SCHN(SmallCNN(), bits=16, num_classes=4)
    main = {id(p) for p in method.phase_parameters("main")}
    disc = {id(p) for p in method.phase_parameters("discriminator")}
    assert disc == {id(p) for p in method.discriminators.parameters()}
    assert not main & disc
    assert main | disc == {id(p) for p in method.parameters()}
    with pytest.raises(ValueError, match="no phase"):
        method.phase_parameters("generator")


def test_main_loss_reaches_backbone_and_hash_layers_but_not_discriminators():
    torch.manual_seed(0)
    method = SCHN(SmallCNN(), bits=16, num_classes=4)
    out = method(digits_batch(12, classes=4))
    assert set(out) == {"loss", "code_img", "code_lab", "code_lat", "recon", "adversarial"}
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for param in (
        method.image_hash.weight,
        method.backbone.stage1[0].weight,
        method.label_hash.weight,
        method.latent_hash.weight,
        method.graph_weight.weight,
        method.image_rec[-1].weight,
    ):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.discriminators.parameters())


@pytest.mark.parametrize("phase", ["main", "discriminator"])
def test_a_phase_step_changes_exactly_that_phase_parameters(phase: str):
    torch.manual_seed(0)
    method = SCHN(SmallCNN(), bits=16, num_classes=4)
    optimizers = make_optimizers(method, lr=1e-3)
    before = {name: p.detach().clone() for name, p in method.named_parameters()}
    optimizers[phase].zero_grad()
    method(digits_batch(12, classes=4), phase=phase)["loss"].backward()
    optimizers[phase].step()
    own = {id(p) for p in method.phase_parameters(phase)}
    for name, p in method.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (id(p) in own), f"{phase} step: {name} changed={changed}"


def test_discriminator_phase_trains_discriminators_on_detached_codes():
    torch.manual_seed(0)
    method = SCHN(SmallCNN(), bits=16, num_classes=4)
    out = method(digits_batch(12, classes=4), phase="discriminator")
    assert set(out) == {"loss", "real", "fake"}
    out["loss"].backward()
    for name, p in method.named_parameters():
        assert (p.grad is not None) == name.startswith("discriminators."), name


def test_missing_labels_or_unknown_phase_raise():
    method = SCHN(SmallCNN(), bits=8, num_classes=4)
    batch = digits_batch(4, classes=4)
    with pytest.raises(KeyError, match="labels"):
        method({"image": batch["image"]})
    with pytest.raises(ValueError, match="no phase"):
        method(batch, phase="generator")


def test_overfit_small_batch_and_codes_follow_labels():
    torch.manual_seed(0)
    batch = digits_batch(24, classes=4)
    method = build_method("schn", backbone=SmallCNN(), bits=16, num_classes=4)
    history = fit(method, lambda epoch: [batch], epochs=30, lr=1e-3)
    losses = [h["main/loss"] for h in history]
    assert all(np.isfinite(h["discriminator/loss"]) for h in history)
    assert losses[-1] < 0.5 * losses[0], losses
    assert history[-1]["main/code_img"] < 0.5 * history[0]["main/code_img"]
    codes = np.where(Encoder(method).relaxed(batch["image"]) >= 0, 1, -1)
    dist = (16 - codes @ codes.T) / 2
    same = (batch["labels"] @ batch["labels"].T).numpy() > 0
    off_diag = ~np.eye(len(same), dtype=bool)
    assert dist[same & off_diag].mean() < dist[~same].mean() - 3


# Parameter groups of SCHN by module name (the first component of ``named_parameters``).
IMAGE_NET = {"backbone", "image_hash"}
LABEL_NET = {"label_net", "label_hash"}
LATENT_TRUNK = {"latent_attention", "graph_weight", "graph_bias"}  # H, which the cycle module reads
CYCLE = {"image_rec_attention", "label_rec_attention", "image_rec", "label_rec"}
ALL_MODULES = IMAGE_NET | LABEL_NET | LATENT_TRUNK | CYCLE | {"latent_hash", "discriminators"}


def reached_modules(method: SCHN, term: torch.Tensor) -> set[str]:
    """Modules with at least one parameter that ``term`` depends on (autograd graph, not values)."""
    names, params = zip(*method.named_parameters(), strict=True)
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    reached = {name.split(".")[0] for name, g in zip(names, grads, strict=True) if g is not None}
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    return reached


def test_cycle_and_adversarial_terms_reach_only_the_cycle_module_and_latent_space():
    # The issue "discriminator and cycle steps update only their own parameters", for the cycle
    # module, which trains inside the main phase: it reads F_img, F_lab detached, so its outputs
    # (and the adversarial term, through discriminators with detached weights) train only the
    # cycle module and the latent trunk H it attends over; the reconstruction terms also pull
    # U_img, U_lab towards the cycled codes (the reference's CycleLoss does not detach them).
    torch.manual_seed(0)
    method = SCHN(SmallCNN(), bits=16, num_classes=4, dropout=0.0)
    assert {name.split(".")[0] for name, _ in method.named_parameters()} == ALL_MODULES
    batch = digits_batch(12, classes=4)
    sp = method._spaces(batch)
    fake = method._discriminate(sp["rec_img"], sp["rec_lab"], train=False)
    adversarial = nnf.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    recon = ((sp["rec_img"] - sp["u_img"]) ** 2).mean() + ((sp["rec_lab"] - sp["u_lab"]) ** 2).mean()

    assert reached_modules(method, sp["rec_img"].sum() + sp["rec_lab"].sum()) == CYCLE | LATENT_TRUNK
    assert reached_modules(method, adversarial) == CYCLE | LATENT_TRUNK
    assert reached_modules(method, recon) == CYCLE | LATENT_TRUNK | IMAGE_NET | LABEL_NET

    # Forward's main loss is these two terms plus the code losses (B by DCC, a constant), with the
    # same gradient on every parameter: so its cycle and adversarial parts route as above, the
    # code losses do not reach the cycle module, and the discriminators get nothing.
    k, labels = method.bits, batch["labels"]
    u_img, u_lab, u_lat = sp["u_img"], sp["u_lab"], sp["u_lat"]
    q = k * soft_similarity(labels).T @ u_img + 10 * u_img + 2 * u_lab + 0.1 * u_lat
    b = dcc_codes(q.detach(), u_img.detach(), sweeps=3)
    s = label_graph(labels, labels)
    code = sum(
        12 / k * ((k * s - u @ b.T) ** 2).mean() + 10 * ((u - b) ** 2).mean() for u in (u_img, u_lab, u_lat)
    )
    names, params = zip(*method.named_parameters(), strict=True)
    want = torch.autograd.grad(code + recon + adversarial, params, allow_unused=True)
    out = method(batch, phase="main")
    got = torch.autograd.grad(out["loss"], params, allow_unused=True)
    assert float(out["recon"]) == pytest.approx(float(recon.detach()), rel=1e-5)
    assert float(out["adversarial"]) == pytest.approx(float(adversarial.detach()), rel=1e-5)
    for name, g, w in zip(names, got, want, strict=True):
        if name.startswith("discriminators."):
            assert g is None and w is None, name
        else:
            # float32 sums in another order differ by ~1e-6 of the gradient's scale; a term routed
            # wrongly differs by the order of the gradient itself.
            scale = float(w.abs().max()) if w is not None else 1.0
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=name)


# --- codes="dataset": the reference's training-set code matrix B --------------------------------------


def indexed_batches(
    data: dict[str, torch.Tensor], size: int, order: np.ndarray
) -> list[dict[str, torch.Tensor]]:
    """``data`` (all training rows) in batches of ``size`` rows taken in ``order``, each with its rows'
    ``index`` int64[b] into the training set."""
    out = []
    for start in range(0, len(order), size):
        rows = torch.from_numpy(order[start : start + size]).long()
        out.append({"image": data["image"][rows], "labels": data["labels"][rows], "index": rows})
    return out


def dataset_method(n: int = 24, bits: int = 8) -> tuple[SCHN, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    data = digits_batch(n, classes=4, parity_and_size=True)
    method = SCHN(SmallCNN(), bits=bits, num_classes=6, codes="dataset", train_size=n)
    return method, data


def test_dataset_codes_need_a_train_size_and_a_known_mode():
    with pytest.raises(InputError, match="train_size"):
        SCHN(SmallCNN(), bits=8, num_classes=4, codes="dataset")
    with pytest.raises(InputError, match="codes"):
        SCHN(SmallCNN(), bits=8, num_classes=4, codes="global")
    with pytest.raises(InputError, match="train_size"):
        SCHN(SmallCNN(), bits=8, num_classes=4, train_size=10)


def test_dataset_codes_are_a_buffer_and_change_only_through_update_codes():
    method, data = dataset_method()
    assert "train_codes" in dict(method.named_buffers())
    assert all(p is not method.train_codes for p in method.parameters())
    epoch = indexed_batches(data, 8, np.arange(24))
    method.update_codes(epoch)
    first = method.train_codes.clone()
    assert set(torch.unique(first).tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(method.train_labels, data["labels"])
    fit(method, lambda e: indexed_batches(data, 8, np.random.default_rng(e).permutation(24)), 3, lr=1e-2)
    torch.testing.assert_close(method.train_codes, first, rtol=0, atol=0)  # training steps leave B alone
    q, u, _ = method.dataset_targets(epoch)
    method.update_codes(epoch)
    torch.testing.assert_close(method.train_codes, dcc_codes(q, u, start=first), rtol=0, atol=0)


def test_dataset_dcc_update_never_increases_the_objective():
    method, data = dataset_method(n=32, bits=12)
    order = np.random.default_rng(0).permutation(32)
    method.update_codes(indexed_batches(data, 8, order))
    optimizers = make_optimizers(method, lr=1e-2)
    for epoch in range(3):
        for batch in indexed_batches(data, 8, np.random.default_rng(epoch).permutation(32)):
            optimizers["main"].zero_grad()
            method(batch)["loss"].backward()
            optimizers["main"].step()
        q, u, _ = method.dataset_targets(indexed_batches(data, 8, order))
        before = float(dcc_objective(method.train_codes, u, q))
        changed = method.update_codes(indexed_batches(data, 8, order))
        assert float(dcc_objective(method.train_codes, u, q)) <= before + 1e-6 * abs(before)
        assert 0.0 <= changed <= 1.0


def test_dataset_targets_are_in_training_set_order_and_cover_every_row():
    method, data = dataset_method()
    order = np.random.default_rng(1).permutation(24)
    q, u, labels = method.dataset_targets(indexed_batches(data, 6, order))
    assert q.shape == u.shape == (24, 8)
    torch.testing.assert_close(labels, data["labels"])
    torch.testing.assert_close(u, method.eval().encode_image(data["image"]), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="2 of 24 rows missing"):
        method.update_codes(indexed_batches(data, 6, order[:-2]))
    with pytest.raises(InputError, match="twice"):
        method.update_codes(indexed_batches(data, 6, np.concatenate([order, order[:3]])))


def test_dataset_loss_pairs_the_batch_with_all_of_b_and_quantises_to_its_own_rows():
    method, data = dataset_method()
    method.latent_dropout.p = 0.0
    method.update_codes(indexed_batches(data, 8, np.arange(24)))
    batch = indexed_batches(data, 8, np.random.default_rng(2).permutation(24))[0]
    sp = method._spaces(batch)
    b, k = method.train_codes, method.bits
    s = label_graph(batch["labels"], data["labels"])  # float[8, 24]: the batch vs every training row
    u = sp["u_img"].detach()
    want = 12 / k * ((k * s - u @ b.T) ** 2).mean() + 10 * ((u - b[batch["index"]]) ** 2).mean()
    assert float(method(batch)["code_img"]) == pytest.approx(float(want), rel=1e-5)


def test_dataset_codes_raise_clearly_without_index_before_update_or_under_ddp(monkeypatch):
    method, data = dataset_method()
    batch = indexed_batches(data, 8, np.arange(24))[0]
    with pytest.raises(InputError, match="update_codes"):
        method(batch)
    with pytest.raises(InputError, match=r"batch\['index'\]"):
        method.update_codes([{"image": batch["image"], "labels": batch["labels"]}])
    method.update_codes(indexed_batches(data, 8, np.arange(24)))
    with pytest.raises(InputError, match=r"batch\['index'\]"):
        method({"image": batch["image"], "labels": batch["labels"]})
    with pytest.raises(InputError, match="0..23"):
        method({**batch, "index": batch["index"] + 20})
    monkeypatch.setattr("hashing.methods.schn.world", lambda: (0, 2))
    with pytest.raises(InputError, match="single process"):
        method(batch)
    with pytest.raises(InputError, match="single process"):
        method.update_codes(indexed_batches(data, 8, np.arange(24)))


def test_dcc_warm_start_never_increases_the_objective_of_the_start():
    u, _, _, _, q = dcc_problem(n=16, k=8, seed=4)
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        start = torch.randint(0, 2, u.shape, generator=g).double() * 2 - 1
        kept = start.clone()
        b = dcc_codes(q, u, sweeps=1, start=start)
        torch.testing.assert_close(start, kept)  # the start is not modified
        assert float(dcc_objective(b, u, q)) <= float(dcc_objective(start, u, q)) + 1e-9
