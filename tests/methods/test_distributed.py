"""Two gloo processes under DDP give the loss and gradients of one process on the concatenated batch.

Each worker holds half of a global batch; pairwise losses gather the other half
(``hashing.methods.distributed``) and DDP averages the gradients. The average of the workers'
losses and the DDP-averaged gradients must equal a plain single-process step on all rows.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hashing.methods import build_method
from hashing.methods.base import Batch, HashingMethod
from hashing.models.backbone import Backbone, Features

WORLD = 2
GLOBAL_BATCH = 12
METHODS = ("idhn", "dpsh", "dsmhn")


class MLPBackbone(Backbone):
    """A backbone with parameters but no BatchNorm (whose per-worker statistics would differ by design)."""

    feature_dim = 16
    spatial_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU())

    def forward(self, images: torch.Tensor) -> Features:
        h = self.net(images)
        return Features(h, h)


def make_method(name: str) -> HashingMethod:
    torch.manual_seed(0)
    kwargs = {"text_hidden": 32} if name == "dsmhn" else {}
    return build_method(name, backbone=MLPBackbone(), bits=8, num_classes=5, tag_vocab_size=7, **kwargs)


def global_batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(GLOBAL_BATCH, 5, generator=g) < 0.3).float()
    labels[torch.arange(GLOBAL_BATCH), torch.arange(GLOBAL_BATCH) % 5] = 1
    return {
        "image": torch.randn(GLOBAL_BATCH, 10, generator=g),
        "labels": labels,
        "tags": (torch.rand(GLOBAL_BATCH, 7, generator=g) < 0.4).float(),
    }


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        local = {key: value[rows] for key, value in global_batch().items()}
        for name in METHODS:
            method = make_method(name)
            model = DistributedDataParallel(method)
            loss = model(local, phase="main")["loss"]
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= WORLD
            if rank == 0:
                grads = {n: p.grad for n, p in method.named_parameters()}
                torch.save({"loss": mean_loss, "grads": grads}, Path(out_dir) / f"{name}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_workers_match_single_process_on_global_batch(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    batch = global_batch()
    for name in METHODS:
        method = make_method(name)
        loss = method(batch)["loss"]
        loss.backward()
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6, msg=f"{name} loss")
        for param_name, param in method.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, (
                f"{name}.{param_name} has no gradient"
            )
            torch.testing.assert_close(
                got["grads"][param_name], param.grad, rtol=1e-4, atol=1e-6, msg=f"{name} grad {param_name}"
            )
