"""Behaviour beyond ranking: what a cell's model generates for a fixed sample of held-out prompts (`eval.*`).

Held-out accuracy says how a model ranks two given answers; the failure ablate exists to catch ("models
that favour short, generic answers") shows in what it writes. At the end of a cell, the policy (and, once
per sweep, the reference: the base model with the adapter off) answers the same `eval.prompts` held-out
prompts, sampled with `eval.seed` (never the cell's seed, so every cell sees the same prompts): greedily,
and `eval.samples` more times by sampling at `eval.temperature` with a fixed seed. Each generation is cut at
EOS or `eval.max_new_tokens`. Per cell (generations.parquet, and metrics.json under `generation/`):
- tokens_mean: mean generated tokens (EOS included), and ref_tokens_mean, the reference's on the same prompts;
- eos_share: the share of generations that ended with EOS rather than at the token limit;
- distinct_2: distinct bigrams / bigrams over the cell's generations (1: no repetition);
- on the embedded task, correct (the hidden rule, filler ignored) and exact (no filler);
- with `eval.reward_model` (a sequence-classification model), reward_mean: its score of prompt + generation.
The collector turns them into per-arm intervals over seeds (ablate.collect.diagnostics.generation_report).
"""

from __future__ import annotations

import random

import torch

SUMMARY_KEYS = ("tokens_mean", "eos_share", "distinct_2", "correct", "exact", "reward_mean")


def generation_enabled(cfg) -> bool:
    """eval.generate: null means on for the embedded example, off for other models."""
    setting = cfg.eval.get("generate") if "eval" in cfg else None
    return bool(cfg.model.kind == "embedded") if setting is None else bool(setting)


def prompt_sample(n_pairs: int, prompts: int, seed: int) -> list[int]:
    """Held-out pair indices whose prompts are generated for: the same for every cell of a sweep."""
    order = list(range(n_pairs))
    random.Random(seed).shuffle(order)  # a private RNG: nothing else moves it
    return sorted(order[:prompts])


@torch.no_grad()
def generate(model, prompt_ids: list[list[int]], *, pad_id: int, eos_id: int, max_new_tokens: int,
             sample: bool = False, temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> list[list[int]]:
    """Each prompt's continuation (token ids, cut after the first EOS), left-padded batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # sampling draws from torch's global RNG; restored below
    try:
        for start in range(0, len(prompt_ids), batch_size):
            batch = prompt_ids[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, p in enumerate(batch):
                ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
            kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if sample else \
                dict(do_sample=False)
            sequences = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                                       use_cache=True, **kwargs)
            for row in sequences[:, width:].tolist():
                out.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out


def distinct_n(token_lists: list[list[int]], n: int = 2) -> float | None:
    grams = [tuple(t[i : i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def summarise(rows: list[dict]) -> dict:
    """A cell's generation metrics from its rows (greedy and sampled alike)."""
    def mean(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(sum(values) / len(values)) if values else None

    return {"tokens_mean": mean("tokens"), "eos_share": mean("eos"),
            "distinct_2": distinct_n([r["token_ids"] for r in rows]),
            "correct": mean("correct"), "exact": mean("exact"), "reward_mean": mean("reward")}


@torch.no_grad()
def reward_scores(path: str, prompts: list[str], completions: list[str], device: torch.device,
                  batch_size: int = 8) -> list[float]:
    """A sequence-classification reward model's score (logit 0) of each prompt + completion."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = [p + c for p, c in zip(prompts[start : start + batch_size], completions[start : start + batch_size],
                                       strict=True)]
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
        scores += model(**enc).logits[:, 0].float().tolist()
    return scores
