"""Batches and completion log-probs (ablate/train/scoring.py) against a per-token loop on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from ablate.data.pairs import TokenizedPairs
from ablate.train.scoring import completion_logps, mismatched_batch, pad, pair_batch, score_pairs

PAD = 0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def pairs() -> TokenizedPairs:
    """Five pairs of different prompt / completion lengths (ids 1..19; 0 is padding)."""
    return TokenizedPairs(
        pair_ids=[f"p{i}" for i in range(5)],
        slices=["a", "b", None, "a", "b"],
        prompt_ids=[[1, 5, 6], [1, 7], [1, 8, 9, 10, 11], [1, 12, 13], [1, 14]],
        chosen_ids=[[3, 4, 2], [15, 2], [16, 17, 18, 2], [19, 2], [5, 6, 7, 8, 9, 2]],
        rejected_ids=[[4, 2], [3, 3, 3, 2], [17, 2], [13, 12, 2], [10, 2]],
    )


def manual_logp(model, prompt: list[int], completion: list[int]) -> float:
    """Σ_t log softmax(logits[t−1])[token_t] over completion positions t only, the sequence unpadded."""
    seq = prompt + completion
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()  # (T, V)
    total = 0.0
    for t in range(len(prompt), len(seq)):
        total += torch.log_softmax(logits[t - 1], -1)[seq[t]].item()
    return total


def test_pad_masks_completion_only():
    batch = pad([[1, 5], [1]], [[6, 2], [7, 8, 2]], PAD)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 8, 2]]
    batch = pad([[1, 5, 6], [1]], [[2], [7, 2]], PAD)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["completion_mask"].tolist() == [[False, False, False, True], [False, True, True, False]]


def test_completion_logps_equals_manual_loop(model, pairs):
    batch = pair_batch(pairs, [0, 1, 2], PAD)
    with torch.no_grad():
        logps, tokens = completion_logps(model, batch)
    completions = [pairs.chosen_ids[i] for i in (0, 1, 2)] + [pairs.rejected_ids[i] for i in (0, 1, 2)]
    prompts = [pairs.prompt_ids[i] for i in (0, 1, 2)] * 2
    expected = [manual_logp(model, p, c) for p, c in zip(prompts, completions, strict=True)]
    assert_close(logps, torch.tensor(expected, dtype=logps.dtype), atol=1e-5, rtol=1e-5)
    # chosen 3, 2, 4 tokens; rejected 2, 4, 2 (EOS included, prompt excluded)
    assert_close(tokens, torch.tensor([3.0, 2.0, 4.0, 2.0, 4.0, 2.0]))


def test_prompt_tokens_do_not_count(model):
    """Moving a token from the completion into the prompt removes exactly its log-prob from the sum."""
    prompt, completion = [1, 5, 6], [7, 8, 2]
    whole, _ = completion_logps(model, pad([prompt], [completion], PAD))
    shorter, n = completion_logps(model, pad([prompt + [7]], [[8, 2]], PAD))
    assert n.item() == 2
    with torch.no_grad():
        first = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1], -1)[7]
    assert_close(whole - shorter, first.reshape(1), atol=1e-5, rtol=1e-5)


def test_padding_invariance(model):
    short_prompt, short_completion = [1, 5], [6, 2]
    alone, _ = completion_logps(model, pad([short_prompt], [short_completion], PAD))
    batch = pad([short_prompt, [1, 9, 10, 11, 12]], [short_completion, [13, 14, 15, 16, 2]], PAD)
    assert batch["attention_mask"][0].sum() == 4 and batch["input_ids"].shape[1] == 10  # 6 padding positions
    batched, _ = completion_logps(model, batch)
    assert_close(batched[0], alone[0], atol=1e-5, rtol=0)


def test_pair_batch_is_chosen_then_rejected(pairs):
    batch = pair_batch(pairs, [3, 1], PAD)
    rows = [[t for t, m in zip(r, a, strict=True) if m] for r, a in zip(batch["input_ids"].tolist(),
                                                                   batch["attention_mask"].tolist(), strict=True)]
    assert rows == [
        pairs.prompt_ids[3] + pairs.chosen_ids[3],
        pairs.prompt_ids[1] + pairs.chosen_ids[1],
        pairs.prompt_ids[3] + pairs.rejected_ids[3],
        pairs.prompt_ids[1] + pairs.rejected_ids[1],
    ]
    assert batch["completion_mask"].sum(-1).tolist() == [2, 2, 3, 4]


def test_mismatched_batch_pairs_prompt_i_with_completions_of_i_plus_1(pairs):
    idx = [0, 2, 4]
    batch = mismatched_batch(pairs, idx, PAD)
    # prompts 0, 2, 4 with completions of 2, 4, 0 (wrapping), chosen first then rejected
    expected = [pairs.prompt_ids[i] + pairs.chosen_ids[j] for i, j in zip(idx, [2, 4, 0], strict=True)]
    expected += [pairs.prompt_ids[i] + pairs.rejected_ids[j] for i, j in zip(idx, [2, 4, 0], strict=True)]
    for row, mask, seq in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), expected, strict=True):
        assert row[: sum(mask)] == seq
    prompt_lengths = [len(pairs.prompt_ids[i]) for i in idx] * 2
    for mask, completion_mask, p in zip(batch["attention_mask"], batch["completion_mask"], prompt_lengths,
                                        strict=True):
        assert not completion_mask[:p].any()
        assert completion_mask[p : int(mask.sum())].all()


def partners(pairs, batch) -> list[int]:
    """Which pair's chosen completion follows each prompt of a KL batch (completions are unique per pair)."""
    found = []
    for row, mask, completion_mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(),
                                          batch["completion_mask"].tolist(), strict=True):
        completion = [t for t, m in zip(row[: sum(mask)], completion_mask, strict=False) if m]
        found.append(pairs.chosen_ids.index(completion) if completion in pairs.chosen_ids else -1)
    return found[: len(found) // 2]


@pytest.mark.parametrize(("idx", "expected"), [
    ([3], [4]),  # a batch of one pair: the next pair of the dataset
    ([4], [0]),  # ... wrapping around
    ([1, 1, 1], [2, 2, 2]),  # one pair repeated (batch larger than the data): still never its own
    ([0, 0, 3], [3, 3, 0]),  # a repeat skipped to the next different pair
])
def test_kl_batch_never_pairs_a_prompt_with_its_own_completion(pairs, idx, expected):
    found = partners(pairs, mismatched_batch(pairs, idx, PAD))
    assert found == expected and all(i != j for i, j in zip(idx, found, strict=True))


def test_kl_batch_needs_two_different_prompts(pairs):
    one = TokenizedPairs(pair_ids=pairs.pair_ids[:1], prompt_ids=pairs.prompt_ids[:1],
                         chosen_ids=pairs.chosen_ids[:1], rejected_ids=pairs.rejected_ids[:1])
    with pytest.raises(ValueError, match="at least two different prompts"):
        mismatched_batch(one, [0], PAD)
    same_prompt = TokenizedPairs(pair_ids=pairs.pair_ids[:2], prompt_ids=[pairs.prompt_ids[0]] * 2,
                                 chosen_ids=pairs.chosen_ids[:2], rejected_ids=pairs.rejected_ids[:2])
    with pytest.raises(ValueError, match="at least two different prompts"):  # two pairs, but one prompt
        mismatched_batch(same_prompt, [0, 1], PAD)


def test_score_pairs_keeps_dataset_order_across_batches(model, pairs):
    model.train()  # score_pairs must score in eval mode and restore the mode afterwards
    scores = score_pairs(model, pairs, batch_size=2, pad_id=PAD, desc="test")  # batches of 2, 2, 1
    assert model.training
    model.eval()
    expected_chosen = [manual_logp(model, p, c) for p, c in zip(pairs.prompt_ids, pairs.chosen_ids, strict=True)]
    expected_rejected = [manual_logp(model, p, r) for p, r in zip(pairs.prompt_ids, pairs.rejected_ids, strict=True)]
    assert_close(scores["chosen"], torch.tensor(expected_chosen, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert_close(scores["rejected"], torch.tensor(expected_rejected, dtype=torch.float32), atol=1e-5, rtol=1e-5)
    assert_close(scores["chosen_tokens"], torch.tensor([3.0, 2.0, 4.0, 2.0, 6.0]))
    assert_close(scores["rejected_tokens"], torch.tensor([2.0, 4.0, 2.0, 3.0, 2.0]))
    # the batch size changes nothing
    single = score_pairs(model, pairs, batch_size=16, pad_id=PAD, desc="test")
    for key in scores:
        assert_close(single[key], scores[key], atol=1e-5, rtol=1e-5)
