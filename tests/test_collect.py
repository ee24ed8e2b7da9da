"""The collector (ablate/collect/, ARCHITECTURE.md §3, §5, §6) on synthetic sweep directories (tests/sweep_fixtures.py).

Every held-out pair has an avglogp margin of exactly +1 (correct) or -1 (wrong), so accuracies and margins
are known by hand. Correct pairs are a PREFIX of each slice. The statistics (ablate.collect.stats) are
checked on hand-derived tables below, against scipy where they reduce to a textbook test, and by
simulation in tests/test_calibration.py.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import slowness
from scipy import stats
from sweep_fixtures import (
    GOLDEN_COUNTS,
    GOLDEN_SIZES,
    Cell,
    arm_label,
    corrupt_json,
    corrupt_jsonl_line,
    counts_table,
    data_stats,
    golden_sweep,
    grid_cells,
    large_sweep,
    pairs_table,
    prefix_correct,
    slice_layout,
    truncate_file,
    write_sweep,
)

from ablate.collect import collect, describe
from ablate.collect.stats import (
    contrast,
    equivalent,
    probability_of_improvement,
    seed_summary,
    seeds_to_resolve,
)
from ablate.config import select_config
from ablate.sweepdir.ledger import LEDGER

DPO8, DPO16 = arm_label("dpo", "8"), arm_label("dpo", "16")
SIMPO8, SIMPO16 = arm_label("simpo", "8"), arm_label("simpo", "16")
T975_DF2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)
Z975 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


def run(sweep_dir, *overrides):
    """Collect with the default rule, but max_seeds=3: a fixed 3-seed design spends the whole alpha at its first look,
    so the hand computations below are the single-look rule's (tests/test_sequential.py covers the looks).
    Each call is the sweep's first collection (the decision ledger is cleared): these tests apply several rules to
    one fixture sweep, which in real use would make every rule after the first exploratory."""
    overrides = overrides if any(o.startswith("max_seeds=") for o in overrides) else ("max_seeds=3", *overrides)
    (Path(sweep_dir) / LEDGER).unlink(missing_ok=True)
    return collect(sweep_dir, select_config(list(overrides)), plots=False)


def by_arm(summary) -> dict:
    return {a["arm"]: a for a in summary["arms"]}


def comparisons(decision) -> dict:
    return {c["arm"]: c for c in decision["comparisons"]}


# =============================================================================== golden 2x2x3 sweep
# GOLDEN_COUNTS (correct pairs out of 50 clean + 50 verbose_rejected, seeds 0, 1, 2):
#   dpo   r=8 : (44,40) (45,38) (43,39) -> 84 83 82 -> accuracy 0.84 0.83 0.82, mean 0.83, std 0.01
#   dpo   r=16: (45,40) (44,39) (46,41) -> 85 83 87 -> mean 0.85, std sqrt((0 + .02² + .02²)/2) = 0.02
#   simpo r=8 : (44,12) (43,12) (45,12) -> 56 55 57 -> mean 0.56, std 0.01
#   simpo r=16: (45,15) (44,18) (46,12) -> 60 62 58 -> mean 0.60, std 0.02
# Best arm: dpo r=16 (0.85). Every arm ran seeds 0-2, so comparisons are seed by seed (paired); the seed
# part of the variance is A = var(D)/3 with D the per-seed differences:
#   vs dpo r=8   : D = .01 .00 .05 -> mean .02, var(D) = (.01² + .02² + .03²)/2 = 7e-4; gain 2 pairs < 10
#   vs simpo r=8 : D = .29 .28 .30 -> mean .29, var(D) = 1e-4; gain 29 pairs
#   vs simpo r=16: D = .25 .21 .29 -> mean .25, var(D) = 16e-4; gain 25 pairs
# CI = mean ± sqrt(t(2)² A + z² B), B the held-out-pair part (pair_part below). Both simpo arms beaten
# decisively -> winner objective = dpo, decisive.
GOLDEN_ARMS = {  # arm -> (seed accuracies, mean, std)
    DPO8: ([0.84, 0.83, 0.82], 0.83, 0.01),
    DPO16: ([0.85, 0.83, 0.87], 0.85, 0.02),
    SIMPO8: ([0.56, 0.55, 0.57], 0.56, 0.01),
    SIMPO16: ([0.60, 0.62, 0.58], 0.60, 0.02),
}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The golden sweep, r=8 cells ending training with margins 2.0, r=16 with 3.0; collected once."""
    sweep_dir = golden_sweep(tmp_path_factory.mktemp("golden"), final_margin={"8": 2.0, "16": 3.0})
    return sweep_dir, run(sweep_dir)


def test_golden_cells_table(golden):
    sweep_dir, summary = golden
    table = pd.read_csv(sweep_dir / "report" / "cells.csv")
    for column in ["cell_id", "arm", "seed", "state", "objective", "lora.r", "heldout/avglogp_accuracy",
                   "heldout/clean/avglogp_accuracy", "heldout/verbose_rejected/avglogp_accuracy",
                   "heldout/logratio_margin", "heldout/chosen_logp_shift"]:
        assert column in table.columns, column
    expected = []
    for (objective, rank), per_seed in GOLDEN_COUNTS.items():
        for seed, (clean, verbose) in enumerate(per_seed):
            acc = (clean + verbose) / 100
            expected.append({
                "arm": arm_label(objective, rank), "seed": seed, "state": "done", "objective": objective,
                "lora.r": int(rank),
                "heldout/avglogp_accuracy": acc, "heldout/logratio_accuracy": acc,
                "heldout/clean/avglogp_accuracy": clean / 50,
                "heldout/verbose_rejected/avglogp_accuracy": verbose / 50,
                # margins ±1 (avglogp), ±10 (logratio), chosen shift ±1/2 -> means (2 acc - 1) x that
                "heldout/avglogp_margin": 2 * acc - 1, "heldout/logratio_margin": 10 * (2 * acc - 1),
                "heldout/chosen_logp_shift": (2 * acc - 1) / 2,
                "heldout/pairs": 100, "heldout/clean/pairs": 50,
            })  # fmt: skip
    expected = pd.DataFrame(expected)
    assert len(table) == 12
    got = table[expected.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, atol=1e-12)
    assert summary["cell_counts"] == {"done": 12}
    assert summary["complete"] is True
    assert summary["not_finished"] == [] and summary["problems"] == []
    assert summary["axes"] == {"objective": ["dpo", "simpo"], "lora.r": ["8", "16"]}


def test_golden_written_summary_is_the_returned_one(golden):
    sweep_dir, summary = golden
    written = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert written["winner"] == summary["winner"] == "dpo"
    assert written["decision"]["comparisons"] == summary["decision"]["comparisons"]


def pair_part(diff: np.ndarray, sizes: dict[str, int] = GOLDEN_SIZES, macro: bool = False) -> float:
    """B: per slice, W² (var over pairs of the seed-mean difference - interaction mean square / n) / P,
    floored at 0 (two-way ANOVA without replication, one table per slice), summed over slices."""
    total, start, n = 0.0, 0, diff.shape[0]
    for size in sizes.values():
        block = diff[:, start : start + size]
        start += size
        weight = 0.5 if macro else size / sum(sizes.values())
        resid = block - block.mean(1, keepdims=True) - block.mean(0, keepdims=True) + block.mean()
        interaction = (resid**2).sum() / ((n - 1) * (size - 1))
        total += weight**2 * max(block.mean(0).var(ddof=1) - interaction / n, 0) / size
    return total


def golden_matrix(key: tuple[str, str], counts=GOLDEN_COUNTS, sizes=GOLDEN_SIZES) -> np.ndarray:
    """(seeds x pairs) correctness of one golden arm, as the collector reads it from the parquet files."""
    return np.vstack([prefix_correct(dict(zip(sizes, c, strict=True)), sizes) for c in counts[key]]).astype(float)


def test_golden_arm_stats(golden):
    _, summary = golden
    arms = by_arm(summary)
    assert list(arms) == [DPO8, DPO16, SIMPO8, SIMPO16]  # sweep order
    estimates = summary["decision"]["arm_estimates"]
    for arm, (_, mean, std) in GOLDEN_ARMS.items():
        a = arms[arm]
        assert (a["cells"], a["done"], a["complete"], a["seeds"]) == (3, 3, True, [0, 1, 2])
        s = a["stats"]["heldout/avglogp_accuracy"]  # descriptive: mean ± std over seeds, no interval
        assert (s["n"], s["mean"], s["std"]) == pytest.approx((3, mean, std), abs=1e-12)
        assert set(s) == {"n", "mean", "std"}
        # the arm's CI: seed part std²/3 on t(2), pair part B on z
        key = tuple(v.split("=")[1] for v in arm.split())
        half = math.sqrt(T975_DF2**2 * std**2 / 3 + Z975**2 * pair_part(golden_matrix(key)))
        e = estimates[arm]
        assert (e["estimate"], e["seeds"], e["df"]) == pytest.approx((mean, 3, 2), abs=1e-12)
        assert (e["ci_low"], e["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-12)
        assert half > T975_DF2 * std / math.sqrt(3)  # wider than the seeds alone: held-out pairs are a sample too
    # per slice: dpo r=16 clean 45 44 46 -> 0.90 0.88 0.92, mean 0.90, std 0.02
    clean = arms[DPO16]["stats"]["heldout/clean/avglogp_accuracy"]
    assert (clean["mean"], clean["std"]) == pytest.approx((0.90, 0.02), abs=1e-12)
    assert arms[DPO16]["lora_r"] == 16 and arms[DPO16]["objective"] == "dpo"
    assert arms[DPO16]["axes"] == {"objective": "dpo", "lora.r": "16"}


def test_golden_decision(golden):
    _, summary = golden
    d = summary["decision"]
    assert summary["winner"] == d["winner"] == "dpo"
    assert summary["verdict"] == d["verdict"] == "decisive"
    assert summary["decisive"] is True and d["decisive"] is True
    assert d["scope"] == "all" and d["metric"] == "avglogp_accuracy" and d["factor"] == "objective"
    assert d["pairs"] == 100 and d["unfinished_arms"] == [] and d["reasons"] == []
    assert d["best_arm"] == DPO16
    assert d["point"] == pytest.approx({arm: v[1] for arm, v in GOLDEN_ARMS.items()}, abs=1e-12)
    comps = comparisons(d)
    assert list(comps) == [DPO8, SIMPO8, SIMPO16]
    best = golden_matrix(("dpo", "16"))
    expected = {  # arm: (difference, var(D), decisive)
        DPO8: (0.02, 7e-4, False),
        SIMPO8: (0.29, 1e-4, True),
        SIMPO16: (0.25, 16e-4, True),
    }
    for arm, (diff, var_d, decisive) in expected.items():
        comp = comps[arm]
        key = tuple(v.split("=")[1] for v in arm.split())
        half = math.sqrt(T975_DF2**2 * var_d / 3 + Z975**2 * pair_part(best - golden_matrix(key)))
        assert comp["difference"] == pytest.approx(diff, abs=1e-12)
        assert comp["extra_pairs"] == pytest.approx(diff * 100, abs=1e-9)
        assert (comp["paired"], comp["seeds"], comp["seed_values"], comp["df"]) == (True, 3, [0, 1, 2], 2)
        assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((diff - half, diff + half), abs=1e-12)
        assert comp["decisive"] is decisive
        # dpo r=16 .85 .83 .87 vs dpo r=8 .84 .83 .82: 3 + (1 + tie) + 3 of 9 seed pairs = 7.5 / 9
        assert comp["p_improvement"] == pytest.approx(1.0 if decisive else 7.5 / 9)
    assert comps[SIMPO8]["ci_low"] > 0 and comps[SIMPO16]["ci_low"] > 0 and comps[DPO8]["ci_low"] < 0
    assert d["seeds_needed"] is None
    assert "Decisive winner: objective = dpo" in summary["explanation"]
    assert summary["explanation"] == d["explanation"]


def test_golden_per_slice_decisions(golden):
    _, summary = golden
    assert set(summary["slices"]) == {"clean", "verbose_rejected"}
    # clean: dpo r=16 and simpo r=16 have identical clean pairs (45 44 46): no difference, and no variation at
    # all to estimate an interval from, so no CI (never a zero-width one) and no decisive winner
    clean = summary["slices"]["clean"]
    assert clean["pairs"] == 50 and clean["decisive"] is False and clean["winner"] is None
    assert clean["verdict"] == "not decisive"
    assert clean["point"][DPO16] == pytest.approx(0.90) and clean["point"][SIMPO16] == pytest.approx(0.90)
    same = comparisons(clean)[SIMPO16]
    assert same["difference"] == 0 and same["ci_low"] is None and same["decisive"] is False  # NaN -> null in JSON
    assert "No decisive winner" in clean["explanation"]
    # verbose_rejected: dpo r=16 40 39 41 (0.80) vs simpo 12 12 12 (0.24) / 15 18 12 (0.30): dpo decisively
    # (a secondary scope: the rule's conditions hold, but it is exploratory, never a decisive winner)
    verbose = summary["slices"]["verbose_rejected"]
    assert verbose["lead"] == "dpo" and verbose["verdict"] == "exploratory" and verbose["pairs"] == 50
    assert verbose["winner"] is None and verbose["decisive"] is False
    assert "secondary scope" in verbose["exploratory"] and "Exploratory lead: objective = dpo" in verbose["explanation"]
    assert verbose["point"][DPO16] == pytest.approx(0.80) and verbose["point"][SIMPO8] == pytest.approx(0.24)
    assert comparisons(verbose)[SIMPO8]["extra_pairs"] == pytest.approx(0.56 * 50)  # clean pairs not counted


# -------------------------------------------------------------------------------------- no winner
def test_two_pair_difference_is_not_decisive(tmp_path):
    # one rank, so the arms are objective=dpo / objective=simpo; every seed identical:
    # dpo (36, 36) = 72 %, simpo (35, 35) = 70 %: 2 extra pairs < min_extra_pairs = 10.
    counts = {("dpo", "8"): [(36, 36)] * 3, ("simpo", "8"): [(35, 35)] * 3}
    summary = run(write_sweep(tmp_path, grid_cells(counts)))
    d = summary["decision"]
    assert d["best_arm"] == "objective=dpo"
    assert d["winner"] is None and d["decisive"] is False and summary["winner"] is None
    assert d["verdict"] == "not decisive"
    (comp,) = d["comparisons"]
    assert comp["arm"] == "objective=simpo"
    assert comp["extra_pairs"] == pytest.approx(2.0)
    # identical seeds: no seed variance; per slice one pair in 50 differs (m = 1 there, 0 elsewhere, no
    # interaction): B = 2 x 0.5² x (1 x .98² + 49 x .02²)/49 / 50 = 2e-4 -> CI .02 ± 1.96 x .01414
    half = Z975 * math.sqrt(2e-4)
    assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-12)
    assert comp["ci_low"] < 0 and comp["decisive"] is False
    assert "No decisive winner" in summary["explanation"]
    assert "NOT beaten decisively" in summary["explanation"]
    # below the minimum gain, more seeds cannot make it decisive: no seed plan, a reason instead
    assert d["seeds_needed"]["seeds"] is None and "below the minimum gain" in d["seeds_needed"]["why"][0]


@pytest.mark.parametrize("best, other", [((40, 40), (35, 35)), ((45, 45), (40, 40)), ((50, 50), (45, 45)),
                                         ((48, 49), (43, 44)), ((47, 50), (37, 50))])
def test_gain_of_exactly_min_extra_pairs_is_decisive(tmp_path, best, other):
    # "the gain is at least min_extra_pairs held-out pairs" (ARCHITECTURE.md §6): dpo gets exactly 10 more of the
    # 100 pairs right than simpo on every seed (e.g. 80 vs 70, 100 vs 90); with identical seeds the CI is the
    # held-out-pair part alone, B <= 2 x 0.25 x (5 x .9² + 45 x .1²)/49 / 50 = 9.2e-4: CI low >= .1 - .06 > 0.
    counts = {("dpo", "8"): [best] * 3, ("simpo", "8"): [other] * 3}
    summary = run(write_sweep(tmp_path, grid_cells(counts)), "min_extra_pairs=10")
    (comp,) = summary["decision"]["comparisons"]
    assert comp["ci_low"] > 0
    assert comp["extra_pairs"] == pytest.approx(10.0)
    assert comp["decisive"] is True, f"10 extra pairs must meet min_extra_pairs=10 (got {comp['extra_pairs']!r})"
    assert summary["winner"] == "dpo"


# ------------------------------------------------------------------------------------- tie-break
# dpo r=8 equals dpo r=16 but for one verbose pair in seed 2 (46,40 vs 46,41): difference 1/300 with a 90%
# CI well inside ±0.03 -> EQUIVALENT (two one-sided tests), and it may take the place of r=16.
TIE_COUNTS = dict(GOLDEN_COUNTS) | {("dpo", "8"): [(45, 40), (44, 39), (46, 40)]}


def test_tie_break_prefers_an_equivalent_lower_rank_with_lower_margins(tmp_path):
    summary = run(write_sweep(tmp_path, grid_cells(TIE_COUNTS, final_margin={"8": 2.0, "16": 3.0})))
    d = summary["decision"]
    assert d["best_arm"] == DPO16
    comp = comparisons(d)[DPO8]
    assert comp["difference"] == pytest.approx(1 / 300) and comp["equivalent"] is True
    assert d["recommended_arm"] == DPO8
    assert DPO8 in d["tie_break"] and "equivalent" in d["tie_break"] and "lower rank" in d["tie_break"]
    assert "Tie-break:" in d["explanation"]
    assert d["winner"] == "dpo"  # the tie-break picks an arm, not another winner


def test_tie_break_recommends_a_lower_rank_only_if_it_beats_every_rival_itself(tmp_path):
    """dpo r=8 is equivalent to dpo r=16 (1 pair behind) with lower margins, but only 9 pairs ahead of simpo r=16
    (below min_extra_pairs = 10, which r=16 meets): recommending it would name an arm the evidence does not back."""
    counts = dict(GOLDEN_COUNTS) | {("dpo", "8"): [(44, 40), (44, 39), (45, 40)],
                                    ("simpo", "16"): [(40, 35), (39, 34), (41, 36)]}
    d = run(write_sweep(tmp_path, grid_cells(counts, final_margin={"8": 2.0, "16": 3.0})))["decision"]
    assert d["verdict"] == "decisive" and d["best_arm"] == DPO16
    assert comparisons(d)[DPO8]["equivalent"] is True
    assert d["recommended_arm"] == DPO16
    assert "does not itself beat objective=simpo lora.r=16 decisively" in d["tie_break"]


def test_tie_break_needs_equivalence_not_just_no_significant_difference(golden):
    # golden: dpo r=8 is 2 pairs behind dpo r=16 and NOT decisively worse, but its 90% CI reaches beyond
    # ±0.03: not shown to be equivalent, so the lower rank is not preferred (though its margins are lower)
    _, summary = golden
    d = summary["decision"]
    comp = comparisons(d)[DPO8]
    assert comp["decisive"] is False and comp["equivalent"] is False
    assert d["recommended_arm"] == DPO16 and d["tie_break"] is None


def test_tie_break_keeps_best_arm_when_lower_rank_margins_are_higher(tmp_path):
    summary = run(write_sweep(tmp_path, grid_cells(TIE_COUNTS, final_margin={"8": 4.0, "16": 3.0})))
    d = summary["decision"]
    assert d["best_arm"] == DPO16 and comparisons(d)[DPO8]["equivalent"] is True
    assert d["recommended_arm"] == DPO16
    assert d["tie_break"] is None
    assert "Tie-break" not in d["explanation"]


def test_tie_break_can_be_switched_off(tmp_path):
    sweep_dir = write_sweep(tmp_path, grid_cells(TIE_COUNTS, final_margin={"8": 2.0, "16": 3.0}))
    assert run(sweep_dir, "prefer_lower_rank=false")["decision"]["recommended_arm"] == DPO16
    assert run(sweep_dir, "equivalence_margin=null")["decision"]["recommended_arm"] == DPO16


# ==================================================================================== statistics
# One arm (or a paired difference against an all-zero arm), 3 seeds x 4 pairs, one slice:
#   X = [[4, 0, 2, 2],     per-seed means v = 2, 2, 1.5 -> estimate 11/6, var(v) = 1/12 -> A = 1/36
#        [4, 2, 0, 2],     per-pair means m = 4, 2/3, 2/3, 2 -> var(m) = 268/108 = 67/27
#        [4, 0, 0, 2]]     residual SS (x - row - column + grand)² = 14/3 over (3-1)(4-1) = 6 df -> MS_E = 7/9
#   B = (var(m) - MS_E/3) / 4 = (67/27 - 7/27) / 4 = 5/9;   CI = 11/6 ± sqrt(t(2)² A + z² B)
HAND = np.array([[4, 0, 2, 2], [4, 2, 0, 2], [4, 0, 0, 2]], dtype=float)
ONE_SLICE = (np.array(["s"] * 4), {"s": 1.0})


def test_contrast_on_a_hand_derived_table():
    half = math.sqrt(T975_DF2**2 / 36 + Z975**2 * 5 / 9)
    for result in (contrast([HAND], [1.0], *ONE_SLICE, 0.05, paired=False),
                   contrast([HAND, np.zeros_like(HAND)], [1.0, -1.0], *ONE_SLICE, 0.05, paired=True)):
        assert result["estimate"] == pytest.approx(11 / 6, abs=1e-12)
        assert (result["seed_var"], result["pair_var"]) == pytest.approx((1 / 36, 5 / 9), abs=1e-12)
        assert result["one_seed_var"] == pytest.approx(1 / 12, abs=1e-12)
        assert (result["ci_low"], result["ci_high"]) == pytest.approx((11 / 6 - half, 11 / 6 + half), abs=1e-12)
        assert result["se"] == pytest.approx(math.sqrt(1 / 36 + 5 / 9)) and result["df"] == 2


def test_contrast_without_pair_variation_is_the_paired_t_interval():
    # each seed shifts every pair alike: no pair effect, no interaction -> B = 0 and the CI is scipy's paired t
    a = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4], [0.95, 0.85, 0.75], [0.7, 0.6, 0.5]])
    b = a - np.array([[0.1], [0.05], [0.2], [0.12]])
    result = contrast([a, b], [1.0, -1.0], np.array(["s"] * 3), {"s": 1.0}, 0.1, paired=True)
    d = a.mean(1) - b.mean(1)
    low, high = stats.t.interval(0.9, 3, loc=d.mean(), scale=stats.sem(d))
    assert result["pair_var"] == pytest.approx(0, abs=1e-15)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high), abs=1e-12)


def test_contrast_unpaired_uses_each_arms_seed_variance_and_the_fewest_seeds():
    a = np.array([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5]])  # per seed 1, 0, .5: var .25
    b = np.array([[0.2, 0.2], [0.4, 0.4]])  # per seed .2 .4: var .02
    result = contrast([a, b], [1.0, -1.0], np.array(["s"] * 2), {"s": 1.0}, 0.05, paired=False)
    assert result["estimate"] == pytest.approx(0.5 - 0.3)
    assert result["seed_var"] == pytest.approx(0.25 / 3 + 0.02 / 2)
    assert result["one_seed_var"] == pytest.approx(0.27) and result["seeds"] == 2 and result["df"] == 1


def test_contrast_gives_no_interval_without_replication_or_without_variation():
    one_seed = contrast([HAND[:1], HAND[1:2]], [1.0, -1.0], *ONE_SLICE, 0.05, paired=True)
    assert one_seed["seeds"] == 1 and math.isnan(one_seed["ci_low"]) and math.isnan(one_seed["se"])
    same = contrast([HAND, HAND], [1.0, -1.0], *ONE_SLICE, 0.05, paired=True)
    assert same["estimate"] == 0 and math.isnan(same["ci_low"])  # never a zero-width [0, 0]


def test_a_perfectly_separated_comparison_has_no_interval_that_rounds_to_zero_width():
    """Weighted sums of 0/1 outcomes leave float dust (variance ~1e-30): that is no variation, not a CI
    like [0.9999999999999957, 1.0000000000000064]."""
    pairs = 300
    strata = np.array(["clean"] * 100 + ["verbose_rejected"] * 200)
    weights = {"clean": 1 / 3, "verbose_rejected": 2 / 3}
    rng = np.random.default_rng(0)
    best, rival = np.ones((3, pairs)), np.zeros((3, pairs))
    for seed in range(3):  # every seed of the rival gets 37 + 81 pairs right, each seed other ones
        rival[seed, rng.permutation(100)[:37]] = 1
        rival[seed, 100 + rng.permutation(200)[:81]] = 1
    result = contrast([best, rival], [1.0, -1.0], strata, weights, 0.05, paired=True)
    assert 0 < result["seed_var"] < 1e-30 and result["pair_var"] == 0  # float dust only (here it once gave a CI)
    assert result["estimate"] == pytest.approx(1 - (37 / 100 / 3 + 81 / 200 * 2 / 3))
    assert math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])


def test_contrast_weighs_slices_as_the_scope_says():
    x = np.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    strata = np.array(["a", "a", "b", "b", "b", "b"])
    assert contrast([x], [1.0], strata, {"a": 2 / 6, "b": 4 / 6}, 0.05, False)["estimate"] == pytest.approx(1 / 3)
    assert contrast([x], [1.0], strata, {"a": 0.5, "b": 0.5}, 0.05, False)["estimate"] == pytest.approx(0.5)


def test_equivalence_is_two_one_sided_tests():
    # estimate 0.01, seed part only (B = 0): 90% CI 0.01 ± t(3, .95) se
    result = {"estimate": 0.01, "se": 0.005, "df": 3.0, "seed_var": 0.005**2, "pair_var": 0.0}
    half = stats.t.ppf(0.95, 3) * 0.005  # 0.01177
    assert equivalent(result, 0.03, 0.05) is True  # [-0.0018, 0.0218] inside ±0.03
    assert equivalent(result, 0.02, 0.05) is False and 0.01 + half > 0.02
    assert equivalent(result, None, 0.05) is None
    assert equivalent(result | {"se": math.nan}, 0.03, 0.05) is None


def test_probability_of_improvement_counts_seed_pairs_and_half_ties():
    assert probability_of_improvement([0.8, 0.7], [0.6, 0.7]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert probability_of_improvement([0.1], [0.9]) == 0.0


def test_seeds_to_resolve_matches_the_paired_t_test_power():
    # paired t-test, effect size d = 1 (effect 1, sd 1), alpha .05, power .8: n = 10 (power .803; n = 9: .759)
    assert seeds_to_resolve(1.0, 1.0, 0.0, 0.05, 0.8) == 10
    power_9 = stats.nct.sf(stats.t.ppf(0.975, 8), 8, 3.0)
    assert power_9 < 0.8
    assert seeds_to_resolve(0.5, 1.0, 0.0, 0.05, 0.8) > 10  # smaller effects need more
    assert seeds_to_resolve(0.01, 1.0, 0.0, 0.05, 0.8) is None  # > 100 seeds
    assert seeds_to_resolve(0.05, 1e-6, 0.01, 0.05, 0.8) is None  # held-out pairs, not seeds, are the limit


def test_seed_summary_is_descriptive():
    summary = seed_summary([0.71, 0.64, None, float("nan"), 0.69])
    assert summary == pytest.approx({"n": 3, "mean": np.mean([0.71, 0.64, 0.69]),
                                     "std": np.std([0.71, 0.64, 0.69], ddof=1)})
    assert math.isnan(seed_summary([0.5])["std"]) and seed_summary([])["n"] == 0


# ======================================================================================== scopes
# Two arms, one rank, three identical seeds; clean has 20 pairs, verbose_rejected 80:
#   dpo  : clean 20/20 (1.0), verbose 40/80 (0.5) -> all pairs 60/100 = 0.60, macro (1.0 + 0.5)/2 = 0.75
#   simpo: clean 10/20 (0.5), verbose 64/80 (0.8) -> all pairs 74/100 = 0.74, macro (0.5 + 0.8)/2 = 0.65
SCOPE_SIZES = {"clean": 20, "verbose_rejected": 80}
SCOPE_COUNTS = {("dpo", "8"): [(20, 40)] * 3, ("simpo", "8"): [(10, 64)] * 3}


@pytest.fixture(scope="module")
def scope_sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("scopes"), grid_cells(SCOPE_COUNTS, sizes=SCOPE_SIZES))


def test_scope_all_pairs(scope_sweep):
    d = run(scope_sweep)["decision"]
    assert d["scope"] == "all" and d["pairs"] == 100
    assert d["point"] == pytest.approx({"objective=dpo": 0.60, "objective=simpo": 0.74})
    assert d["best_arm"] == "objective=simpo"
    (comp,) = d["comparisons"]
    assert comp["difference"] == pytest.approx(0.14) and comp["decisive"] is True


def test_scope_macro_weighs_slices_equally(scope_sweep):
    d = run(scope_sweep, "slice=macro")["decision"]
    assert d["scope"] == "macro"
    assert d["point"] == pytest.approx({"objective=dpo": 0.75, "objective=simpo": 0.65})
    assert d["best_arm"] == "objective=dpo"


def test_scope_one_slice_uses_only_its_pairs(scope_sweep):
    summary = run(scope_sweep, "slice=clean")
    d = summary["decision"]
    assert d["scope"] == "clean" and d["pairs"] == 20
    assert d["point"] == pytest.approx({"objective=dpo": 1.0, "objective=simpo": 0.5})
    assert d["best_arm"] == "objective=dpo"
    (comp,) = d["comparisons"]
    # 10 clean pairs right for dpo only (the verbose ones are out of scope). Identical seeds: no seed part;
    # per-pair difference m = 0 (10 pairs), 1 (10 pairs): var(m) = 20 x .5²/19 = 5/19, one slice -> B = 5/19/20
    assert comp["extra_pairs"] == pytest.approx(10.0)
    half = Z975 * math.sqrt(5 / 19 / 20)
    assert (comp["ci_low"], comp["ci_high"]) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-12)
    assert "clean pairs" in d["explanation"]
    assert "clean" not in summary["slices"] and set(summary["slices"]) == {"all", "verbose_rejected"}
    other = run(scope_sweep, "slice=verbose_rejected")["decision"]
    assert other["pairs"] == 80 and other["best_arm"] == "objective=simpo"
    assert other["point"] == pytest.approx({"objective=dpo": 0.5, "objective=simpo": 0.8})


def test_scope_unknown_slice_raises_naming_known_slices(scope_sweep):
    with pytest.raises(ValueError, match="nonexistent") as error:
        run(scope_sweep, "slice=nonexistent")
    assert "clean" in str(error.value) and "verbose_rejected" in str(error.value)


def test_margin_metric_uses_min_margin_gain_not_extra_pairs(scope_sweep):
    # logratio margin per pair = ±10: dpo 10 (2 x 0.60 - 1) = 2.0, simpo 10 (2 x 0.74 - 1) = 4.8; gain 2.8
    d = run(scope_sweep, "metric=logratio_margin")["decision"]
    assert d["point"] == pytest.approx({"objective=dpo": 2.0, "objective=simpo": 4.8})
    (comp,) = d["comparisons"]
    assert "extra_pairs" not in comp
    assert comp["difference"] == pytest.approx(2.8)
    assert comp["ci_low"] > 0 and comp["decisive"] is True and d["winner"] == "simpo"
    d = run(scope_sweep, "metric=logratio_margin", "min_margin_gain=3.0")["decision"]
    (comp,) = d["comparisons"]
    assert comp["ci_low"] > 0 and comp["decisive"] is False and d["winner"] is None  # 2.8 <= 3.0
    d = run(scope_sweep, "metric=logratio_margin", "min_margin_gain=2.5")["decision"]
    assert d["decisive"] is True


def test_unknown_metric_raises(scope_sweep):
    with pytest.raises(ValueError, match="select.metric"):
        run(scope_sweep, "metric=rewards_accuracy")


# =================================================================================== diagnostics
def test_overoptimisation_flags_rising_train_margin_with_falling_heldout(tmp_path):
    # train margins rise 0.1 .. 1.0 over steps 10..100: first half (<= 50) mean 0.3, second half 0.8.
    # Held-out accuracy at step 50 = final + 0.05 ("falling") or final - 0.05 ("rising").
    table = counts_table({"clean": 40, "verbose_rejected": 30}, GOLDEN_SIZES)  # final accuracy 0.70
    cells = [
        Cell(["objective=dpo", "seed=0"], table, heldout_trend="falling"),  # flagged
        Cell(["objective=simpo", "seed=0"], table, heldout_trend="rising"),  # not flagged
        Cell(["objective=dpo", "seed=1"], table, heldout_trend="falling",  # train margins fall: not flagged
             train_margins=[1.0 - 0.1 * i for i in range(10)]),
    ]
    summary = run(write_sweep(tmp_path, cells))
    rows = {(r["arm"], r["seed"]): r for r in summary["diagnostics"]["overoptimisation"]}
    falling, rising, shrinking = rows[("objective=dpo", 0)], rows[("objective=simpo", 0)], rows[("objective=dpo", 1)]
    assert falling["flagged"] is True
    assert falling["train_margin_first_half"] == pytest.approx(0.3)
    assert falling["train_margin_second_half"] == pytest.approx(0.8)
    assert falling["heldout_mid_step"] == 50
    assert (falling["heldout_mid"], falling["heldout_final"]) == pytest.approx((0.75, 0.70))
    assert rising["flagged"] is False
    assert (rising["heldout_mid"], rising["heldout_final"]) == pytest.approx((0.65, 0.70))
    assert shrinking["flagged"] is False
    assert [r["flagged"] for r in summary["diagnostics"]["overoptimisation"]].count(True) == 1


def test_length_artifacts(tmp_path):
    table = counts_table({"clean": 40, "verbose_rejected": 30}, GOLDEN_SIZES)
    cells = [Cell(["objective=dpo", "seed=0"], table), Cell(["objective=simpo", "seed=0"], table)]
    # imbalance = share(chosen longer) - share(chosen shorter): +0.5, -0.65, +0.1, +0.5 (one-sided, like
    # the embedded task: half the chosen answers padded, none shortened)
    data = [data_stats("verbose", longer=0.7, shorter=0.2), data_stats("terse", longer=0.1, shorter=0.75),
            data_stats("balanced", longer=0.45, shorter=0.35), data_stats("one-sided", longer=0.5, shorter=0.0)]
    sweep_dir = write_sweep(tmp_path, cells, data)
    findings = run(sweep_dir)["diagnostics"]["length"]
    assert [f["data"] for f in findings] == ["verbose", "terse", "balanced", "one-sided"]
    assert findings[0]["verdict"].startswith("verbosity") and "70%" in findings[0]["verdict"]
    assert findings[1]["verdict"].startswith("brevity") and "75%" in findings[1]["verdict"]
    assert findings[2]["verdict"].startswith("no systematic")  # +0.1 is within the default 0.2
    assert findings[3]["verdict"].startswith("verbosity")
    assert findings[0]["chosen_longer_share"] == 0.7 and findings[1]["pairs"] == 200
    assert findings[1]["length_imbalance"] == pytest.approx(-0.65)
    lowered = run(sweep_dir, "length_imbalance=0.05")["diagnostics"]["length"]
    assert lowered[2]["verdict"].startswith("verbosity")


def test_chosen_logp_shift_diagnostic(golden):
    _, summary = golden
    rows = summary["diagnostics"]["chosen_logp_shift"]
    assert len(rows) == 12
    # shift = (2 acc - 1) / 2 > 0 for every golden cell; simpo r=8 seed 1: (2 x 0.55 - 1)/2 = 0.05
    row = next(r for r in rows if r["arm"] == SIMPO8 and r["seed"] == 1)
    assert row["chosen_logp_shift"] == pytest.approx(0.05) and row["falling"] is False


def test_factorial_effects_of_a_2x2(golden):
    # Arm means (accuracy): dpo r=8 0.83, dpo r=16 0.85, simpo r=8 0.56, simpo r=16 0.60.
    #   objective simpo vs dpo: (0.56 + 0.60)/2 - (0.83 + 0.85)/2 = 0.58 - 0.84 = -0.26
    #   lora.r 16 vs 8       : (0.85 + 0.60)/2 - (0.83 + 0.56)/2 = 0.725 - 0.695 = +0.03
    #   interaction          : (simpo - dpo at r=16) - (simpo - dpo at r=8) = (0.60 - 0.85) - (0.56 - 0.83) = +0.02
    _, summary = golden
    factorial = summary["diagnostics"]["factorial"]
    assert factorial["factors"] == ["objective", "lora.r"]
    main = {e["factor"]: e for e in factorial["main_effects"]}
    assert (main["objective"]["level"], main["objective"]["versus"]) == ("simpo", "dpo")
    assert (main["lora.r"]["level"], main["lora.r"]["versus"]) == ("16", "8")
    assert main["objective"]["effect"] == pytest.approx(-0.26, abs=1e-12)
    assert main["lora.r"]["effect"] == pytest.approx(0.03, abs=1e-12)
    (interaction,) = factorial["interactions"]
    assert interaction["factors"] == ["objective", "lora.r"]
    assert interaction["effect"] == pytest.approx(0.02, abs=1e-12)
    for effect in [*main.values(), interaction]:
        assert effect["ci_low"] <= effect["effect"] <= effect["ci_high"]
    assert main["objective"]["excludes_zero"] is True and main["objective"]["ci_high"] < 0


def test_factorial_effects_have_no_ci_when_an_arm_has_one_seed(partial):
    # every corner has a finished seed, but dpo r=16 only one: effects are estimated, without an interval
    _, summary = partial
    factorial = summary["diagnostics"]["factorial"]
    assert len(factorial["main_effects"]) == 2 and len(factorial["interactions"]) == 1
    for effect in [*factorial["main_effects"], *factorial["interactions"]]:
        assert effect["ci_low"] is None and effect["excludes_zero"] is False and effect["seeds"] == 1
    assert "no CI" in factorial["note"]


def test_factorial_effects_absent_when_a_corner_has_no_finished_seed(tmp_path):
    cells = [c for c in grid_cells(GOLDEN_COUNTS) if c.overrides[:2] != ["objective=simpo", "lora.r=16"]]
    summary = run(write_sweep(tmp_path, cells))
    factorial = summary["diagnostics"]["factorial"]
    assert factorial["main_effects"] == [] and factorial["interactions"] == []
    assert "every combination" in factorial["note"]


# ======================================================================== partial and broken sweeps
@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The golden sweep with: dpo r=16 seed 0 done at 100 % (would win if counted), seed 1 failed,
    seed 2 still running; simpo r=8 seed 2 never started (in sweep.json, no directory)."""
    cells = grid_cells(GOLDEN_COUNTS)
    by_key = {tuple(c.overrides): c for c in cells}
    by_key[("objective=dpo", "lora.r=16", "seed=0")].pairs = counts_table({"clean": 50, "verbose_rejected": 50},
                                                                          GOLDEN_SIZES)
    failed = by_key[("objective=dpo", "lora.r=16", "seed=1")]
    failed.state, failed.error = "failed", "NonFiniteLoss: loss is nan (objective dpo, lr 0.002)"
    by_key[("objective=dpo", "lora.r=16", "seed=2")].state = "running"
    by_key[("objective=simpo", "lora.r=8", "seed=2")].on_disk = False
    sweep_dir = write_sweep(tmp_path_factory.mktemp("partial"), cells)
    return sweep_dir, run(sweep_dir)


def test_partial_sweep_lists_unfinished_cells(partial):
    _, summary = partial
    states = {(r["arm"], r["state"]): r for r in summary["not_finished"]}
    assert set(states) == {(DPO16, "failed"), (DPO16, "running"), (SIMPO8, "missing")}
    assert states[(DPO16, "failed")]["error"].startswith("NonFiniteLoss")
    assert states[(DPO16, "running")]["error"] is None
    assert summary["complete"] is False
    assert summary["cell_counts"] == {"done": 9, "failed": 1, "running": 1, "missing": 1}
    arms = by_arm(summary)
    assert (arms[DPO16]["cells"], arms[DPO16]["done"], arms[DPO16]["complete"]) == (3, 1, False)
    assert (arms[DPO16]["failed"], arms[DPO16]["unfinished"]) == (1, 1)
    assert (arms[SIMPO8]["cells"], arms[SIMPO8]["done"], arms[SIMPO8]["complete"]) == (3, 2, False)
    assert arms[DPO16]["stats"]["heldout/avglogp_accuracy"]["mean"] == pytest.approx(1.0)  # its one done cell


def test_partial_sweep_is_undetermined_not_decided_without_its_best_arm(partial):
    # dpo r=16 has ONE finished seed (at 100 %): it is compared (and is the best arm so far), never left out,
    # but one seed says nothing about the variance between training runs -> undetermined, with a plan
    _, summary = partial
    d = summary["decision"]
    assert d["verdict"] == summary["verdict"] == "undetermined" and d["winner"] is None and d["decisive"] is False
    assert set(d["point"]) == {DPO8, DPO16, SIMPO8, SIMPO16}
    assert d["best_arm"] == DPO16 and d["too_few_seeds"] == [DPO16, SIMPO8]
    assert d["unfinished_arms"] == [DPO16, SIMPO8] and d["failed_arms"] == [DPO16]
    assert any("min_seeds" in r and DPO16 in r for r in d["reasons"])
    assert "Undetermined" in summary["explanation"]
    assert d["seeds_needed"]["seeds"] == 3 and d["seeds_needed"]["current"] == 1
    assert "seed=0,1,2" in d["seeds_needed"]["command"]
    for scope in summary["slices"].values():
        assert scope["verdict"] == "undetermined"


def test_nothing_done_is_reported_not_raised(tmp_path):
    cells = [Cell(["objective=dpo", "seed=0"], state="running"), Cell(["objective=simpo", "seed=0"], on_disk=False)]
    summary = run(write_sweep(tmp_path, cells))
    assert summary["winner"] is None and summary["decisive"] is False and summary["verdict"] == "undetermined"
    assert "nothing to compare" in summary["explanation"]
    assert {r["state"] for r in summary["not_finished"]} == {"running", "missing"}


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The golden sweep with a torn metrics.json (dpo r=8 seed 0), half a heldout_pairs.parquet
    (simpo r=16 seed 1) and a torn line 2 in eval_log.jsonl (dpo r=16 seed 2)."""
    sweep_dir = golden_sweep(tmp_path_factory.mktemp("broken"))
    cells = {tuple(c.overrides): c.cell_id for c in grid_cells(GOLDEN_COUNTS)}
    paths = {
        "metrics": sweep_dir / "cells" / cells[("objective=dpo", "lora.r=8", "seed=0")] / "metrics.json",
        "parquet": sweep_dir / "cells" / cells[("objective=simpo", "lora.r=16", "seed=1")] / "heldout_pairs.parquet",
        "eval_log": sweep_dir / "cells" / cells[("objective=dpo", "lora.r=16", "seed=2")] / "eval_log.jsonl",
    }
    corrupt_json(paths["metrics"])
    truncate_file(paths["parquet"])
    corrupt_jsonl_line(paths["eval_log"], 2)
    return sweep_dir, paths, run(sweep_dir)


def test_broken_files_are_reported_by_name(broken):
    _, paths, summary = broken
    files = [p["file"] for p in summary["problems"]]
    assert any(f == str(paths["metrics"]) for f in files), files
    assert any(f == str(paths["parquet"]) for f in files), files
    assert any(f == f"{paths['eval_log']}:2" for f in files), files
    assert all(p["problem"] for p in summary["problems"])
    assert {p["cell_id"] for p in summary["problems"]} == {paths[k].parent.name for k in paths}


def test_broken_files_make_their_arms_undetermined_not_dropped(broken):
    sweep_dir, paths, summary = broken
    # the torn metrics.json makes its cell "corrupt"; the half parquet leaves a finished cell unreadable
    (row,) = summary["not_finished"]
    assert row["arm"] == DPO8 and row["state"] == "corrupt"
    d = summary["decision"]
    assert d["verdict"] == "undetermined" and d["winner"] is None and d["decisive"] is False
    missing = [r for r in d["reasons"] if r.startswith("evidence missing")]
    assert len(missing) == 2 and DPO8 in missing[0] and SIMPO16 in missing[1]
    assert paths["parquet"].parent.name in missing[1]
    assert set(d["point"]) == {DPO16, SIMPO8}  # what can be read is still shown
    assert d["seeds_needed"] is None  # no number of seeds repairs an unreadable file
    assert "evidence missing for" in summary["explanation"]
    # the cell with a torn eval_log line keeps its two other evaluations (steps 0 and 100)
    rows = {r["cell_id"]: r for r in summary["diagnostics"]["overoptimisation"]}
    assert rows[paths["eval_log"].parent.name]["heldout_mid_step"] == 0
    json.loads((sweep_dir / "report" / "summary.json").read_text())  # valid JSON (no NaN)


def test_each_broken_file_is_reported_once(broken):
    # the report lists summary["problems"] for a reviewer; the same torn file should appear once,
    # not once per decision scope (all pairs + each slice)
    _, paths, summary = broken
    files = [p["file"] for p in summary["problems"]]
    assert files.count(str(paths["parquet"])) == 1, files


def test_cell_with_other_heldout_pairs_makes_its_arm_undetermined(tmp_path):
    # The FIRST cell of the sweep (dpo r=8 seed 0) was evaluated on other held-out pairs (ids q0000..): it
    # cannot be paired with the others. It is reported (once), and its arm's evidence is incomplete, so no
    # winner is named; the 11 cells that agree on their pairs are still compared and shown.
    cells = grid_cells(GOLDEN_COUNTS)
    odd = cells[0]
    odd.pairs = odd.pairs.assign(pair_id=[f"q{i:04d}" for i in range(100)])
    summary = run(write_sweep(tmp_path, cells))
    flagged = {p["cell_id"] for p in summary["problems"]}
    assert flagged == {odd.cell_id}, f"{len(flagged)} cells reported as not comparable"
    assert all(p["file"].endswith("heldout_pairs.parquet") for p in summary["problems"])
    d = summary["decision"]
    assert d["verdict"] == "undetermined" and d["winner"] is None
    assert any(DPO8 in r and "other held-out pairs" in r for r in d["reasons"])
    assert set(d["point"]) == {DPO16, SIMPO8, SIMPO16}


def test_non_finite_pair_values_are_reported_not_scored(tmp_path):
    # one chosen log-prob is NaN in simpo r=8 seed 1: its metrics.json still looks fine, but the pair must
    # not be scored as a wrong answer: the arm's evidence is incomplete -> undetermined, and reported
    cells = grid_cells(GOLDEN_COUNTS)
    bad = next(c for c in cells if c.overrides == ["objective=simpo", "lora.r=8", "seed=1"])
    bad.pairs = bad.pairs.copy()
    bad.pairs.loc[3, "chosen_logp"] = float("nan")
    sweep_dir = write_sweep(tmp_path, cells)
    metrics = json.loads((sweep_dir / "cells" / bad.cell_id / "metrics.json").read_text())
    summary = run(sweep_dir)
    d = summary["decision"]
    assert d["verdict"] == "undetermined" and d["winner"] is None
    assert any(SIMPO8 in r and "non-finite" in r for r in d["reasons"])
    assert any(p["cell_id"] == bad.cell_id and "non-finite" in p["problem"] for p in summary["problems"])
    assert "heldout/avglogp_accuracy" in metrics  # (what the trainer wrote is not what is trusted)


# ============================================================================================ CLI
def test_cli_prints_the_explanation(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    out = subprocess.run([sys.executable, "-m", "ablate.collect", str(sweep_dir), "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert summary["explanation"] in out.stdout
    assert "Decisive winner: objective = dpo" in out.stdout
    assert "slice verbose_rejected (exploratory): exploratory lead dpo (not a decisive claim)" in out.stdout
    assert not (sweep_dir / "report" / "report.html").exists()


def test_cli_passes_select_overrides(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    out = subprocess.run([sys.executable, "-m", "ablate.collect", str(sweep_dir), "slice=clean", "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "on clean pairs" in out.stdout and "No decisive winner" in out.stdout
    assert json.loads((sweep_dir / "report" / "summary.json").read_text())["select"]["slice"] == "clean"


# ==================================================================================== performance
@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """7 objectives x 4 ranks x 6 learning rates x 6 seeds = 1008 cells, 600 held-out pairs each."""
    return large_sweep(tmp_path_factory.mktemp("large"))


def test_collect_1000_cells_within_5_seconds(large):
    # CPU time of this process: on an idle machine it is the wall time (the collector runs on one
    # thread), and unlike the wall time it does not count the waits a busy shared CI node adds.
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = run(large)
    elapsed = time.process_time() - cpu_started
    print(f"\ncollect() of {summary['cell_counts']['done']} cells x 600 pairs: {elapsed:.2f} s CPU, "
          f"{time.perf_counter() - started:.2f} s wall")
    assert summary["cell_counts"] == {"done": 1008}
    assert len(summary["arms"]) == 168 and summary["decision"]["pairs"] == 600
    # obj6 has the highest correctness rate (0.79 + 0.005 lr index): the winner
    assert summary["decision"]["best_arm"].startswith("objective=obj6")
    bound = 5.0 * slowness()  # 5 s on the core the bound was set on (tests/conftest.py)
    assert elapsed <= bound, f"collect() took {elapsed:.2f} s for 1008 cells (bound here: {bound:.1f} s)"


# ------------------------------------------------------------------------------ failed cells count
def test_a_failed_seed_never_turns_a_comparison_decisive(tmp_path):
    """One of four seeds of an arm failed (a NaN, say): whatever the rest shows, the verdict is undetermined with
    the cell named, until it is rerun or the user counts it as the worst outcome (select.failed_cells=worst).
    The old rule compared the arm on its three finished seeds: a recipe whose bad seed diverged looked better."""
    rng = np.random.default_rng(7)
    ids, slices = slice_layout({"clean": 100, "verbose_rejected": 100})
    for sweep in range(8):
        cells = []
        for objective, skill in (("dpo", 0.2), ("simpo", 0.2 + 0.15 * (sweep % 2))):
            for seed in range(4):
                failed = objective == "dpo" and seed == sweep % 4
                overrides = [f"objective={objective}", f"seed={seed}"]
                if failed:
                    cells.append(Cell(overrides, state="failed", error="NonFiniteLoss: step 40: loss is nan",
                                      extra_status={"failed_step": 40}))
                else:
                    margins = skill + rng.normal(0, 0.3, 200) + rng.normal(0, 0.05)  # pairs + this seed
                    cells.append(Cell(overrides, pairs=pairs_table(margins, slices, ids)))
        summary = run(write_sweep(tmp_path / f"s{sweep}", cells))
        d = summary["decision"]
        assert d["verdict"] == "undetermined" and summary["winner"] is None
        (cell,) = d["not_finished_cells"]
        assert cell["arm"] == "objective=dpo" and cell["seed"] == sweep % 4
        assert "failed at step 40: NonFiniteLoss" in cell["what"] and "rerun: " in summary["explanation"]
        assert all(s["verdict"] == "undetermined" for s in summary["slices"].values())
        worst = run(tmp_path / f"s{sweep}", "failed_cells=worst")
        assert worst["decision"]["verdict"] != "undetermined"  # decided, with the failed seed counted
        assert worst["winner"] in (None, "simpo")  # the arm with the failure can only lose by it


def test_what_the_seeds_can_exclude(tmp_path):
    """Per arm: failed and collapsed seeds, and the upper bound on the rate of runs gone wrong (rule of three)."""
    from scipy.stats import beta

    ids, slices = slice_layout({"clean": 50, "verbose_rejected": 50})
    good = pairs_table(np.full(100, 1.0), slices, ids)  # every pair right
    half = pairs_table(np.r_[np.full(50, 1.0), np.full(50, -1.0)], slices, ids)  # accuracy 0.5: collapsed
    cells = [Cell(["objective=dpo", f"seed={s}"], pairs=good) for s in range(3)]
    cells += [Cell(["objective=simpo", f"seed={s}"], pairs=half if s == 1 else good) for s in range(3)]
    cells += [Cell(["objective=simpo", "seed=3"], state="failed", error="NonFiniteLoss")]
    summary = run(write_sweep(tmp_path, cells), "failed_cells=worst")
    rows = {r["arm"]: r for r in summary["diagnostics"]["seed_outcomes"]}
    dpo, simpo = rows["objective=dpo"], rows["objective=simpo"]
    assert (dpo["seeds"], dpo["gone_wrong"]) == (3, 0)
    assert dpo["rate_upper"] == pytest.approx(1 - 0.05 ** (1 / 3))  # 0.632: three good seeds exclude little
    assert (simpo["failed_seeds"], simpo["collapsed_seeds"], simpo["seeds"]) == ([3], [1], 4)
    assert simpo["rate_upper"] == pytest.approx(beta.ppf(0.95, 3, 2))
    out = describe(summary)
    assert "runs gone wrong" in out and "objective=simpo 2 of 4" in out


def test_extra_pairs_is_a_count_under_macro_weighting(tmp_path):
    """Under slice=macro the difference is a mean of slice means; "extra pairs" stays the number of pairs."""
    sizes = {"clean": 100, "verbose_rejected": 10}
    counts = {"dpo": {"clean": 80, "verbose_rejected": 9}, "simpo": {"clean": 70, "verbose_rejected": 1}}
    cells = [Cell([f"objective={o}", f"seed={s}"], pairs=counts_table(counts[o], sizes))
             for o in counts for s in range(3)]
    summary = run(write_sweep(tmp_path, cells), "slice=macro")
    (comparison,) = summary["decision"]["comparisons"]
    assert comparison["difference"] == pytest.approx(0.5 * 0.10 + 0.5 * 0.80)  # slices weigh the same
    assert comparison["extra_pairs"] == pytest.approx((80 + 9) - (70 + 1))  # 18 pairs, not 0.45 x 110


def test_a_one_pair_slice_under_macro_weighting_adds_variance():
    """Macro weighting gives a 1-pair slice half the weight; its variance, not estimable on its own, is borrowed
    from the scope's pooled pair variance instead of being skipped (which made the CI too narrow)."""
    rng = np.random.default_rng(3)
    strata = np.array(["big"] * 100 + ["tiny"])
    easy_for_a, easy_for_b = rng.random(101), rng.random(101)  # each arm has its own easy and hard pairs
    a, b = ((rng.random((3, 101)) < p).astype(float) for p in (easy_for_a, easy_for_b))
    macro = contrast([a, b], [1.0, -1.0], strata, {"big": 0.5, "tiny": 0.5}, 0.05, paired=True)
    big_only = contrast([a[:, :100], b[:, :100]], [1.0, -1.0], strata[:100], {"big": 0.5}, 0.05, paired=True)
    assert big_only["pair_var"] > 0  # what the tiny slice added before: nothing beyond this
    assert macro["pair_var"] > big_only["pair_var"] * 10  # weight 0.5 on ONE pair: most of the variance
