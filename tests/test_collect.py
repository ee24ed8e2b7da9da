"""The collector (ablate/collect/, DESIGN §3, §5, §6) on synthetic sweep directories (tests/sweep_fixtures.py).

Every held-out pair has an avglogp margin of exactly +1 (correct) or -1 (wrong), so accuracies, margins,
discordance tables and McNemar p-values are derived by hand below. Correct pairs are a PREFIX of each
slice: with a and b correct pairs of one slice in two cells, that slice contributes max(a - b, 0)
"A right, B wrong" pairs and max(b - a, 0) "B right, A wrong" pairs to McNemar's table.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from math import comb

import numpy as np
import pandas as pd
import pytest
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
    truncate_file,
    write_sweep,
)

from ablate.collect import collect, select_config
from ablate.collect.stats import PairBootstrap, holm, mcnemar_exact, percentile_ci, seed_ci

DPO8, DPO16 = arm_label("dpo", "8"), arm_label("dpo", "16")
SIMPO8, SIMPO16 = arm_label("simpo", "8"), arm_label("simpo", "16")
T975_DF2 = 4.302652729749462  # scipy.stats.t.ppf(0.975, 2)


def run(sweep_dir, *overrides):
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
# Best arm: dpo r=16 (0.85). Seeds are paired in sorted order for McNemar:
#   vs dpo r=8   : clean 45/44 +1, 44/45 -1, 46/43 +3; verbose 40/40 0, 39/38 +1, 41/39 +2 -> b=7, c=1
#                  p = 2 (C(8,0) + C(8,1)) / 2^8 = 18/256 = 0.0703125; gain 0.02 = 2 pairs < 10: not decisive
#   vs simpo r=8 : clean +1 +1 +1; verbose 28 27 29 -> b=87, c=0, p = 2 / 2^87 = 2^-86; gain 0.29 = 29 pairs
#   vs simpo r=16: clean 0 0 0; verbose 25 21 29 -> b=75, c=0, p = 2 / 2^75 = 2^-74; gain 0.25 = 25 pairs
# Holm (m=3): 2^-86 * 3, then max(that, 2^-74 * 2) = 2^-73, then max(2^-73, 0.0703125 * 1) = 0.0703125.
# Both simpo arms beaten decisively -> winner objective = dpo, decisive.
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


def test_golden_arm_stats(golden):
    _, summary = golden
    arms = by_arm(summary)
    assert list(arms) == [DPO8, DPO16, SIMPO8, SIMPO16]  # sweep order
    for arm, (values, mean, std) in GOLDEN_ARMS.items():
        a = arms[arm]
        assert (a["cells"], a["done"], a["complete"], a["seeds"]) == (3, 3, True, [0, 1, 2])
        s = a["stats"]["heldout/avglogp_accuracy"]
        assert s["n"] == 3
        assert s["mean"] == pytest.approx(mean, abs=1e-12)
        assert s["std"] == pytest.approx(std, abs=1e-12)
        # 95% t-interval, df 2: mean ± 4.3027 std / sqrt(3) (±0.04968 for std 0.02, ±0.02484 for 0.01)
        half = T975_DF2 * std / math.sqrt(3)
        assert (s["ci_low"], s["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-9)
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(3))
        assert (s["ci_low"], s["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    # per slice: dpo r=16 clean 45 44 46 -> 0.90 0.88 0.92, mean 0.90, std 0.02
    clean = arms[DPO16]["stats"]["heldout/clean/avglogp_accuracy"]
    assert (clean["mean"], clean["std"]) == pytest.approx((0.90, 0.02), abs=1e-12)
    assert arms[DPO16]["lora_r"] == 16 and arms[DPO16]["objective"] == "dpo"
    assert arms[DPO16]["axes"] == {"objective": "dpo", "lora.r": "16"}


def test_golden_decision(golden):
    _, summary = golden
    d = summary["decision"]
    assert summary["winner"] == d["winner"] == "dpo"
    assert summary["decisive"] is True and d["decisive"] is True
    assert d["scope"] == "all" and d["metric"] == "avglogp_accuracy" and d["factor"] == "objective"
    assert d["pairs"] == 100 and d["incomplete_arms"] == []
    assert d["best_arm"] == DPO16
    assert d["point"] == pytest.approx({arm: v[1] for arm, v in GOLDEN_ARMS.items()}, abs=1e-12)
    comps = comparisons(d)
    assert list(comps) == [DPO8, SIMPO8, SIMPO16]
    expected = {  # arm: (difference, A-only, B-only, p, p_holm, decisive)
        DPO8: (0.02, 7, 1, 18 / 256, 18 / 256, False),
        SIMPO8: (0.29, 87, 0, 2.0**-86, 3 * 2.0**-86, True),
        SIMPO16: (0.25, 75, 0, 2.0**-74, 2.0**-73, True),
    }
    for arm, (diff, b, c, p, p_holm, decisive) in expected.items():
        comp = comps[arm]
        assert comp["difference"] == pytest.approx(diff, abs=1e-12)
        assert comp["extra_pairs"] == pytest.approx(diff * 100, abs=1e-9)
        assert (comp["mcnemar"]["a_only"], comp["mcnemar"]["b_only"]) == (b, c)
        assert comp["mcnemar"]["p_value"] == pytest.approx(p, rel=1e-9)
        assert comp["mcnemar"]["p_holm"] == pytest.approx(p_holm, rel=1e-9)
        assert comp["ci_low"] <= comp["difference"] <= comp["ci_high"]
        assert comp["decisive"] is decisive
    assert comps[SIMPO8]["ci_low"] > 0 and comps[SIMPO16]["ci_low"] > 0
    assert "Decisive winner: objective = dpo" in summary["explanation"]
    assert summary["explanation"] == d["explanation"]


def test_golden_per_slice_decisions(golden):
    _, summary = golden
    assert set(summary["slices"]) == {"clean", "verbose_rejected"}
    # clean: dpo r=16 and simpo r=16 have identical clean pairs (45 44 46): no decisive winner
    clean = summary["slices"]["clean"]
    assert clean["pairs"] == 50 and clean["decisive"] is False and clean["winner"] is None
    assert clean["point"][DPO16] == pytest.approx(0.90) and clean["point"][SIMPO16] == pytest.approx(0.90)
    assert "No decisive winner" in clean["explanation"]
    # verbose_rejected: dpo r=16 40 39 41 (0.80) vs simpo 12 12 12 (0.24) / 15 18 12 (0.30): dpo decisively
    verbose = summary["slices"]["verbose_rejected"]
    assert verbose["winner"] == "dpo" and verbose["decisive"] is True and verbose["pairs"] == 50
    assert verbose["point"][DPO16] == pytest.approx(0.80) and verbose["point"][SIMPO8] == pytest.approx(0.24)
    # 28 27 29 discordant verbose pairs vs simpo r=8 (clean pairs are NOT counted in this scope)
    assert comparisons(verbose)[SIMPO8]["mcnemar"]["a_only"] == 84
    assert comparisons(verbose)[SIMPO8]["extra_pairs"] == pytest.approx(0.56 * 50)


# -------------------------------------------------------------------------------------- no winner
def test_two_pair_difference_is_not_decisive(tmp_path):
    # one rank, so the arms are objective=dpo / objective=simpo; every seed identical:
    # dpo (36, 36) = 72 %, simpo (35, 35) = 70 %: 2 extra pairs < min_extra_pairs = 10.
    counts = {("dpo", "8"): [(36, 36)] * 3, ("simpo", "8"): [(35, 35)] * 3}
    summary = run(write_sweep(tmp_path, grid_cells(counts)))
    d = summary["decision"]
    assert d["best_arm"] == "objective=dpo"
    assert d["winner"] is None and d["decisive"] is False and summary["winner"] is None
    (comp,) = d["comparisons"]
    assert comp["arm"] == "objective=simpo"
    assert comp["extra_pairs"] == pytest.approx(2.0)
    assert (comp["mcnemar"]["a_only"], comp["mcnemar"]["b_only"]) == (6, 0)  # 2 per seed
    assert comp["decisive"] is False
    assert "No decisive winner" in summary["explanation"]
    assert "NOT beaten decisively" in summary["explanation"]


@pytest.mark.parametrize("best, other", [((40, 40), (35, 35)), ((45, 45), (40, 40)), ((50, 50), (45, 45)),
                                         ((48, 49), (43, 44)), ((47, 50), (37, 50))])
def test_gain_of_exactly_min_extra_pairs_is_decisive(tmp_path, best, other):
    # "the gain is at least min_extra_pairs held-out pairs" (DESIGN §6): dpo gets exactly 10 more of the
    # 100 pairs right than simpo on every seed (e.g. 80 vs 70, 100 vs 90); 10 discordant pairs out of 100
    # put the bootstrap CI well above 0 (P(no discordant pair in a resample) ~ e^-10).
    counts = {("dpo", "8"): [best] * 3, ("simpo", "8"): [other] * 3}
    summary = run(write_sweep(tmp_path, grid_cells(counts)), "min_extra_pairs=10")
    (comp,) = summary["decision"]["comparisons"]
    assert comp["ci_low"] > 0
    assert comp["extra_pairs"] == pytest.approx(10.0)
    assert comp["decisive"] is True, f"10 extra pairs must meet min_extra_pairs=10 (got {comp['extra_pairs']!r})"
    assert summary["winner"] == "dpo"


# ------------------------------------------------------------------------------------- tie-break
def test_tie_break_prefers_lower_rank_with_lower_margins(golden):
    # dpo r=8 is within noise of dpo r=16 (2 pairs) and ends training with margins 2.0 < 3.0
    _, summary = golden
    d = summary["decision"]
    assert d["best_arm"] == DPO16
    assert d["recommended_arm"] == DPO8
    assert DPO8 in d["tie_break"] and "lower rank" in d["tie_break"]
    assert "Tie-break:" in d["explanation"]
    assert d["winner"] == "dpo"  # the tie-break picks an arm, not another winner


def test_tie_break_keeps_best_arm_when_lower_rank_margins_are_higher(tmp_path):
    summary = run(golden_sweep(tmp_path, final_margin={"8": 4.0, "16": 3.0}))
    d = summary["decision"]
    assert d["best_arm"] == DPO16
    assert d["recommended_arm"] == DPO16
    assert d["tie_break"] is None
    assert "Tie-break" not in d["explanation"]


def test_tie_break_ignores_lower_rank_that_is_beaten_decisively(tmp_path):
    # dpo r=8 at (38,32) (37,33) (36,32) = 70 70 68 %: 15.7 pairs below dpo r=16 -> not within noise
    counts = dict(GOLDEN_COUNTS) | {("dpo", "8"): [(38, 32), (37, 33), (36, 32)]}
    summary = run(write_sweep(tmp_path, grid_cells(counts, final_margin={"8": 2.0, "16": 3.0})))
    d = summary["decision"]
    assert comparisons(d)[DPO8]["decisive"] is True
    assert d["recommended_arm"] == DPO16 and d["tie_break"] is None


def test_tie_break_can_be_switched_off(tmp_path):
    summary = run(golden_sweep(tmp_path, final_margin={"8": 2.0, "16": 3.0}), "prefer_lower_rank=false")
    assert summary["decision"]["recommended_arm"] == DPO16


# ==================================================================================== statistics
def test_seed_ci_matches_scipy_t_interval():
    values = [0.71, 0.64, 0.69, 0.75]
    ci = seed_ci(values, alpha=0.1)
    low, high = stats.t.interval(0.9, 3, loc=np.mean(values), scale=stats.sem(values))
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(np.mean(values))
    assert ci["std"] == pytest.approx(np.std(values, ddof=1))
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    one = seed_ci([0.5, None, float("nan")])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["ci_low"]) and math.isnan(one["std"])
    assert seed_ci([])["n"] == 0


def exact_mcnemar(b: int, c: int) -> float:
    """p = min(1, 2 sum_{k <= min(b, c)} C(n, k) / 2^n), n = b + c."""
    n = b + c
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def test_mcnemar_on_a_hand_made_table():
    # 20 both right, 9 A right only, 3 B right only, 8 both wrong (40 pairs)
    a = np.array([1] * 20 + [1] * 9 + [0] * 3 + [0] * 8, bool)
    b = np.array([1] * 20 + [0] * 9 + [1] * 3 + [0] * 8, bool)
    result = mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"]) == (9, 3)
    # n = 12: 2 (1 + 12 + 66 + 220) / 4096 = 598 / 4096
    assert result["p_value"] == pytest.approx(598 / 4096, rel=1e-12)
    assert result["p_value"] == pytest.approx(stats.binomtest(9, 12, 0.5).pvalue, rel=1e-12)
    swapped = mcnemar_exact(b, a)
    assert (swapped["a_only"], swapped["b_only"]) == (3, 9) and swapped["p_value"] == pytest.approx(598 / 4096)
    # paired element-wise in any shape (seeds x pairs)
    assert mcnemar_exact(a.reshape(4, 10), b.reshape(4, 10)) == result


@pytest.mark.parametrize("b, c", [(0, 0), (0, 1), (1, 0), (0, 5), (5, 5), (2, 7), (10, 0), (6, 3), (13, 20)])
def test_mcnemar_matches_the_exact_formula(b, c):
    a_correct = np.array([True] * b + [False] * c + [True, False])  # + one concordant pair of each kind
    b_correct = np.array([False] * b + [True] * c + [True, False])
    result = mcnemar_exact(a_correct, b_correct)
    assert (result["a_only"], result["b_only"]) == (b, c)
    assert result["p_value"] == pytest.approx(1.0 if b + c == 0 else exact_mcnemar(b, c), rel=1e-12)
    if b + c:
        assert result["p_value"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_holm_hand_derived():
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; max(0.06, 1 x 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # sorted 0.01 0.04 0.2 0.5 -> 0.04, 0.12, 0.4, 0.5
    assert holm([0.2, 0.01, 0.5, 0.04]) == pytest.approx([0.4, 0.04, 0.5, 0.12])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm([]) == []


def test_holm_is_monotone_and_conservative():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 12)) ** 3
        adjusted = np.array(holm(p.tolist()))
        order = np.argsort(p, kind="stable")
        assert np.all(np.diff(adjusted[order]) >= 0)
        assert np.all(adjusted >= p - 1e-15) and np.all(adjusted <= 1)
        # step-down: the smallest is m p_(1) (capped), and no adjusted value exceeds m p
        assert adjusted[order[0]] == pytest.approx(min(1.0, len(p) * p[order[0]]))
        assert np.all(adjusted <= np.minimum(1, len(p) * p) + 1e-15)


def test_pair_bootstrap_point_is_the_plain_mean_with_uniform_weights():
    rng = np.random.default_rng(0)
    values = rng.random((3, 90))
    boot = PairBootstrap(np.array([""] * 90), {"": 1.0}, n_bootstrap=50, seed=0)
    assert boot.point(values) == pytest.approx(values.mean(), abs=1e-12)
    # proportional strata weights (what scope=None uses) also give the plain mean
    strata = np.array(["a"] * 20 + ["b"] * 70)
    boot = PairBootstrap(strata, {"a": 20 / 90, "b": 70 / 90}, n_bootstrap=50, seed=0)
    assert boot.point(values) == pytest.approx(values.mean(), abs=1e-12)


def test_pair_bootstrap_point_is_the_macro_mean_with_equal_slice_weights():
    rng = np.random.default_rng(1)
    values = rng.random((2, 100))
    strata = np.array(["a"] * 20 + ["b"] * 80)
    boot = PairBootstrap(strata, {"a": 0.5, "b": 0.5}, n_bootstrap=50, seed=0)
    macro = np.mean([(v[:20].mean() + v[20:].mean()) / 2 for v in values])
    assert boot.point(values) == pytest.approx(macro, abs=1e-12)
    assert abs(macro - values.mean()) > 1e-3  # the two differ here, so the check means something
    # each replicate keeps the slice sizes: a replicate of a constant is that constant
    assert np.allclose(boot.resample(np.full((1, 100), 0.3)), 0.3)


def test_pair_bootstrap_difference_ci_matches_the_normal_approximation():
    # one seed, 4000 pairs: A right with probability 0.7, B 0.6, independently -> true difference 0.1
    rng = np.random.default_rng(42)
    n = 4000
    a = (rng.random(n) < 0.7).astype(float)[None, :]
    b = (rng.random(n) < 0.6).astype(float)[None, :]
    boot = PairBootstrap(np.array([""] * n), {"": 1.0}, n_bootstrap=2000, seed=0)
    low, high = percentile_ci(boot.resample(a) - boot.resample(b), 0.05)
    assert low < 0.1 < high
    d = a[0] - b[0]
    se = d.std(ddof=1) / math.sqrt(n)  # paired normal approximation
    normal_width = 2 * stats.norm.ppf(0.975) * se
    assert (high - low) == pytest.approx(normal_width, rel=0.2)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.25 * normal_width)


def test_pair_bootstrap_is_paired():
    # identical per-pair values in two arms: every replicate difference is exactly 0
    rng = np.random.default_rng(5)
    values = (rng.random((1, 300)) < 0.6).astype(float)
    strata = np.array(["clean"] * 100 + ["verbose_rejected"] * 200)
    boot = PairBootstrap(strata, {"clean": 0.5, "verbose_rejected": 0.5}, n_bootstrap=500, seed=0)
    first, second = boot.resample(values), boot.resample(values.copy())
    assert np.ptp(first) > 0  # the replicates do vary...
    assert percentile_ci(first - second, 0.05) == (0.0, 0.0)  # ...but not their difference


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
    # discordant: clean 10 dpo-only per seed, verbose 24 simpo-only per seed
    (comp,) = d["comparisons"]
    assert (comp["mcnemar"]["a_only"], comp["mcnemar"]["b_only"]) == (72, 30)


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
    # 10 clean pairs per seed right for dpo only; none the other way (the verbose ones are out of scope)
    assert (comp["mcnemar"]["a_only"], comp["mcnemar"]["b_only"]) == (30, 0)
    assert comp["extra_pairs"] == pytest.approx(10.0)
    assert "clean pairs" in d["explanation"]
    assert "clean" not in summary["slices"] and set(summary["slices"]) == {"all", "verbose_rejected"}
    other = run(scope_sweep, "slice=verbose_rejected")["decision"]
    assert other["pairs"] == 80 and other["best_arm"] == "objective=simpo"
    assert other["point"] == pytest.approx({"objective=dpo": 0.5, "objective=simpo": 0.8})
    assert (other["comparisons"][0]["mcnemar"]["a_only"], other["comparisons"][0]["mcnemar"]["b_only"]) == (72, 0)


def test_scope_unknown_slice_raises_naming_known_slices(scope_sweep):
    with pytest.raises(ValueError, match="nonexistent") as error:
        run(scope_sweep, "slice=nonexistent")
    assert "clean" in str(error.value) and "verbose_rejected" in str(error.value)


def test_margin_metric_uses_min_margin_gain_and_no_mcnemar(scope_sweep):
    # logratio margin per pair = ±10: dpo 10 (2 x 0.60 - 1) = 2.0, simpo 10 (2 x 0.74 - 1) = 4.8; gain 2.8
    d = run(scope_sweep, "metric=logratio_margin")["decision"]
    assert d["point"] == pytest.approx({"objective=dpo": 2.0, "objective=simpo": 4.8})
    (comp,) = d["comparisons"]
    assert "mcnemar" not in comp and "extra_pairs" not in comp
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


def test_factorial_effects_absent_when_a_corner_is_incomplete(partial):
    _, summary = partial
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
    assert (arms[SIMPO8]["cells"], arms[SIMPO8]["done"], arms[SIMPO8]["complete"]) == (3, 2, False)
    assert arms[DPO16]["stats"]["heldout/avglogp_accuracy"]["mean"] == pytest.approx(1.0)  # its one done cell


def test_partial_sweep_decides_on_complete_arms_only(partial):
    _, summary = partial
    d = summary["decision"]
    assert d["incomplete_arms"] == [DPO16, SIMPO8]
    # complete arms: dpo r=8 (0.83) and simpo r=16 (0.60): 23 pairs, decisive
    assert set(d["point"]) == {DPO8, SIMPO16}
    assert d["best_arm"] == DPO8 and d["winner"] == "dpo" and d["decisive"] is True
    assert [c["arm"] for c in d["comparisons"]] == [SIMPO16]
    assert "Incomplete arms left out" in summary["explanation"] and DPO16 in summary["explanation"]
    for scope in summary["slices"].values():
        assert DPO16 not in scope["point"] and scope["incomplete_arms"] == [DPO16, SIMPO8]


def test_nothing_done_is_reported_not_raised(tmp_path):
    cells = [Cell(["objective=dpo", "seed=0"], state="running"), Cell(["objective=simpo", "seed=0"], on_disk=False)]
    summary = run(write_sweep(tmp_path, cells))
    assert summary["winner"] is None and summary["decisive"] is False
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


def test_broken_files_do_not_stop_the_decision(broken):
    sweep_dir, paths, summary = broken
    # the torn metrics.json makes its cell unfinished ("corrupt") and its arm incomplete
    (row,) = summary["not_finished"]
    assert row["arm"] == DPO8 and row["state"] == "corrupt"
    d = summary["decision"]
    assert d["incomplete_arms"] == [DPO8]
    # simpo r=16 is decided on its two readable seeds: (0.60 + 0.58) / 2 = 0.59
    assert d["point"][SIMPO16] == pytest.approx(0.59, abs=1e-12)
    assert d["point"][DPO16] == pytest.approx(0.85, abs=1e-12)
    assert d["winner"] == "dpo" and d["decisive"] is True
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


def test_cell_with_other_heldout_pairs_is_left_out_not_the_rest(tmp_path):
    # The FIRST cell of the sweep (dpo r=8 seed 0) was evaluated on other held-out pairs (ids q0000..):
    # that one cell cannot be paired with the others and must be left out (and reported); the 11 cells
    # that agree on their pairs must still be compared, giving the golden decision.
    cells = grid_cells(GOLDEN_COUNTS)
    odd = cells[0]
    odd.pairs = odd.pairs.assign(pair_id=[f"q{i:04d}" for i in range(100)])
    summary = run(write_sweep(tmp_path, cells))
    flagged = {p["cell_id"] for p in summary["problems"]}
    assert flagged == {odd.cell_id}, f"{len(flagged)} cells reported as not comparable"
    assert all(p["file"].endswith("heldout_pairs.parquet") for p in summary["problems"])
    d = summary["decision"]
    assert set(d["point"]) == {DPO8, DPO16, SIMPO8, SIMPO16}
    assert d["point"][DPO8] == pytest.approx((0.83 + 0.82) / 2)  # seeds 1 and 2 only
    assert d["best_arm"] == DPO16 and d["winner"] == "dpo" and d["decisive"] is True


# ============================================================================================ CLI
def test_cli_prints_the_explanation(tmp_path):
    sweep_dir = golden_sweep(tmp_path / "sweep")
    out = subprocess.run([sys.executable, "-m", "ablate.collect", str(sweep_dir), "--no-plots"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert summary["explanation"] in out.stdout
    assert "Decisive winner: objective = dpo" in out.stdout
    assert "slice verbose_rejected: decisive winner dpo" in out.stdout
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
    started = time.perf_counter()
    summary = run(large)
    elapsed = time.perf_counter() - started
    print(f"\ncollect() of {summary['cell_counts']['done']} cells x 600 pairs: {elapsed:.2f} s")
    assert summary["cell_counts"] == {"done": 1008}
    assert len(summary["arms"]) == 168 and summary["decision"]["pairs"] == 600
    # obj6 has the highest correctness rate (0.79 + 0.005 lr index): the winner
    assert summary["decision"]["best_arm"].startswith("objective=obj6")
    assert elapsed <= 5.0, f"collect() took {elapsed:.2f} s for 1008 cells (bound: 5 s)"
