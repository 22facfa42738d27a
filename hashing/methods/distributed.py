"""Global-batch helpers: pairwise losses pair each worker's rows with the rows of every worker.

Without an initialised process group (a plain loop, a test) every function is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` float[b, ...] from every worker into float[world * b, ...] in rank order.

    The local slice is ``x`` itself, so gradients flow back to this worker's rows; the other
    workers' rows are constants here (their own workers differentiate them). Every worker must
    pass the same batch size b (Ray Train's iterators are asked for ``drop_last=True``).
    """
    rank, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (labels, features used only as targets)."""
    return gather_with_grad(x.detach()).detach()


def symmetric_pair_term(m: torch.Tensor) -> torch.Tensor:
    """The loss term for ``m``, the mean of a pair loss symmetric in (i, j) over this worker's rows x the
    gathered rows (``gather``: columns without gradient): ``2 m - m.detach()``, value m, gradient 2 dm.

    On the whole batch a local u_i sits on both sides of its pairs, so its gradient is twice that of the
    rows x detached columns block; after DDP averages the workers' gradients they equal the
    single-process gradients on the concatenated batch (and outside DDP, those of the batch itself).
    """
    return 2 * m - m.detach()


def local_rows(global_batch_size: int, local_batch_size: int) -> slice:
    """Rows of the gathered global batch that belong to this worker."""
    rank, size = world()
    if global_batch_size != local_batch_size * size:
        raise ValueError(f"global batch {global_batch_size} != {size} workers x {local_batch_size} rows")
    return slice(rank * local_batch_size, (rank + 1) * local_batch_size)
