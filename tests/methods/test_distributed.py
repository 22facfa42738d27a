"""Two gloo processes under DDP give the loss and gradients of one process on the concatenated batch.

Each worker holds half of a global batch; pairwise losses gather the other half
(``hashing.methods.distributed``) and DDP averages the gradients. The average of the workers'
losses and the DDP-averaged gradients must equal a plain single-process step on all rows.

SCHN and UDMSH need more than one batch's rows per term: SCHN solves its code matrix B by DCC and
runs its latent space and cycle module over the gathered global batch; UDMSH builds its similarity
matrix from the gathered features (global and spatial). Both are checked like the pairwise methods,
SCHN in each of its phases and with dropout 0: its docstring's equality holds "up to dropout
masks" (each worker draws its own mask for U_lat, which then changes B).
"""

from __future__ import annotations

import gc
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
# (method, phase): every phase of every method whose loss spans the global batch.
CASES = (
    ("idhn", "main"),
    ("dpsh", "main"),
    ("dsmhn", "main"),
    ("schn", "main"),
    ("schn", "discriminator"),
    ("udmsh", "main"),
)
METHOD_KWARGS = {"dsmhn": {"text_hidden": 32}, "schn": {"dropout": 0.0}}


class MLPBackbone(Backbone):
    """A backbone with parameters but no BatchNorm (whose per-worker statistics would differ by design).

    ``spatial`` is the input itself (the earliest "stage"; parameter-free, so methods that read only
    ``global_`` leave no parameter unused), distinct from ``global_`` so UDMSH's combined distance
    really mixes two feature sets.
    """

    feature_dim = 16
    spatial_dim = 10

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU())

    def forward(self, images: torch.Tensor) -> Features:
        return Features(self.net(images), images)


def make_method(name: str) -> HashingMethod:
    torch.manual_seed(0)
    method = build_method(
        name, backbone=MLPBackbone(), bits=8, num_classes=5, tag_vocab_size=7, **METHOD_KWARGS.get(name, {})
    )
    if name == "schn":
        # At PyTorch's default init SCHN's attentions are nearly uniform over the batch and its
        # deep MLPs shrink what differs, so U_lat and the cycled codes are the same for every row
        # (std over rows ~1e-6) and a worker using the wrong rows would go unnoticed. Doubling the
        # weight matrices makes the rows distinct (std ~1e-2) without saturating the tanh outputs.
        with torch.no_grad():
            for param_name, param in method.named_parameters():
                if param.ndim == 2 and not param_name.startswith("discriminators."):
                    param.mul_(2)
    return method


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
        for name, phase in CASES:
            method = make_method(name)
            # As the Ray Train worker: phases that train different parameters leave some unused.
            model = DistributedDataParallel(method, find_unused_parameters=len(method.phases) > 1)
            loss = model(local, phase=phase)["loss"]
            loss.backward()
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            mean_loss /= WORLD
            if rank == 0:
                grads = {n: p.grad for n, p in method.named_parameters()}
                torch.save({"loss": mean_loss, "grads": grads}, Path(out_dir) / f"{name}-{phase}.pt")
            # Free the DDP reducer (it holds gloo work objects) before the next case and before
            # the group goes: gloo work outliving its group can abort the process at exit
            # ("terminate called without an active exception", seen once in CI).
            del model, loss
            gc.collect()
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
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
    for name, phase in CASES:
        case = f"{name}/{phase}"
        method = make_method(name)
        out = method(batch, phase=phase)
        if name == "udmsh":  # the similarity has both confident and graded pairs, so the weights matter
            assert 0 < float(out["confident"]) < 1, float(out["confident"])
        out["loss"].backward()
        got = torch.load(tmp_path / f"{name}-{phase}.pt", weights_only=True)
        torch.testing.assert_close(
            got["loss"], out["loss"].detach(), rtol=1e-5, atol=1e-6, msg=f"{case} loss"
        )
        trained = {id(p) for p in method.phase_parameters(phase)}
        for param_name, param in method.named_parameters():
            if id(param) not in trained:  # another phase's parameter: no gradient in either run
                assert param.grad is None, f"{case}: {param_name} has a gradient"
                assert got["grads"][param_name] is None, f"{case}: DDP gave {param_name} a gradient"
                continue
            assert param.grad is not None and param.grad.abs().sum() > 0, (
                f"{case}: {param_name} has no gradient"
            )
            torch.testing.assert_close(
                got["grads"][param_name], param.grad, rtol=1e-4, atol=1e-6, msg=f"{case} grad {param_name}"
            )
