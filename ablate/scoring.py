"""Batches of tokenised pairs and their summed completion log-probs (DESIGN §4).

Chosen and rejected go through ONE forward: a batch of B pairs becomes 2B right-padded
sequences, chosen first. Log-probs are summed over completion tokens only; the token counts come
along for the length-normalised objectives and metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ablate.data import TokenizedPairs


def pad(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> dict[str, Tensor]:
    seqs = [p + c for p, c in zip(prompts, completions, strict=False)]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=False)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
        completion_mask[i, len(p) : len(s)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pair_batch(data: TokenizedPairs, idx: list[int], pad_id: int) -> dict[str, Tensor]:
    """(2B, T): chosen sequences of the B pairs, then their rejected sequences."""
    prompts = [data.prompt_ids[i] for i in idx]
    completions = [data.chosen_ids[i] for i in idx] + [data.rejected_ids[i] for i in idx]
    return pad(prompts + prompts, completions, pad_id)


def mismatched_batch(data: TokenizedPairs, idx: list[int], pad_id: int) -> dict[str, Tensor]:
    """(2B, T): prompt of pair i with the chosen and rejected completions of another pair (KTO's KL batch).

    The partner of the k-th pair is the next pair of the batch that is a different pair (the batch
    rotated by one). A batch of one pair (batch_size 1, or a rank's one-pair shard), or of one pair
    repeated, has no such partner: it takes the next pair of the dataset. Never a pair's own
    completion, which would turn the KL baseline z0 into the mean reward itself.
    """
    if len(data) < 2:
        raise ValueError(f"KTO's KL batch needs at least 2 pairs to mismatch, the data have {len(data)}")
    partners = []
    for k, i in enumerate(idx):
        others = (idx[(k + step) % len(idx)] for step in range(1, len(idx)))
        partners.append(next((j for j in others if j != i), (i + 1) % len(data)))
    prompts = [data.prompt_ids[i] for i in idx]
    completions = [data.chosen_ids[j] for j in partners] + [data.rejected_ids[j] for j in partners]
    return pad(prompts + prompts, completions, pad_id)


def completion_logps(model, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed log-prob of each sequence's completion tokens, and how many there are: (N,), (N,)."""
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits
    logits = logits[:, :-1].float()  # (N, T-1, V): position t predicts token t+1
    labels = input_ids[:, 1:]
    mask = batch["completion_mask"][:, 1:].to(device)
    # log_softmax(x)[y] = x[y] - logsumexp(x): avoids materialising a second (N, T-1, V) tensor
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (N, T-1)
    return (token_logps * mask).sum(-1), mask.sum(-1).float()


@torch.no_grad()
def score_pairs(model, data: TokenizedPairs, *, batch_size: int, pad_id: int, desc: str) -> dict[str, Tensor]:
    """Summed completion log-probs of every pair, on CPU: chosen, rejected, chosen_tokens, rejected_tokens."""
    was_training = model.training
    model.eval()
    parts = []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 20):
        idx = list(range(start, min(start + batch_size, len(data))))
        logps, tokens = completion_logps(model, pair_batch(data, idx, pad_id))
        parts.append((logps.cpu(), tokens.cpu(), len(idx)))
    model.train(was_training)
    logps = torch.cat([p[0] for p in parts])
    tokens = torch.cat([p[1] for p in parts])
    chosen_mask = torch.cat([torch.arange(2 * n) < n for _, _, n in parts])
    return {
        "chosen": logps[chosen_mask],
        "rejected": logps[~chosen_mask],
        "chosen_tokens": tokens[chosen_mask],
        "rejected_tokens": tokens[~chosen_mask],
    }
