"""Data-parallel training across processes (launched by ``torchrun``), written against the method interface.

Methods run their own forward passes and optimizer steps, so instead of wrapping a module in
``DistributedDataParallel`` the trainer averages each optimizer's gradients across ranks right after backward
(flattened into one all-reduce per optimizer step) — the same arithmetic as DDP for any method, DWC's
two-optimizer alternation included. Parameters are broadcast from rank 0 at start. Rank 0 alone writes to the
registry and checkpoints; evaluation encodes shards on every rank and gathers them on rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dwc_core.errors import ConfigError


@dataclass(frozen=True)
class BackendPlan:
    backend: str  # gloo | nccl
    device: str  # cpu | cuda


def choose_backend(
    device_choice: str, cuda_available: bool, device_count: int, local_rank: int, world: int
) -> BackendPlan:
    """Backend and device of one data-parallel process, from ``trainer.device`` and what this host has.

    ``cpu`` → gloo on the CPU, whatever GPUs exist (``gpus: N`` = N CPU processes); ``cuda`` → NCCL, one GPU per
    process, and an error when this process's local rank has no GPU; ``auto`` → CUDA when every local rank gets a
    GPU, the CPU when there is none, and an error when there are some but fewer than processes (no silent mix).
    """
    if device_choice == "cpu" or (device_choice == "auto" and (not cuda_available or device_count == 0)):
        return BackendPlan("gloo", "cpu")
    if not cuda_available or device_count == 0:
        raise ConfigError(
            f"trainer.device = {device_choice} with trainer.gpus = {world}, but no CUDA device is visible to this "
            "process. Use trainer.device: cpu for CPU processes."
        )
    if local_rank >= device_count:
        raise ConfigError(
            f"trainer.gpus = {world} data-parallel processes but only {device_count} GPU(s) visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): local rank {local_rank} has "
            f"no GPU. Lower trainer.gpus to at most {device_count}, or use trainer.device: cpu."
        )
    return BackendPlan("nccl", "cuda")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------------ set-up
    @classmethod
    def from_env(cls, device_choice: str = "auto") -> Dist:
        """Join the process group torchrun set up (``WORLD_SIZE`` > 1), on the backend ``trainer.device`` implies."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        plan = choose_backend(
            device_choice, cuda, torch.cuda.device_count() if cuda else 0, local_rank, world
        )
        if plan.device == "cuda":  # only a CUDA run binds this process to its GPU
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=plan.backend)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------------------ collectives
    def broadcast_module(self, module: torch.nn.Module) -> None:
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank (used to stop all ranks at the same step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, n: int) -> tuple[int, int, int]:
        """(start, stop, per-rank length) of this rank's contiguous slice of ``n`` items."""
        per = -(-n // self.world)
        start = min(n, self.rank * per)
        return start, min(n, start + per), per

    def gather_rows(self, local: torch.Tensor, n: int, per: int) -> torch.Tensor:
        """Concatenate every rank's (≤ per, D) slice in rank order and trim to ``n`` rows (all ranks get it)."""
        if not self.enabled:
            return local
        pad = per - local.size(0)
        if pad:
            filler = local[:1].expand(pad, -1) if local.size(0) else local.new_zeros(pad, local.size(1))
            local = torch.cat([local, filler])
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)[:n]

    def gather_dim(self, local_dim: int, device: torch.device) -> int:
        """Agree on the embedding width (an empty shard does not know it)."""
        if not self.enabled:
            return local_dim
        t = torch.tensor([local_dim], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())
