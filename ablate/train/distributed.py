"""A cell spread over several processes (SLURM tasks_per_node > 1, or torchrun): torch's own engines.

`engine.parallel=ddp` (the default): every rank holds the whole model, sees the same batch order and
takes an equal share of each micro-batch. torch's DistributedDataParallel averages the LoRA gradients
over ranks (bucketed, overlapped with backward) once per optimiser step: the other micro-batches
run under `no_sync()`. Each rank's loss is the mean over its share, so the average over ranks is the
micro-batch mean and every rank takes the step one process would, up to float summation order.

`engine.parallel=fsdp`: for a base model that does not fit one GPU. torch's FSDP2 (`fully_shard`)
shards every decoder layer and the rest of the model over the ranks; the forward gathers a layer's
weights just before it runs and frees them after. The LoRA gradients are reduce-scattered, so the
optimiser state is sharded too.

No-grad scoring (reference and held-out log-probs) is split by batches over the ranks and gathered
per pair by index, so every pair is scored exactly once; rank 0 alone writes files. A micro-batch
must split evenly over the ranks (checked before the model loads). With WORLD_SIZE unset (the usual
case) nothing here touches torch.distributed.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from ablate.train import engine
from ablate.train.scoring import sequence_scores


def task_split_problem(trainer: dict, tasks: int) -> str | None:
    """Why a cell's micro-batches cannot be split evenly over `tasks` processes (None when they can): every
    rank of a multi-task cell takes an equal share of every micro-batch (see the module docstring)."""
    micro = trainer["batch_size"] // trainer["grad_accum"]
    if tasks <= 1 or micro % tasks == 0:
        return None
    return (f"trainer.batch_size / trainer.grad_accum = {trainer['batch_size']} / {trainer['grad_accum']} = {micro} "
            f"pairs per micro-batch do not split evenly over {tasks} tasks: make it a multiple of {tasks}, or "
            "change the number of tasks")


def shutdown() -> None:
    """Leave the process group before the process exits. Torn down at interpreter exit instead, gloo's
    threads can abort the process ("terminate called without an active exception", seen in CI)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class CompletionLogps(torch.nn.Module):
    """The policy's forward as one module, so that DDP or FSDP wraps exactly what training runs: the
    lean log-prob path (ablate.train.scoring.sequence_scores) under the cell's autocast."""

    def __init__(self, model, device: torch.device, autocast: torch.dtype | None, head_chunk: int):
        super().__init__()
        self.model = model  # a submodule: DDP and FSDP find the LoRA parameters through it
        self.device, self.autocast, self.head_chunk = device, autocast, head_chunk

    def forward(self, batch: dict[str, torch.Tensor], parts: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        with engine.compute_context(self.device, self.autocast):
            return sequence_scores(self.model, batch, head_chunk=self.head_chunk, parts=parts)  # {"logps": (N,), ...}


class Ranks:
    """This process's place among a cell's processes, and the collectives the trainer uses.

    Methods marked "Collective" must be called by every rank, in the same order: one of them behind
    `if ranks.is_main` (or any condition that can differ between ranks) deadlocks the cell. With one
    process each is a no-op or the identity.
    """

    def __init__(self, parallel: str = "ddp"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0
        self.fsdp = self.world > 1 and parallel == "fsdp"
        if self.world > 1 and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)  # NCCL's collectives (and all_gather_object) use it
        if self.world > 1 and not dist.is_initialized():
            # MASTER_ADDR / MASTER_PORT come from the job (ablate.sweep.jobs.export_distributed_env) or torchrun
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def device(self, resolved: torch.device) -> torch.device:
        if self.world > 1 and resolved.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return resolved

    def check_split(self, trainer_cfg) -> None:
        """Every rank runs forward and backward on every micro-batch (DDP's collectives are per backward,
        FSDP's per forward), with an equal share: a micro-batch that does not split evenly is refused."""
        problem = task_split_problem(trainer_cfg, self.world)
        if problem:
            raise ValueError(problem)

    def same_everywhere(self, value: str, what: str) -> None:
        """Collective. Refuse ranks that disagree on `value` (e.g. torchrun processes whose Hydra run dirs differ)."""
        if self.world == 1:
            return
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            raise ValueError(f"the {self.world} ranks disagree on {what}: {sorted(set(values))}")

    def shard(self, idx: list[int]) -> list[int]:
        return idx[self.rank :: self.world]

    @contextlib.contextmanager
    def main_first(self):
        """Collective (a barrier). Rank 0 fills a cache (the tokens) while the others wait, then they read it."""
        if self.world > 1 and not self.is_main:
            dist.barrier()
        yield
        if self.world > 1 and self.is_main:
            dist.barrier()

    # ------------------------------------------------------------------------------ training
    def parallelize(self, logps: CompletionLogps) -> torch.nn.Module:
        """The module the training forward goes through: `logps` itself with one process; wrapped in
        DDP; or, with FSDP, `logps` sharded in place (then every forward through it gathers weights)."""
        if self.world == 1:
            return logps
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in logps.model.get_base_model().get_decoder().layers:
                fully_shard(layer)
            return fully_shard(logps)  # the root: embeddings, final norm, LM head
        from torch.nn.parallel import DistributedDataParallel

        # Non-reentrant checkpointing (engine.gradient_checkpointing) needs neither static_graph nor
        # find_unused_parameters: every LoRA weight is used once per forward (tests/test_distributed.py).
        # Buffers (rotary tables) are computed identically on every rank: not broadcast before each forward.
        return DistributedDataParallel(logps, device_ids=[logps.device] if logps.device.type == "cuda" else None,
                                       forward_sync_buffers=False)

    def accumulating(self, policy: torch.nn.Module, last: bool):
        """Gradients are reduced over ranks in the backward of the step's last micro-batch only: DDP runs
        the others under no_sync; FSDP2 keeps their unsharded gradients (set_requires_gradient_sync) and
        reduce-scatters the sum once. One process needs nothing."""
        if hasattr(policy, "set_requires_gradient_sync"):  # FSDP2
            policy.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if last or not hasattr(policy, "no_sync"):
            return contextlib.nullcontext()
        return policy.no_sync()

    def value(self, t: torch.Tensor) -> torch.Tensor:
        """A plain tensor from FSDP's DTensors (the gradient norm, replicated on every rank)."""
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    def any(self, flag: bool) -> bool:
        """Collective. True on every rank when it is true on one: all ranks must stop (or fail) at the same step."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Collective. Each key's sum over the ranks (every rank must pass the same keys)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Collective. Every rank's equally long `t`, concatenated in rank order (no gradient): KTO's KL baseline is a
        mean over the whole micro-batch's KL batch, as in one process (TRL gathers it the same way)."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t, device=self._comm_device()) for _ in range(self.world)]
        dist.all_gather(parts, t.detach().to(self._comm_device()).contiguous())
        return torch.cat(parts).to(t.device)

    # ------------------------------------------------------------------------------- scoring
    def share(self, batches: list[list[int]]) -> tuple[list[list[int]], int]:
        """This rank's batches of a scoring pass (round robin over the length-sorted batches, so every rank
        gets long and short ones), and how many throwaway forwards to add: under FSDP each forward gathers
        weights from every rank, so every rank must run as many forwards."""
        if self.world == 1:
            return batches, 0
        mine = batches[self.rank :: self.world]
        most = -(-len(batches) // self.world)
        return mine, (most - len(mine) if self.fsdp and batches else 0)

    def gather_pairs(self, scores: dict[str, torch.Tensor], mine: list[int]) -> dict[str, torch.Tensor]:
        """Collective. Every rank's scored pairs, on every rank: (len(data),) tensors whose entry i comes from the rank
        that scored pair i. A pair scored twice, or asked for and scored by no rank, is an error."""
        if self.world == 1:
            return scores
        where = torch.tensor(mine, dtype=torch.long)
        parts: list = [None] * self.world
        dist.all_gather_object(parts, (where, {k: v[where] for k, v in scores.items()}))
        out = {k: torch.full_like(v, float("nan")) for k, v in scores.items()}
        seen = torch.zeros(len(next(iter(scores.values()))), dtype=torch.long)
        for where, values in parts:
            seen[where] += 1
            for k, v in values.items():
                out[k][where] = v
        if (seen > 1).any():
            raise RuntimeError(f"pairs {seen.gt(1).nonzero().flatten().tolist()[:10]} were scored by several ranks")
        return out

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
