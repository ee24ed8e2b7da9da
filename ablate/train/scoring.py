"""Batches of tokenised pairs and their summed completion log-probs (docs/ARCHITECTURE.md §4).

Chosen and rejected go through ONE forward: a batch of B pairs becomes 2B right-padded
sequences, chosen first (B unpaired KTO examples: B sequences). Log-probs are summed over
completion tokens only; the token counts come along for the length-normalised objectives and metrics.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ablate.data.pairs import TokenizedExamples, TokenizedPairs
from ablate.progress import track
from ablate.train.data_order import pair_lengths


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


def example_batch(data: TokenizedExamples, idx: list[int], pad_id: int) -> dict[str, Tensor]:
    """(B, T): the B unpaired examples' prompt + completion sequences."""
    return pad([data.prompt_ids[i] for i in idx], [data.completion_ids[i] for i in idx], pad_id)


def training_batch(data: TokenizedPairs | TokenizedExamples, idx: list[int], pad_id: int
                   ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """The sequences of a training micro-batch, and the positions of its chosen (desirable) and its
    rejected (undesirable) sequences: pairs give chosen first, then rejected; unpaired examples are
    split by their labels."""
    if isinstance(data, TokenizedExamples):
        labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.bool)
        positions = torch.arange(len(idx))
        return example_batch(data, idx, pad_id), positions[labels], positions[~labels]
    return pair_batch(data, idx, pad_id), torch.arange(len(idx)), torch.arange(len(idx), 2 * len(idx))


def sequence_values(values: dict[str, Tensor], idx: list[int], part: str = "") -> Tensor:
    """Per-sequence values (e.g. reference log-probs, or with `part` their tails) of a training batch in
    `training_batch` order."""
    if "logps" in values:  # unpaired examples
        return values["logps"][idx]
    suffix = f"_{part}" if part else ""
    return torch.cat([values[f"chosen{suffix}"][idx], values[f"rejected{suffix}"][idx]])


def mismatched_batch(data: TokenizedPairs | TokenizedExamples, idx: list[int], pad_id: int,
                     positions: list[int] | None = None) -> dict[str, Tensor]:
    """KTO's KL batch: the prompt of item i with the completion(s) of an item with another prompt.

    Pairs give (2B, T): prompt i with the chosen, then the rejected completion of its partner;
    unpaired examples give (B, T). The partner of the k-th item is the next item of the batch whose
    prompt differs (the batch rotated); with none in the batch (batch_size 1, a rank's one-item
    shard, a batch of one prompt's completions), the next such item of the dataset. Never a
    completion of the same prompt, which would turn the KL baseline z0 into a mean reward.
    With `positions` (a rank's share of the micro-batch `idx`), only those items' rows, their
    partners still chosen over the whole micro-batch: the ranks' rows together are one process's.
    """
    partners = mismatch_partners(data.prompt_ids, idx)
    if positions is not None:
        idx, partners = [idx[k] for k in positions], [partners[k] for k in positions]
    prompts = [data.prompt_ids[i] for i in idx]
    if isinstance(data, TokenizedExamples):
        return pad(prompts, [data.completion_ids[j] for j in partners], pad_id)
    completions = [data.chosen_ids[j] for j in partners] + [data.rejected_ids[j] for j in partners]
    return pad(prompts + prompts, completions, pad_id)


def mismatch_partners(prompt_ids: list[list[int]], idx: list[int]) -> list[int]:
    partners = []
    for k, i in enumerate(idx):
        in_batch = (idx[(k + step) % len(idx)] for step in range(1, len(idx)))
        in_data = ((i + step) % len(prompt_ids) for step in range(1, len(prompt_ids)))
        partner = next((j for j in itertools.chain(in_batch, in_data) if prompt_ids[j] != prompt_ids[i]), None)
        if partner is None:
            raise ValueError("KTO's KL batch needs completions of at least two different prompts; every "
                             f"training item has the same prompt ({len(prompt_ids)} items)")
        partners.append(partner)
    return partners


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
    scores = sequence_scores(model, batch, head_chunk=head_chunk)
    return scores["logps"], scores["tokens"]


# What an objective may ask of each sequence beyond its summed log-prob (Objective.sequence_parts):
#   "tail": the summed log-probs of the completion tokens past the pair's shared length min(n_w, n_l) (LD-DPO);
#   "wpo_weight": exp of the mean over completion tokens of log p(y_t) − log Σ_v p(v)², without gradient (WPO).
# Both assume a pair batch: rows [0, N/2) are the chosen and rows [N/2, N) the rejected completions of the same pairs.
SEQUENCE_PARTS = ("tail", "wpo_weight")


def sequence_scores(model, batch: dict[str, Tensor], *, head_chunk: int = DEFAULT_HEAD_CHUNK,
                    parts: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """`completion_logps` as a dict {"logps", "tokens"}, plus the requested `parts` (SEQUENCE_PARTS), each (N,).
    The WPO weight costs one more gradient-free pass of the LM head over the completion positions."""
    unknown = set(parts) - set(SEQUENCE_PARTS)
    if unknown:
        raise ValueError(f"unknown sequence parts {sorted(unknown)}; known: {SEQUENCE_PARTS}")
    device = next(model.parameters()).device
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    input_ids = batch["input_ids"].to(device)
    hidden = causal_lm.get_decoder()(
        input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)
    ).last_hidden_state  # (N, T, H)
    mask = batch["completion_mask"][:, 1:].to(device, torch.bool)  # (N, T-1): position t predicts token t+1
    selected = hidden[:, :-1][mask]  # (M, H)
    labels = input_ids[:, 1:][mask]  # (M,)
    head = causal_lm.get_output_embeddings()
    transform = _logit_transform(causal_lm.config)
    # A plain frozen linear head (LoRA's case) without a logit transform takes the fused backward
    plain = type(head) is torch.nn.Linear and not head.weight.requires_grad and transform is None
    chunks, log_sum_sq = [], []
    for start in range(0, len(labels), head_chunk):
        h, y = selected[start : start + head_chunk], labels[start : start + head_chunk]
        if not (torch.is_grad_enabled() and h.requires_grad):
            chunks.append(_token_logps(head, transform, h, y))
        elif plain:
            chunks.append(_FrozenHeadLogps.apply(h, head.weight, head.bias, y))
        else:  # keep only (chunk, H) for backward; the chunk's logits are recomputed there by autograd
            chunks.append(checkpoint(_token_logps, head, transform, h, y, use_reentrant=False))
        if "wpo_weight" in parts:
            log_sum_sq.append(_log_sum_sq_probs(head, transform, h))
    token_logps = torch.cat(chunks) if chunks else selected.new_zeros(0, dtype=torch.float32)  # (M,)
    # back onto the (N, T-1) grid to sum per row: a masked sum, deterministic on every device
    per_position = torch.zeros(mask.shape, dtype=token_logps.dtype, device=device).masked_scatter(mask, token_logps)
    tokens = mask.sum(-1).float()
    scores = {"logps": per_position.sum(-1), "tokens": tokens}
    if "tail" in parts:
        scores["tail"] = pair_tails(per_position, mask)
    if "wpo_weight" in parts:
        aligned = token_logps.detach() - (torch.cat(log_sum_sq) if log_sum_sq else token_logps.new_zeros(0))
        scores["wpo_weight"] = wpo_weights(torch.zeros(mask.shape, dtype=aligned.dtype, device=device)
                                           .masked_scatter(mask, aligned), mask)
    return scores


def pair_tails(per_position: Tensor, mask: Tensor) -> Tensor:
    """LD-DPO's tail of each sequence of a pair batch (rows [0, N/2) chosen, [N/2, N) rejected): the sum of its
    completion tokens' log-probs past the pair's shared length min(n_w, n_l), the k-th completion token (1-based)
    being in the tail when k > min(n_w, n_l), as TRL's split. (N, T) values and completion mask -> (N,)."""
    n_w, n_l = mask.sum(-1).chunk(2)
    shared = torch.minimum(n_w, n_l).repeat(2)
    return (per_position * (mask.bool() & (mask.cumsum(-1) > shared.unsqueeze(-1)))).sum(-1)


def wpo_weights(aligned: Tensor, mask: Tensor) -> Tensor:
    """WPO's weight of each sequence: exp of the mean over its completion tokens of log p(y_t) − log Σ_v p(v)²
    (`aligned`, (N, T), zero off the completion mask) -> (N,)."""
    return torch.exp(aligned.sum(-1) / mask.sum(-1).clamp(min=1))


@torch.no_grad()
def _log_sum_sq_probs(head, transform, hidden: Tensor) -> Tensor:
    """log Σ_v p(v)² of each row's next-token distribution: logsumexp(2x) − 2·logsumexp(x)."""
    logits = head(hidden)
    logits = (transform(logits) if transform is not None else logits).float()
    return (2 * logits).logsumexp(-1) - 2 * logits.logsumexp(-1)


def _token_logps(head, transform, hidden: Tensor, labels: Tensor) -> Tensor:
    logits = head(hidden)
    logits = (transform(logits) if transform is not None else logits).float()  # (C, V)
    # log_softmax(x)[y] = x[y] - logsumexp(x): no second (C, V) tensor
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (C,)


class _FrozenHeadLogps(torch.autograd.Function):
    """`_token_logps` for a frozen nn.Linear head, with a hand-written backward that recomputes the
    chunk's logits once and turns them into the gradient in place: d(x_y - lse(x))/dx = onehot(y) -
    softmax(x), so grad_hidden = (g * (onehot - softmax)) @ W. Saves only hidden (C, H) and the
    log-sum-exp (C,). The checkpointed autograd graph it replaces recomputes the same logits but then
    builds softmax, a scattered one-hot and their casts as separate (C, V) tensors: on the CPU-size
    benchmark the head dominates a SimPO step, and this cut its time (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
        device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        logits = torch.nn.functional.linear(hidden, weight, bias).float()  # (C, V)
        lse = logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):  # the forward's numerics
            logits = torch.nn.functional.linear(hidden, weight, bias).float()
        grad = logits.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad_out.unsqueeze(-1))  # -g * softmax, in place
        rows = torch.arange(len(labels), device=labels.device)
        grad[rows, labels] += grad_out  # + g * onehot (one label per row: no accumulation order to fix)
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
            grad_hidden = grad.to(weight.dtype) @ weight  # (C, H); as autograd casts it back through .float()
        return grad_hidden.to(hidden.dtype), None, None, None


def _logit_transform(config):
    """What a causal LM's forward does to lm_head(h) before returning logits, for the families that
    do anything (Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's logits_scaling). A family
    doing something else is caught by `check_lean_head` before training starts."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    divisor = getattr(config, "logits_scaling", None)

    if softcap is None and scale is None and divisor is None:
        return None  # the head's output is the logits

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
def score_pairs(model, data: TokenizedPairs | TokenizedExamples, *, batch_size: int, pad_id: int, desc: str,
                head_chunk: int = DEFAULT_HEAD_CHUNK, max_tokens: int | None = None,
                indices: list[int] | None = None, forward=None, ranks=None, parts: tuple[str, ...] = ()
                ) -> dict[str, Tensor]:
    """Summed completion log-probs of pairs, on CPU: chosen, rejected, chosen_tokens, rejected_tokens
    (unpaired examples: logps, tokens); with `parts` (pairs only) also chosen_<part> and rejected_<part>.

    Each value is a (len(data),) tensor in dataset order; pairs outside `indices` (default: all)
    are NaN, so that using one by mistake fails loudly. Batches are sorted by length and sized by
    padded tokens (`max_tokens`, at most `batch_size` pairs): little padding, and a memory peak set
    by the budget rather than by the longest pair times the batch size.

    `forward` ((batch, parts) -> `sequence_scores`' dict) replaces the lean path on `model`, e.g. a module
    sharded by FSDP; with `ranks` (ablate.train.distributed.Ranks) every rank scores its share of the
    batches and receives everyone's scores (collective: every rank must call it).
    """
    was_training = model.training
    model.eval()
    unpaired = isinstance(data, TokenizedExamples)
    if unpaired and parts:
        raise ValueError(f"sequence parts {parts} are defined for preference pairs only")
    sides = ("chosen", "rejected")
    fields = ("logps", "tokens") if unpaired else (*sides, "chosen_tokens", "rejected_tokens",
                                                   *(f"{side}_{part}" for part in parts for side in sides))
    out = {name: torch.full((len(data),), float("nan")) for name in fields}
    batches = length_sorted_batches(data, range(len(data)) if indices is None else indices,
                                    max_pairs=batch_size, max_tokens=max_tokens)
    mine, throwaway = (batches, 0) if ranks is None else ranks.share(batches)
    forward = forward or (lambda batch, parts: sequence_scores(model, batch, head_chunk=head_chunk, parts=parts))
    for k, idx in enumerate(track(mine + batches[:1] * throwaway, desc=desc, unit="batch", disable=len(mine) < 20)):
        scores = forward(example_batch(data, idx, pad_id) if unpaired else pair_batch(data, idx, pad_id), parts)
        if k >= len(mine):  # run only so that every rank runs as many forwards (FSDP)
            continue
        scores, n = {name: v.float().cpu() for name, v in scores.items()}, len(idx)
        where = torch.tensor(idx)
        if unpaired:
            out["logps"][where], out["tokens"][where] = scores["logps"], scores["tokens"]
            continue
        for name, field in (("logps", ""), ("tokens", "_tokens"), *((part, f"_{part}") for part in parts)):
            out[f"chosen{field}"][where], out[f"rejected{field}"][where] = scores[name][:n], scores[name][n:]
    model.train(was_training)
    return out if ranks is None else ranks.gather_pairs(out, [i for idx in mine for i in idx])


def length_sorted_batches(data: TokenizedPairs | TokenizedExamples, indices, *, max_pairs: int,
                          max_tokens: int | None) -> list[list[int]]:
    """Item indices grouped longest first; a batch's padded size (sequences x longest) <= max_tokens
    (a single item longer than the budget still gets its own batch). A pair is two sequences."""
    length = pair_lengths(data)
    per_item = 1 if isinstance(data, TokenizedExamples) else 2
    batches: list[list[int]] = []
    for i in sorted(set(indices), key=lambda i: (-length[i], i)):
        current = batches[-1] if batches else None
        fits = (current is not None and len(current) < max_pairs
                and (max_tokens is None or per_item * (len(current) + 1) * length[current[0]] <= max_tokens))
        if fits:
            current.append(i)
        else:
            batches.append([i])
    return batches
