"""ablate's 2x2x3 sweep vs twelve independent TRL 1.16 runs on the CPU size: the compute of the whole grid.

    pip install -e .[bench]
    python benchmarks/sweep_vs_trl.py --out /tmp/ablate-sweep-bench --steps 3

The grid is objective=dpo,simpo x lora.r=8,16 x seed=0,1,2 on the CPU-size model and data of
benchmarks/trl_cpu.py (random Qwen2-architecture model, 8,192-token BPE vocabulary, prompts 60-120
tokens, completions 80-200 + EOS), with the same settings on both sides: `steps` steps of 8 pairs,
no accumulation, LoRA alpha 16 on q_proj/v_proj (dropout 0), AdamW lr 5e-5 without warm-up, fp32,
no gradient checkpointing (TRL's configs default to bf16 and checkpointing: both are switched off),
`--threads` torch threads, the same 8 held-out pairs evaluated at the end.

- ablate: ONE command, the real launcher (`python -m ablate -m objective=dpo,simpo lora.r=8,16
  seed=0,1,2 model=hub model.path=<dir> data=files ...`, local launcher, cells in one process, then
  the collector). Tokens are prepared once at planning; reference log-probs are scored once per
  visiting plan in <sweep>/shared/ (the data are exactly one epoch here, so one file serves all six
  DPO cells). ablate also evaluates at step 0 (its design: the reference's own metrics).
- TRL: twelve processes, one per cell, as a user would launch them: DPOTrainer with
  precompute_ref_log_probs=True for the DPO cells, CPOTrainer(loss_type="simpo", cpo_alpha=0) for
  SimPO; each reads and tokenises its data and scores its own reference (its own datasets cache
  directory: independent runs share nothing), then trainer.evaluate() on the held-out pairs.

The training file is exactly the steps x 8 pairs the runs visit (one epoch): TRL precomputes the
reference of its whole dataset, ablate of the pairs it visits, so a larger file would only favour
ablate. Measured per process: wall time and CPU time (user + sys of the child, from
getrusage(RUSAGE_CHILDREN)), and inside it the phases (read + tokenise, reference, model loading,
training, evaluation, collector; the rest — interpreter start, imports, planning, trainer set-up —
is "other"), each as CPU and wall seconds, exclusive of nested phases. On a shared machine the two
sides are interleaved: six TRL runs, the ablate sweep, the other six TRL runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from trl_cpu import prepare, train_file

HERE = Path(__file__).resolve()
PHASES = ("data", "reference", "model load", "training", "evaluation", "collector")


# ------------------------------------------------------------------------------------- phases
class Phases:
    """CPU and wall seconds per phase, exclusive: a phase nested in another is taken out of its parent."""

    def __init__(self):
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.stack: list[str] = []

    @contextlib.contextmanager
    def track(self, name: str, outermost_only: bool = False):
        if outermost_only and self.stack:
            yield
            return
        self.stack.append(name)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            dc, dw = time.process_time() - cpu, time.perf_counter() - wall
            self.stack.pop()
            self.cpu[name] += dc
            self.wall[name] += dw
            if self.stack:
                self.cpu[self.stack[-1]] -= dc
                self.wall[self.stack[-1]] -= dw

    def wrap(self, owner, attribute: str, name: str, outermost_only: bool = False) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            with self.track(name, outermost_only):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def as_dict(self) -> dict:
        return {"cpu": self.cpu, "wall": self.wall, "step_stamps": self.step_stamps}

    def clock_optimizer_steps(self) -> None:
        """(cpu, wall) after every optimiser step of this process, whoever owns the optimiser: the
        same clock on both sides for the cost of one training step."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.step_stamps: list[tuple[float, float]] = []
        register_optimizer_step_post_hook(lambda *_: self.step_stamps.append((time.process_time(),
                                                                              time.perf_counter())))


# ---------------------------------------------------------------------------------- one side
def run_ablate(out: Path, steps: int, threads: int, seeds: str, work: Path) -> dict:
    phases = Phases()
    phases.clock_optimizer_steps()
    import ablate.collect
    import ablate.train.shared
    import ablate.train.trainer

    phases.wrap(ablate.train.shared, "tokenized_pairs", "data")  # at planning: read, check, tokenise, store
    phases.wrap(ablate.train.trainer, "tokenized_pairs", "data")  # in each cell: load the stored tokens
    phases.wrap(ablate.train.trainer, "reference_logps", "reference")  # score, or load the shared file
    phases.wrap(ablate.train.trainer, "load_base_model", "model load")
    phases.wrap(ablate.train.trainer, "score_pairs", "evaluation")  # held-out scoring (reference scoring is in shared)
    phases.wrap(ablate.train.trainer, "train", "training")  # the rest of a cell: adapter, loop, files
    phases.wrap(ablate.collect, "collect", "collector")

    sys.argv = ["ablate", "-m", "objective=dpo,simpo", "lora.r=8,16", f"seed={seeds}", f"hydra.sweep.dir={work}",
                "model=hub", f"model.path={out / 'model'}", "model.dtype=float32",
                "data=files", f"data.train_files=[{train_file(out, steps)}]",
                f"data.heldout_files=[{out / 'heldout.jsonl'}]", "data.max_length=512", "data.max_prompt_length=256",
                f"trainer.max_steps={steps}", "trainer.batch_size=8", "trainer.grad_accum=1", "trainer.lr=5e-5",
                "trainer.warmup_ratio=0", f"trainer.eval_every={steps}", "trainer.log_every=1",
                "lora.alpha=16", "lora.dropout=0.0", "lora.target_modules=[q_proj,v_proj]",
                "device=cpu", f"threads={threads}"]
    from ablate.__main__ import main

    with contextlib.suppress(SystemExit):
        main()
    cells = list((work / "cells").iterdir())
    done = sum(json.loads((c / "status.json").read_text()).get("state") == "done" for c in cells)
    shared = sorted(p.name for p in (work / "shared").iterdir())
    return phases.as_dict() | {"cells": len(cells), "cells_done": done, "shared_files": shared}


def run_trl(out: Path, steps: int, threads: int, objective: str, r: int, seed: int, work: Path) -> dict:
    phases = Phases()
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    phases.clock_optimizer_steps()
    phases.wrap(datasets.Dataset, "map", "data", outermost_only=True)  # tokenisation (not the reference's caching map)
    with phases.track("data"):
        train = datasets.load_dataset("json", data_files=str(train_file(out, steps)), split="train",
                                      cache_dir=str(work / "hf"))
        heldout = datasets.load_dataset("json", data_files=str(out / "heldout.jsonl"), split="train",
                                        cache_dir=str(work / "hf"))
    with phases.track("model load"):
        tokenizer = AutoTokenizer.from_pretrained(out / "model")
        model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    common = dict(output_dir=str(work / "trl"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                  gradient_accumulation_steps=1, max_steps=steps, learning_rate=5e-5, lr_scheduler_type="cosine",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to="none",
                  save_strategy="no", eval_strategy="no", use_cpu=True, seed=seed, dataloader_num_workers=0,
                  bf16=False, gradient_checkpointing=False)  # ablate's settings: fp32, no checkpointing
    lora = LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        phases.wrap(DPOTrainer, "_precompute_ref_logps", "reference")
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True),
                             train_dataset=train, eval_dataset=heldout, processing_class=tokenizer, peft_config=lora)
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, beta=2.0, simpo_gamma=0.5, loss_type="simpo", cpo_alpha=0.0)
        trainer = CPOTrainer(model=model, args=args, train_dataset=train, eval_dataset=heldout,
                             processing_class=tokenizer, peft_config=lora)
    with phases.track("training"):
        trainer.train()
    with phases.track("evaluation"):
        metrics = trainer.evaluate()
    return phases.as_dict() | {"eval_loss": metrics["eval_loss"]}


def child(args) -> None:
    out, work = Path(args.out), Path(args.work)
    if args.side == "ablate":
        result = run_ablate(out, args.steps, args.threads, args.seeds, work)
    else:
        result = run_trl(out, args.steps, args.threads, args.objective, args.r, args.seed, work)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------- the grid
def launch(out: Path, work: Path, argv: list[str], threads: int) -> dict:
    """Run one side's process; its wall and CPU seconds (user + sys, every thread) and its phases."""
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
                        "ABLATE_CACHE": str(out / "cache"), "OMP_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(work / "stderr.log", "w") as log:
        subprocess.run([sys.executable, str(HERE), "--out", str(out), "--work", str(work), "--result", str(result),
                        "--threads", str(threads), *argv], check=True, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(result.read_text()) | {"total_cpu": cpu, "total_wall": wall,
                                             "load_average": os.getloadavg()[0]}


def step_cost(runs: list[dict], steps: int) -> dict:
    """Mean CPU and wall seconds of one training step after the first, over every cell of a side (a
    process holds one cell on the TRL side, all twelve on ablate's: its stamps are cut per cell)."""
    per_cell = [r["step_stamps"][i : i + steps] for r in runs for i in range(0, len(r["step_stamps"]), steps)]
    assert all(len(c) == steps for c in per_cell), [len(c) for c in per_cell]
    cost = {}
    for k, clock in enumerate(("cpu", "wall")):
        cost[clock] = sum((c[-1][k] - c[0][k]) / (steps - 1) for c in per_cell) / len(per_cell)
    return cost | {"cells": len(per_cell)}


def side_totals(runs: list[dict]) -> dict:
    total = {"cpu": sum(r["total_cpu"] for r in runs), "wall": sum(r["total_wall"] for r in runs)}
    for clock in ("cpu", "wall"):
        parts = {p: sum(r[clock][p] for r in runs) for p in PHASES}
        parts["other (start-up, imports, set-up)"] = total[clock] - sum(parts.values())
        total[f"{clock}_by_phase"] = {k: round(v, 1) for k, v in parts.items()}
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/ablate-sweep-bench")
    parser.add_argument("--steps", type=int, default=3, help=">= 2 (one step's cost is measured between steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="the grid's seeds (fewer for a smoke run)")
    parser.add_argument("--side", choices=["ablate", "trl"])  # internal: one process of one side
    parser.add_argument("--objective", choices=["dpo", "simpo"])
    parser.add_argument("--r", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--work")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        child(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepare(out)
    run_dir = out / time.strftime("%Y%m%d-%H%M%S")
    common = ["--steps", str(args.steps), "--seeds", args.seeds]
    cells = [(objective, r, int(seed)) for seed in args.seeds.split(",") for r in (8, 16)
             for objective in ("dpo", "simpo")]
    trl_runs, ablate_run = [], None
    half = len(cells) // 2
    for turn in ("trl-first-half", "ablate", "trl-second-half"):  # interleaved: a load change hits both sides
        if turn == "ablate":
            ablate_run = launch(out, run_dir / "ablate", [*common, "--side", "ablate"], args.threads)
            print(json.dumps({"side": "ablate", **{k: v for k, v in ablate_run.items() if k != "step_stamps"}}),
                  flush=True)
            continue
        for objective, r, seed in cells[:half] if turn == "trl-first-half" else cells[half:]:
            run = launch(out, run_dir / f"trl-{objective}-r{r}-seed{seed}",
                         [*common, "--side", "trl", "--objective", objective, "--r", str(r), "--seed", str(seed)],
                         args.threads)
            trl_runs.append(run)
            print(json.dumps({"side": "trl", "objective": objective, "r": r, "seed": seed,
                              **{k: v for k, v in run.items() if k != "step_stamps"}}), flush=True)
    assert ablate_run["cells_done"] == len(cells), ablate_run
    ablate, trl = side_totals([ablate_run]), side_totals(trl_runs)
    step = {"ablate": step_cost([ablate_run], args.steps), "trl": step_cost(trl_runs, args.steps)}
    print(json.dumps({
        "cells": len(cells), "steps": args.steps, "threads": args.threads,
        "ablate": ablate, "trl": trl,
        "ratio_cpu": round(ablate["cpu"] / trl["cpu"], 3), "ratio_wall": round(ablate["wall"] / trl["wall"], 3),
        # with many steps the fixed costs fade: the ratio tends to that of one training step
        "training_step": {side: {k: round(v, 3) for k, v in cost.items()} for side, cost in step.items()},
        "ratio_training_step_cpu": round(step["ablate"]["cpu"] / step["trl"]["cpu"], 3),
        "ratio_training_step_wall": round(step["ablate"]["wall"] / step["trl"]["wall"], 3),
    }, indent=1), flush=True)


if __name__ == "__main__":
    main()
