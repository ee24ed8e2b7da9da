"""Calibration of the decision rule by simulation (ARCHITECTURE.md §6): on null sweeps - the same recipe in both arms
- it calls a winner "decisive" at most at its nominal rate alpha; its power on a real difference is reported.

The simulated held-out data looks like the embedded task's: 300 pairs in two slices; pair i has a difficulty
a_i (logit); seed k of an arm shifts every pair by s_k (training-run luck, sd `tau` on the logit scale; the
two arms' shifts are correlated 0.5 when they share the seed's data order, independent when they ran other
seeds) and each (seed, pair) by an interaction z (sd `sigma`); `het` gives each pair an arm-specific effect
of mean zero (one recipe better on some pairs, worse on others). A pair is right with probability
sigmoid(a_i + b_i + s_k + z_ki + delta). `delta` = 0 is the null. The decision code is the collector's own
(ablate.collect.decide.compare_arms), called on the simulated per-pair matrices.

    python tests/test_calibration.py [--sims 4000]      # the table in the README
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ablate.collect.decide import compare_arms

ALPHA = 0.05
SIMS = 1000
SIZES = {"clean": 150, "verbose_rejected": 150}
STRATA = np.repeat(list(SIZES), list(SIZES.values()))
WEIGHTS = {name: size / len(STRATA) for name, size in SIZES.items()}
SCENARIOS = {  # name: (tau, sigma, het)
    "seeds dominate": (0.5, 0.5, 0.0),
    "pairs dominate": (0.05, 0.3, 1.0),
    "both": (0.3, 1.0, 1.0),
}


def rule(**overrides) -> SimpleNamespace:
    """conf/select/default.yaml's decision rule (the defaults users get), with overrides."""
    defaults = dict(alpha=ALPHA, min_seeds=3, min_extra_pairs=10, min_margin_gain=0.0, equivalence_margin=0.03,
                    power=0.8, min_effect=0.0)
    return SimpleNamespace(**(defaults | overrides))


def simulate(rng, n_seeds: int, *, tau: float, sigma: float, het: float, delta: float = 0.0, paired: bool = True,
             arms: int = 2, spreads: dict[str, float] | None = None, better: tuple[str, ...] = ("a0",)) -> dict:
    """arm -> (seeds, seeds x pairs correctness); the arms in `better` (arm "a0") get the true effect delta;
    `spreads`: an arm's run-to-run spread (tau) times this factor (arms whose seed variances differ)."""
    difficulty = rng.normal(0.8, 1.5, len(STRATA))
    shared = rng.normal(size=(n_seeds, 1))
    out = {}
    for j in range(arms):
        own = rng.normal(0.0, het, len(STRATA))
        # the same seed's data order is shared by the arms (correlation 0.5); other seeds are independent runs
        own_run = rng.normal(size=(n_seeds, 1))
        spread = tau * (spreads or {}).get(f"a{j}", 1.0)
        shift = spread * (math.sqrt(0.5) * shared + math.sqrt(0.5) * own_run if paired else own_run)
        logit = difficulty + own + shift + rng.normal(0.0, sigma, (n_seeds, len(STRATA)))
        logit += delta if f"a{j}" in better else 0.0
        seeds = list(range(n_seeds)) if paired else list(range(j * n_seeds, (j + 1) * n_seeds))
        out[f"a{j}"] = (seeds, (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(float))
    return out


def decisive_rate(n_seeds: int, scenario: str, *, sims: int = SIMS, seed: int = 0, select=None, **kw) -> float:
    tau, sigma, het = SCENARIOS[scenario]
    rng = np.random.default_rng(seed)
    select = select or rule()
    hits = 0
    for _ in range(sims):
        values = simulate(rng, n_seeds, tau=tau, sigma=sigma, het=het, **kw)
        factor_of = {arm: arm for arm in values}
        hits += compare_arms(values, STRATA, WEIGHTS, factor_of, select, accuracy=True)["decisive"]
    return hits / sims


def bound(sims: int) -> float:
    """alpha plus three Monte-Carlo standard errors: a calibrated rule stays below it."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


@pytest.mark.parametrize("n_seeds", [1, 2, 3, 5])
@pytest.mark.parametrize("paired", [True, False], ids=["same seeds", "other seeds"])
def test_null_sweeps_are_decisive_at_most_at_alpha(n_seeds, paired):
    """The rule as shipped (min_seeds 3, min_extra_pairs 10) AND its CI alone (min_seeds lowered to the seeds
    there are, no minimum gain): the false-winner rate on same-recipe arms stays within alpha + MC error."""
    for scenario in SCENARIOS:
        shipped = decisive_rate(n_seeds, scenario, paired=paired)
        ci_alone = decisive_rate(n_seeds, scenario, paired=paired,
                                 select=rule(min_seeds=max(n_seeds, 2), min_extra_pairs=0))
        if n_seeds == 1:  # one seed: the variance between training runs is unknown, never decisive
            assert shipped == ci_alone == 0.0, scenario
        assert shipped <= bound(SIMS), (scenario, shipped)
        assert ci_alone <= bound(SIMS), (scenario, ci_alone)


def test_null_2x2_with_two_rivals_is_decisive_at_most_at_alpha():
    """Four arms of the same recipe, two values of the factor: "decisive" means the best arm beats BOTH arms
    of the other value (an intersection-union test: no multiplicity correction needed)."""
    tau, sigma, het = SCENARIOS["both"]
    rng = np.random.default_rng(7)
    factor_of = {"a0": "x", "a1": "x", "a2": "y", "a3": "y"}
    hits = 0
    for _ in range(SIMS):
        values = simulate(rng, 3, tau=tau, sigma=sigma, het=het, arms=4)
        hits += compare_arms(values, STRATA, WEIGHTS, factor_of, rule(min_extra_pairs=0), accuracy=True)["decisive"]
    assert hits / SIMS <= bound(SIMS)


def simulate_partial_overlap(rng, seeds_a: list[int], seeds_b: list[int], *, tau: float, sigma: float, het: float,
                             delta: float = 0.0) -> dict:
    """Two arms whose seed lists overlap in part: seed k's training-run luck is shared (correlation 0.5) between
    the arms that ran it, as the same data order makes it; other seeds are independent."""
    difficulty = rng.normal(0.8, 1.5, len(STRATA))
    shared = {k: rng.normal() for k in set(seeds_a) | set(seeds_b)}
    out = {}
    for j, seeds in enumerate((seeds_a, seeds_b)):
        own = rng.normal(0.0, het, len(STRATA))
        luck = np.array([[math.sqrt(0.5) * shared[k] + math.sqrt(0.5) * rng.normal()] for k in seeds])
        logit = difficulty + own + tau * luck + rng.normal(0.0, sigma, (len(seeds), len(STRATA)))
        logit += delta if j == 0 else 0.0
        out[f"a{j}"] = (list(seeds), (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(float))
    return out


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_partial_seed_overlap_uses_every_seed_and_stays_calibrated(scenario):
    """Arms with 4 seeds each, 2 shared (an arm resumed or extended on its own): compared on all 8 seeds, not on
    the 2 shared ones (1 df: never decisive whatever the effect). Null: decisive at most at alpha; a real
    +0.6 logit is found far more often than on the overlap alone."""
    tau, sigma, het = SCENARIOS[scenario]
    rng = np.random.default_rng(11)
    seeds_a, seeds_b = [0, 1, 2, 3], [2, 3, 4, 5]
    factor_of = {"a0": "a0", "a1": "a1"}
    null = power = 0
    sims = SIMS // 2
    for _ in range(sims):
        values = simulate_partial_overlap(rng, seeds_a, seeds_b, tau=tau, sigma=sigma, het=het)
        null += compare_arms(values, STRATA, WEIGHTS, factor_of, rule(), accuracy=True)["decisive"]
        values = simulate_partial_overlap(rng, seeds_a, seeds_b, tau=tau, sigma=sigma, het=het, delta=0.6)
        outcome = compare_arms(values, STRATA, WEIGHTS, factor_of, rule(), accuracy=True)
        power += outcome["decisive"]
        assert outcome["comparisons"][0]["seeds"] == 4 and outcome["comparisons"][0]["shared_seeds"] == 2
    print(f"\npartial overlap, {scenario}: null {null / sims:.3f}, power at +0.6 logit {power / sims:.2f}")
    assert null / sims <= bound(sims)
    assert power / sims >= 0.15  # on the 2 shared seeds alone (t on 1 df, below min_seeds) it was 0


def test_power_on_a_real_difference_grows_with_seeds():
    """A true effect of +0.6 logit (about +8 points of accuracy) in the 'both' scenario: the rule finds it
    more often with more seeds, and with 5 seeds most of the time (the README table has the numbers)."""
    power = {n: decisive_rate(n, "both", delta=0.6, sims=300) for n in (2, 3, 5)}
    print(f"\npower at +0.6 logit: {power}")
    assert power[2] == 0.0  # below min_seeds: undetermined, by design
    assert power[3] < power[5]
    assert power[5] >= 0.5, power


def table(sims: int) -> str:
    """Decisive rate on nulls (shipped rule) and power at +0.6 logit, per scenario and seeds per arm."""
    lines = ["| scenario | design | 1 seed | 2 seeds | 3 seeds | 5 seeds | power at +0.6 logit, 3 / 5 seeds |",
             "|---|---|---|---|---|---|---|"]
    for scenario in SCENARIOS:
        for paired in (True, False):
            null = [decisive_rate(n, scenario, sims=sims, paired=paired) for n in (1, 2, 3, 5)]
            power = [decisive_rate(n, scenario, sims=sims // 4, paired=paired, delta=0.6) for n in (3, 5)]
            design = "same seeds" if paired else "other seeds"
            lines.append(f"| {scenario} | {design} | " + " | ".join(f"{r:.3f}" for r in null)
                         + f" | {power[0]:.2f} / {power[1]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=4000)
    print(table(parser.parse_args().sims))


# ------------------------------------------------------------------------------ tuned comparisons
def simulate_settings(rng, seeds: list[int], effects: list[float], own: np.ndarray, difficulty: np.ndarray, *,
                      tau: float, sigma: float) -> list[tuple[list[int], np.ndarray]]:
    """Per setting: (seeds, seeds x pairs). A setting keeps its pair-specific effects `own` (its row) on every seed;
    seed k's training-run luck is shared by the settings that ran it (correlation 0.5)."""
    shared = rng.normal(size=(len(seeds), 1))
    out = []
    for effect, own_pairs in zip(effects, own, strict=True):
        luck = math.sqrt(0.5) * shared + math.sqrt(0.5) * rng.normal(size=(len(seeds), 1))
        logit = difficulty + own_pairs + effect + tau * luck + rng.normal(0.0, sigma, (len(seeds), len(difficulty)))
        out.append((list(seeds), (rng.random(logit.shape) < 1 / (1 + np.exp(-logit))).astype(float)))
    return out


def tuned_rates(n_seeds: int, sims: int, seed: int = 0) -> tuple[float, float]:
    """A robust recipe (6 equally good settings) against a sensitive one (1 good setting of 6, the rest 1 logit
    worse): the best settings are equally good, so naming a winner is false. Each recipe's setting is selected on
    100 validation pairs (ablate.collect.tuning.select_setting), then (a) tested on the 200 test pairs of the SAME
    runs, as a tuning sweep does, or (b) retrained on fresh seeds and tested there at the level of a first look
    (the confirmation stage of `ablate confirm`). (false-winner rate of a, of b)."""
    from ablate.collect.sequential import at_alpha, plan_look
    from ablate.collect.tuning import select_setting

    tau, sigma, het = SCENARIOS["both"]
    validation, test = np.arange(len(STRATA)) % 3 == 0, np.arange(len(STRATA)) % 3 != 0
    strata, weights = STRATA[test], {s: float((STRATA[test] == s).mean()) for s in SIZES}
    val_weights = np.full(int(validation.sum()), 1 / validation.sum())
    select = rule(max_seeds=6, factor="objective", metric="avglogp_accuracy", slice=None, failed_cells="undetermined")
    rng = np.random.default_rng(seed)
    same = fresh = 0
    for _ in range(sims):
        difficulty = rng.normal(0.8, 1.5, len(STRATA))
        effects = {"robust": [0.0] * 6, "sensitive": [0.0] + [-1.0] * 5}
        own = {name: rng.normal(0.0, het, (6, len(STRATA))) for name in effects}
        runs = {name: simulate_settings(rng, list(range(n_seeds)), e, own[name], difficulty, tau=tau, sigma=sigma)
                for name, e in effects.items()}
        chosen = {}
        for name, settings in runs.items():
            candidates = {(i,): (s, x[:, validation]) for i, (s, x) in enumerate(settings)}
            chosen[name] = select_setting(candidates, val_weights, [(i,) for i in range(6)], (0,))["selected"][0]
        factor_of = {name: name for name in runs}
        values = {name: (runs[name][i][0], runs[name][i][1][:, test]) for name, i in chosen.items()}
        same += compare_arms(values, strata, weights, factor_of, select, accuracy=True)["decisive"]
        confirm = {name: simulate_settings(rng, list(range(100, 100 + n_seeds)), [effects[name][i]],
                                           own[name][i:i + 1], difficulty, tau=tau, sigma=sigma)[0]
                   for name, i in chosen.items()}
        values = {name: (s, x[:, test]) for name, (s, x) in confirm.items()}
        look = plan_look([], [], select, {name: s for name, (s, _) in values.items()})
        at_look = at_alpha(select, look["nominal_alpha"])
        fresh += compare_arms(values, strata, weights, factor_of, at_look, accuracy=True)["decisive"]
    return same / sims, fresh / sims


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_tuned_selection_confirmed_on_fresh_seeds_stays_at_alpha(n_seeds):
    same, fresh = tuned_rates(n_seeds, SIMS // 2, seed=n_seeds)
    print(f"\ntuned, {n_seeds} seeds: tested on the selecting runs {same:.3f}, confirmed on fresh seeds {fresh:.3f}")
    assert fresh <= bound(SIMS // 2)


# ------------------------------------------------------------------------------------- rare collapses
def test_rare_collapses_are_what_the_seeds_cannot_exclude():
    """Skewed seeds: one recipe collapses in 1 run of 6 (loses 2/3 of its right pairs) and is a little better
    otherwise, with the same mean accuracy as the steady recipe in expectation. Three seeds mostly never see the
    collapse, so no rule on them can: the rate at which the collapsing recipe is called the decisive winner is
    printed (README), and whenever that happens without a collapse among its seeds, the report's bound on its rate
    of runs gone wrong (Clopper-Pearson, ablate.collect.diagnostics.seed_outcomes) does not exclude the true 1 in 6.
    """
    from scipy.stats import beta

    tau, sigma, het = SCENARIOS["both"]
    rng = np.random.default_rng(23)
    sims, n = SIMS // 2, 3
    calls = unseen = 0
    for _ in range(sims):
        values = simulate(rng, n, tau=tau, sigma=sigma, het=het)
        collapsed = rng.random(n) < 1 / 6
        seeds, x = values["a0"]
        # a collapsed run loses 2/3 of its right pairs; a steady one gains the right pairs that keep the mean
        # accuracy equal to the other recipe's in expectation: 5/6 (a + up (1 - a)) + 1/6 a / 3 = a
        a = x.mean()
        up = (6 / 5 * (a - a / 18) - a) / (1 - a)
        down = rng.random(x.shape) < 2 / 3
        gain = rng.random(x.shape) < up
        x = np.where(collapsed[:, None], np.where(down, 0.0, x), np.where(gain, 1.0, x))
        values["a0"] = (seeds, x)
        outcome = compare_arms(values, STRATA, WEIGHTS, {"a0": "a0", "a1": "a1"}, rule(), accuracy=True)
        if outcome["decisive"] and outcome["best_arm"] == "a0":
            calls += 1
            if not collapsed.any():
                unseen += 1
                assert float(beta.ppf(1 - ALPHA, 1, n)) >= 1 / 6  # 0 of 3 seen: up to 63% is not excluded
    print(f"\nrare collapse (1 in 6), 3 seeds: collapsing recipe named the winner in {calls / sims:.3f} of sweeps, "
          f"{unseen} of {calls} without a collapse among its seeds")
    assert unseen >= calls * 0.5  # the calls come from sweeps whose seeds did not show the collapse
