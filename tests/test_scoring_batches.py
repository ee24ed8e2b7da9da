"""No-grad scoring batches sized by tokens and sorted by length, and reference log-probs scored
only for the training pairs a run visits: per-pair results unchanged."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from test_lean_logps import PAD, tiny_llama
from torch.testing import assert_close

from ablate.data.pairs import TokenizedPairs
from ablate.train.data_order import DataOrder
from ablate.train.scoring import completion_logps, length_sorted_batches, pair_batch, score_pairs
from ablate.train.shared import reference_logps


@pytest.fixture(scope="module")
def model():
    return tiny_llama().eval()


@pytest.fixture(scope="module")
def pairs() -> TokenizedPairs:
    g = torch.Generator().manual_seed(11)

    def ids(lo, hi):
        return torch.randint(3, 40, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    n = 13
    return TokenizedPairs(pair_ids=[f"p{i}" for i in range(n)], slices=[None] * n,
                          prompt_ids=[[1, *ids(1, 12)] for _ in range(n)],
                          chosen_ids=[[*ids(1, 10), 2] for _ in range(n)],
                          rejected_ids=[[*ids(1, 10), 2] for _ in range(n)])


def padded_length(pairs, i):
    return len(pairs.prompt_ids[i]) + max(len(pairs.chosen_ids[i]), len(pairs.rejected_ids[i]))


def test_batches_cover_each_pair_once_longest_first_within_budget(pairs):
    batches = length_sorted_batches(pairs, [5, 3, 3, *range(13)], max_pairs=4, max_tokens=60)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(13))  # duplicates in the request are scored once
    lengths = [padded_length(pairs, i) for i in flat]
    assert lengths == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) <= 4
        padded = 2 * len(b) * max(padded_length(pairs, i) for i in b)
        assert padded <= 60 or len(b) == 1
    assert len(batches) > 13 // 4  # the token budget, not only the pair cap, split them


def test_token_budget_and_sorting_change_no_pair_result(model, pairs):
    alone = {}
    with torch.no_grad():
        for i in range(len(pairs)):
            logps, tokens = completion_logps(model, pair_batch(pairs, [i], PAD))
            alone[i] = (logps, tokens)
    for max_pairs, max_tokens in [(16, None), (3, 50), (16, 1)]:
        scores = score_pairs(model, pairs, batch_size=max_pairs, pad_id=PAD, desc="t", max_tokens=max_tokens)
        for i in range(len(pairs)):
            assert_close(scores["chosen"][i], alone[i][0][0], atol=1e-5, rtol=1e-5)
            assert_close(scores["rejected"][i], alone[i][0][1], atol=1e-5, rtol=1e-5)
            assert scores["chosen_tokens"][i] == alone[i][1][0] and scores["rejected_tokens"][i] == alone[i][1][1]


def test_scoring_a_subset_leaves_the_rest_nan(model, pairs):
    full = score_pairs(model, pairs, batch_size=4, pad_id=PAD, desc="t", max_tokens=64)
    some = score_pairs(model, pairs, batch_size=4, pad_id=PAD, desc="t", max_tokens=64, indices=[7, 2, 9])
    for key, values in some.items():
        assert torch.isnan(values).sum() == len(pairs) - 3
        assert_close(values[[2, 7, 9]], full[key][[2, 7, 9]], atol=1e-5, rtol=1e-5)


def test_data_order_visits_exactly_the_planned_pairs():
    order = DataOrder(20, 6, seed=3)
    visited = order.visited(2)
    assert sorted(visited) == sorted(set(order.batch(1) + order.batch(2))) and len(visited) == 12
    assert sorted(order.visited(4)) == list(range(20))  # 24 draws: a full epoch and a bit


def test_reference_scores_only_visited_pairs_and_keys_the_file_by_them(model, pairs, tmp_path):
    cfg = OmegaConf.create({"model": {"kind": "test"}, "data": {"kind": "test"},
                            "trainer": {"eval_batch_size": 4}, "engine": {"head_chunk": 64, "eval_batch_tokens": 64}})
    some = reference_logps(cfg, "train", pairs, model, PAD, tmp_path, indices=[0, 4, 5])
    assert (~torch.isnan(some["chosen"])).nonzero().flatten().tolist() == [0, 4, 5]
    everything = reference_logps(cfg, "train", pairs, model, PAD, tmp_path, indices=list(range(len(pairs)))[::-1])
    assert not torch.isnan(everything["chosen"]).any()
    files = sorted(tmp_path.glob("reference-train-*.pt"))
    assert len(files) == 2  # a subset file and the full one
    reference_logps(cfg, "train", pairs, model, PAD, tmp_path)  # all pairs: the same file as the full plan
    assert sorted(tmp_path.glob("reference-train-*.pt")) == files
    again = reference_logps(cfg, "train", pairs, model, PAD, tmp_path, indices=[5, 0, 4])  # same set, any order
    assert torch.equal(again["chosen"].nan_to_num(), some["chosen"].nan_to_num())
    assert sorted(tmp_path.glob("reference-train-*.pt")) == files
