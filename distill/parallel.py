"""Data parallelism for the core over ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

When a process group is initialised (by Ray Train's ``TorchTrainer``, torchrun or a
test), every rank runs the same loop on the same random stream and computes only its
contiguous share of the global batch's micro-batches; the gradients of that share are
summed over ranks before each optimiser step. Each micro-batch's loss is already scaled
by its share of the *global* batch (``chunk / batch_size``), so the summed gradient is
exactly the single-worker gradient of the whole batch: W workers with global batch B
make the same update as one worker with batch B (to float rounding of the sum order).

Why not ``DistributedDataParallel``: one SiD iteration steps two networks with gradient
accumulation and freezes ψ during G's step; one explicit sum per optimiser step is
simpler to get exactly right than DDP's hooks and ``no_sync`` contexts.

Without a process group every function here is a no-op (rank 0 of 1).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from distill.config import ConfigError


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0 alone writes checkpoints, evaluates and shows progress."""
    return rank_and_world_size()[0] == 0


def check_batch(batch_size: int, micro_batch_size: int) -> None:
    """Every rank needs the same whole number of micro-batches of the global batch."""
    _, world = rank_and_world_size()
    if batch_size % (micro_batch_size * world):
        raise ConfigError(
            f"batch_size = {batch_size}: with {world} data-parallel workers it must be "
            f"divisible by micro_batch_size x workers = {micro_batch_size} x {world}")


def owned_chunks(num_chunks: int) -> range:
    """Indices of the micro-batches this rank computes: a contiguous 1/W of them."""
    rank, world = rank_and_world_size()
    if num_chunks % world:
        raise ConfigError(f"{num_chunks} micro-batches cannot be shared by {world} workers; "
                          "make batch_size divisible by micro_batch_size x workers")
    per_rank = num_chunks // world
    return range(rank * per_rank, (rank + 1) * per_rank)


def sum_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (sum) the gradients of ``parameters`` in place, overlapping the transfers.

    A parameter without a gradient on this rank contributes zeros, so every rank ends
    with the same gradient for every parameter.
    """
    _, world = rank_and_world_size()
    if world == 1:
        return
    grads = []
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    for handle in [dist.all_reduce(g, op=dist.ReduceOp.SUM, async_op=True) for g in grads]:
        handle.wait()


def sum_scalar(value: torch.Tensor) -> torch.Tensor:
    """The sum of a 0-d tensor over ranks (every rank gets it: they all decide alike)."""
    _, world = rank_and_world_size()
    if world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
