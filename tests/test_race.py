"""Racing (ablate.collect.race) by simulation, before any cell trains: null races name a false winner at most at
alpha over all their rounds; races against the fixed design on power and cells spent.

Simulated sweeps are tests/test_calibration.py's (300 held-out pairs, seed luck, seed x pair interaction,
arm-specific pair effects); arm a0 carries the true effect. A race runs select.min_seeds (3) seeds per arm, then
one more per live arm per round, up to max_seeds, with the collector's own race_look.

    python tests/test_race.py [--sims 2000]      # the README's table
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
from test_calibration import ALPHA, SCENARIOS, STRATA, WEIGHTS, rule, simulate

from ablate.collect.decide import compare_arms
from ablate.collect.race import race_look

SIMS = 400
POINTS = {0: 0.0, 2: 0.15, 4: 0.3, 8: 0.6}  # accuracy points -> logit shift of arm a0 (about)


def bound(sims: int) -> float:
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


def race(rng, scenario: str, delta: float, arms: int, *, factor_of: dict | None = None, max_seeds: int = 8,
         round_seeds: int = 1, collapse: bool = False) -> tuple[dict, int, dict, list[dict]]:
    """(the stopping look, cells spent, the fixed design's decision at 8 seeds and full alpha, all looks)."""
    tau, sigma, het = SCENARIOS[scenario]
    full = simulate(rng, max(max_seeds, 8), tau=tau, sigma=sigma, het=het, delta=delta, arms=arms)
    if collapse:  # arm a1 collapses in 1 run of 6: 2/3 of its right pairs lost
        seeds, x = full["a1"]
        hit = rng.random(len(seeds)) < 1 / 6
        full["a1"] = (seeds, np.where(hit[:, None] & (rng.random(x.shape) < 2 / 3), 0.0, x))
    factor_of = factor_of or {arm: arm for arm in full}
    select = rule(max_seeds=max_seeds)
    live, dropped, history, looks, ran = list(full), {}, [], [], dict.fromkeys(full, 0)
    n = select.min_seeds
    while True:
        for arm in live:
            ran[arm] = n
        values = {arm: (full[arm][0][:n], full[arm][1][:n]) for arm in live}
        look = race_look(values, STRATA, WEIGHTS, factor_of, select, history, dropped, max_seeds=max_seeds,
                         accuracy=True)
        looks.append(look)
        history.append({"n": n, "z": look["z"]})
        dropped.update(look["drops"])
        live = [arm for arm in live if arm not in look["drops"]]
        if look["stop"]:
            fixed = compare_arms({a: (s[:8], x[:8]) for a, (s, x) in full.items()}, STRATA, WEIGHTS, factor_of,
                                 rule(), accuracy=True)
            return look, sum(ran.values()), fixed, looks
        n = min(n + round_seeds, max_seeds)


def summary(scenario: str, points: int, arms: int, sims: int, seed: int = 0, **kw) -> dict:
    rng = np.random.default_rng(seed)
    rows = [race(rng, scenario, POINTS[points], arms, **kw) for _ in range(sims)]
    truth = (kw.get("factor_of") or {}).get("a0", "a0")
    return {"race": sum(r[0]["stop"] == "winner" for r in rows) / sims,
            "race_right": sum(r[0]["stop"] == "winner" and r[0]["winner"] == truth for r in rows) / sims,
            "cells": sum(r[1] for r in rows) / sims,
            "fixed": sum(r[2]["decisive"] for r in rows) / sims,
            "fixed_right": sum(r[2]["decisive"] and r[2]["best_arm"] == "a0" for r in rows) / sims,
            "fixed_cells": 8 * arms,
            "drops_wrong": sum(any(arm == "a0" for look in r[3] for arm in look["drops"]) for r in rows) / sims}


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


def test_the_best_arm_is_rarely_dropped_and_the_race_spends_fewer_cells():
    """+8 points in one of 4 arms: the better arm is almost never dropped, and the race stops well before the
    fixed design's 32 cells."""
    s = summary("both", 8, 4, SIMS // 2, seed=11)
    print(f"\n+8 points, 4 arms: race decisive {s['race']:.2f} in {s['cells']:.1f} cells; fixed {s['fixed']:.2f} in 32")
    assert s["drops_wrong"] <= bound(SIMS // 2)
    assert s["cells"] < 0.85 * s["fixed_cells"]
    assert s["race_right"] == s["race"]  # every winner it named was the better arm


def table(sims: int) -> str:
    lines = ["| arms | effect of a0 | race: decisive | race: cells | fixed 8 seeds: decisive | fixed: cells |",
             "|---|---|---|---|---|---|"]
    for arms in (2, 4):
        for points in (0, 2, 4, 8):
            s = summary("both", points, arms, sims)
            lines.append(f"| {arms} | +{points} points | {s['race']:.3f} | {s['cells']:.1f} | {s['fixed']:.3f} | "
                         f"{s['fixed_cells']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=2000)
    print(table(parser.parse_args().sims))


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
], ids=["one arm", "seeds given", "max_seeds", "max_cells", "typo", "not a mapping"])
def test_a_race_that_cannot_run_is_refused_before_anything_runs(repo_root, tmp_path, args, message):
    sweep_dir = tmp_path / "race"
    race = [] if any(a.startswith("hydra.sweeper.race=") for a in args) else ["hydra.sweeper.race=true"]
    proc = run_ablate(repo_root, "-m", *args, *race, f"hydra.sweep.dir={sweep_dir}", timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert message in proc.stderr
    assert not (sweep_dir / "cells").exists()


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
    cells = len(json.loads((sweep_dir / "sweep.json").read_text())["cells"])
    assert cells == sum(len(r["new_cells"]) for r in rounds)

    import subprocess
    import sys

    status = subprocess.run([sys.executable, "-m", "ablate.cli", "status", str(sweep_dir)], cwd=repo_root,
                            capture_output=True, text=True, timeout=120)
    assert f"race ended at round {len(rounds)}: {rounds[-1]['stop']}" in status.stdout, status.stdout + status.stderr
    assert f"cells {cells} of 8 (arms x max_seeds)" in status.stdout

    again = run_ablate(repo_root, *args)  # the same command: the race has ended, nothing trains, no look repeats
    assert again.returncode == 0 and "race already ended" in again.stdout
    assert json.loads((sweep_dir / "race.json").read_text())["rounds"] == rounds
    other = run_ablate(repo_root, *[a for a in args if not a.startswith("objective=")], "objective=dpo,ipo")
    assert other.returncode == 2 and "this race ran another grid" in other.stderr
