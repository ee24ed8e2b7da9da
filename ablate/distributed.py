"""A cell spread over several tasks (SLURM tasks_per_node > 1): plain data parallelism.

Every rank holds the same model, sees the same batch order, and takes its share of each
micro-batch; gradients are summed across ranks before clipping, so every rank takes the same
optimiser step and the result matches one process up to float summation order. Rank 0 alone
evaluates and writes files. With WORLD_SIZE unset (the usual case) every call here is a no-op.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def shutdown() -> None:
    """Leave the process group before the process exits. Torn down at interpreter exit instead, gloo's
    threads can abort the process ("terminate called without an active exception", seen in CI)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Ranks:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        if self.world > 1 and not dist.is_initialized():
            # MASTER_ADDR / MASTER_PORT come from the job (ablate.jobs.export_distributed_env)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def device(self, resolved: torch.device) -> torch.device:
        if self.world > 1 and resolved.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return resolved

    def shard(self, idx: list[int]) -> list[int]:
        return idx[self.rank :: self.world]

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 fills a cache (tokens, reference log-probs) while the others wait, then they read it."""
        if self.world > 1 and not self.is_main:
            dist.barrier()
        yield
        if self.world > 1 and self.is_main:
            dist.barrier()

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:  # a rank whose share of the micro-batch was empty
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one: all ranks must stop (or fail) at the same step."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
