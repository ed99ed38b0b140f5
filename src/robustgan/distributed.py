"""Data-parallel training on torch.distributed (gloo on CPU, nccl on CUDA).

Started by ``torchrun --nproc_per_node=N -m robustgan train ...`` (or ``robustgan train
--nproc N``), which sets RANK / WORLD_SIZE / LOCAL_RANK. Every rank builds the same
networks (same seed; rank 0's parameters are broadcast to be sure), takes its slice of
every global batch from its own on-device copy of the dataset, runs the step (attacks
included) on that slice, and averages gradients across ranks before each optimizer step:
the update is the one a single process would make on the whole global batch.

Gradients are averaged by one flattened all-reduce per optimizer step (``update`` in
methods/base.py) rather than by wrapping networks in ``DistributedDataParallel``: a step
of adversarial training runs extra forward/backward passes that must not synchronise
(the attack's input gradients, GAN steps through a frozen network), and DDP's reducer
expects exactly one forward and one backward per synchronised step. Only rank 0 writes
the run directory."""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment (a single process when unset)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> World:
    """Join the process group torchrun prepared (once per process)."""
    here = world()
    if here.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type != "cuda":
            # A gloo group left to interpreter shutdown can abort the process ("terminate called
            # without an active exception": seen on rank 1 of tests/test_distributed.py; the cause
            # is described in pytorch PR 179291, abandoned). Not for nccl: destroying its group after
            # a rank failed mid-collective can block the exit instead.
            atexit.register(teardown)
    return world()


def teardown() -> None:
    """Leave the process group while the interpreter is still alive (a no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> NoReturn:
    """End a torchrun rank once its command returned ``code``. A gloo rank leaves the process
    group, flushes its output and exits without interpreter finalization: one that reaches
    finalization can still abort there after its work succeeded ("terminate called without an
    active exception", SIGABRT, seen on either rank of tests/test_distributed.py under load even
    with ``teardown`` at exit: gloo's worker threads release tensors that need the interpreter,
    pytorch PR 179291). An nccl rank exits as usual (destroying its group after a peer failed
    mid-collective can block, as in ``setup``)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"):
        sys.exit(code)
    teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_for(device: torch.device, here: World) -> torch.device:
    """Each rank's CUDA device is its LOCAL_RANK; CPU ranks share the CPU."""
    if here.enabled and device.type == "cuda":
        return torch.device("cuda", here.local_rank)
    return device


def average_gradients(params) -> None:
    """Average the ``.grad`` of ``params`` across ranks: one all-reduce of one flat buffer."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(modules) -> None:
    """Rank 0's parameters and buffers to every rank."""
    if not world().enabled:
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, 0)


def average_buffers(modules) -> None:
    """Average floating buffers (BatchNorm running statistics) across ranks, so the model
    rank 0 saves reflects every shard."""
    if not world().enabled:
        return
    for module in modules:
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(dist.get_world_size())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on some rank (a collective)."""
    if not world().enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks (one all-reduce of a copy); itself in one process."""
    if not world().enabled:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def barrier() -> None:
    if world().enabled:
        dist.barrier()


def sharded(compute, n: int) -> torch.Tensor:
    """``compute(ids)`` for the test points ``ids`` returns a tensor with one row per point.
    One process computes all n; under torchrun each rank computes its contiguous shard and
    every rank gets the whole (n, ...) result, in order."""
    here = world()
    ids = torch.arange(n)
    if not (here.enabled and dist.is_initialized()):
        return compute(ids)
    part = compute(ids.tensor_split(here.size)[here.rank]).cpu()
    parts = [None] * here.size
    dist.all_gather_object(parts, part)
    return torch.cat(parts)
