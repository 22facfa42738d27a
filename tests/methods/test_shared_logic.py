"""What the gradient-trained methods share: the DDP pair-term form, the sign convention, and every
method's loss reaching its hash layer and the backbone."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from hashing.methods import build_method
from hashing.methods.base import sign_codes
from hashing.methods.distributed import symmetric_pair_term
from hashing.methods.dpsh import dpsh_pair_loss
from hashing.methods.idhn import idhn_pair_loss, label_cosine
from hashing.models.small_cnn import SmallCNN

torch.set_num_threads(1)


def _labels(n: int, classes: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, classes, generator=torch.Generator().manual_seed(seed)) > 0.6).float()


PAIR_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dpsh": lambda u, v, labels: dpsh_pair_loss(u, v, (labels @ labels.T > 0).float()),
    "idhn": lambda u, v, labels: idhn_pair_loss(u, v, label_cosine(labels, labels)),
}


@pytest.mark.parametrize("method", sorted(PAIR_LOSSES))
def test_symmetric_pair_term_has_the_gradient_of_the_pair_mean_with_both_sides_differentiated(method):
    pair_loss = PAIR_LOSSES[method]
    torch.manual_seed(0)
    u = torch.randn(6, 8).tanh().requires_grad_()
    labels = _labels(6, 4, seed=1)
    (g_plain,) = torch.autograd.grad(pair_loss(u, u, labels).mean(), u)
    block = pair_loss(u, u.detach(), labels).mean()  # local rows x detached (gathered) columns
    term = symmetric_pair_term(block)
    (g_term,) = torch.autograd.grad(term, u)
    torch.testing.assert_close(g_term, g_plain)
    assert float(term.detach()) == pytest.approx(float(block.detach()))


def test_sign_codes_put_zero_on_the_plus_side_without_gradient():
    x = torch.tensor([[-2.0, 0.0, 3.0]], requires_grad=True)
    codes = sign_codes(x)
    assert codes.tolist() == [[-1.0, 1.0, 1.0]] and not codes.requires_grad
    assert sign_codes(x.detach().double()).dtype == torch.float64


@pytest.mark.parametrize("name", ["dpsh", "idhn", "udmsh"])
def test_the_loss_reaches_the_hash_layer_and_the_backbone(name):
    torch.manual_seed(0)
    method = build_method(name, backbone=SmallCNN(), bits=16, num_classes=12)
    batch = {"image": torch.randn(16, 3, 16, 16), "labels": _labels(16, 12, seed=2)}
    out = method(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    for param in (method.hash_layer.weight, method.backbone.stage1[0].weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
