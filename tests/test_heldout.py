"""Objective-neutral held-out metrics (ablate/data/heldout.py, docs/ARCHITECTURE.md §5) on a hand-built table.

S = summed completion log-prob, n = completion tokens, ref = reference, w = chosen, l = rejected;
chosen shift = (S_w − S_w^ref)/n_w.

  row slice  S_w  S_w^ref  S_l  S_l^ref  n_w n_l | logratio margin          | avglogp margin        | chosen shift
  0   a      -4   -6       -8   -7       2   4   | (2) − (−1)   =  3  ✓     | −2 − (−2)   = 0    ✗  | 2/2  =  1
  1   a      -6   -5       -3   -4       3   1   | (−1) − (1)   = −2  ✗     | −2 − (−3)   = 1    ✓  | −1/3
  2   b      -5   -6       -7   -8       5   2   | (1) − (1)    =  0  tie   | −1 − (−3.5) = 2.5  ✓  | 1/5  =  0.2
  3   b      -2   -4       -9   -9       4   3   | (2) − (0)    =  2  ✓     | −0.5 − (−3) = 2.5  ✓  | 2/4  =  0.5
  4   None   -9   -8       -4   -5       2   2   | (−1) − (1)   = −2  ✗     | −4.5 − (−2) = −2.5 ✗  | −1/2 = −0.5

Overall (5 pairs): logratio_margin = (3 − 2 + 0 + 2 − 2)/5 = 0.2; logratio_accuracy = 2/5 = 0.4
(the tie is not correct); logratio_ties = 1; avglogp_margin = (0 + 1 + 2.5 + 2.5 − 2.5)/5 = 0.7;
avglogp_accuracy = 3/5 = 0.6 (row 0's exact 0 is not correct);
chosen_logp_shift = (1 − 1/3 + 0.2 + 0.5 − 0.5)/5 = (1.2 − 1/3)/5 = 13/75.
Slice a (rows 0, 1): margin (3 − 2)/2 = 0.5; accuracy 1/2; ties 0; avglogp margin (0 + 1)/2 = 0.5;
avglogp accuracy 1/2; shift (1 − 1/3)/2 = 1/3.
Slice b (rows 2, 3): margin (0 + 2)/2 = 1; accuracy 1/2; ties 1; avglogp margin 2.5; avglogp
accuracy 1; shift (0.2 + 0.5)/2 = 0.35.
Row 4 has no slice: it counts in the overall metrics only.
"""

from __future__ import annotations

import pandas as pd
import pytest
from torch.testing import assert_close

from ablate.data.heldout import PAIR_COLUMNS, heldout_metrics, pair_outcomes


def table() -> pd.DataFrame:
    rows = [
        ("p0", "a", -4.0, -8.0, 2, 4, -6.0, -7.0),
        ("p1", "a", -6.0, -3.0, 3, 1, -5.0, -4.0),
        ("p2", "b", -5.0, -7.0, 5, 2, -6.0, -8.0),
        ("p3", "b", -2.0, -9.0, 4, 3, -4.0, -9.0),
        ("p4", None, -9.0, -4.0, 2, 2, -8.0, -5.0),
    ]
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


EXPECTED = {
    "heldout/pairs": 5,
    "heldout/logratio_margin": 0.2,
    "heldout/logratio_accuracy": 0.4,
    "heldout/logratio_ties": 1,
    "heldout/avglogp_margin": 0.7,
    "heldout/avglogp_accuracy": 0.6,
    "heldout/chosen_logp_shift": 13 / 75,
    "heldout/a/pairs": 2,
    "heldout/a/logratio_margin": 0.5,
    "heldout/a/logratio_accuracy": 0.5,
    "heldout/a/logratio_ties": 0,
    "heldout/a/avglogp_margin": 0.5,
    "heldout/a/avglogp_accuracy": 0.5,
    "heldout/a/chosen_logp_shift": 1 / 3,
    "heldout/b/pairs": 2,
    "heldout/b/logratio_margin": 1.0,
    "heldout/b/logratio_accuracy": 0.5,
    "heldout/b/logratio_ties": 1,
    "heldout/b/avglogp_margin": 2.5,
    "heldout/b/avglogp_accuracy": 1.0,
    "heldout/b/chosen_logp_shift": 0.35,
}


def test_every_metric_matches_hand_derivation():
    metrics = heldout_metrics(table())
    assert set(metrics) == set(EXPECTED)  # no heldout/None/... for the untagged row
    for key, expected in EXPECTED.items():
        assert_close(float(metrics[key]), float(expected), msg=key)


def test_counts_are_integers():
    metrics = heldout_metrics(table())
    for key in ("heldout/pairs", "heldout/logratio_ties", "heldout/b/logratio_ties", "heldout/a/pairs"):
        assert isinstance(metrics[key], int), key


def test_pair_outcomes_per_pair():
    outcomes = pair_outcomes(table())
    assert outcomes.logratio_margin.tolist() == [3.0, -2.0, 0.0, 2.0, -2.0]
    assert outcomes.logratio_correct.tolist() == [True, False, False, True, False]
    assert outcomes.logratio_tie.tolist() == [False, False, True, False, False]
    assert_close(outcomes.avglogp_margin.tolist(), [0.0, 1.0, 2.5, 2.5, -2.5])
    assert outcomes.avglogp_correct.tolist() == [False, True, True, True, False]
    assert_close(outcomes.chosen_logp_shift.tolist(), [1.0, -1 / 3, 0.2, 0.5, -0.5])


def test_untagged_pairs_change_only_overall_metrics():
    without_untagged = heldout_metrics(table().iloc[:4])
    with_untagged = heldout_metrics(table())
    for key, value in without_untagged.items():
        if key.startswith(("heldout/a/", "heldout/b/")):
            assert with_untagged[key] == value, key
    assert with_untagged["heldout/pairs"] == without_untagged["heldout/pairs"] + 1


@pytest.mark.parametrize("empty_slice", [None, float("nan")])
def test_no_slices_gives_only_overall_metrics(empty_slice):
    pairs = table().assign(slice=empty_slice)
    metrics = heldout_metrics(pairs)
    assert set(metrics) == {k for k in EXPECTED if k.count("/") == 1}
    assert_close(metrics["heldout/logratio_margin"], 0.2)
