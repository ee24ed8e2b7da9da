"""TRL 1.16's training step at GPU size, on the same model, batch and LoRA as benchmarks/gpu_step.py.

    python benchmarks/gpu_trl_step.py --model qwen2.5-0.5b                   # DPOTrainer, precomputed reference
    python benchmarks/gpu_trl_step.py --model qwen2.5-0.5b --objective simpo # CPOTrainer(loss_type="simpo"), CPO-SimPO
    python benchmarks/gpu_trl_step.py --model tiny --device cpu --steps 2    # a smoke test on CPU

The same random-weight architecture (gpu_step.ARCHITECTURES), bf16 base weights with bf16 autocast on
CUDA, LoRA r=16 (alpha 32) on every linear layer, 8 pairs per step of --tokens tokens each (half prompt,
half completion, EOS last), no gradient accumulation. TRL runs its own way: DPOTrainer with its fused
LM head (TRL 1.16's default) and `precompute_ref_log_probs=True` (no reference forward in the step,
as in ablate), CPOTrainer(loss_type="simpo", cpo_alpha=0, beta=2, simpo_gamma=0.5). The text is made of
one word per token id and read by a word-level tokenizer over the model's whole vocabulary, so TRL
tokenises exactly the ids ablate's benchmark draws. Steps are timed by a global optimiser hook (the
same clock for any trainer); tokens/s, peak GPU memory and MFU as gpu_step.py computes them.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_step import build, frozen_linear_params, random_batch, step_arguments, step_flops  # noqa: E402


def word_tokenizer(vocab: int):
    """Token id i <-> word "t{i}"; EOS (and pad) is the last id."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    model.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, eos_token=f"t{vocab - 1}", pad_token=f"t{vocab - 1}",
                                   unk_token="t0")


def dataset(vocab: int, pairs: int, tokens: int, batches: int):
    """Rows whose prompt + completion + EOS are `tokens` ids, drawn as gpu_step.py draws them."""
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(batches):
        prompts, completions = random_batch(vocab - 1, pairs, tokens - 1, g)  # one id left for EOS
        for k in range(pairs):
            rows.append({"prompt": " ".join(f"t{i}" for i in prompts[k]),
                         "chosen": " " + " ".join(f"t{i}" for i in completions[k]),
                         "rejected": " " + " ".join(f"t{i}" for i in completions[pairs + k])})
    return Dataset.from_list(rows)


def step_clock() -> list[float]:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    stamps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    return stamps


def main() -> None:
    args = step_arguments(__doc__.split("\n")[0]).parse_args()

    import torch
    from peft import LoraConfig

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build(args.model, device, torch.bfloat16 if cuda else torch.float32)
    frozen_matmul = frozen_linear_params(model)
    vocab = model.config.vocab_size
    tokenizer = word_tokenizer(vocab)
    train = dataset(vocab, args.pairs, args.tokens, args.warmup + args.steps)
    work = Path(tempfile.mkdtemp(prefix="gpu-trl-"))
    common = dict(output_dir=str(work), per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
                  max_steps=args.warmup + args.steps, learning_rate=1e-5, logging_steps=1, report_to="none",
                  save_strategy="no", eval_strategy="no", use_cpu=not cuda, bf16=cuda, seed=0,
                  dataloader_num_workers=0, lr_scheduler_type="constant", max_length=args.tokens + 8,
                  gradient_checkpointing=args.gradient_checkpointing)
    lora = LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear", task_type="CAUSAL_LM")
    if args.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True),
                             train_dataset=train, processing_class=tokenizer, peft_config=lora)
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        config = CPOConfig(**common, beta=2.0, simpo_gamma=0.5, loss_type="simpo", cpo_alpha=0.0)
        trainer = CPOTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer,
                             peft_config=lora)
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # the step's peak: the reference was precomputed in __init__
    stamps = step_clock()
    trainer.train()
    timed = stamps[args.warmup - 1 :] if args.warmup else [stamps[0], *stamps]
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
    tokens = 2 * args.pairs * args.tokens
    flops = step_flops(model.config, frozen_matmul, trained, args.pairs, args.tokens)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    first = trainer.train_dataset[0]
    print(json.dumps({
        "side": "trl", "objective": args.objective, "model": args.model, "device": str(device),
        "tokens_per_step": tokens, "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
        "gradient_checkpointing": args.gradient_checkpointing, "trained_params": trained,
        "frozen_linear_params": frozen_matmul,
        "mfu": round(flops / seconds / (args.peak_tflops * 1e12), 4) if cuda else None,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "loss": losses[-1] if losses else None,
        # what TRL trained on: one sequence is prompt + completion = --tokens ids
        "sequence_tokens": len(first["prompt_ids"]) + len(first["chosen_ids"]) if "prompt_ids" in first else None,
    }))


if __name__ == "__main__":
    main()
