"""The shared preference trainer: one loop for every objective (DESIGN §4).

Reads top to bottom: setup (model, shared data, reference log-probs, adapter, optimiser), the loop
(micro-batches, objective, clipping, step, log), periodic evaluation, final evaluation and files.
The objective is the only thing that differs between arms; it declares whether it needs the
reference model and a KL batch, and this loop provides exactly that.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import torch

from ablate import engine
from ablate.cells import atomic_write_bytes, atomic_write_json, atomic_write_text
from ablate.data_order import DataOrder, pair_lengths
from ablate.distributed import Ranks
from ablate.heldout import PAIR_COLUMNS, heldout_metrics
from ablate.models import add_lora, load_base_model, load_tokenizer, resolve_device
from ablate.objectives import ObjectiveOutput, SequenceLogps, get_objective
from ablate.progress import track
from ablate.scoring import check_lean_head, completion_logps, mismatched_batch, pair_batch, score_pairs
from ablate.shared import reference_logps, tokenized_pairs


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step = step


class Interrupted(RuntimeError):
    """Training stopped at a step boundary on request (preemption/timeout); a checkpoint was saved."""

    def __init__(self, step: int):
        super().__init__(f"interrupted after step {step}; checkpoint saved")
        self.step = step


def train(cfg, cell_dir: Path, shared_dir: Path, stop_requested: threading.Event | None = None,
          tracker=None) -> dict:
    """Train one cell; write train_log.jsonl, eval_log.jsonl, heldout_pairs.parquet, metrics.json.

    If <cell_dir>/checkpoint/ holds a checkpoint, training resumes from it. When `stop_requested` is
    set (by the SLURM job's preemption/timeout handler), the loop saves a checkpoint at the next
    step boundary and raises Interrupted.
    """
    # ---------------------------------------------------------------------------------- setup
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # same config + seed -> same metrics
    ranks = Ranks()  # one process unless the SLURM job has several tasks
    device = ranks.device(resolve_device(cfg.device))
    objective = get_objective(cfg.objective.name)
    hparams = {name: cfg.objective[name] for name in objective.hyperparameters}
    tc = cfg.trainer

    tokenizer = load_tokenizer(cfg.model)
    pad_id = tokenizer.pad_token_id
    model = load_base_model(cfg.model, device, attn_implementation=cfg.engine.attn_implementation)
    check_lean_head(model)  # the lean log-prob path reproduces this model's logits, or the cell stops here
    amp = engine.prepare(model, cfg.engine, device)  # checkpointing if asked; autocast dtype, None on CPU

    def logps_of(batch):  # summed completion log-probs, LM head on completion positions only
        with engine.compute_context(device, amp):
            return completion_logps(model, batch, head_chunk=cfg.engine.head_chunk)

    with ranks.main_first():
        data = tokenized_pairs(cfg, tokenizer, shared_dir)
        train_data, heldout_data = data["train"], data["heldout"]
        # The base model IS the reference: score with it before the adapter exists. Held-out
        # reference log-probs are always needed (the neutral metrics are relative to the reference).
        heldout_ref = reference_logps(cfg, "heldout", heldout_data, model, pad_id, shared_dir, autocast=amp)
        order = DataOrder(len(train_data), tc.batch_size, cfg.seed,  # known in advance: score only what is visited
                          lengths=pair_lengths(train_data) if tc.group_by_length else None)
        train_ref = (reference_logps(cfg, "train", train_data, model, pad_id, shared_dir, autocast=amp,
                                     indices=order.visited(tc.max_steps)) if objective.uses_reference else None)

    torch.manual_seed(cfg.seed)  # LoRA init and dropout
    model = add_lora(model, cfg.lora)
    params = engine.adapter_weights_in_float32(model)  # and so are their gradients and AdamW's state
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    warmup = int(tc.warmup_ratio * tc.max_steps)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, tc.max_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    micro_size = tc.batch_size // tc.grad_accum

    def objective_inputs(logps, tokens, ref, kl_batches) -> dict:
        b = len(logps) // 2
        inputs = dict(chosen=logps[:b], rejected=logps[b:], chosen_tokens=tokens[:b], rejected_tokens=tokens[b:])
        if objective.uses_reference:
            inputs |= dict(ref_chosen=ref["chosen"].to(device), ref_rejected=ref["rejected"].to(device))
        if objective.needs_kl_batch:  # KTO: E[log π/π_ref] on mismatched prompt/completion pairs
            with torch.no_grad():
                inputs["kl_policy"] = torch.cat([logps_of(k)[0] for k in kl_batches])
                with model.disable_adapter():
                    inputs["kl_reference"] = torch.cat([logps_of(k)[0] for k in kl_batches])
        return inputs

    def evaluate(step: int) -> tuple[dict, pd.DataFrame]:
        """TRL-named eval_* metrics and the neutral held-out metrics, from one scoring pass."""
        model.eval()
        with engine.compute_context(device, amp):
            policy = score_pairs(model, heldout_data, batch_size=tc.eval_batch_size, pad_id=pad_id, desc="held-out",
                                 head_chunk=cfg.engine.head_chunk, max_tokens=cfg.engine.eval_batch_tokens)
        with torch.no_grad():
            starts = range(0, len(heldout_data), tc.eval_batch_size)
            kl_batches = [mismatched_batch(heldout_data, list(range(s, min(s + tc.eval_batch_size,
                          len(heldout_data)))), pad_id) for s in starts] if objective.needs_kl_batch else []
            logps = torch.cat([policy["chosen"], policy["rejected"]]).to(device)
            tokens = torch.cat([policy["chosen_tokens"], policy["rejected_tokens"]]).to(device)
            inputs = objective_inputs(logps, tokens, heldout_ref, kl_batches)
            eval_metrics = trl_metrics(objective(SequenceLogps(**inputs), **hparams), inputs)
        model.train()
        pairs = pd.DataFrame({
            "pair_id": heldout_data.pair_ids, "slice": heldout_data.slices,
            "chosen_logp": policy["chosen"].double().numpy(), "rejected_logp": policy["rejected"].double().numpy(),
            "chosen_tokens": policy["chosen_tokens"].long().numpy(),
            "rejected_tokens": policy["rejected_tokens"].long().numpy(),
            "ref_chosen_logp": heldout_ref["chosen"].double().numpy(),
            "ref_rejected_logp": heldout_ref["rejected"].double().numpy(),
        })[PAIR_COLUMNS]  # fmt: skip
        if any(heldout_data.splits):  # data.validation_pairs: the collector selects on one, decides on the other
            pairs["split"] = heldout_data.splits
        metrics = {"step": step, **{f"eval_{k}": v for k, v in eval_metrics.items()}, **heldout_metrics(pairs)}
        broken = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        if broken:  # a NaN reached the held-out scores: no metrics.json may claim this cell is fine
            raise NonFiniteLoss(step, f"evaluation produced non-finite {', '.join(broken[:5])}")
        return metrics, pairs

    train_log: list[dict] = []
    eval_log: list[dict] = []

    def record(log: list[dict], path: Path, entry: dict) -> None:
        log.append(entry)  # the whole file is rewritten atomically: a reader never sees a torn line
        if ranks.is_main:
            atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in log))
            if tracker is not None:
                tracker.log(entry)

    checkpoint_path = cell_dir / "checkpoint" / "state.pt"
    window = RunningMeans()

    def save_checkpoint(step: int) -> None:
        # Everything the rest of the run depends on; the data position is derived from `step`.
        state = {
            "step": step,
            "adapter": {k: v for k, v in model.state_dict().items() if "lora_" in k},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "window": (window.sums, window.weights),
            "train_log": train_log,
            "eval_log": eval_log,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())

    # ----------------------------------------------------------------------------------- loop
    start = 0
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["adapter"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if state["rng_cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_cuda"]])
        window.sums, window.weights = state["window"]
        train_log[:], eval_log[:] = state["train_log"], state["eval_log"]
        start = state["step"]
    elif ranks.is_main:
        record(eval_log, cell_dir / "eval_log.jsonl", evaluate(0)[0])  # step 0: the reference itself
    model.train()
    since, since_step = time.time(), start  # this attempt's speed, for `ablate status` (progress.json)
    # a bar on a terminal; in a file (SLURM logs) one plain line per log_every steps, at most every 30 s
    progress = track(range(start + 1, tc.max_steps + 1), initial=start, total=tc.max_steps, every=tc.log_every,
                     desc=f"{cfg.objective.name} r={cfg.lora.r} seed={cfg.seed}")
    for step in progress:
        idx = order.batch(step)
        for micro in range(tc.grad_accum):
            micro_idx = idx[micro * micro_size : (micro + 1) * micro_size]
            mine = ranks.shard(micro_idx)  # all of it with one process
            if not mine:
                continue
            logps, tokens = logps_of(pair_batch(train_data, mine, pad_id))  # (2B,), (2B,)
            ref = {k: v[mine] for k, v in train_ref.items()} if train_ref else None
            kl_batches = [mismatched_batch(train_data, mine, pad_id)] if objective.needs_kl_batch else []
            inputs = objective_inputs(logps, tokens, ref, kl_batches)
            out = objective(SequenceLogps(**inputs), **hparams)
            loss = out.losses.sum() / len(micro_idx)  # summed over ranks: the micro-batch mean
            if ranks.any(not torch.isfinite(loss)):  # a CPU-GPU sync point, but a NaN must stop the cell here
                raise NonFiniteLoss(step, f"loss is {loss.item()} (objective {objective.name}, lr {tc.lr})")
            (loss / tc.grad_accum).backward()
            window.add(trl_metrics(out, inputs), len(mine))
        ranks.sum_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLoss(step, f"gradient norm is {grad_norm.item()}")
        window.add({"grad_norm": grad_norm.item()}, 1)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        if step % tc.log_every == 0 or step == tc.max_steps:
            window = window.summed(ranks)
            entry = {"step": step, "epoch": step * tc.batch_size / len(train_data), "learning_rate": lr,
                     **window.means()}
            record(train_log, cell_dir / "train_log.jsonl", entry)
            progress.set_postfix(loss=f"{entry['loss']:.3f}", acc=f"{entry['rewards/accuracies']:.2f}")
            if ranks.is_main:
                atomic_write_json(cell_dir / "progress.json", {"step": step, "max_steps": tc.max_steps,
                                  "since_step": since_step, "since": since, "at": time.time()})
            window = RunningMeans()
        if step % tc.eval_every == 0 and step != tc.max_steps and ranks.is_main:
            record(eval_log, cell_dir / "eval_log.jsonl", evaluate(step)[0])
        # the stop request reaches rank 0 only (submitit's handler): every rank stops at this step
        if ranks.any(stop_requested is not None and stop_requested.is_set()) and step != tc.max_steps:
            if ranks.is_main:
                save_checkpoint(step)
            progress.close()
            raise Interrupted(step)
    progress.close()

    # ---------------------------------------------------------------------------------- final
    if not ranks.is_main:
        return {}
    metrics, pairs = evaluate(tc.max_steps)
    record(eval_log, cell_dir / "eval_log.jsonl", metrics)
    atomic_write_bytes(cell_dir / "heldout_pairs.parquet", pairs.to_parquet(index=False))
    atomic_write_json(cell_dir / "metrics.json", metrics)  # written last: its presence means finished
    shutil.rmtree(checkpoint_path.parent, ignore_errors=True)
    return metrics


def trl_metrics(out: ObjectiveOutput, inputs: dict) -> dict[str, float]:
    """The per-batch values TRL logs, under TRL's names (their meaning differs per objective)."""
    chosen, rejected = out.chosen_rewards, out.rejected_rewards
    return {
        "loss": out.losses.mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "logps/chosen": inputs["chosen"].mean().item(),
        "logps/rejected": inputs["rejected"].mean().item(),
    }


class RunningMeans:
    """Weighted means of logged values over micro-batches or evaluation batches."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, values: dict[str, float], weight: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums}

    def summed(self, ranks: Ranks) -> RunningMeans:
        """The same window over every rank's share of the batches (itself with one process)."""
        if ranks.world == 1:
            return self
        total = RunningMeans()
        total.sums = ranks.sum_values(self.sums)
        total.weights = ranks.sum_values(self.weights)
        return total

