"""The data order (ablate/train/data_order.py): batches from (seed, step) only, every pair once per epoch,
and trainer.group_by_length cutting padding without breaking either."""

from __future__ import annotations

import random

import pytest

from ablate.data.pairs import TokenizedPairs
from ablate.train.data_order import MEGA_BATCH, DataOrder, pair_lengths
from ablate.train.scoring import pair_batch


def skewed_pairs(n: int, seed: int = 0) -> TokenizedPairs:
    """Mostly short pairs, one in ten long: the shape of real preference data (long tail)."""
    rng = random.Random(seed)

    def ids(lo: int, hi: int) -> list[int]:
        return [rng.randrange(1, 100) for _ in range(rng.randint(lo, hi))]

    long = [rng.random() < 0.1 for _ in range(n)]
    return TokenizedPairs(pair_ids=[f"p{i}" for i in range(n)], slices=[None] * n,
                          prompt_ids=[ids(100, 300) if x else ids(10, 40) for x in long],
                          chosen_ids=[ids(50, 200) if x else ids(5, 30) for x in long],
                          rejected_ids=[ids(50, 200) if x else ids(5, 30) for x in long])


def padding_share(data: TokenizedPairs, order: DataOrder, steps: int) -> float:
    """Share of the positions of the training forwards (2B right-padded sequences per step) that are padding."""
    masks = [pair_batch(data, order.batch(step), pad_id=0)["attention_mask"] for step in range(1, steps + 1)]
    return 1 - sum(m.sum().item() for m in masks) / sum(m.numel() for m in masks)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_step_batch_depends_on_seed_and_step_only(grouped):
    data = skewed_pairs(300)
    lengths = pair_lengths(data) if grouped else None
    forward = DataOrder(300, 4, seed=7, lengths=lengths)
    in_order = [forward.batch(step) for step in range(1, 200)]
    backward = DataOrder(300, 4, seed=7, lengths=lengths)  # a resumed run asks for late steps first
    assert [backward.batch(step) for step in reversed(range(1, 200))][::-1] == in_order
    assert DataOrder(300, 4, seed=8, lengths=lengths).batch(1) != in_order[0]


def test_without_grouping_the_order_is_the_one_cells_always_had():
    # recorded from the DataOrder of ablate/train/trainer.py before the key existed: old cells replay exactly
    order = DataOrder(20, 6, seed=3)
    assert [order.batch(1), order.batch(4)] == [[4, 6, 8, 17, 0, 2], [15, 11, 11, 0, 15, 10]]


@pytest.mark.parametrize(("n", "batch_size"), [(300, 4), (301, 4), (1000, 8)])
def test_grouped_order_visits_every_pair_once_per_epoch(n, batch_size):
    order = DataOrder(n, batch_size, seed=0, lengths=pair_lengths(skewed_pairs(n)))
    epochs = 3
    steps = -(-epochs * n // batch_size)
    drawn = [i for step in range(1, steps + 1) for i in order.batch(step)]
    for epoch in range(epochs):
        assert sorted(drawn[epoch * n : (epoch + 1) * n]) == list(range(n))
    # a different permutation each epoch, as without grouping
    assert drawn[:n] != drawn[n : 2 * n]


def test_grouped_mega_batches_are_sorted_and_hold_the_same_pairs_as_the_plain_order():
    data = skewed_pairs(1000)
    lengths = pair_lengths(data)
    plain, grouped = DataOrder(1000, 4, seed=1), DataOrder(1000, 4, seed=1, lengths=lengths)
    size = MEGA_BATCH * 4
    for start in range(0, 1000, size):
        steps = range(start // 4 + 1, (start + size) // 4 + 1)
        mine = [i for s in steps for i in grouped.batch(s)]
        assert sorted(mine) == sorted(i for s in steps for i in plain.batch(s))
        assert [lengths[i] for i in mine] == sorted((lengths[i] for i in mine), reverse=True)


def test_visited_is_what_the_grouped_steps_use():
    order = DataOrder(300, 4, seed=2, lengths=pair_lengths(skewed_pairs(300)))
    visited = order.visited(20)
    assert visited == list(dict.fromkeys(i for step in range(1, 21) for i in order.batch(step)))
    assert len(visited) == 80 and sorted(order.visited(75)) == list(range(300))
    assert set(visited) != set(DataOrder(300, 4, seed=2).visited(20))  # grouping decides which pairs come first


def test_grouping_cuts_padding_on_skewed_lengths():
    data = skewed_pairs(2000)
    plain = padding_share(data, DataOrder(2000, 8, seed=0), steps=250)
    grouped = padding_share(data, DataOrder(2000, 8, seed=0, lengths=pair_lengths(data)), steps=250)
    assert plain > 0.5  # one long pair in most batches of 8 pads the other seven
    assert grouped < plain / 3, (plain, grouped)


def test_lengths_must_match_the_pairs():
    with pytest.raises(ValueError, match="3 lengths for 4 pairs"):
        DataOrder(4, 2, seed=0, lengths=[1, 2, 3])
