"""The shared preference trainer: one loop for every objective (docs/ARCHITECTURE.md §4).

    python -m ablate objective=dpo                                     one cell, one process
    torchrun --nproc_per_node=2 -m ablate objective=dpo hydra.run.dir=outputs/c   one cell, two processes
    python -m ablate -m objective=dpo,simpo hydra/launcher=ablate_slurm hydra.launcher.tasks_per_node=2

Reads top to bottom: `train` (the loop: steps, logging, evaluation, stop on request, final files),
`setup` (model, shared data, adapter, reference log-probs, optimiser: the adapter is added before the
reference is scored, which is the policy with its adapter disabled), `training_step` (micro-batches,
objective, clipping, optimiser step) and `evaluate` (one held-out scoring pass).
The objective is the only thing that differs between arms; it declares whether it needs the
reference model and a KL batch, and this loop provides exactly that.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from ablate.data.heldout import PAIR_COLUMNS, heldout_metrics
from ablate.data.pairs import TokenizedExamples, TokenizedPairs
from ablate.data.readers import DataError
from ablate.progress import track
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ablate.sweepdir.ids import as_plain, config_hash
from ablate.train import engine
from ablate.train.checkpoint import Checkpoint
from ablate.train.data_order import DataOrder, pair_lengths
from ablate.train.distributed import CompletionLogps, Ranks
from ablate.train.generation import generate, generation_enabled, prompt_sample, reward_scores, summarise
from ablate.train.models import add_lora, load_base_model, load_tokenizer, resolve_device
from ablate.train.objectives import ObjectiveOutput, SequenceLogps, get_objective
from ablate.train.scoring import check_lean_head, mismatched_batch, score_pairs, sequence_values, training_batch
from ablate.train.shared import model_identity, reference_logps, tokenized_pairs


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
    """Train one cell; write train_log.jsonl, eval_log.jsonl, heldout_pairs.parquet, metrics.json; return the metrics.

    Runs as one process (`python -m ablate ...`, a local sweep), as each of several torchrun processes
    (`torchrun --nproc_per_node=N -m ablate ... hydra.run.dir=<dir>`) or as each task of a SLURM job
    (hydra.launcher.tasks_per_node=N). Invariants a change must keep:
    - every rank makes the same collective calls in the same order: the `Ranks` methods marked
      "Collective", FSDP forwards, DDP backwards. Never put one under `if ranks.is_main` or behind a
      condition that can differ between ranks; decide on every rank (`ranks.any`) and act on every rank;
    - rank 0 alone writes files; every rank computes the same metrics (their NaN checks must agree);
    - `trainer.batch_size` counts pairs, or examples on unpaired (KTO) data; each rank takes an equal
      share of every micro-batch;
    - the batch of a step is a function of (seed, step) only (DataOrder): resume is exact.

    If <cell_dir>/checkpoint/ holds a checkpoint, training resumes from it. When `stop_requested` is
    set (by the SLURM job's preemption/timeout handler), the loop saves a checkpoint at the next
    step boundary and raises Interrupted.
    """
    run = setup(cfg, Path(cell_dir), Path(shared_dir))
    tc, ranks = cfg.trainer, run.ranks
    logs = CellLogs(Path(cell_dir), ranks.is_main, tracker)
    window = RunningMeans()
    checkpoint = Checkpoint(Path(cell_dir) / layout.CHECKPOINT / "state.pt", run.model, run.optimizer, run.scheduler,
                            ranks)

    # ----------------------------------------------------------------------------------- loop
    start = 0
    if checkpoint.exists():
        state = checkpoint.load(run.device)
        window.sums, window.weights = state["window"]
        logs.train[:], logs.eval[:] = state["train_log"], state["eval_log"]
        start = state["step"]
    else:
        logs.record_eval(evaluate(run, 0)[0])  # step 0: the reference itself
    run.model.train()
    periodic = PeriodicCheckpoints(checkpoint_interval_s(tc))
    since, since_step = time.time(), start  # this attempt's speed, for `ablate status` (progress.json)
    # a bar on a terminal; in a file (SLURM logs) one plain line per log_every steps, at most every 30 s
    progress = track(range(start + 1, tc.max_steps + 1), initial=start, total=tc.max_steps, every=tc.log_every,
                     desc=f"{cfg.objective.name} r={cfg.lora.r} seed={cfg.seed}")
    for step in progress:
        lr = training_step(run, step, window)
        if step % tc.log_every == 0 or step == tc.max_steps:
            window = window.summed(ranks)  # collective
            entry = {"step": step, "epoch": step * tc.batch_size / len(run.train_data), "learning_rate": lr,
                     **window.means()}
            logs.record_train(entry)
            shown = {"acc": entry["rewards/accuracies"]} if "rewards/accuracies" in entry else \
                {"margin": entry.get("rewards/margins", math.nan)}  # unpaired (KTO) data have no accuracy
            progress.set_postfix(loss=f"{entry['loss']:.3f}", **{k: f"{v:.2f}" for k, v in shown.items()})
            logs.progress({"step": step, "max_steps": tc.max_steps, "since_step": since_step, "since": since,
                           "at": time.time(), "checkpoints": periodic.record()})
            window = RunningMeans()
        if step % tc.eval_every == 0 and step != tc.max_steps:  # every rank scores a share
            logs.record_eval(evaluate(run, step)[0])
        if periodic.due(ranks) and step != tc.max_steps:  # collective; a kill -9 after this loses no more
            periodic.save(checkpoint, step, window, logs)
        # the stop request reaches rank 0 only (submitit's handler): every rank stops at this step
        if ranks.any(stop_requested is not None and stop_requested.is_set()) and step != tc.max_steps:
            checkpoint.save(step, (window.sums, window.weights), logs.train, logs.eval)
            progress.close()
            raise Interrupted(step)
    progress.close()

    # ---------------------------------------------------------------------------------- final
    metrics, pairs = evaluate(run, tc.max_steps)  # every rank scores a share; rank 0 writes
    generations = None
    if generation_enabled(cfg):  # every rank generates (FSDP's forwards are collective); rank 0 writes
        generations, generated = cell_generations(run, Path(shared_dir))
        metrics |= generated
    if not ranks.is_main:
        return {}
    logs.record_eval(metrics)
    if generations is not None:
        atomic_write_bytes(Path(cell_dir) / layout.GENERATIONS, generations.to_parquet(index=False))
        logs.table("generations", generations.drop(columns=["token_ids"]))
    atomic_write_bytes(Path(cell_dir) / layout.HELDOUT_PAIRS, pairs.to_parquet(index=False))
    atomic_write_json(Path(cell_dir) / layout.METRICS_JSON, metrics)  # written last: its presence means finished
    checkpoint.remove()
    return metrics


def checkpoint_interval_s(tc) -> float | None:
    """trainer.checkpoint_every in seconds; None when off (0, or unset outside a SLURM job)."""
    minutes = tc.get("checkpoint_every")
    if minutes is None:
        minutes = 30.0 if os.environ.get("SLURM_JOB_ID") else 0.0
    return minutes * 60.0 if minutes > 0 else None


class PeriodicCheckpoints:
    """When to write a periodic checkpoint, and what writing them has cost (progress.json's "checkpoints")."""

    def __init__(self, every_s: float | None):
        self.every_s, self.last = every_s, time.monotonic()
        self.count, self.seconds = 0, 0.0

    def due(self, ranks: Ranks) -> bool:
        """Collective when on: rank 0's clock decides for every rank."""
        return self.every_s is not None and ranks.any(time.monotonic() - self.last >= self.every_s)

    def save(self, checkpoint: Checkpoint, step: int, window: RunningMeans, logs: CellLogs) -> None:
        started = time.monotonic()
        checkpoint.save(step, (window.sums, window.weights), logs.train, logs.eval)
        self.last = time.monotonic()
        self.count, self.seconds = self.count + 1, self.seconds + self.last - started

    def record(self) -> dict:
        return {"every_s": self.every_s, "written": self.count, "seconds": round(self.seconds, 4)}


@dataclass
class CellRun:
    """Everything a cell's loop and evaluation use, built once by `setup`."""

    cfg: DictConfig
    ranks: Ranks
    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None for none
    objective: Callable
    hparams: dict
    model: torch.nn.Module  # the causal LM with its LoRA adapter; disable_adapter() gives the reference
    logps_of: CompletionLogps  # summed completion log-probs (the lean path)
    policy: torch.nn.Module  # logps_of, DDP-wrapped or FSDP-sharded with several ranks
    params: list
    pad_id: int
    train_data: TokenizedPairs | TokenizedExamples
    heldout_data: TokenizedPairs
    paired: bool  # False: unpaired labelled completions (KTO data)
    order: DataOrder
    train_ref: dict | None  # reference log-probs of the visited training pairs (None: reference-free objective)
    heldout_ref: dict
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective_inputs: ObjectiveInputs
    tokenizer: object  # decodes generations (eval.generate)


def setup(cfg, cell_dir: Path, shared_dir: Path) -> CellRun:
    """Model, shared data, adapter, reference log-probs, optimiser and schedule, in the order that fixes the RNG."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # same config + seed -> same metrics
    ranks = Ranks(cfg.engine.parallel)  # one process unless the SLURM job (or torchrun) started several
    ranks.check_split(cfg.trainer)  # every rank takes an equal share of every micro-batch
    ranks.same_everywhere(str(cell_dir.resolve()), "the cell directory (torchrun: pass hydra.run.dir)")
    device = ranks.device(resolve_device(cfg.device))
    objective = get_objective(cfg.objective.name).bind(cfg.objective)  # a combination: reference if a term needs it
    tc = cfg.trainer

    tokenizer = load_tokenizer(cfg.model)
    # FSDP: each rank loads the base model into CPU memory; sharding moves its own part to the GPU
    model = load_base_model(cfg.model, torch.device("cpu") if ranks.fsdp else device,
                            attn_implementation=cfg.engine.attn_implementation)
    check_lean_head(model)  # the lean log-prob path reproduces this model's logits, or the cell stops here
    amp = engine.prepare(model, cfg.engine, device)  # checkpointing if asked; autocast dtype, None on CPU
    with ranks.main_first():
        data = tokenized_pairs(cfg, tokenizer, shared_dir)
    train_data, heldout_data = data["train"], data["heldout"]
    paired = isinstance(train_data, TokenizedPairs)  # else unpaired labelled completions (KTO data)
    if not paired and not objective.unpaired:  # planning refuses this sweep; a direct run stops here
        raise DataError(f"objective {objective.name} needs preference pairs; the training data are unpaired")

    torch.manual_seed(cfg.seed)  # LoRA init and dropout
    model = add_lora(model, cfg.lora)
    engine.adapter_weights_in_float32(model)  # and so are their gradients and AdamW's state
    logps_of = CompletionLogps(model, device, amp, cfg.engine.head_chunk)
    policy = ranks.parallelize(logps_of)  # training forwards: DDP-wrapped or FSDP-sharded with several ranks
    params = [p for p in model.parameters() if p.requires_grad]  # after FSDP, which replaces them by shards

    # The base model IS the reference: the policy with its adapter disabled. Held-out reference
    # log-probs are always needed (the neutral metrics are relative to the reference).
    order = DataOrder(len(train_data), tc.batch_size, cfg.seed,  # known in advance: score only what is visited
                      lengths=pair_lengths(train_data) if tc.group_by_length else None)
    with model.disable_adapter():
        scoring = dict(autocast=amp, forward=logps_of if ranks.fsdp else None, ranks=ranks)
        pad_id = tokenizer.pad_token_id
        tail = "tail" in objective.sequence_parts  # LD-DPO: the reference's tails too
        heldout_ref = reference_logps(cfg, "heldout", heldout_data, model, pad_id, shared_dir, **scoring, tail=tail)
        train_ref = (reference_logps(cfg, "train", train_data, model, pad_id, shared_dir, **scoring,
                                     indices=order.visited(tc.max_steps), tail=tail) if objective.uses_reference
                     else None)
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    warmup = int(tc.warmup_ratio * tc.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, warmup=warmup, max_steps=tc.max_steps))
    hparams = {name: as_plain_value(cfg.objective[name]) for name in objective.hyperparameters}
    return CellRun(cfg, ranks, device, amp, objective, hparams, model, logps_of, policy, params, pad_id, train_data,
                   heldout_data, paired, order, train_ref, heldout_ref, optimizer, scheduler,
                   ObjectiveInputs(objective, logps_of, model, device, ranks), tokenizer)


def as_plain_value(value):
    """A hyper-parameter as plain Python (a combination's terms: a list of dicts, not OmegaConf nodes)."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def lr_factor(step: int, *, warmup: int, max_steps: int) -> float:
    """Linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, max_steps - warmup)))


def training_step(run: CellRun, step: int, window: RunningMeans) -> float:
    """One optimiser step over the step's batch (grad_accum micro-batches, each shared by the ranks); the
    logged values go into `window`. Returns the learning rate the step used."""
    tc, ranks, objective = run.cfg.trainer, run.ranks, run.objective
    micro_size = tc.batch_size // tc.grad_accum
    idx = run.order.batch(step)
    for micro in range(tc.grad_accum):
        micro_idx = idx[micro * micro_size : (micro + 1) * micro_size]
        mine = ranks.shard(micro_idx)  # all of it with one process, an equal share with several
        with ranks.accumulating(run.policy, last=micro == tc.grad_accum - 1):  # DDP: gradients averaged at the last
            batch, chosen, rejected = training_batch(run.train_data, mine, run.pad_id)
            scores = run.policy(batch, objective.sequence_parts)  # (2B,) each for pairs, (B,) for unpaired examples
            ref = reference_values(run.train_ref, mine, objective.sequence_parts) if run.train_ref else None
            kl_batches = [mismatched_batch(run.train_data, micro_idx, run.pad_id, positions=ranks.shard(
                list(range(len(micro_idx)))))] if objective.needs_kl_batch else []
            inputs = run.objective_inputs(scores, ref, kl_batches, chosen, rejected, run.paired, True)
            out = objective(SequenceLogps(**inputs), **run.hparams)
            loss = out.losses.sum() / len(mine)  # averaged over ranks by DDP/FSDP: the micro-batch mean
            if ranks.any(not torch.isfinite(loss)):  # a CPU-GPU sync point, but a NaN must stop the cell here
                raise NonFiniteLoss(step, f"loss is {loss.item()} (objective {objective.name}, lr {tc.lr})")
            (loss / tc.grad_accum).backward()
        for values, weight in batch_metrics(out, inputs, len(mine)):
            window.add(values, weight)
    grad_norm = ranks.value(torch.nn.utils.clip_grad_norm_(run.params, tc.max_grad_norm))
    if not torch.isfinite(grad_norm):
        raise NonFiniteLoss(step, f"gradient norm is {grad_norm.item()}")
    window.add({"grad_norm": grad_norm.item()}, 1)
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr


def evaluate(run: CellRun, step: int) -> tuple[dict, pd.DataFrame]:
    """TRL-named eval_* metrics and the neutral held-out metrics, from one scoring pass (every rank scores a
    share; collective). Raises NonFiniteLoss when a held-out value is not finite."""
    cfg, tc, heldout, ranks = run.cfg, run.cfg.trainer, run.heldout_data, run.ranks
    run.model.eval()
    with engine.compute_context(run.device, run.amp):
        policy = score_pairs(run.model, heldout, batch_size=tc.eval_batch_size, pad_id=run.pad_id, desc="held-out",
                             head_chunk=cfg.engine.head_chunk, max_tokens=cfg.engine.eval_batch_tokens,
                             forward=run.logps_of if ranks.fsdp else None, ranks=ranks,
                             parts=run.objective.sequence_parts)
    with torch.no_grad():
        starts = range(0, len(heldout), tc.eval_batch_size)
        kl_batches = [mismatched_batch(heldout, list(range(s, min(s + tc.eval_batch_size, len(heldout)))),
                                       run.pad_id) for s in starts] if run.objective.needs_kl_batch else []
        n = len(heldout)
        scores = {name: sequence_values(policy, list(range(n)), field).to(run.device) for name, field in
                  (("logps", ""), ("tokens", "tokens"), *((p, p) for p in run.objective.sequence_parts))}
        ref = reference_values(run.heldout_ref, list(range(n)), run.objective.sequence_parts)
        inputs = run.objective_inputs(scores, ref, kl_batches, torch.arange(n), torch.arange(n, 2 * n))
        eval_metrics = trl_metrics(run.objective(SequenceLogps(**inputs), **run.hparams), inputs)
    run.model.train()
    pairs = pd.DataFrame({
        "pair_id": heldout.pair_ids, "slice": heldout.slices,
        "chosen_logp": policy["chosen"].double().numpy(), "rejected_logp": policy["rejected"].double().numpy(),
        "chosen_tokens": policy["chosen_tokens"].long().numpy(),
        "rejected_tokens": policy["rejected_tokens"].long().numpy(),
        "ref_chosen_logp": run.heldout_ref["chosen"].double().numpy(),
        "ref_rejected_logp": run.heldout_ref["rejected"].double().numpy(),
    })[PAIR_COLUMNS]  # fmt: skip
    if any(heldout.splits):  # data.validation_pairs: the collector selects on one, decides on the other
        pairs["split"] = heldout.splits
    metrics = {"step": step, **{f"eval_{k}": v for k, v in eval_metrics.items()}, **heldout_metrics(pairs)}
    broken = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if broken:  # a NaN reached the held-out scores: no metrics.json may claim this cell is fine
        raise NonFiniteLoss(step, f"evaluation produced non-finite {', '.join(broken[:5])}")
    return metrics, pairs


def cell_generations(run: CellRun, shared_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The policy's generations for the sweep's sampled held-out prompts, and the `generation/` metrics: the policy's
    and, as `generation/ref_*`, the reference's (generated once per sweep into shared/, adapter off)."""
    ev = run.cfg.eval
    with engine.compute_context(run.device, run.amp):
        rows = generation_rows(run, run.model)
        key = config_hash([model_identity(run.cfg.model), as_plain(run.cfg.data), as_plain(ev)])[:16]
        reference_file = shared_dir / f"generations-reference-{key}.parquet"
        # every rank generates, or none (collective under FSDP): another cell may write the file between two looks
        if run.ranks.any(not reference_file.exists()):
            with run.model.disable_adapter():
                reference = pd.DataFrame(generation_rows(run, run.model))
            if run.ranks.is_main:
                atomic_write_bytes(reference_file, reference.to_parquet(index=False))
        else:
            reference = pd.read_parquet(reference_file)
    policy = pd.DataFrame(rows)
    metrics = {f"generation/{k}": v for k, v in summarise(rows).items() if v is not None}
    metrics |= {f"generation/ref_{k}": v for k, v in summarise(reference.to_dict("records")).items()
                if v is not None}
    return policy, metrics


def generation_rows(run: CellRun, model) -> list[dict]:
    """One row per (sampled held-out prompt, greedy or k-th sample): its text, length, EOS, and the task's verdicts."""
    ev, heldout, tokenizer = run.cfg.eval, run.heldout_data, run.tokenizer
    picked = prompt_sample(len(heldout), ev.prompts, ev.seed)
    prompts = [heldout.prompt_ids[i] for i in picked]
    prompt_texts = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    eos = tokenizer.eos_token_id
    rows = []
    for k in range(ev.samples + 1):  # 0: greedy; 1..samples: sampled at eval.temperature, seeds eval.seed + k
        outputs = generate(model, prompts, pad_id=run.pad_id, eos_id=eos, max_new_tokens=ev.max_new_tokens,
                           sample=k > 0, temperature=ev.temperature, seed=ev.seed + k)
        for i, prompt_text, ids in zip(picked, prompt_texts, outputs, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            row = {"pair_id": heldout.pair_ids[i], "slice": heldout.slices[i], "sample": k, "prompt": prompt_text,
                   "text": text, "tokens": len(ids), "eos": bool(ids) and ids[-1] == eos, "token_ids": ids}
            if run.cfg.model.kind == "embedded":
                from ablate.train.embedded import judge

                row |= judge(prompt_text, text)
            rows.append(row)
    if ev.reward_model:
        scores = reward_scores(ev.reward_model, [r["prompt"] for r in rows], [r["text"] for r in rows], run.device)
        for row, score in zip(rows, scores, strict=True):
            row["reward"] = score
    return rows


class CellLogs:
    """train_log.jsonl, eval_log.jsonl and progress.json of a cell: kept on every rank, written by rank 0 (and
    sent to W&B). Each log file is rewritten whole and renamed: a reader never sees a torn line."""

    def __init__(self, cell_dir: Path, is_main: bool, tracker=None):
        self.cell_dir, self.is_main, self.tracker = cell_dir, is_main, tracker
        self.train: list[dict] = []
        self.eval: list[dict] = []

    def record_train(self, entry: dict) -> None:
        self._record(self.train, layout.TRAIN_LOG, entry)

    def table(self, name: str, frame: pd.DataFrame) -> None:
        if self.is_main and self.tracker is not None:
            self.tracker.table(name, frame)

    def record_eval(self, entry: dict) -> None:
        self._record(self.eval, layout.EVAL_LOG, entry)

    def progress(self, state: dict) -> None:
        """progress.json: this attempt's first step and time, the latest ones (`ablate status`: speed, ETA)."""
        if self.is_main:
            atomic_write_json(self.cell_dir / layout.PROGRESS_JSON, state)

    def _record(self, log: list[dict], name: str, entry: dict) -> None:
        log.append(entry)
        if self.is_main:
            atomic_write_text(self.cell_dir / name, "".join(json.dumps(e) + "\n" for e in log))
            if self.tracker is not None:
                self.tracker.log(entry)


class ObjectiveInputs:
    """The objective's SequenceLogps fields for one batch of scored sequences (training or held-out)."""

    def __init__(self, objective, logps_of, model, device: torch.device, ranks: Ranks):
        self.objective, self.logps_of, self.model, self.device, self.ranks = objective, logps_of, model, device, ranks

    def __call__(self, scores, ref, kl_batches, chosen, rejected, paired=True, kl_of_every_rank=False) -> dict:
        """`scores`: the policy's per-sequence {"logps", "tokens", <sequence parts>}; `ref`: the reference's
        {"logps", <its parts>} (`reference_values`); `chosen`/`rejected`: positions of the chosen (desirable) and
        rejected (undesirable) sequences in both; kl_of_every_rank: the KL baseline is a mean over every rank's
        share of the KL batch (training), as in one process."""
        gather = self.ranks.cat if kl_of_every_rank else (lambda t: t)
        logps, tokens = scores["logps"], scores["tokens"]
        inputs = dict(chosen=logps[chosen], rejected=logps[rejected], chosen_tokens=tokens[chosen],
                      rejected_tokens=tokens[rejected], paired=paired)
        for part in self.objective.sequence_parts:
            inputs |= {f"chosen_{part}": scores[part][chosen], f"rejected_{part}": scores[part][rejected]}
        if self.objective.uses_reference:
            ref = {name: values.to(self.device) for name, values in ref.items()}
            inputs |= dict(ref_chosen=ref["logps"][chosen], ref_rejected=ref["logps"][rejected])
            if "tail" in ref:
                inputs |= dict(ref_chosen_tail=ref["tail"][chosen], ref_rejected_tail=ref["tail"][rejected])
        if self.objective.needs_kl_batch:  # KTO: E[log π/π_ref] on mismatched prompt/completion pairs
            with torch.no_grad():
                inputs["kl_policy"] = gather(torch.cat([self.logps_of(k)["logps"] for k in kl_batches]))
                with self.model.disable_adapter():
                    inputs["kl_reference"] = gather(torch.cat([self.logps_of(k)["logps"] for k in kl_batches]))
        return inputs


def reference_values(reference: dict, idx: list[int], parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The reference's per-sequence values of items `idx` in `training_batch` order: {"logps"}, and "tail" when the
    objective asks for tails (the reference scores no WPO weight: WPO weighs by the policy only)."""
    return {"logps": sequence_values(reference, idx), **({"tail": sequence_values(reference, idx, "tail")}
                                                         if "tail" in parts else {})}


def batch_metrics(out: ObjectiveOutput, inputs: dict, items: int) -> list[tuple[dict[str, float], int]]:
    """A training micro-batch's logged values, each with the weight it has in the logging window.

    Pairs: TRL's per-pair metrics, weighted by pairs. Unpaired examples (KTO data): the loss per
    example, desirable values by desirable count, undesirable by undesirable count; the window's
    margin is then the difference of the two means and there is no accuracy, as in TRL's KTOTrainer.
    """
    if inputs["paired"]:
        return [(trl_metrics(out, inputs), items)]
    sides = [({"rewards/chosen": out.chosen_rewards, "logps/chosen": inputs["chosen"]}, len(out.chosen_rewards)),
             ({"rewards/rejected": out.rejected_rewards, "logps/rejected": inputs["rejected"]},
              len(out.rejected_rewards))]
    # a side absent from this micro-batch still adds its keys (weight 0): every rank's window has the same keys
    return [({"loss": out.losses.mean().item()}, items)] + [
        ({k: v.mean().item() if n else 0.0 for k, v in values.items()}, n) for values, n in sides]


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
        means = {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k]}
        if "rewards/margins" not in means and {"rewards/chosen", "rewards/rejected"} <= means.keys():
            # unpaired examples (KTO data): the difference of the two means, as TRL's KTOTrainer logs it
            means["rewards/margins"] = means["rewards/chosen"] - means["rewards/rejected"]
        return means

    def summed(self, ranks: Ranks) -> RunningMeans:
        """The same window over every rank's share of the batches (itself with one process)."""
        if ranks.world == 1:
            return self
        total = RunningMeans()
        total.sums = ranks.sum_values(self.sums)
        total.weights = ranks.sum_values(self.weights)
        return total

