"""A cell's checkpoint, <cell_dir>/checkpoint/state.pt: what the rest of an interrupted run depends on.

The adapter, the optimiser and scheduler, the RNG states, the logging window and the logs; the data
position is derived from the step (data_order.DataOrder). Written by rank 0 only; every rank of a
multi-task cell reads it on resume. Under FSDP the adapter and optimiser state are sharded: saving
gathers them into full tensors first (every rank takes part), loading scatters them back.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch

from ablate.sweepdir.atomic import atomic_write_bytes


class Checkpoint:
    def __init__(self, path: Path, model, optimizer, scheduler, ranks):
        self.path, self.model, self.optimizer, self.scheduler, self.ranks = path, model, optimizer, scheduler, ranks

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, window: tuple[dict, dict], train_log: list[dict], eval_log: list[dict]) -> None:
        """Called by every rank (FSDP gathers the shards); rank 0 writes."""
        adapter, optimizer = self._full_state() if self.ranks.fsdp else (self.model.state_dict(), None)
        if not self.ranks.is_main:
            return
        state = {
            "step": step,
            "adapter": {k: v for k, v in adapter.items() if "lora_" in k},
            "optimizer": self.optimizer.state_dict() if optimizer is None else optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "window": window,
            "train_log": train_log,
            "eval_log": eval_log,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    def load(self, device: torch.device) -> dict:
        """Restore the adapter, optimiser, scheduler and RNG; return the state (step, window, logs)."""
        state = torch.load(self.path, map_location=device, weights_only=False)
        if self.ranks.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.model, state["adapter"], options=options)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=options)
        else:
            self.model.load_state_dict(state["adapter"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        return state

    def remove(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)

    def _full_state(self) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        # only the LoRA tensors are gathered: the frozen base weights are the hub's, never saved
        adapter = {k: v.full_tensor().cpu() for k, v in self.model.state_dict().items() if "lora_" in k}
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return adapter, get_optimizer_state_dict(self.model, self.optimizer, options=options)
