"""ablate's training step at GPU size (benchmarks/gpu_all.sh runs it beside TRL's, benchmarks/gpu_trl_step.py).

    python benchmarks/gpu_step.py --model qwen2.5-0.5b                          # bf16, r=16, 1,024 tokens
    python benchmarks/gpu_step.py --model llama-3.1-8b --gradient-checkpointing # must fit one H100/H200
    python benchmarks/gpu_step.py --model qwen2.5-0.5b --objective simpo        # length-normalised, no reference
    python benchmarks/gpu_step.py --model tiny --device cpu --steps 2           # a smoke test on CPU

Random weights from each model's published architecture (no download), bf16 base weights, LoRA
r=16 (alpha 32) on every linear layer with fp32 adapter weights, bf16 autocast, 8 pairs per step =
16 sequences of --tokens tokens (half prompt, half completion). One step is ablate's training step:
lean completion log-probs of the 16 sequences, the DPO loss against fixed reference log-probs (as
TRL's precomputed reference: no reference forward in the step) or SimPO's, backward, AdamW. Prints
tokens/s, peak GPU memory and the MFU of the policy forward+backward:

    MFU = (4 * N_frozen_matmul + 6 * N_lora) * tokens/s + attention FLOPs / peak bf16 FLOP/s

(a frozen weight costs its forward and the activation gradient, 2 + 2 FLOPs per token; a trained one
also its weight gradient). --peak-tflops defaults to 989 (H100/H200 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import json
import time

ARCHITECTURES = {
    # config.json of Qwen/Qwen2.5-0.5B
    "qwen2.5-0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                   rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)),
    # config.json of meta-llama/Llama-3.1-8B
    "llama-3.1-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                   rope_theta=500_000.0, tie_word_embeddings=False, rms_norm_eps=1e-5,
                                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 8192})),
    "tiny": ("qwen2", dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           tie_word_embeddings=True)),
}


def build(name: str, device, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family, fields = ARCHITECTURES[name]
    config = AutoConfig.for_model(family, **fields)
    config.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def random_batch(vocab: int, pairs: int, tokens: int, generator) -> tuple[list, list]:
    """(prompts, completions) of 2 x pairs sequences, chosen then rejected: each prompt tokens/2 random ids (twice),
    each completion the rest."""
    import torch

    prompt_len = tokens // 2
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=generator).tolist() for _ in range(pairs)]
    completions = [torch.randint(0, vocab, (tokens - prompt_len,), generator=generator).tolist()
                   for _ in range(2 * pairs)]
    return prompts + prompts, completions


def step_flops(config, frozen_matmul: int, trained: int, pairs: int, tokens: int) -> float:
    """Model FLOPs of one step: checkpointing's recomputed forward is extra work the MFU does not credit."""
    head_dim = config.hidden_size // config.num_attention_heads
    # causal attention: QK^T and AV, 2 FLOPs per multiply-add, half the square; forward + 2x backward
    attention = 3 * 2 * 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * tokens ** 2 / 2
    return (4 * frozen_matmul + 6 * trained) * 2 * pairs * tokens + attention * 2 * pairs


def frozen_linear_params(model) -> int:
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def step_arguments(description: str) -> argparse.ArgumentParser:
    """The options ablate's step and TRL's (gpu_trl_step.py) share, so both measure the same step."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="qwen2.5-0.5b")
    parser.add_argument("--objective", choices=["dpo", "simpo"], default="dpo")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    return parser


def main() -> None:
    parser = step_arguments(__doc__.split("\n")[0])
    parser.add_argument("--head-chunk", type=int, default=1024)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    from ablate.train.engine import (
        adapter_weights_in_float32,
        autocast_dtype,
        compute_context,
        enable_gradient_checkpointing,
    )
    from ablate.train.scoring import completion_logps, pad

    device = torch.device(args.device)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(args.model, device, dtype)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    frozen_matmul = frozen_linear_params(model)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear"))
    params = adapter_weights_in_float32(model)
    trained = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    amp = autocast_dtype(OmegaConf.create({"autocast": "bf16" if device.type == "cuda" else "off"}), device, dtype)
    g = torch.Generator().manual_seed(1)
    ref = torch.zeros(2 * args.pairs, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times, n = [], args.pairs
    for step in range(args.warmup + args.steps):
        b = pad(*random_batch(model.config.vocab_size, n, args.tokens, g), 0)
        synchronize()
        start = time.perf_counter()
        with compute_context(device, amp):
            logps, counts = completion_logps(model, b, head_chunk=args.head_chunk)
        if args.objective == "dpo":
            loss = -F.logsigmoid(0.1 * ((logps[:n] - ref[:n]) - (logps[n:] - ref[n:]))).mean()
        else:  # SimPO, beta 2, gamma 0.5 (TRL CPOTrainer loss_type="simpo", cpo_alpha=0)
            average = logps / counts
            loss = -F.logsigmoid(2.0 * (average[:n] - average[n:]) - 0.5).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    tokens = 2 * n * args.tokens
    flops = step_flops(model.config, frozen_matmul, trained, n, args.tokens)
    result = {"side": "ablate", "objective": args.objective, "model": args.model, "device": str(device),
              "tokens_per_step": tokens, "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
              "gradient_checkpointing": args.gradient_checkpointing, "trained_params": trained,
              "frozen_linear_params": frozen_matmul,
              "mfu": round(flops / seconds / (args.peak_tflops * 1e12), 4) if device.type == "cuda" else None,
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.type == "cuda" else None,
              "loss": loss.item()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
