"""torch.distributed helpers of the loop (no Ray): who am I, broadcast, reduce, compare.

With `world_size == 1` every helper is a no-op, so the same loop runs in a single process
(a Tune trial, a test, a benchmark) without a process group.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from flows.data_init import warn_if_uninitialized


@dataclass(frozen=True)
class WorkerInfo:
    """This process's place in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # torch device string, e.g. "cuda:0"
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)

    @property
    def is_chief(self) -> bool:
        """Rank 0: the one that logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@torch.no_grad()
def broadcast_module(module: nn.Module, world: WorkerInfo) -> None:
    """Copy rank 0's parameters AND buffers (ActNorm's initialised flag…) to every rank."""
    if not world.distributed:
        return
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        wire = tensor.detach()
        if wire.dtype == torch.bool:  # gloo has no bool collectives
            wire = wire.to(torch.uint8)
        wire = wire.contiguous()
        dist.broadcast(wire, src=0)
        if wire.data_ptr() != tensor.data_ptr():
            tensor.copy_(wire.to(tensor.dtype))


def all_reduce_sum(values: list[float], world: WorkerInfo) -> list[float]:
    """Element-wise sum over ranks, in float64 (bpd sums and counts)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_cat(tensor: torch.Tensor, world: WorkerInfo) -> torch.Tensor:
    """Every rank's `tensor` (the same shape on every rank) concatenated along dim 0, in rank
    order, on every rank."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def state_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer, bit for bit."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_digests(module: nn.Module, world: WorkerInfo) -> list[str]:
    """`state_digest` of every rank, in rank order (identical when DDP is consistent)."""
    mine = state_digest(module)
    if not world.distributed:
        return [mine]
    everyone: list[str | None] = [None] * world.world_size
    dist.all_gather_object(everyone, mine)
    return [str(d) for d in everyone]


def wrap_for_training(model: nn.Module, world: WorkerInfo, compile_: bool,
                      backend: str = "inductor") -> nn.Module:
    """The training objective: the model (whose forward is bits/dim of levels), in DDP when
    distributed (gradients averaged over ranks), then compiled if asked.

    Compiled as one graph, the same on every rank, fresh or resumed: the model's check that
    its ActNorms were initialised reads their flags on the host, so it runs here, once, not
    in the graph. In one process `fullgraph=True` makes a graph break an error, not a slow
    step; DDP's wrapper runs its own bookkeeping (logging, bucket rebuilds) outside the graph
    in its first iterations, which `fullgraph` refuses, so in DDP the model's forward and
    backward are one graph (split for the gradient buckets by Dynamo's DDP optimiser) inside
    a wrapper that is not.
    """
    objective = model
    if world.distributed:
        device = torch.device(world.device)
        ids = [device] if device.type == "cuda" else None
        objective = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile_:
        if model.training:
            warn_if_uninitialized(model)
        objective = torch.compile(objective, backend=backend, fullgraph=not world.distributed)
    return objective
