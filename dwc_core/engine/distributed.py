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
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

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
