"""Peak resident memory of one DPO training step, lean log-probs vs the full-logits path they replaced.

    python benchmarks/lean_logps_memory.py            # both paths, each in a fresh process
    python benchmarks/lean_logps_memory.py --path lean --steps 3

The issue #9 case: a ~4M-parameter random Qwen2-architecture model with a 65,536-token vocabulary
(the embedding is most of it), 8 pairs per step, 200-token prompts, 30-40-token completions, LoRA
r=8 on q_proj/v_proj, reference log-probs from the same model with the adapter disabled. Each path
runs in its own process so that `ru_maxrss` (the peak resident set size) belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB, PAIRS, PROMPT, COMPLETION = 65_536, 8, 200, (30, 40)


def naive_completion_logps(model, batch):
    """ablate's pre-#9 path: LM head over every position, then an fp32 copy of the (2B, T, V) logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1).float()


def measure(path: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ablate.train.scoring import completion_logps, pad

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=512)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    model = get_peft_model(Qwen2ForCausalLM(config), lora)
    n_params = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    logps_of = completion_logps if path == "lean" else naive_completion_logps
    g = torch.Generator().manual_seed(1)

    def batch():
        prompts = [torch.randint(3, VOCAB, (PROMPT,), generator=g).tolist() for _ in range(PAIRS)]
        completions = [torch.randint(3, VOCAB, (int(torch.randint(*COMPLETION, (1,), generator=g)),),
                                     generator=g).tolist() for _ in range(2 * PAIRS)]
        return pad(prompts + prompts, completions, 0)

    times = []
    for _ in range(steps):
        b = batch()
        start = time.perf_counter()
        with torch.no_grad(), model.disable_adapter():
            ref, _ = logps_of(model, b)
        logps, _ = logps_of(model, b)
        h = (logps[:PAIRS] - ref[:PAIRS]) - (logps[PAIRS:] - ref[PAIRS:])
        loss = -F.logsigmoid(0.1 * h).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {"path": path, "params": n_params, "steps": steps, "peak_rss_gb": round(peak_kib * 1024 / 1e9, 3),
            "median_step_s": round(sorted(times)[len(times) // 2], 3), "loss_step_last": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", choices=["lean", "naive", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.path != "both":
        print(json.dumps(measure(args.path, args.steps, args.threads)))
        return
    for path in ("naive", "lean"):  # a fresh process each: ru_maxrss is a high-water mark
        out = subprocess.run([sys.executable, __file__, "--path", path, "--steps", str(args.steps),
                              "--threads", str(args.threads)], check=True, capture_output=True, text=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
