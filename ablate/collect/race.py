"""Racing: seeds in rounds, arms dropped once decisively beaten, the race stopped at a decision.

A fixed design spends the same seeds on every arm, also on arms beaten after three. A race runs the
grid in rounds of shared seed ids (round 1: select.min_seeds seeds per arm, then `round_seeds` more
per live arm) and after each round decides, on the live arms' seeds (paired: the same seed ids in
every live arm), with the rule of ablate.collect.decide at this look's level:

- the LEVEL of look k is the alpha-spending boundary of ablate.collect.sequential over information
  n / max_seeds, so every claim the race makes holds at alpha over all its rounds;
- DROP: the best live arm is compared with every live RIVAL (an arm with another value of
  select.factor; arms that share the best arm's value, e.g. its other LoRA rank, are not compared and
  run on); Holm's step-down over those comparisons (the strongest at level/m, the next at
  level/(m-1), ...) drops each arm it rejects: "X is not the best" is a claim, and Holm keeps the
  chance of any false one at the look's level;
- STOP, winner: every arm with another value of select.factor has been dropped (each beaten
  decisively, with the minimum gain, when it was dropped; the winner beats the live ones now);
- STOP, equivalent: every live rival is equivalent to the best within select.equivalence_margin (two
  one-sided tests at the look's level): no winner, and more seeds would not make one worth having;
- STOP, futile: some live rival could not be resolved within max_seeds with probability
  `futility_power` (seed planning at the levels the later looks would get, for select.min_effect or
  the observed difference). Futility claims nothing, so it costs power, never error;
- STOP, budget: max_seeds reached (or the cell budget cannot pay another round).

`race_look` does no I/O: tests/test_race.py simulates races with it, and ablate.sweep.race runs them;
`race_summary` reads a race's record (race.json) for the collector's report.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ablate.collect.decide import RACE_CLAIMS, versus
from ablate.collect.sequential import at_alpha, boundary, nominal_alpha, spent_by
from ablate.collect.stats import contrast, equivalent, pair_weights, seeds_to_resolve, t_quantile, z_quantile
from ablate.sweepdir.layout import RACE_JSON

STOPS = ("winner", "equivalent", "futile", "budget", "selected")  # selected: a tuning race's every space decided
EXPLORATORY = RACE_CLAIMS


def race_look(values: dict[str, tuple[list[int], np.ndarray]], strata: np.ndarray, weights: dict,
              factor_of: dict[str, object], select, history: list[dict], dropped: dict[str, dict], *,
              max_seeds: int, accuracy: bool, futility_power: float = 0.3, rho: float | None = None,
              yardstick: bool = True) -> dict:
    """The decision after one round. `values`: the LIVE arms' (seeds, seeds x pairs), the same seeds in each;
    `history`: earlier looks ({"n", "z"}); `dropped`: arms dropped before (arm -> why); `yardstick`: plan the fixed
    design at round 1 (the report's comparison; a tuning race, which claims nothing, has no use for it).

    {"look", "n", "level", "z", "spent", "best", "drops": {arm: why}, "stop": None or one of STOPS, "winner",
     "comparisons"}."""
    alpha = select.alpha
    n = min(len(seeds) for seeds, _ in values.values())
    past = tuple((h["n"], h["z"]) for h in history if math.isfinite(h["z"]))  # a look at level 0 bounds nothing
    spent = spent_by(alpha, history[-1]["n"] / max_seeds, rho) if history else 0.0
    increment = spent_by(alpha, n / max_seeds, rho) - spent
    z = boundary(past, n, increment)
    level = nominal_alpha(z) if math.isfinite(z) else 0.0
    w = pair_weights(strata, weights)
    point = {arm: float(x.mean(axis=0) @ w) for arm, (_, x) in values.items()}
    best = max(point, key=point.get)
    out = {"look": len(history) + 1, "n": n, "level": level, "z": z, "spent": spent + max(increment, 0.0),
           "best": best, "point": point, "drops": {}, "stop": None, "winner": None, "comparisons": []}
    # only the best arm's RIVALS (another value of the factor) are compared: in a 2x2 objective x rank, the best
    # arm's other rank makes no claim about the objective, and comparing it would only widen Holm's family
    others = [arm for arm in values if factor_of[arm] != factor_of[best]]
    if level > 0 and others:
        rule = at_alpha(select, level)
        first = {arm: versus(values, best, arm, strata, weights, rule, accuracy=accuracy) for arm in others}
        out["comparisons"] = list(first.values())
        order = sorted(others, key=lambda a: _strength(first[a]), reverse=True)
        for i, arm in enumerate(order):  # Holm's step-down: stop at the first comparison it cannot reject
            step = versus(values, best, arm, strata, weights, at_alpha(select, level / (len(order) - i)),
                          accuracy=accuracy)
            if not step["decisive"]:
                break
            out["drops"][arm] = {"look": out["look"], "seeds": n, "by": best, "difference": step["difference"],
                                 "ci_low": step["ci_low"], "ci_high": step["ci_high"],
                                 "level": level / (len(order) - i)}
    # the report's yardstick is planned on round 1, where every arm is compared (seed planning is costly: once)
    out["fixed_seeds"] = fixed_design_seeds(out["comparisons"], select) if yardstick and not history else None
    gone = set(dropped) | set(out["drops"])
    rivals_live = [a for a in values if a not in gone and factor_of[a] != factor_of[best]]
    rivals_all = [a for a in factor_of if factor_of[a] != factor_of[best]]
    if rivals_all and not rivals_live and all(a in gone for a in rivals_all):
        out["stop"], out["winner"] = "winner", factor_of[best]
        return out
    if level > 0 and rivals_live and select.equivalence_margin:
        rule = at_alpha(select, level)
        same = [equivalent(_contrast(values, best, a, strata, weights, rule), select.equivalence_margin, level)
                for a in rivals_live]
        if all(same):
            out["stop"] = "equivalent"
            return out
    if n >= max_seeds:
        out["stop"] = "budget"
        return out
    history_now = (*past, (n, z)) if math.isfinite(z) else past
    spent_now = out["spent"]

    def alpha_at(m: int) -> float:
        return nominal_alpha(boundary(history_now, m, spent_by(alpha, m / max_seeds, rho) - spent_now))

    final_level = alpha_at(max_seeds) if futility_power > 0 else 0.0
    for arm in rivals_live if futility_power > 0 else []:  # futility_power 0: no futility stop
        c = next((c for c in out["comparisons"] if c["arm"] == arm), None)
        if c is None or not math.isfinite(c["one_seed_var"]):
            continue
        if FUTILITY == "planned":
            effect = select.min_effect or abs(c["difference"])
            hopeless = seeds_to_resolve(effect, c["one_seed_var"], c["pair_var"], alpha_at, futility_power,
                                        start=n + 1, limit=max_seeds) is None
        else:
            hopeless = conditional_power(c, n, max_seeds, final_level, select.min_effect) < futility_power
        if hopeless:
            out["stop"] = "futile"
            out["futile_against"] = arm
            return out
    return out


FUTILITY = "planned"


def fixed_design_seeds(comparisons: list[dict], select) -> int | None:
    """Seeds per arm a fixed design (one look, full alpha) planned for select.power would need to call every one of
    these comparisons at the difference seen now (or select.min_effect where larger): the race's yardstick.
    None when some difference could not be called within 100 seeds (or none is known yet)."""
    needed = []
    for c in comparisons:
        if not math.isfinite(c.get("one_seed_var", math.nan)):
            return None
        effect = max(abs(c["difference"]), select.min_effect or 0.0)
        needed.append(seeds_to_resolve(effect, c["one_seed_var"], c["pair_var"], select.alpha, select.power))
    return None if not needed or None in needed else max(needed)


def conditional_power(comparison: dict, n: int, max_seeds: int, level: float, min_effect: float = 0.0) -> float:
    """P(the test at max_seeds calls this comparison, given its estimate now at n seeds), the rest of the seeds
    drawn under the current trend (or under select.min_effect where that is larger). The held-out pairs are the
    same at every look, so only the seed part moves: Var(D_N | D_n) = (N - n) one_seed_var / N^2."""
    if level <= 0:
        return 0.0
    big_n = max_seeds
    d = abs(comparison["difference"])
    trend = max(d, min_effect or 0.0)
    v1, pair_var = comparison["one_seed_var"], comparison["pair_var"]
    half = math.sqrt(t_quantile(1 - level / 2, big_n - 1) ** 2 * v1 / big_n + z_quantile(1 - level / 2) ** 2 * pair_var)
    mean = (n * d + (big_n - n) * trend) / big_n
    sd = math.sqrt(max(big_n - n, 0) * v1) / big_n
    if sd == 0:
        return float(mean > half)
    return float(1 - norm_cdf((half - mean) / sd))


def norm_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _strength(comparison: dict) -> float:
    se = comparison["se"]
    return comparison["difference"] / se if se and math.isfinite(se) and se > 0 else -math.inf


def _contrast(values, best, arm, strata, weights, rule) -> dict:
    (seeds_a, a), (seeds_b, b) = values[best], values[arm]
    common = sorted(set(seeds_a) & set(seeds_b))
    a = a[[seeds_a.index(s) for s in common]]
    b = b[[seeds_b.index(s) for s in common]]
    return contrast([a, b], [1.0, -1.0], strata, weights, rule.alpha, paired=True)


def race_summary(sweep_dir) -> dict | None:
    """The race's record, as the report shows it: rounds, drops, the stop, cells spent vs the fixed design."""
    path = Path(sweep_dir) / RACE_JSON
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return {"problem": f"{path}: unreadable ({error})", "rounds": []}
    rounds = record.get("rounds") or []
    last = rounds[-1] if rounds else {}
    arms = len(record.get("arms") or [])
    max_seeds = (record.get("settings") or {}).get("max_seeds")
    first = rounds[0] if rounds else {}
    return {"rounds": rounds, "settings": record.get("settings"), "arms": arms,
            "tuning": bool((record.get("tuning") or {}).get("groups")),
            "stop": last.get("stop"), "winner": last.get("winner"), "stop_reason": last.get("stop_reason"),
            "cells": sum(len(r.get("new_cells", [])) for r in rounds),
            "fixed_cells": arms * max_seeds if max_seeds else None,
            # the first round's comparisons see every arm: a fixed design over the whole grid would be planned on them
            "same_power_cells": arms * first["fixed_seeds"] if first.get("fixed_seeds") else None,
            "gpu_hours": last.get("gpu_hours"), "select": record.get("select") or {}}


def rule_changes(race: dict, select: dict) -> str | None:
    """How this collection's rule differs from the one the race decided with (None: the same), e.g.
    "select.metric='avglogp_accuracy' (this collection: 'logratio_accuracy')"."""
    then = race.get("select") or {}
    changed = sorted(k for k in then if k in select and select[k] != then[k])
    return ", ".join(f"select.{k}={then[k]!r} (this collection: {select[k]!r})" for k in changed) or None


def dropped_arms(sweep_dir) -> set[str]:
    """The arms a race dropped (labels, as the collector's): a tuning race selects among the others only."""
    race = race_summary(sweep_dir)
    return {arm for r in (race or {}).get("rounds", []) for arm in r.get("drops", {})}


def race_line(race: dict, factor: str) -> str:
    """One sentence for the console and the report."""
    if race.get("problem"):
        return f"Race: {race['problem']}."
    rounds = race["rounds"]
    if not rounds:
        return "Race: no round finished yet."
    last = rounds[-1]
    dropped = sum(len(r.get("drops", {})) for r in rounds)
    spent = f"{race['cells']} cells spent (a fixed design at max_seeds: {race['fixed_cells']}"
    if race.get("same_power_cells"):
        spent += f"; planned for the same power at round 1's differences: {race['same_power_cells']}"
    spent += ")" + (f", {race['gpu_hours']:.3g} device-hours" if race.get("gpu_hours") is not None else "")
    if race.get("tuning"):
        spaces = {}
        for r in rounds:
            spaces |= r.get("groups") or {}
        settled = sum(1 for g in spaces.values() if g["stop"])
        head = (f"Tuning race (selection on validation pairs, no claim): round {len(rounds)}, {settled} of "
                f"{len(spaces)} search space(s) settled" + (": the selection is made" if race["stop"] else ""))
    elif race["stop"] == "winner":
        head = f"Race: decisive winner {factor} = {race['winner']} at round {len(rounds)}"
    elif race["stop"]:
        reason = f": {race['stop_reason']}" if race.get("stop_reason") else ""
        head = f"Race: ended at round {len(rounds)} without a winner ({race['stop']}{reason})"
    else:
        head = f"Race: round {len(rounds)} done, {len(last['live'])} arm(s) live"
    return (f"{head}; {dropped} arm(s) dropped, {last['n']} seeds per live arm, level {last['level']:.3g}, alpha "
            f"spent {last['spent']:.3g}; {spent}.")
