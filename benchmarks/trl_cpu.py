"""ablate vs TRL 1.16 on the CPU-size case of issue #9: step-0 parity, then steps/s and peak memory.

    pip install -e .[bench]          # trl, benchmark-only
    python benchmarks/trl_cpu.py --out /tmp/ablate-bench --reps 2 --steps 12

Same model, data, batch, lengths and LoRA config on both sides:
- a random-weight Qwen2-architecture model (hidden 256, 2 layers) and a byte-level BPE tokenizer
  with an 8,192-token vocabulary trained offline on the benchmark's own text (tokenizers library);
- 2,000 pairs of random words, prompts 60-120 tokens, completions 80-200 tokens (plus EOS);
- 8 pairs per step, no accumulation, LoRA r=8 alpha=16 on q_proj/v_proj, AdamW, fp32, 2 threads;
- ablate DPO (β=0.1) vs TRL DPOTrainer with precompute_ref_log_probs=True and without (the
  reference forward then runs in every step), and ablate SimPO (β=2, γ=0.5) vs TRL
  CPOTrainer(loss_type="simpo", cpo_alpha=0, β=2, simpo_gamma=0.5);
- TRL 1.16's DPOConfig/CPOConfig default to gradient_checkpointing=True and bf16=True: both are
  switched off here, as ablate runs (fp32, no checkpointing). Runs before 2026-12-02 17:00 UTC
  (docs/benchmarks.md) had TRL's defaults on.

Parity: TRL's tokenised dataset against ablate's tokens (all 2,000 pairs), TRL's precomputed
reference log-probs against ablate's shared reference file (the pairs of the timed runs: one epoch
of steps x 8 pairs, the same file for both sides), and the first logged DPO loss of both (ln 2: the
policy starts as the reference). Speed: each run is its own process (its ru_maxrss is its peak); the four
configurations alternate, repetition after repetition, so that a load change on a shared machine
hits all of them alike. steps/s = timed steps / time between the optimiser step after warm-up and
the last one (a global optimiser hook: the same clock for both trainers); tokens/s = steps/s x the
mean non-padding tokens of a step (chosen and rejected sequences; the same epoch of pairs on both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB, PAIRS, HELDOUT, PROMPT, COMPLETION = 8192, 2000, 8, (60, 120), (80, 200)
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
EOS = "<|endoftext|>"
WARMUP_STEPS = 2
SIDES = ("ablate", "trl", "trl_live_ref")  # trl: precompute_ref_log_probs=True; trl_live_ref: False (DPO only)


# ------------------------------------------------------------------------------ model and data
def prepare(out: Path) -> None:
    """Text, tokenizer and model directory; deterministic, written once."""
    if (out / "model" / "config.json").exists():
        return
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    lexicon = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(20_000)]

    def words(n: int) -> str:
        return " ".join(rng.choice(lexicon) for _ in range(n))

    corpus = [words(200) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    tokenizer.save_pretrained(out / "model")

    def text_with_tokens(lo: int, hi: int, leading_space: bool) -> str:
        """Words until the text has lo..hi tokens. Byte-level pre-tokenisation splits before each
        space, so a text's token count is the sum of its words' counts."""
        target, parts, count = rng.randint(lo, hi), [], 0
        while count < target:
            word = (" " if parts or leading_space else "") + rng.choice(lexicon)  # completions follow the prompt
            parts.append(word)
            count += len(tokenizer(word, add_special_tokens=False)["input_ids"])
        return "".join(parts)

    rows = [{"prompt": text_with_tokens(*PROMPT, False), "chosen": text_with_tokens(*COMPLETION, True),
             "rejected": text_with_tokens(*COMPLETION, True)} for _ in range(PAIRS + HELDOUT)]
    for name, part in (("train", rows[:PAIRS]), ("heldout", rows[PAIRS:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))

    import torch

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(out / "model")


def train_file(out: Path, steps: int) -> Path:
    """The first steps x 8 pairs: exactly one epoch, so both trainers score the reference of the
    same pairs (TRL's precompute scores its whole dataset; ablate scores the pairs it visits)."""
    path = out / f"train-{steps * 8}.jsonl"
    if not path.exists():
        path.write_text("".join((out / "train.jsonl").read_text().splitlines(keepends=True)[: steps * 8]))
    return path


# ---------------------------------------------------------------------------------- one run
def step_clock():
    """Timestamps of every optimiser step in this process, whoever owns the optimiser."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    return stamps


def run_ablate(out: Path, objective: str, steps: int, work: Path) -> dict:
    import hydra

    import ablate.config
    from ablate.sweep.run import run_cell

    ablate.config.register_configs()
    overrides = [f"objective={objective}", "model=hub", f"model.path={out / 'model'}", "model.dtype=float32",
                 "data=files", f"data.train_files=[{train_file(out, steps)}]",
                 f"data.heldout_files=[{out / 'heldout.jsonl'}]", "data.max_length=512", "data.max_prompt_length=256",
                 f"trainer.max_steps={steps}", "trainer.batch_size=8", "trainer.grad_accum=1", "trainer.lr=5e-5",
                 "trainer.warmup_ratio=0", f"trainer.eval_every={steps}", "trainer.log_every=1",
                 "lora.r=8", "lora.alpha=16", "lora.dropout=0.0", "lora.target_modules=[q_proj,v_proj]",
                 "device=cpu", "threads=2", "seed=0"]
    if objective == "simpo":
        overrides += ["objective.beta=2.0", "objective.gamma=0.5"]
    repo = Path(__file__).resolve().parents[1]
    with hydra.initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
        cfg = hydra.compose("config", overrides=overrides)
    stamps = step_clock()
    run_cell(cfg, work)
    cell = next((work / "cells").iterdir())
    first = json.loads((cell / "train_log.jsonl").read_text().splitlines()[0])
    return {"stamps": stamps, "first_loss": first["loss"], "cell": str(cell)}


def run_trl(out: Path, objective: str, steps: int, work: Path, precompute: bool = True) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    train = load_dataset("json", data_files=str(train_file(out, steps)), split="train",
                         cache_dir=str(work / "hf"))
    common = dict(output_dir=str(work / "trl"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                  max_steps=steps, learning_rate=5e-5, logging_steps=1, report_to="none", save_strategy="no",
                  eval_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0,
                  lr_scheduler_type="constant", bf16=False, gradient_checkpointing=False)  # ablate's settings
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=0.1, precompute_ref_log_probs=precompute)
        trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"))
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(**common, beta=2.0, simpo_gamma=0.5, loss_type="simpo", cpo_alpha=0.0)
        trainer = CPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             peft_config=LoraConfig(**LORA, task_type="CAUSAL_LM"))
    stamps = step_clock()
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {"stamps": stamps, "first_loss": losses[0]}
    if objective == "dpo" and precompute:
        ds = trainer.train_dataset
        result["ref"] = {"chosen": list(ds["ref_chosen_logps"]), "rejected": list(ds["ref_rejected_logps"])}
    return result


def single(args) -> None:
    out, work = Path(args.out), Path(args.work)
    if args.side == "ablate":
        result = run_ablate(out, args.objective, args.steps, work)
    else:
        result = run_trl(out, args.objective, args.steps, work, precompute=args.side == "trl")
    stamps = result.pop("stamps")
    timed = stamps[WARMUP_STEPS - 1 :]
    result |= {"side": args.side, "objective": args.objective, "steps": len(stamps),
               "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------ parity
def token_parity(out: Path) -> dict:
    """Token ids of all 2,000 pairs: TRL's DPO dataset preparation vs ablate's tokenisation."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ablate.data.pairs import read_pairs_from_files, tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    ours = tokenize_pairs(read_pairs_from_files([str(out / "train.jsonl")], id_prefix="train-"), tokenizer,
                          max_length=512, max_prompt_length=256)
    args = DPOConfig(output_dir=str(out / "parity"), report_to="none", use_cpu=True, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(out / "model"), args=args,
                         train_dataset=load_dataset("json", data_files=str(out / "train.jsonl"), split="train",
                                                    cache_dir=str(out / "hf")), processing_class=tokenizer)
    ds = trainer.train_dataset
    same = all(list(ds[f"{k}_ids"]) == getattr(ours, f"{k}_ids") for k in ("prompt", "chosen", "rejected"))
    return {"pairs": len(ours), "token_ids_identical": same}


def logp_parity(ablate_run: dict, trl_run: dict) -> dict:
    """TRL's precomputed reference log-probs vs ablate's shared reference file, pair by pair."""
    import torch

    shared = Path(ablate_run["cell"]).parents[1] / "shared"
    ref = torch.load(next(shared.glob("reference-train-*.pt")), weights_only=False)
    diffs = [(ref[k].double() - torch.tensor(trl_run["ref"][k], dtype=torch.float64)).abs().max().item()
             for k in ("chosen", "rejected")]
    return {"ref_pairs_compared": len(ref["chosen"]), "max_abs_summed_logp_diff": max(diffs),
            "first_dpo_loss": {"ablate": ablate_run["first_loss"], "trl": trl_run["first_loss"], "ln2": math.log(2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/ablate-bench")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--side", choices=SIDES)  # internal: one run in this process
    parser.add_argument("--objective", choices=["dpo", "simpo"])
    parser.add_argument("--work")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.side:
        single(args)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prepare(out)
    runs: list[dict] = []
    for rep in range(args.reps):
        for objective in ("dpo", "simpo"):
            for side in SIDES if objective == "dpo" else SIDES[:2]:
                work = out / f"run-{rep}-{objective}-{side}"
                result = work / "result.json"
                if not result.exists():
                    work.mkdir(parents=True, exist_ok=True)
                    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                        "ABLATE_CACHE": str(out / "cache"), "TQDM_DISABLE": "1"}
                    subprocess.run([sys.executable, __file__, "--out", str(out), "--side", side, "--objective",
                                    objective, "--steps", str(args.steps), "--work", str(work),
                                    "--result", str(result)], check=True, env=env)
                run = json.loads(result.read_text())
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k not in ("tokens", "ref")}), flush=True)
    first = {(r["side"], r["objective"]): r for r in runs}
    print(json.dumps({"logp_parity": logp_parity(first[("ablate", "dpo")], first[("trl", "dpo")])}), flush=True)
    print(json.dumps({"token_parity": token_parity(out)}), flush=True)
    tokens_per_step = epoch_tokens(out, args.steps) / args.steps
    for objective, other in (("dpo", "trl"), ("dpo", "trl_live_ref"), ("simpo", "trl")):
        mine = [r for r in runs if r["objective"] == objective and r["side"] == "ablate"]
        theirs = [r for r in runs if r["objective"] == objective and r["side"] == other]
        speed = [a["steps_per_s"] / t["steps_per_s"] for a, t in zip(mine, theirs, strict=True)]
        memory = [a["peak_rss_gb"] / t["peak_rss_gb"] for a, t in zip(mine, theirs, strict=True)]
        print(json.dumps({"objective": objective, "vs": other,
                          "ablate_tokens_per_s": [round(a["steps_per_s"] * tokens_per_step) for a in mine],
                          "trl_tokens_per_s": [round(t["steps_per_s"] * tokens_per_step) for t in theirs],
                          "speed_ratio_per_rep": [round(x, 3) for x in speed],
                          "memory_ratio_per_rep": [round(x, 3) for x in memory]}), flush=True)


def epoch_tokens(out: Path, steps: int) -> int:
    """Non-padding tokens of the timed runs' pairs (prompt twice, both completions + EOS), ablate's tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    total = 0
    for line in train_file(out, steps).read_text().splitlines():
        pair = json.loads(line)
        prompt = len(tokenizer(pair["prompt"])["input_ids"])
        total += 2 * prompt + sum(len(tokenizer(pair[k], add_special_tokens=False)["input_ids"]) + 1
                                  for k in ("chosen", "rejected"))
    return total


if __name__ == "__main__":
    main()
