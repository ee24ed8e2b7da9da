"""Racing (ablate.collect.race) by simulation, before any cell trains: null races name a false winner at most at
alpha over all their rounds; races against the fixed design on power and cells spent.

Simulated sweeps are tests/test_calibration.py's (300 held-out pairs, seed luck, seed x pair interaction,
arm-specific pair effects); arm a0 carries the true effect. A race runs select.min_seeds (3) seeds per arm, then
one more per live arm per round, up to max_seeds, with the collector's own race_look.

    python tests/test_race.py [--sims 2000]      # the README's table (mixed noise, two race settings)
    python tests/test_race.py --matrix          # every noise source and layout, a collapsing rival (defaults)
    python tests/test_race.py --neighbours      # the defaults against nearby futility and spending settings
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from test_calibration import ALPHA, SCENARIOS, STRATA, WEIGHTS, rule, simulate

from ablate.collect.decide import compare_arms
from ablate.collect.race import race_look
from ablate.sweep.race import RaceSettings

SIMS = 400
# the race settings the README's table measures: the defaults, and the former ones (stop earliest, find less)
PRESETS = {"defaults (max_seeds 12, spending 3)": {}, "max_seeds 8, spending pocock": {"max_seeds": 8, "rho": None}}
DEFAULT = RaceSettings()
POINTS = {0: 0.0, 2: 0.15, 4: 0.3, 8: 0.6}  # accuracy points -> logit shift of arm a0 (about)
LAYOUTS = {  # name: (arms, the factor decided per arm; a0's value is the better one)
    "2 arms": (2, None),
    "4 arms": (4, None),
    "2x2 objective x rank": (4, {"a0": "x", "a1": "x", "a2": "y", "a3": "y"}),
}


def bound(sims: int) -> float:
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


def race(rng, scenario: str, delta: float, arms: int, *, factor_of: dict | None = None,
         max_seeds: int = DEFAULT.max_seeds, round_seeds: int = 1, collapse: bool = False,
         futility_power: float = DEFAULT.futility_power, rho: float | None = DEFAULT.rho,
         fixed_seeds: tuple[int, ...] = (), spread: float = 1.0,
         give_up_t: dict | None = None) -> tuple[dict, int, dict, list[dict]]:
    """(the stopping look, cells spent, the fixed design's decision at 8 seeds and full alpha, all looks); with
    `fixed_seeds`, the fixed design's decision at each of those seeds per arm too (under "by_seeds"); `spread`: arm
    a1's seed-to-seed spread, times the others' (a seed-sensitive arm). The effect goes to every arm that shares a0's
    value of the factor (a 2x2's better objective is better at both ranks). `give_up_t` ({seeds: t, None: t after}),
    tried and not shipped: also stop, futile, when a live rival's |difference| / se is below that t."""
    tau, sigma, het = SCENARIOS[scenario]
    factor_of = factor_of or {f"a{j}": f"a{j}" for j in range(arms)}
    better = tuple(arm for arm, value in factor_of.items() if value == factor_of["a0"])
    full = simulate(rng, max(max_seeds, 8, *fixed_seeds), tau=tau, sigma=sigma, het=het, delta=delta, arms=arms,
                    spreads={"a1": spread} if spread != 1.0 else None, better=better)
    if collapse:  # arm a1 collapses in 1 run of 6: 2/3 of its right pairs lost
        seeds, x = full["a1"]
        hit = rng.random(len(seeds)) < 1 / 6
        full["a1"] = (seeds, np.where(hit[:, None] & (rng.random(x.shape) < 2 / 3), 0.0, x))
    select = rule(max_seeds=max_seeds)
    live, dropped, history, looks, ran = list(full), {}, [], [], dict.fromkeys(full, 0)
    n = select.min_seeds
    while True:
        for arm in live:
            ran[arm] = n
        values = {arm: (full[arm][0][:n], full[arm][1][:n]) for arm in live}
        look = race_look(values, STRATA, WEIGHTS, factor_of, select, history, dropped, max_seeds=max_seeds,
                         accuracy=True, futility_power=futility_power, rho=rho)
        if give_up_t and not look["stop"] and any(
                abs(c["difference"]) < give_up_t.get(n, give_up_t[None]) * c["se"]
                for c in look["comparisons"] if c["arm"] not in look["drops"]):
            look["stop"] = "futile"
        looks.append(look)
        history.append({"n": n, "z": look["z"]})
        dropped.update(look["drops"])
        live = [arm for arm in live if arm not in look["drops"]]
        if look["stop"]:
            fixed = fixed_design(full, 8, factor_of)
            fixed["by_seeds"] = {k: fixed_design(full, k, factor_of)["right"] for k in fixed_seeds}
            return look, sum(ran.values()), fixed, looks
        n = min(n + round_seeds, max_seeds)


def fixed_design(full: dict, n: int, factor_of: dict) -> dict:
    """The fixed design's decision on the first n seeds of every arm, one look at the full alpha."""
    fixed = compare_arms({a: (s[:n], x[:n]) for a, (s, x) in full.items()}, STRATA, WEIGHTS, factor_of, rule(),
                         accuracy=True)
    return fixed | {"right": fixed["decisive"] and factor_of[fixed["best_arm"]] == factor_of["a0"]}


def summary(scenario: str, points: int, arms: int, sims: int, seed: int = 0, **kw) -> dict:
    rng = np.random.default_rng(seed)
    rows = [race(rng, scenario, POINTS[points], arms, **kw) for _ in range(sims)]
    truth = (kw.get("factor_of") or {}).get("a0", "a0")
    return {"race": sum(r[0]["stop"] == "winner" for r in rows) / sims,
            "race_right": sum(r[0]["stop"] == "winner" and r[0]["winner"] == truth for r in rows) / sims,
            "cells": sum(r[1] for r in rows) / sims,
            "fixed": sum(r[2]["decisive"] for r in rows) / sims,
            "fixed_right": sum(r[2]["right"] for r in rows) / sims,
            "fixed_cells": 8 * arms,
            "drops_wrong": sum(any(arm == "a0" for look in r[3] for arm in look["drops"]) for r in rows) / sims,
            "fixed_by_seeds": {k: sum(r[2]["by_seeds"][k] for r in rows) / sims for k in kw.get("fixed_seeds", ())}}


def same_power_cells(power: float, by_seeds: dict[int, float], arms: int) -> float | None:
    """Cells of the fixed design with this power: its seeds per arm interpolated on the simulated power curve
    (None beyond the curve)."""
    points = sorted(by_seeds.items())
    for (n0, p0), (n1, p1) in zip(points, points[1:], strict=False):
        if p0 <= power <= p1 and p1 > p0:
            return arms * (n0 + (n1 - n0) * (power - p0) / (p1 - p0))
    return None


@pytest.mark.parametrize("arms", [2, 4])
@pytest.mark.parametrize("scenario", ["seeds dominate", "both"])
def test_null_races_name_a_false_winner_at_most_at_alpha(scenario, arms):
    s = summary(scenario, 0, arms, SIMS, seed=arms)
    print(f"\nnull race, {scenario}, {arms} arms: decisive {s['race']:.3f}, cells {s['cells']:.1f}")
    assert s["race"] <= bound(SIMS)


def test_null_2x2_race_and_a_collapsing_arm():
    factor_of = {"a0": "x", "a1": "x", "a2": "y", "a3": "y"}
    s = summary("both", 0, 4, SIMS, seed=9, factor_of=factor_of)
    assert s["race"] <= bound(SIMS)
    s = summary("both", 0, 2, SIMS, seed=10, collapse=True)  # a1 collapses 1 run in 6: a0 may win, never a1 falsely
    assert s["race"] - s["race_right"] <= bound(SIMS)


@pytest.mark.calibration
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_null_races_with_4000_sweeps(preset, layout):
    """The tight check, outside CI's default run (`pytest -m calibration`): alpha + 2 s.e. of 4,000 sweeps (5.7%)."""
    arms, factor_of = LAYOUTS[layout]
    for scenario in ("seeds dominate", "both"):
        s = summary(scenario, 0, arms, 4000, seed=100 + arms, factor_of=factor_of, **PRESETS[preset])
        print(f"\nnull race, {preset}, {scenario}, {layout}: decisive {s['race']:.4f}, cells {s['cells']:.1f}")
        assert s["race"] <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / 4000)


def test_the_best_arm_is_rarely_dropped_and_the_race_spends_fewer_cells():
    """+8 points in one of 4 arms: the better arm is almost never dropped, the race (at its defaults: up to 12 seeds,
    alpha kept for the later rounds) finds it about as often as the fixed 8-seed design, in fewer cells than its 32."""
    s = summary("both", 8, 4, SIMS // 2, seed=11)
    print(f"\n+8 points, 4 arms: race decisive {s['race']:.2f} in {s['cells']:.1f} cells; fixed {s['fixed']:.2f} in 32")
    assert s["drops_wrong"] <= bound(SIMS // 2)
    assert s["race_right"] >= s["fixed_right"] - 0.1
    assert s["cells"] < 0.95 * s["fixed_cells"]
    assert s["race_right"] == s["race"]  # every winner it named was the better arm


def test_null_races_stay_at_alpha_when_one_arm_is_far_noisier():
    """One arm's runs scatter 8x as far as the others' (a seed-sensitive objective): on the logit scale that arm
    loses accuracy on average, so dropping it is right; but a0 and a2 are equal, so any winner is false."""
    s = summary("seeds dominate", 0, 3, SIMS, seed=12, spread=8.0)
    print(f"\nnull race, 3 arms, one 8x as spread: decisive {s['race']:.3f}")
    assert s["race"] <= bound(SIMS)


def _race_bound():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import race_bound

    return race_bound


def test_the_optimal_race_dp_reproduces_the_fixed_tests_and_its_own_simulation():
    """benchmarks/race_bound.py's dynamic programme: made to decide at one look of 8 seeds it is the one-sided z test
    (variance known) and the one-sided t test on 7 df (variance estimated), with their textbook power; its chain on
    the scale-free state carries u from 3 to 12 seeds to u's exact law at 12; the optimum of a race spends fewer seeds
    than the fixed design, more without the variance than with it, and simulating its regions on t paths gives its
    level and power."""
    from scipy import stats

    rb = _race_bound()
    delta, level = 0.677, 0.025
    known = rb.operating(rb.KnownVariance(delta, 8, 8), rb.at_level(rb.KnownVariance(delta, 8, 8), 1.0), True)[0]
    assert known == pytest.approx(stats.norm.sf(stats.norm.isf(level) - delta * math.sqrt(8)), abs=0.003)
    chain = rb.ScaleInvariant(delta, 8, 8)
    t_power = stats.nct.sf(stats.t.isf(level, 7), 7, delta * math.sqrt(8))
    assert rb.operating(chain, rb.at_level(chain, 1.0), True)[0] == pytest.approx(t_power, abs=0.005)
    assert rb.operating(chain, rb.at_level(chain, 1.0), False)[0] == pytest.approx(level, abs=0.001)

    chain = rb.ScaleInvariant(delta, 3, 12)
    for alternative in (True, False):
        mass = chain.start(alternative)
        for n in range(3, 12):
            mass = chain.step_mass(n, mass, alternative)
        exact = rb.ScaleInvariant(delta, 12, 12).start(alternative)
        assert np.abs(np.cumsum(mass) - np.cumsum(exact)).max() < 0.005

    power = rb.t_fixed_power(8, delta)
    best_known = rb.optimum(rb.KnownVariance(delta, 3, 12), power)
    best = rb.optimum(chain, power)
    assert best["power"] == pytest.approx(power, abs=0.002) and best["level"] <= level + 0.0005
    assert 3 < best_known["seeds"] < best["seeds"] < 8
    sims = 40000
    simulated_level, simulated_power, seeds = rb.simulate_invariant(best, delta, 3, 12, np.random.default_rng(0), sims)
    assert simulated_level <= level + 3 * math.sqrt(level * (1 - level) / sims)
    assert simulated_power == pytest.approx(power, abs=0.015) and seeds == pytest.approx(best["seeds"], abs=0.1)


def test_the_four_arm_grid_races_behave_at_the_extremes():
    """The known-variance 4-arm races of benchmarks/race_bound.py: under the null a0 is rarely seen best AND beating
    all three; a huge effect ends at round 1 (12 cells); Holm's drops keep a null race far below alpha."""
    rb = _race_bound()
    rng = np.random.default_rng(0)
    assert rb.four_arms_fixed(8, 0.0, rng, 20000) <= 0.025
    assert rb.four_arms(3, 8, None, -np.inf, 5.0, rng, 200) == (1.0, 12.0)
    assert rb.four_arms(3, 8, None, -np.inf, 5.0, rng, 200, holm=True) == (1.0, 12.0)
    assert rb.four_arms(3, 10, 1.0, -np.inf, 0.0, rng, 2000, holm=True)[0] <= 0.025


CURVE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16)  # seeds per arm of the fixed designs the race is measured against


def table(sims: int) -> str:
    lines = ["| race settings | arms | effect of a0 | race: decisive | race: cells | fixed 8 seeds: decisive | "
             "fixed 8: cells | fixed at the race's power: cells | race / that |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, kw in PRESETS.items():
        for arms in (2, 4):
            for points in (0, 2, 4, 8):
                s = summary("both", points, arms, sims, fixed_seeds=CURVE if points else (), **kw)
                # below 5% power the curve is flat noise: no honest equal-power figure
                same = same_power_cells(s["race_right"], s["fixed_by_seeds"], arms) if s["race_right"] >= 0.05 else None
                versus = f"{same:.1f} | {s['cells'] / same:.2f}" if same else "— | —"
                lines.append(f"| {name} | {arms} | +{points} points | {s['race']:.3f} | {s['cells']:.1f} | "
                             f"{s['fixed']:.3f} | {s['fixed_cells']} | {versus} |")
    return "\n".join(lines)


def matrix_row(noise: str, layout: str, points: int, collapse: bool, sims: int, seed: int) -> str:
    """One row of the full simulation matrix (the race at its defaults): who it names, how often, at what cost."""
    arms, factor_of = LAYOUTS[layout]
    s = summary(noise, points, arms, sims, seed=seed, factor_of=factor_of, collapse=collapse,
                fixed_seeds=CURVE if points else ())
    same = same_power_cells(s["race_right"], s["fixed_by_seeds"], arms) if points and s["race_right"] >= 0.05 else None
    versus = f"{same:.1f} | {s['cells'] / same:.2f}" if same else "— | —"
    shape = layout + (", a1 collapses 1 run in 6" if collapse else "")
    if points or collapse:  # a collapsing rival is worse on average: a0 winning is right
        race_cols = f"{s['race'] - s['race_right']:.3f} | {s['race_right']:.3f}"
        fixed_cols = f"{s['fixed'] - s['fixed_right']:.3f} | {s['fixed_right']:.3f}"
    else:  # equal arms: any winner is false
        race_cols, fixed_cols = f"{s['race']:.3f} | —", f"{s['fixed']:.3f} | —"
    return (f"| {noise} | {shape} | +{points} | {race_cols} | {s['cells']:.1f} | {fixed_cols} | {s['fixed_cells']} | "
            f"{versus} |")


def matrix(sims: int, jobs: int, only: tuple[str, ...] = ()) -> str:
    """Every case the race was specified against: 2 and 4 arms and a 2x2 objective x rank (the effect in the
    objective, at both ranks), effects of 0/2/4/8 points, seed-dominated, pair-dominated and mixed noise, and a rival
    that collapses one run in six."""
    from concurrent.futures import ProcessPoolExecutor

    cases = [(noise, layout, points, False) for noise in SCENARIOS for layout in LAYOUTS for points in POINTS]
    cases += [(noise, "2 arms", points, True) for noise in SCENARIOS for points in (0, 4)]
    seeds = range(1000, 1000 + len(cases))
    if only:  # some layouts' rows only (their seeds as in the whole matrix)
        cases, seeds = zip(*[(c, s) for c, s in zip(cases, seeds, strict=True) if c[1] in only], strict=True)
    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(matrix_row, *zip(*cases, strict=True), [sims] * len(cases), seeds))
    head = ["| noise | arms | effect (points) | race: false winner | race: right winner | race: cells | "
            "fixed 8: false winner | fixed 8: right winner | fixed 8: cells | fixed at the race's power: cells | "
            "race / that |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + rows)


# the race's own family around its defaults: futility planned at other powers, alpha * t^rho at other rho
NEIGHBOURS = {"defaults (futility_power 0.3, spending 3)": {}, "futility_power 0.15": {"futility_power": 0.15},
              "futility_power 0.5": {"futility_power": 0.5}, "futility_power 0.7": {"futility_power": 0.7},
              "spending 2": {"rho": 2.0}, "spending 4": {"rho": 4.0},
              # the exact optimum's give-up shape (benchmarks/race_bound.py) as a futility that claims nothing
              "give up where t (difference / se) < 1.29 at 3 seeds, < 1.2 after (no planned futility)":
                  {"futility_power": 0.0, "give_up_t": {3: 1.29, None: 1.2}}}


def neighbours(sims: int, jobs: int) -> str:
    """The defaults against their neighbours where the bar is set (2 arms, +4 points, seeds dominate), on the same
    simulated sweeps: is any nearby setting closer to the fixed design's cells at equal power?"""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(_neighbour_row, NEIGHBOURS, [sims] * len(NEIGHBOURS)))
    head = ["| race settings (max_seeds 12) | race: right winner | race: cells | fixed 8: right winner | "
            "fixed at the race's power: cells | race / that |", "|---|---|---|---|---|---|"]
    return "\n".join(head + rows)


def _neighbour_row(name: str, sims: int) -> str:
    s = summary("seeds dominate", 4, 2, sims, seed=7, fixed_seeds=CURVE, **NEIGHBOURS[name])
    same = same_power_cells(s["race_right"], s["fixed_by_seeds"], 2)
    versus = f"{same:.1f} | {s['cells'] / same:.2f}" if same else "— | —"
    return f"| {name} | {s['race_right']:.3f} | {s['cells']:.1f} | {s['fixed_right']:.3f} | {versus} |"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=2000)
    parser.add_argument("--matrix", action="store_true", help="every noise source, layout and a collapsing rival")
    parser.add_argument("--jobs", type=int, default=2, help="processes for --matrix")
    parser.add_argument("--layout", action="append", choices=list(LAYOUTS), help="--matrix: this layout's rows only")
    parser.add_argument("--neighbours", action="store_true", help="the defaults against nearby race settings")
    args = parser.parse_args()
    if args.neighbours:
        print(neighbours(args.sims, args.jobs))
    else:
        print(matrix(args.sims, args.jobs, tuple(args.layout or ())) if args.matrix else table(args.sims))


# ------------------------------------------------------------------------------------ the race, for real
def run_ablate(repo_root, *args: str, timeout: int = 900):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=repo_root, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["objective=dpo"], "a race needs at least two arms; this grid has 1"),
    (["objective=dpo,simpo", "seed=0,1,2"], "a race chooses its seeds round by round"),
    (["objective=dpo,simpo", "hydra.sweeper.race={max_seeds:2}"], "max_seeds = 2 is below one round"),
    (["objective=dpo,simpo", "hydra.sweeper.race={max_cells:5}"], "max_cells = 5 is below one round: 2 arms x 3"),
    (["objective=dpo,simpo", "hydra.sweeper.race={max_seed:5}"], "unknown key(s) max_seed"),
    (["objective=dpo,simpo", "hydra.sweeper.race=3"], "hydra.sweeper.race = 3: true, false, or a mapping"),
    (["++hydra.sweeper.tune={dpo:{objective.beta:[0.1,0.2]},simpo:{objective.beta:[2.0,3.0]}}"],
     "a tuning race selects each objective's setting on validation pairs: set data.validation_pairs"),
    (["objective=dpo,simpo", "hydra.sweeper.race={spending:obf}"], "hydra.sweeper.race.spending = 'obf'"),
    (["++hydra.sweeper.tune={dpo:{objective.beta:[0.1,0.2]},simpo:{objective.beta:[2.0,3.0]}}",
      "data.validation_pairs=16", "data.split_seed=0,1"], "data.split_seed cannot be swept"),
], ids=["one arm", "seeds given", "max_seeds", "max_cells", "typo", "not a mapping", "tuning race without validation",
        "spending", "tuning race over two splits"])
def test_a_race_that_cannot_run_is_refused_before_anything_runs(repo_root, tmp_path, args, message):
    sweep_dir = tmp_path / "race"
    race = [] if any(a.startswith("hydra.sweeper.race=") for a in args) else ["hydra.sweeper.race=true"]
    proc = run_ablate(repo_root, "-m", *args, *race, f"hydra.sweep.dir={sweep_dir}", timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (sweep_dir / "cells").exists()


def test_ablate_race_is_the_sweep_with_hydra_sweeper_race_and_refuses_bad_settings_before_hydra(capsys):
    from ablate.cli import main, race_argv
    from ablate.sweep.race import RaceError

    grid = ["objective=dpo,simpo", "lora.r=8,16"]
    assert race_argv(grid, {}) == ["-m", *grid, "hydra.sweeper.race=true"]
    assert race_argv(grid, {"max_seeds": 10, "spending": "pocock", "max_cells": None}) == [
        "-m", *grid, "hydra.sweeper.race={max_seeds:10,spending:pocock}"]
    with pytest.raises(RaceError, match="as flags .* not both"):
        race_argv([*grid, "hydra.sweeper.race={max_seeds:6}"], {})
    with pytest.raises(RaceError, match="a race chooses its seeds round by round"):
        race_argv([*grid, "seed=0,1,2"], {})
    assert main(["race", *grid, "--max-gpu-hours", "0", "--print"]) == 2
    assert "max_gpu_hours = 0.0: a positive number of hours" in capsys.readouterr().err
    assert main(["race", grid[0], "--round-seeds", "2", grid[1], "--spending", "2", "--print"]) == 0  # intermixed
    assert capsys.readouterr().out.strip() == ("python -m ablate -m objective=dpo,simpo lora.r=8,16 "
                                               "'hydra.sweeper.race={round_seeds:2,spending:2.0}'")
    with pytest.raises(SystemExit) as exit_:  # a mistyped flag: the subcommand's usage, which lists the right ones
        main(["race", *grid, "--max-seed-count", "4"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage: ablate race" in err and "--max-seeds MAX_SEEDS" in err
    assert "ablate race: error: unrecognized arguments: --max-seed-count 4" in err


@pytest.mark.slow
def test_a_tiny_race_runs_in_rounds_resumes_from_its_record_and_refuses_another_grid(repo_root, tmp_path):
    import json

    from conftest import TINY

    sweep_dir = tmp_path / "race"
    args = ["-m", "objective=dpo,simpo", "hydra.sweeper.race={max_seeds:4}", f"hydra.sweep.dir={sweep_dir}", *TINY]
    proc = run_ablate(repo_root, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((sweep_dir / "race.json").read_text())
    rounds = record["rounds"]
    assert rounds[0]["n"] == 3 and len(rounds[0]["new_cells"]) == 6 and rounds[-1]["stop"] in ("winner", "equivalent",
                                                                                                "futile", "budget")
    assert [r["n"] for r in rounds] == list(range(3, 3 + len(rounds)))  # one seed more per live arm per round
    assert all(r["level"] < ALPHA for r in rounds) and rounds[-1]["spent"] <= ALPHA + 1e-12
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert summary["race"]["stop"] == rounds[-1]["stop"]
    assert summary["decisive"] == (rounds[-1]["stop"] == "winner")
    assert summary["decision"]["exploratory"].startswith("a race")
    assert "## Race: rounds of seeds" in (sweep_dir / "report" / "report.md").read_text()
    assert (sweep_dir / "report" / "plots" / "race.png").is_file()
    # collected once per round, after its look: each report states the look it was written after
    reported = [line.split(";")[0] for line in proc.stdout.splitlines() if line.startswith("Race: ")]
    assert reported[:-1] == [f"Race: round {r['round']} done, {len(r['live'])} arm(s) live" for r in rounds[:-1]]
    assert len(reported) == len(rounds) and reported[-1].startswith("Race: ") and "round" in reported[-1], reported
    cells = len(json.loads((sweep_dir / "sweep.json").read_text())["cells"])
    assert cells == sum(len(r["new_cells"]) for r in rounds)

    import subprocess
    import sys

    status = subprocess.run([sys.executable, "-m", "ablate.cli", "status", str(sweep_dir)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    stop = rounds[-1]["stop"]
    # why it ended, in the same words in the log and in `ablate status`: the winner, or the stop and its reason
    ended_line = (f"decisive winner objective = {rounds[-1]['winner']}" if stop == "winner"
                  else f"{stop} ({rounds[-1]['stop_reason']})")
    assert f"race ended at round {len(rounds)}: {ended_line};" in status.stdout, status.stdout + status.stderr
    assert f"race ended at round {len(rounds)} ({rounds[-1]['n']} seeds per live arm): {ended_line}" in proc.stdout
    assert f"cells {cells} of 8 (arms x max_seeds)" in status.stdout
    race_line_shown = next(line for line in status.stdout.splitlines() if line.startswith("race ended"))
    assert "live: objective=" in race_line_shown and "trainer." not in race_line_shown  # labels as the collector

    # the same race through `ablate race`: it has ended, nothing trains, no look repeats
    again = subprocess.run([sys.executable, "-m", "ablate.cli", "race", "objective=dpo,simpo", "--max-seeds", "4",
                            f"hydra.sweep.dir={sweep_dir}", *TINY], cwd=repo_root, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and f"race already ended at round {len(rounds)}: {ended_line}" in again.stdout, \
        again.stdout[-2000:] + again.stderr[-2000:]
    assert "hydra.sweeper.race={max_seeds:4}" in again.stdout.splitlines()[0]  # the command it ran, printed first
    assert json.loads((sweep_dir / "race.json").read_text())["rounds"] == rounds
    other = run_ablate(repo_root, *[a for a in args if not a.startswith("objective=")], "objective=dpo,ipo")
    assert other.returncode == 2 and "this race ran another grid" in other.stderr
    metric = run_ablate(repo_root, *args, "select.metric=logratio_accuracy")  # its looks spent alpha on avglogp
    assert metric.returncode == 2 and "race.json: this race" in metric.stderr, metric.stderr[-2000:]
    # collected afterwards under another rule: the verdict stays the race's, and the report says whose rule it was
    from ablate.collect import collect
    from ablate.config import select_config

    other_rule = collect(sweep_dir, select_config(["metric=logratio_accuracy"]), plots=False)
    assert (other_rule["verdict"], other_rule["winner"]) == (summary["verdict"], summary["winner"])
    assert ("The race decided with select.metric='avglogp_accuracy' (this collection: 'logratio_accuracy'): its "
            "decision stands under its own rule") in other_rule["explanation"]


def test_a_tuning_race_runs_each_space_in_rounds_on_validation_pairs_and_claims_nothing(repo_root, tmp_path):
    """hydra.sweeper.tune with hydra.sweeper.race: the settings race within each objective's space on validation
    pairs, a settled space gets no more seeds, the selection takes no dropped setting, and the sweep stays exploratory
    (its confirmation is the claim). Futility off and max_seeds 4, so a space not settled at round 1 runs round 2."""
    import json

    from conftest import TINY

    from ablate.sweepdir.layout import override_values

    sweep_dir = tmp_path / "tuning_race"
    args = ["-m", "++hydra.sweeper.tune={dpo:{trainer.lr:[1e-9,0.01]},simpo:{trainer.lr:[1e-9,0.01]}}",
            "hydra.sweeper.race={max_seeds:4,futility_power:0}", "data.validation_pairs=16",
            "hydra.sweeper.confirm=3", f"hydra.sweep.dir={sweep_dir}", *TINY]
    proc = run_ablate(repo_root, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((sweep_dir / "race.json").read_text())
    groups = record["tuning"]["groups"]
    assert sorted(set(groups.values())) == ["objective=dpo", "objective=simpo"] and len(groups) == 4
    rounds = record["rounds"]
    assert rounds[0]["n"] == 3 and len(rounds[0]["new_cells"]) == 12 and rounds[-1]["stop"] == "selected"
    assert rounds[0]["pairs"] == 16  # the validation pairs only (16 of the 32 held-out pairs)
    assert all(d["stop"] in ("selected", "equivalent", "budget") for d in rounds[-1]["groups"].values())
    open_after_1 = [g for g, d in rounds[0]["groups"].items() if not d["stop"]]
    assert [r["n"] for r in rounds] == ([3, 4] if open_after_1 else [3])
    if open_after_1:  # round 2 ran exactly the arms of the spaces round 1 left open, one more seed each
        assert sorted({groups[a] for a in rounds[1]["ran"]}) == sorted(open_after_1)
    dropped = {arm for r in rounds for arm in r["drops"]}
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert not summary["decisive"] and summary["decision"]["exploratory"].startswith("a tuning sweep")
    assert "Tuning race (selection on validation pairs, no claim)" in summary["decision"]["explanation"]
    (group,) = summary["tuning"]["groups"]
    assert all(e["selected_arm"] not in dropped for e in group["selection"].values())
    assert "dropped by the tuning race" in (sweep_dir / "report" / "report.md").read_text()
    from ablate.sweep.race import status_lines

    shown = "\n".join(status_lines(sweep_dir))  # what `ablate status` prints under its cell table
    assert "race ended at round" in shown and all(f"{g}: settled at round" in shown for g in set(groups.values()))
    # hydra.sweeper.confirm: the selected settings on 3 fresh seeds (past the race's), decided on the test pairs
    confirm = json.loads((tmp_path / "tuning_race_confirm" / "report" / "summary.json").read_text())
    assert confirm["decision"]["explanation"].startswith(f"Confirmation of {sweep_dir.resolve()}")
    confirmed = json.loads((tmp_path / "tuning_race_confirm" / "sweep.json").read_text())["cells"]
    fresh = rounds[-1]["n"]
    seeds = sorted({int(override_values(c["overrides"])["seed"]) for c in confirmed})
    assert seeds == list(range(fresh, fresh + 3)) and len(confirmed) == 2 * 3
    assert not (tmp_path / "tuning_race_confirm" / "race.json").exists()


def test_a_tuning_look_drops_a_setting_only_for_a_better_setting_of_its_own_space():
    """Two spaces of 3 settings: in space A one setting is far better (+1.2 logits), in space B all are alike, and
    every arm of B is worse than A's best. Drops happen in A only, each by A's best; B is never compared with A."""
    from ablate.sweep.race import _tuning_look

    rng = np.random.default_rng(5)
    values = {}
    for space, shifts in (("A", (1.2, 0.0, 0.0)), ("B", (-1.0, -1.0, -1.0))):
        sim = simulate(rng, 6, tau=0.3, sigma=0.3, het=0.0, arms=3)
        for i, shift in enumerate(shifts):  # a0 of simulate gets no effect (delta 0): shift by hand on the logit
            seeds, x = sim[f"a{i}"]
            p = np.clip(x.mean(axis=0), 0.05, 0.95)
            logit = np.log(p / (1 - p)) + shift
            values[f"{space}{i}"] = (seeds, (rng.random(x.shape) < 1 / (1 + np.exp(-logit))).astype(float))
    group_of = {arm: arm[0] for arm in values}
    look = _tuning_look(values, STRATA, WEIGHTS, group_of, rule(), [], {}, max_seeds=8, accuracy=True,
                        futility_power=0.0)
    assert set(look["drops"]) == {"A1", "A2"} and all(why["by"] == "A0" for why in look["drops"].values())
    assert look["groups"]["A"] == {"live": ["A0"], "stop": "selected", "best": "A0", "round": 1, "selected": "A0"}
    assert look["groups"]["B"]["stop"] is None and look["live"] == {"B0", "B1", "B2"} and look["stop"] is None


# ------------------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("hours, stops", [(7.0, True), (8.5, False)])
def test_a_gpu_hour_budget_stops_the_race_before_a_round_it_cannot_pay(tmp_path, hours, stops):
    """Round 1 (2 arms x 3 seeds) took 30 minutes per cell on 2 GPUs: 6 device-hours. The next round's 2 cells would
    take about 2 more: a budget of 7 stops the race before them, one of 8.5 lets it go on."""
    import json

    from sweep_fixtures import Cell, write_sweep

    from ablate.sweep.race import RaceSettings, device_hours, next_round, settings_of, status_lines

    cells = [Cell([f"objective={o}", f"seed={s}"], extra_status={"elapsed_s": 1800.0, "gpus": 2})
             for o in ("dpo", "simpo") for s in range(3)]
    sweep_dir = write_sweep(tmp_path / "race", cells)
    assert device_hours(sweep_dir) == pytest.approx((6.0, 1.0))
    settings = settings_of({"max_gpu_hours": hours})
    record = {"format": 1, "settings": dict(vars(settings)), "select": {"min_seeds": 3},
              "arms": [["objective=dpo"], ["objective=simpo"]],
              "rounds": [{"round": 1, "n": 3, "live": ["objective=dpo", "objective=simpo"], "drops": {}, "stop": None,
                          "new_cells": [" ".join(c.overrides) for c in cells], "gpu_hours": 6.0}]}
    (sweep_dir / "race.json").write_text(json.dumps(record))
    plan = next_round(sweep_dir, record)
    if stops:
        assert plan is None and record["rounds"][-1]["stop"] == "budget"
        assert "need about 2 device-hours" in record["rounds"][-1]["stop_reason"]
        assert json.loads((sweep_dir / "race.json").read_text())["rounds"][-1]["stop"] == "budget"
    else:
        assert plan["new"] == ["objective=dpo seed=3", "objective=simpo seed=3"]
    assert f"device-hours 6 of max_gpu_hours = {hours:g}" in "\n".join(status_lines(sweep_dir))
    assert RaceSettings(**record["settings"]).max_gpu_hours == hours


def test_ablate_status_follows_a_local_round_while_its_process_lives(tmp_path):
    """A local race marks the round in flight with its process (host, pid): `ablate status --watch` follows it
    between rounds, and once the process is gone (Ctrl-C, kill -9) status says so instead of "in flight"."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from ablate.sweep.race import RaceSettings, in_flight, open_race, status_lines

    arms = [["objective=dpo"], ["objective=simpo"]]
    record = open_race(tmp_path, arms, RaceSettings(), rule())
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid, alive in ((os.getpid(), True), (int(gone.stdout), False)):
        record["pending"] = {"round": 1, "n": 3, "new": ["objective=dpo seed=0"], "live": [" ".join(a) for a in arms],
                             "process": {"host": socket.gethostname(), "pid": pid}}
        (tmp_path / "race.json").write_text(json.dumps(record))
        head = status_lines(tmp_path)[0]
        assert in_flight(tmp_path) is alive
        assert head.startswith("race round 1 in flight (3 seeds per live arm)" if alive else
                               f"race round 1 interrupted (the process that ran it is gone): run the same command "
                               f"with hydra.sweep.dir={tmp_path} to continue"), head


@pytest.mark.parametrize("race, message", [
    ({"max_gpu_hours": 0}, "max_gpu_hours = 0: a positive number of hours"),
    ({"spending": "obf"}, "spending = 'obf': \"pocock\", or a positive rho"),
    ({"spending": -1}, "spending = -1"),
    ({"spending": float("nan")}, "spending = nan"),  # would pass `<= 0` and fail after round 1's training
    ({"max_gpu_hours": "lots"}, "max_gpu_hours = 'lots': a positive number of hours"),  # was a TypeError (exit 1)
    ({"max_seeds": "twelve"}, "max_seeds = 'twelve': a whole number"),
    ({"max_seeds": 1}, "max_seeds = 1: at least 2"),
    ({"round_seeds": 0}, "round_seeds = 0: must be at least 1"),
    ({"first_seed": -1}, "first_seed = -1: seed ids start at 0"),
    ({"max_cells": 0}, "max_cells = 0: a positive whole number"),
    ({"futility_power": 1.5}, "futility_power = 1.5: a probability in [0, 1)"),
])
def test_bad_race_settings_name_the_key(race, message):
    import re

    from ablate.sweep.race import RaceError, settings_of

    with pytest.raises(RaceError, match=re.escape(message)):
        settings_of(race)


def test_a_torn_race_record_is_reported_and_claims_nothing(tmp_path):
    """race.json cut short (a disk filled mid-write by hand, say): the collector still writes its report, says the
    record is unreadable, and names no winner from it."""
    from sweep_fixtures import Cell, write_sweep

    from ablate.collect import collect, describe
    from ablate.config import select_config

    cells = [Cell([f"objective={o}", f"seed={s}"]) for o in ("dpo", "simpo") for s in range(3)]
    sweep_dir = write_sweep(tmp_path / "race", cells)
    (sweep_dir / "race.json").write_text('{"format": 1, "rounds": [')
    summary = collect(sweep_dir, select_config([]), plots=False)
    assert summary["decisive"] is False and summary["winner"] is None
    assert "race.json: unreadable" in summary["decision"]["explanation"]
    assert "race.json: unreadable" in describe(summary)


def test_the_report_draws_the_race_and_removes_the_drawing_when_the_record_is_torn(tmp_path):
    """report/plots/race.png is drawn from race.json's rounds (each arm's mean per look, the drops, cells spent) and
    shown in the race section; a record that can no longer be read leaves no stale drawing behind."""
    import json

    from sweep_fixtures import GOLDEN_SIZES, Cell, counts_table, write_sweep

    from ablate.collect import collect
    from ablate.config import select_config

    arms = ["objective=dpo", "objective=simpo", "objective=ipo"]
    cells = [Cell([arm, f"seed={s}"], pairs=counts_table({"clean": 45 - 5 * i + s, "verbose_rejected": 30},
                                                         GOLDEN_SIZES))
             for i, arm in enumerate(arms) for s in range(4)]
    sweep_dir = write_sweep(tmp_path / "race", cells)
    why = {"look": 1, "seeds": 3, "by": arms[0], "difference": 0.2, "ci_low": 0.05, "ci_high": 0.35, "level": 0.002}
    common = {"factor_of": {a: a.split("=")[1] for a in arms}, "gpu_hours": 0.01, "z": 3.0, "best": arms[0]}
    rounds = [{"round": 1, "n": 3, "ran": arms, "live": arms[:2], "new_cells": [f"c{i}" for i in range(9)],
               "level": 0.002, "spent": 0.002, "point": {arms[0]: 0.8, arms[1]: 0.7, arms[2]: 0.6},
               "drops": {arms[2]: why}, "stop": None, "winner": None, "fixed_seeds": 6, **common},
              {"round": 2, "n": 4, "ran": arms[:2], "live": arms[:2], "new_cells": ["c9", "c10"], "level": 0.004,
               "spent": 0.006, "point": {arms[0]: 0.81, arms[1]: 0.69}, "drops": {arms[1]: why | {"look": 2}},
               "stop": "winner", "winner": "dpo", **common}]
    record = {"format": 1, "arms": [[a] for a in arms], "settings": {"max_seeds": 12}, "rounds": rounds}
    (sweep_dir / "race.json").write_text(json.dumps(record))
    collect(sweep_dir, select_config([]))
    plot = sweep_dir / "report" / "plots" / "race.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(plots/race.png)" in (sweep_dir / "report" / "report.md").read_text()
    (sweep_dir / "race.json").write_text('{"format": 1, "rounds": [')
    collect(sweep_dir, select_config([]))
    assert not (sweep_dir / "report" / "plots" / "race.png").exists()


def test_a_race_compares_the_best_arm_with_its_rivals_only():
    """2x2 objective x rank: x-r8 far better than everything, x-r16 as bad as the y arms. The y arms are dropped by
    Holm over the TWO rivals (levels level/2, then level); x-r16 shares the best arm's objective, so it is neither
    compared nor dropped, and the race ends with the winner x."""
    rng = np.random.default_rng(7)
    sim = simulate(rng, 6, tau=0.2, sigma=0.3, het=0.0, arms=4)
    values = {}
    for arm, shift in (("x8", 1.5), ("x16", -1.0), ("y8", -1.0), ("y16", -1.0)):
        seeds, x = sim[f"a{len(values)}"]
        p = np.clip(x.mean(axis=0), 0.05, 0.95)
        logit = np.log(p / (1 - p)) + shift
        values[arm] = (seeds, (rng.random(x.shape) < 1 / (1 + np.exp(-logit))).astype(float))
    factor_of = {"x8": "x", "x16": "x", "y8": "y", "y16": "y"}
    look = race_look(values, STRATA, WEIGHTS, factor_of, rule(), [], {}, max_seeds=8, accuracy=True)
    assert look["best"] == "x8" and {c["arm"] for c in look["comparisons"]} == {"y8", "y16"}
    assert set(look["drops"]) == {"y8", "y16"}
    assert sorted(why["level"] for why in look["drops"].values()) == pytest.approx([look["level"] / 2, look["level"]])
    assert look["stop"] == "winner" and look["winner"] == "x"


def _three_seeds_each() -> list:
    """Finished cells of DPO and SimPO, seeds 0..2, on 40 held-out pairs (DPO right on 30-32 of them, SimPO 20-22)."""
    from sweep_fixtures import Cell, counts_table

    right = {"dpo": 30, "simpo": 20}
    return [Cell([f"objective={o}", f"seed={s}"], counts_table({"clean": right[o] + s}, {"clean": 40}))
            for o in ("dpo", "simpo") for s in range(3)]


def test_a_race_is_refused_in_a_sweep_the_collector_has_already_tested(repo_root, tmp_path):
    """A fixed sweep collected once (its ledger holds a look that spent alpha), then a race started in the same
    directory: the race would test the same runs from a fresh alpha, a second chance for a false winner. Refused
    before anything runs; a sweep whose collections were all exploratory (a tuning sweep's) may be raced."""
    import json

    from sweep_fixtures import write_sweep

    from ablate.collect import collect
    from ablate.config import select_config
    from ablate.sweep.race import RaceError, open_race, settings_of

    cells = _three_seeds_each()
    sweep_dir = write_sweep(tmp_path / "fixed", cells)
    collect(sweep_dir, select_config([]), plots=False)
    arms = [["objective=dpo"], ["objective=simpo"]]
    with pytest.raises(RaceError, match=r"decisions.jsonl: the collector has already tested this sweep \(1 look"):
        open_race(sweep_dir, arms, settings_of(True), rule())
    assert not (sweep_dir / "race.json").exists()

    explored = write_sweep(tmp_path / "explored", cells)  # only exploratory collections: nothing was claimed
    (explored / "decisions.jsonl").write_text(json.dumps({"format": 1, "test": {}, "primary": True,
                                                          "exploratory": "a tuning sweep"}) + "\n")
    assert open_race(explored, arms, settings_of(True), rule())["rounds"] == []
    # the race goes on only under the rule its looks spent alpha on (a sweep file that changed, say)
    with pytest.raises(RaceError, match=r"decides with select.alpha=0.05; the command asks for select.alpha=0.1"):
        open_race(explored, arms, settings_of(True), rule(alpha=0.1))

    proc = run_ablate(repo_root, "-m", "objective=dpo,simpo", "hydra.sweeper.race=true",
                      f"hydra.sweep.dir={sweep_dir}", timeout=120)
    assert proc.returncode == 2 and "the collector has already tested this sweep" in proc.stderr, proc.stderr[-2000:]


def test_a_race_begun_under_other_settings_is_refused_with_the_override_that_continues_it(tmp_path):
    """A race.json written under the former defaults (8 seeds, Pocock spending), continued with
    hydra.sweeper.race=true after the defaults changed: its looks spent alpha over 8 seeds, so the new defaults may
    not take the next look; the refusal gives the override that continues it, and that override is accepted."""
    import json

    from ablate.sweep.race import RaceError, RaceSettings, open_race, settings_of

    arms = [["objective=dpo"], ["objective=simpo"]]
    former = RaceSettings(max_seeds=8, spending="pocock")
    open_race(tmp_path, arms, former, rule())
    with pytest.raises(RaceError, match=r"continue it with 'hydra.sweeper.race=\{max_seeds:8,spending:pocock\}' "
                                        r"\(ablate race: --max-seeds 8 --spending pocock\)"):
        open_race(tmp_path, arms, settings_of(True), rule())
    assert open_race(tmp_path, arms, settings_of({"max_seeds": 8, "spending": "pocock"}), rule())["rounds"] == []
    with pytest.raises(RaceError, match=r"hydra.sweeper.race=\{max_seeds:8,spending:pocock\}"):  # a budget added
        open_race(tmp_path, arms, settings_of({"max_seeds": 8, "spending": "pocock", "max_cells": 40}), rule())
    with pytest.raises(RaceError, match="this race ran another grid"):
        open_race(tmp_path, [["objective=dpo"], ["objective=ipo"]], former, rule())
    # a select.* override rides in every arm's overrides: the refusal names the rule, not "another grid"
    with pytest.raises(RaceError, match=r"this race decides with select.alpha=0.05; the command asks for "
                                        r"select.alpha=0.1"):
        open_race(tmp_path, [[*arm, "select.alpha=0.1"] for arm in arms], former, rule(alpha=0.1))
    assert open_race(tmp_path, [[*arm, "select.alpha=0.05"] for arm in arms], former, rule())["arms"] == arms
    assert json.loads((tmp_path / "race.json").read_text())["settings"]["spending"] == "pocock"


@pytest.mark.parametrize("failed_cells", ["undetermined", "worst"])
def test_a_round_with_a_failed_run_names_it_and_goes_on_only_when_failures_count(tmp_path, failed_cells):
    """Round 1 with SimPO's seed 2 failed (a NaN loss): under failed_cells=undetermined no look is taken and the log
    names the cell, its error and what a failed_cells=worst race would do; under worst the failed run counts as the
    arm's worst outcome and the look is taken."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf
    from sweep_fixtures import Cell, write_sweep

    from ablate.config import select_config
    from ablate.sweep.race import next_round, settings_of, take_look

    cells = _three_seeds_each()
    cells[-1] = Cell(["objective=simpo", "seed=2"], state="failed", error="NonFiniteLoss: step 88: loss is nan")
    sweep_dir = write_sweep(tmp_path / "race", cells)
    select = SimpleNamespace(**OmegaConf.to_container(select_config([f"failed_cells={failed_cells}"]), resolve=True))
    record = {"format": 1, "settings": dict(vars(settings_of(True))), "select": dict(vars(select)),
              "arms": [["objective=dpo"], ["objective=simpo"]], "rounds": []}
    lines = []
    look = take_look(sweep_dir, record, next_round(sweep_dir, record), select, log=lines.append)
    if failed_cells == "undetermined":
        assert look is None and record["rounds"] == []
        assert "race round 1 incomplete: objective=simpo" in lines[0] and "loss is nan" in lines[0]
        assert "select.failed_cells=worst" in lines[1]
        # the collector's rerun hint is the race's own command, which goes on from race.json: no seed= (refused)
        import json

        from ablate.collect.decide import rerun_command
        from ablate.collect.load import load_sweep

        (sweep_dir / "race.json").write_text(json.dumps(record))
        assert rerun_command(load_sweep(sweep_dir)) == (
            f"python -m ablate -m objective=dpo,simpo hydra.sweeper.race=true hydra.sweep.dir={sweep_dir.resolve()}")
    else:
        assert look is not None and len(record["rounds"]) == 1 and not any("incomplete" in line for line in lines)
