"""The lean log-prob path (LM head on completion positions only, chunked, recomputed in backward)
against the straightforward full-logits computation it replaced: values and gradients, for every
objective, with and without LoRA on every linear layer."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from ablate.data.pairs import TokenizedPairs
from ablate.train.objectives import OBJECTIVES, SequenceLogps
from ablate.train.scoring import check_lean_head, completion_logps, mismatched_batch, pair_batch, sequence_scores

PAD = 0


def naive_completion_logps(model, batch):
    """The pre-lean implementation: LM head over every position, an fp32 copy of all logits."""
    input_ids = batch["input_ids"]
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = batch["completion_mask"][:, 1:]
    token_logps = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1).float()


def naive_sequence_scores(model, batch):
    """The full-logits computation with LD-DPO's tails and WPO's weights (rows: chosen, then rejected)."""
    input_ids = batch["input_ids"]
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    mask = batch["completion_mask"][:, 1:]
    log_probs = logits.log_softmax(-1)
    token_logps = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask
    n = mask.sum(-1)
    shared = torch.minimum(*n.chunk(2)).repeat(2)
    tail = (token_logps * (mask.cumsum(-1) > shared.unsqueeze(-1))).sum(-1)
    aligned = (token_logps.detach() - (2 * log_probs.detach()).logsumexp(-1)) * mask
    return {"logps": token_logps.sum(-1), "tokens": n.float(), "tail": tail,
            "wpo_weight": torch.exp(aligned.sum(-1) / n)}


def tiny_llama(vocab: int = 40) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=64, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def with_lora(model):
    """LoRA on every linear layer, B initialised non-zero so that every adapter weight gets a gradient."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(1)
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


@pytest.fixture
def pairs() -> TokenizedPairs:
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(3, 40, (n,), generator=g).tolist()

    lengths = [(4, 3, 5), (7, 6, 2), (2, 9, 4), (5, 2, 2)]  # prompt, chosen, rejected
    return TokenizedPairs(
        pair_ids=[f"p{i}" for i in range(4)], slices=[None] * 4,
        prompt_ids=[[1, *ids(p)] for p, _, _ in lengths],
        chosen_ids=[[*ids(c), 2] for _, c, _ in lengths],
        rejected_ids=[[*ids(r), 2] for _, _, r in lengths],
    )  # fmt: skip


def objective_loss(objective, logps_fn, model, pairs, idx):
    """The trainer's per-micro-batch loss for `objective`, log-probs computed by `logps_fn`."""
    scores = logps_fn(model, pair_batch(pairs, idx, PAD), objective.sequence_parts)
    logps, tokens = scores["logps"], scores["tokens"]
    b = len(idx)
    inputs = dict(chosen=logps[:b], rejected=logps[b:], chosen_tokens=tokens[:b], rejected_tokens=tokens[b:])
    for part in objective.sequence_parts:
        inputs |= {f"chosen_{part}": scores[part][:b], f"rejected_{part}": scores[part][b:]}
    if "tail" in objective.sequence_parts:
        inputs |= dict(ref_chosen_tail=scores["tail"].detach()[:b] * 0.5, ref_rejected_tail=scores["tail"].detach()[b:])
    # Reference and KL terms carry no gradient; fixed values isolate the policy's log-probs.
    g = torch.Generator().manual_seed(5)
    if objective.uses_reference:
        inputs |= dict(ref_chosen=logps.detach()[:b] + torch.randn(b, generator=g),
                       ref_rejected=logps.detach()[b:] + torch.randn(b, generator=g))
    if objective.needs_kl_batch:
        with torch.no_grad():
            kl = logps_fn(model, mismatched_batch(pairs, idx, PAD), ())["logps"]
        inputs |= dict(kl_policy=kl, kl_reference=kl - 0.3)
    hparams = {k: v for k, v in dataclasses.asdict(objective.schema()).items() if k != "name"}  # defaults
    return objective(SequenceLogps(**inputs), **hparams).losses.mean()


def values_and_grads(objective, logps_fn, model, pairs):
    model.zero_grad(set_to_none=True)
    loss = objective_loss(objective, logps_fn, model, pairs, [0, 1, 2, 3])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), grads


@pytest.mark.parametrize("adapter", ["none", "lora-all-linear"])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_lean_equals_naive_values_and_gradients(name, adapter, pairs):
    model = tiny_llama()
    if adapter != "none":
        model = with_lora(model)
    model.train()
    objective = OBJECTIVES[name]
    naive_loss, naive_grads = values_and_grads(objective, lambda m, b, parts: naive_sequence_scores(m, b), model,
                                               pairs)
    lean_loss, lean_grads = values_and_grads(
        objective, lambda m, b, parts: sequence_scores(m, b, head_chunk=5, parts=parts), model, pairs)
    assert_close(lean_loss, naive_loss, atol=1e-5, rtol=1e-5)
    assert lean_grads.keys() == naive_grads.keys()
    nonzero = 0
    for key in naive_grads:
        assert_close(lean_grads[key], naive_grads[key], atol=1e-5, rtol=1e-5, msg=key)
        nonzero += bool(naive_grads[key].abs().sum() > 0)
    assert nonzero >= len(naive_grads) // 2  # the comparison is not between zeros


def test_chunk_size_changes_nothing(pairs):
    model = with_lora(tiny_llama())
    batch = pair_batch(pairs, [0, 1, 2, 3], PAD)
    results = []
    for chunk in (1, 7, 4096):
        model.zero_grad(set_to_none=True)
        logps, tokens = completion_logps(model, batch, head_chunk=chunk)
        logps.sum().backward()
        results.append((logps.detach(), tokens, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    for logps, tokens, grads in results[1:]:
        assert_close(logps, results[0][0], atol=1e-6, rtol=1e-6)
        assert torch.equal(tokens, results[0][1])
        for g, g0 in zip(grads, results[0][2], strict=True):
            assert_close(g, g0, atol=1e-6, rtol=1e-6)


def test_head_sees_completion_positions_only_in_chunks(pairs):
    """No (N, T, V) logits: the LM head's inputs are the completion-predicting rows, chunk by chunk."""
    model = tiny_llama()
    seen = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    batch = pair_batch(pairs, [0, 1, 2, 3], PAD)
    logps, tokens = completion_logps(model, batch, head_chunk=8)
    completion_positions = int(batch["completion_mask"].sum())
    assert sum(rows for rows, _ in seen) == completion_positions == int(tokens.sum())
    assert all(len(shape) == 2 and shape[0] <= 8 for shape in seen)
    assert batch["input_ids"].numel() > 2 * completion_positions  # prompt and padding were skipped
    seen.clear()
    logps.sum().backward()  # recomputed in backward, chunk by chunk again
    assert sum(rows for rows, _ in seen) == completion_positions and max(r for r, _ in seen) <= 8


def test_no_grad_scoring_equals_naive(pairs):
    model = with_lora(tiny_llama()).eval()
    batch = pair_batch(pairs, [2, 0, 3], PAD)
    with torch.no_grad():
        lean, lean_tokens = completion_logps(model, batch, head_chunk=3)
        naive, naive_tokens = naive_completion_logps(model, batch)
        with model.disable_adapter():  # the reference: the same model without its adapter
            ref_lean, _ = completion_logps(model, batch)
            ref_naive, _ = naive_completion_logps(model, batch)
    assert_close(lean, naive, atol=1e-5, rtol=1e-5)
    assert_close(ref_lean, ref_naive, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lean, ref_lean)  # the adapter is active outside the context
    assert torch.equal(lean_tokens, naive_tokens)


def test_sequence_parts_equal_the_full_logits_computation(pairs):
    """LD-DPO's tails and WPO's weights from the lean path equal a full-logits computation written from the papers'
    definitions (tail: completion tokens past min(n_w, n_l); weight: exp mean_t [log p(y_t) − log Σ_v p(v)²]);
    the tails carry the gradient the full computation gives, the weights none."""
    model = with_lora(tiny_llama())
    batch = pair_batch(pairs, [0, 1, 2, 3], PAD)
    lean = sequence_scores(model, batch, head_chunk=5, parts=("tail", "wpo_weight"))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    log_probs = logits.log_softmax(-1)
    labels, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:]
    token = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    tails, weights = [], []
    for row in range(len(labels)):
        partner = (row + len(labels) // 2) % len(labels)
        shared = min(int(mask[row].sum()), int(mask[partner].sum()))
        positions = mask[row].nonzero().flatten().tolist()
        tails.append(sum((token[row, t] for t in positions[shared:]), torch.tensor(0.0)))
        aligned = [token[row, t].detach() - torch.log((log_probs[row, t].exp() ** 2).sum()).detach() for t in positions]
        weights.append(torch.exp(sum(aligned) / len(positions)))
    tails, weights = torch.stack(tails), torch.stack(weights)
    assert_close(lean["tail"], tails, atol=1e-5, rtol=1e-5)
    assert_close(lean["wpo_weight"], weights, atol=1e-5, rtol=1e-5)
    assert (tails != 0).any() and (tails == 0).any()  # some completions have a tail, the shorter ones none
    assert not lean["wpo_weight"].requires_grad
    params = [p for p in model.parameters() if p.requires_grad]
    for ours, theirs in zip(torch.autograd.grad(lean["tail"].sum(), params, retain_graph=True),
                            torch.autograd.grad(tails.sum(), params), strict=True):
        assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_logit_softcapping_families_match_their_forward(pairs):
    """Gemma 2 soft-caps its logits after the head; the lean path applies the same transform."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=8, intermediate_size=32, final_logit_softcapping=0.5,
                          pad_token_id=PAD)  # a small cap so that it matters
    model = Gemma2ForCausalLM(config).eval()
    batch = pair_batch(pairs, [0, 1], PAD)
    with torch.no_grad():
        assert_close(completion_logps(model, batch)[0], naive_completion_logps(model, batch)[0],
                     atol=1e-5, rtol=1e-5)
    check_lean_head(model)


def test_check_lean_head_refuses_a_forward_it_does_not_reproduce():
    class ScaledLogits(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    model = tiny_llama()
    check_lean_head(model)  # a plain Llama passes
    odd = ScaledLogits(model.config).eval()
    with pytest.raises(ValueError, match="computes logits differently"):
        check_lean_head(odd)


@pytest.mark.parametrize(("autocast", "dtype"), [(False, torch.float32), (True, torch.float32),
                                               (False, torch.bfloat16)])
def test_frozen_head_backward_equals_autograd(autocast, dtype):
    """The hand-written head backward (frozen nn.Linear, LoRA's case) against autograd through the same
    forward: values and hidden-state gradients, with a bias, under bf16 autocast, and for a bf16 model."""
    from ablate.train.scoring import _FrozenHeadLogps, _token_logps

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).requires_grad_(False).to(dtype)
    hidden = torch.randn(9, 16, generator=g).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 50, (9,), generator=g)
    weights = torch.randn(9, generator=g)  # an upstream gradient that is not all ones
    results = []
    for fused in (True, False):
        hidden.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = _FrozenHeadLogps.apply(hidden, head.weight, head.bias, labels) if fused \
                else _token_logps(head, None, hidden, labels)
        (out * weights).sum().backward()
        results.append((out.detach(), hidden.grad.clone()))
    tolerance = dict(atol=2e-2, rtol=2e-2) if autocast or dtype != torch.float32 else dict(atol=1e-6, rtol=1e-6)
    assert_close(results[0][0], results[1][0], **tolerance)
    assert_close(results[0][1], results[1][1], **tolerance)
    assert results[0][1].abs().sum() > 0
