"""Batches of tokenised pairs and their summed completion log-probs (DESIGN §4).

Chosen and rejected go through ONE forward: a batch of B pairs becomes 2B right-padded
sequences, chosen first. Log-probs are summed over completion tokens only; the token counts come
along for the length-normalised objectives and metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ablate.data import TokenizedPairs
from ablate.progress import track


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


# Rows of hidden states sent through the LM head at once. The head's transient memory is about
# 4 x chunk x vocab x 4 bytes (fp32 logits, their log-sum-exp and the gradient, recomputed in
# backward): 1,024 rows of a 151,936-token vocabulary ~ 2.5 GB, independent of sequence length.
DEFAULT_HEAD_CHUNK = 1024


def completion_logps(model, batch: dict[str, Tensor], *, head_chunk: int = DEFAULT_HEAD_CHUNK
                     ) -> tuple[Tensor, Tensor]:
    """Summed log-prob of each sequence's completion tokens, and how many there are: (N,), (N,).

    Lean: the transformer body runs over every position, but the LM head only over the M positions
    that predict a completion token (prompt and padding never reach it), in chunks of `head_chunk`
    rows whose logits are recomputed in backward. No (N, T, V) tensor, nor an fp32 copy of one,
    ever exists; the peak is one (head_chunk, V) chunk. Equal to the straightforward full-logits
    computation to float tolerance (tests/test_scoring.py).
    """
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    input_ids = batch["input_ids"].to(device)
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)
    ).last_hidden_state  # (N, T, H)
    mask = batch["completion_mask"][:, 1:].to(device)  # (N, T-1): position t predicts token t+1
    selected = hidden[:, :-1][mask]  # (M, H)
    labels = input_ids[:, 1:][mask]  # (M,)
    head = causal_lm.get_output_embeddings()
    transform = _logit_transform(causal_lm.config)
    chunks = []
    for start in range(0, len(labels), head_chunk):
        h, y = selected[start : start + head_chunk], labels[start : start + head_chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            # keep only (chunk, H) for backward; the chunk's logits are recomputed there
            chunks.append(checkpoint(_token_logps, head, transform, h, y, use_reentrant=False))
        else:
            chunks.append(_token_logps(head, transform, h, y))
    token_logps = torch.cat(chunks) if chunks else selected.new_zeros(0, dtype=torch.float32)  # (M,)
    # back onto the (N, T-1) grid to sum per row: a masked sum, deterministic on every device
    per_position = torch.zeros(mask.shape, dtype=token_logps.dtype, device=device).masked_scatter(mask, token_logps)
    return per_position.sum(-1), mask.sum(-1).float()


def _token_logps(head, transform, hidden: Tensor, labels: Tensor) -> Tensor:
    logits = transform(head(hidden)).float()  # (C, V)
    # log_softmax(x)[y] = x[y] - logsumexp(x): no second (C, V) tensor
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (C,)


def _logit_transform(config):
    """What a causal LM's forward does to lm_head(h) before returning logits, for the families that
    do anything (Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's logits_scaling). A family
    doing something else is caught by `check_lean_head` before training starts."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)

    def transform(logits: Tensor) -> Tensor:
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits

    return transform


@torch.no_grad()
def check_lean_head(model, vocab_size: int | None = None) -> None:
    """Refuse a model whose forward turns hidden states into logits some other way than the lean
    path assumes: compare both on one short sequence (milliseconds, even for an 8B model)."""
    vocab = vocab_size or model.config.vocab_size
    device = next(model.parameters()).device
    ids = (torch.arange(12, device=device) * 7919 + 3) % vocab
    batch = pad([ids[:5].tolist()], [ids[5:].tolist()], 0)
    lean, _ = completion_logps(model, batch)
    logits = model(input_ids=batch["input_ids"].to(device)).logits[0, 4:-1].float()  # predicts ids[5:]
    full = torch.log_softmax(logits, -1).gather(-1, ids[5:].unsqueeze(-1)).sum()
    relative = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2  # bf16: ~3 digits
    tolerance = relative * max(1.0, abs(full.item()))
    if abs(lean.item() - full.item()) > tolerance:
        raise ValueError(
            f"{type(model).__name__}: its forward computes logits differently from lm_head(final hidden "
            f"state) (lean log-prob {lean.item():.4f} vs forward {full.item():.4f}); ablate's lean "
            "log-prob path does not support this model family yet"
        )


@torch.no_grad()
def score_pairs(model, data: TokenizedPairs, *, batch_size: int, pad_id: int, desc: str,
                head_chunk: int = DEFAULT_HEAD_CHUNK, max_tokens: int | None = None,
                indices: list[int] | None = None, forward=None, ranks=None) -> dict[str, Tensor]:
    """Summed completion log-probs of pairs, on CPU: chosen, rejected, chosen_tokens, rejected_tokens.

    Each value is a (len(data),) tensor in dataset order; pairs outside `indices` (default: all)
    are NaN, so that using one by mistake fails loudly. Batches are sorted by length and sized by
    padded tokens (`max_tokens`, at most `batch_size` pairs): little padding, and a memory peak set
    by the budget rather than by the longest pair times the batch size.

    `forward` (batch -> log-probs, token counts) replaces the lean path on `model`, e.g. a module
    sharded by FSDP; with `ranks` (ablate.distributed.Ranks) every rank scores its share of the
    batches and receives everyone's scores.
    """
    was_training = model.training
    model.eval()
    nan = torch.full((len(data),), float("nan"))
    out = {"chosen": nan.clone(), "rejected": nan.clone(), "chosen_tokens": nan.clone(),
           "rejected_tokens": nan.clone()}
    batches = length_sorted_batches(data, range(len(data)) if indices is None else indices,
                                    max_pairs=batch_size, max_tokens=max_tokens)
    mine, throwaway = (batches, 0) if ranks is None else ranks.share(batches)
    forward = forward or (lambda batch: completion_logps(model, batch, head_chunk=head_chunk))
    for k, idx in enumerate(track(mine + batches[:1] * throwaway, desc=desc, unit="batch", disable=len(mine) < 20)):
        logps, tokens = forward(pair_batch(data, idx, pad_id))
        if k >= len(mine):  # run only so that every rank runs as many forwards (FSDP)
            continue
        logps, tokens, n = logps.float().cpu(), tokens.cpu(), len(idx)
        where = torch.tensor(idx)
        out["chosen"][where], out["rejected"][where] = logps[:n], logps[n:]
        out["chosen_tokens"][where], out["rejected_tokens"][where] = tokens[:n], tokens[n:]
    model.train(was_training)
    return out if ranks is None else ranks.gather_pairs(out, [i for idx in mine for i in idx])


def length_sorted_batches(data: TokenizedPairs, indices, *, max_pairs: int, max_tokens: int | None
                          ) -> list[list[int]]:
    """Pair indices grouped longest first; a batch's padded size 2 x pairs x longest <= max_tokens
    (a single pair longer than the budget still gets its own batch)."""
    def length(i: int) -> int:
        return len(data.prompt_ids[i]) + max(len(data.chosen_ids[i]), len(data.rejected_ids[i]))

    batches: list[list[int]] = []
    for i in sorted(set(indices), key=lambda i: (-length(i), i)):
        current = batches[-1] if batches else None
        fits = (current is not None and len(current) < max_pairs
                and (max_tokens is None or 2 * (len(current) + 1) * length(current[0]) <= max_tokens))
        if fits:
            current.append(i)
        else:
            batches.append([i])
    return batches
