"""Looks of a sweep's primary test and the alpha each may spend (docs/ARCHITECTURE.md §6, "Looks, the primary test
and exploratory claims").

A sweep invites repeated collection: collect at 3 seeds, add the seeds the collector asks for, collect
again. Testing each look at the full alpha calls a false winner ~9-14% of the time over a sweep's life
(tests/test_sequential.py measures it). So the decision ledger (ablate.sweepdir.ledger) remembers:

- The PRIMARY TEST is the first one the ledger records: select.factor, metric, slice, alpha and the
  keys in TEST_KEYS. A collection with other values is exploratory: it may show CIs, never "decisive".
- A LOOK is a collection of the primary test whose verdict is not "undetermined" (an undetermined
  verdict cannot claim anything, so it spends nothing) on seeds that differ from the last look's.
  Re-collecting the same seeds is the same look, at the same level.
- ALPHA SPENDING (Lan & DeMets 1983): by information t = n / select.max_seeds (n = the fewest seeds of
  any compared arm), at most alpha(t) = alpha * ln(1 + (e - 1) t) is spent (the Pocock-type function:
  early looks get much of alpha, so 3 seeds can still be decisive). Look k gets the boundary z_k with
  P(|Z_k| > z_k, no earlier crossing) = alpha(t_k) - alpha(t_(k-1)) under H0, the looks' statistics
  taken as Brownian motion in n (corr sqrt(n_i / n_j)); the CI at that look is drawn at the nominal
  level 2(1 - Phi(z_k)). The held-out pairs are the same at every look, which makes the real
  correlation higher than sqrt(n_i / n_j): the boundaries are conservative for it. Past max_seeds
  nothing is left to spend: the test has ended, and later collections are exploratory.

The error over all looks is checked by simulating the user's path (add the printed number of seeds,
or one at a time, collecting after each), not assumed from the formula: tests/test_sequential.py.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from scipy import optimize
from scipy.stats import norm

# The select keys that make a test: a change in any of them is another test (exploratory after the first)
TEST_KEYS = ("factor", "metric", "slice", "alpha", "min_seeds", "min_extra_pairs", "min_margin_gain", "failed_cells",
             "max_seeds")
SPENDING = "Pocock-type alpha spending"
_GRID = 801  # points of the numerical integration over the continuation region of each earlier look


def test_of(select) -> dict:
    """The primary-test identity of a rule (a SimpleNamespace or dict)."""
    get = select.get if isinstance(select, dict) else lambda key: getattr(select, key, None)
    return {key: get(key) for key in TEST_KEYS}


def at_alpha(select, alpha: float) -> SimpleNamespace:
    """The rule with its level replaced: what one look (or one step of Holm's procedure) tests at."""
    return SimpleNamespace(**(vars(select) | {"alpha": alpha}))


def spent_by(alpha: float, t: float, rho: float | None = None) -> float:
    """Alpha spent up to information t (0..1): alpha * ln(1 + (e - 1) t) (Pocock-type), or with `rho` the
    power family alpha * t^rho (Kim & DeMets 1987; rho 3 is close to O'Brien-Fleming: little early)."""
    t = min(max(t, 0.0), 1.0)
    return alpha * math.log(1 + (math.e - 1) * t) if rho is None else alpha * t ** rho


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / 3


@functools.lru_cache(maxsize=256)
def _continuation(history: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Grid and (sub-)density of the score S = Z sqrt(n) at the last look of `history`, on paths that crossed
    no boundary so far. history: ((n_1, z_1), ...) with increasing n."""
    n1, z1 = history[0]
    grid = np.linspace(-z1 * math.sqrt(n1), z1 * math.sqrt(n1), _GRID)
    density = norm.pdf(grid, scale=math.sqrt(n1))
    for (n_prev, _), (n, z) in zip(history, history[1:], strict=False):
        sd = math.sqrt(n - n_prev)
        weights = density * _simpson(_GRID) * (grid[1] - grid[0])
        new_grid = np.linspace(-z * math.sqrt(n), z * math.sqrt(n), _GRID)
        density = norm.pdf((new_grid[:, None] - grid[None, :]) / sd) @ weights / sd
        grid = new_grid
    return grid, density


def crossing_probability(history: tuple[tuple[float, float], ...], n: float, z: float) -> float:
    """P(no crossing at the looks of `history`, |Z| > z at n seeds) under H0."""
    if not history:
        return 2 * float(norm.sf(z))
    grid, density = _continuation(history)
    sd = math.sqrt(n - history[-1][0])
    bound = z * math.sqrt(n)
    beyond = norm.sf((bound - grid) / sd) + norm.cdf((-bound - grid) / sd)
    return float((density * beyond * _simpson(_GRID)).sum() * (grid[1] - grid[0]))


def boundary(history: tuple[tuple[float, float], ...], n: float, increment: float) -> float:
    """The z of a new look at n seeds that spends `increment` of alpha after `history`; inf when nothing is left."""
    if increment <= 1e-12 or (history and n <= history[-1][0]):
        return math.inf
    return float(optimize.brentq(lambda z: crossing_probability(history, n, z) - increment, 0.01, 40.0, xtol=1e-10))


def nominal_alpha(z: float) -> float:
    """The two-sided level of a CI that excludes 0 exactly when |Z| > z."""
    return 2 * float(norm.sf(z))


def primary_test(entries: list[dict]) -> dict | None:
    return entries[0]["test"] if entries else None


def looks(entries: list[dict]) -> list[dict]:
    """The ledger's looks of the primary test, in order."""
    primary = primary_test(entries)
    return [e for e in entries if e["test"] == primary and e.get("new_look")]


def plan_look(entries: list[dict], ledger_problems: list[str], select, seeds_by_arm: dict[str, list[int]]) -> dict:
    """Where this collection stands: the primary test or exploratory (why), and at which level it decides.

    {"primary_test", "exploratory": None or the reason, "look", "new_look", "n", "information",
     "nominal_alpha", "boundary_z", "alpha_spent" (after this look), "alpha", "max_seeds", "alpha_at"}
    `alpha_at(m)` is the level a NEXT look at m seeds per arm would get (for seed planning).
    """
    test = test_of(select)
    alpha, max_seeds = test["alpha"], test["max_seeds"]
    primary = primary_test(entries) or test
    seeds = {arm: sorted(s) for arm, s in seeds_by_arm.items()}
    n = min((len(s) for s in seeds.values()), default=0)
    base = {"primary_test": primary, "exploratory": None, "look": None, "new_look": False, "n": n,
            "information": min(n / max_seeds, 1.0), "nominal_alpha": alpha, "boundary_z": None,
            "alpha_spent": None, "alpha": alpha, "max_seeds": max_seeds, "seeds": seeds, "alpha_at": None}
    if ledger_problems:
        return base | {"exploratory": "the decision ledger has unreadable lines, so the looks already taken are "
                                      "unknown (" + "; ".join(ledger_problems) + ")"}
    if test != primary:
        changed = [f"{k}={primary.get(k)!r}" for k in TEST_KEYS if primary.get(k) != test[k]]
        return base | {"exploratory": "not the sweep's primary test (declared by its first collection: "
                                      + ", ".join(changed) + ")"}
    past = looks(entries)
    base["history"] = [{key: e.get(key) for key in ("look", "n", "nominal_alpha", "alpha_spent", "verdict", "winner",
                                                    "collected_at")} for e in past]
    history = tuple((e["n"], e["boundary_z"]) for e in past if e.get("boundary_z") is not None)
    spent = spent_by(alpha, past[-1]["information"]) if past else 0.0
    last_n = past[-1]["n"] if past else 0

    def alpha_at(m: int) -> float:
        if m <= last_n:
            return 0.0
        return nominal_alpha(boundary(history, m, spent_by(alpha, m / max_seeds) - spent))

    base["alpha_at"] = alpha_at
    if past and past[-1]["seeds"] == seeds:  # the same seeds again: the same look, at the same level
        last = past[-1]
        return base | {"look": len(past), "nominal_alpha": last["nominal_alpha"], "boundary_z": last["boundary_z"],
                       "alpha_spent": spent_by(alpha, last["information"])}
    t = min(n / max_seeds, 1.0)
    increment = spent_by(alpha, t) - spent
    if increment <= 1e-12:
        why = (f"the primary test spent its alpha over {len(past)} look(s), the last at {last_n} seeds per arm "
               f"(select.max_seeds = {max_seeds})" if spent >= alpha - 1e-12 else
               f"no more seeds per arm than at look {len(past)} ({last_n}): nothing new to spend alpha on")
        return base | {"exploratory": why}
    z = boundary(history, n, increment)
    return base | {"look": len(past) + 1, "new_look": True, "nominal_alpha": nominal_alpha(z), "boundary_z": z,
                   "alpha_spent": spent + increment}


def ledger_entry(look: dict, select, decision: dict, collected_at: str, full_select: dict) -> dict:
    """What a collection appends: the test, whether it was a look, at which level, and what it announced."""
    counts = look["new_look"] and decision["verdict"] != "undetermined"
    return {"collected_at": collected_at, "test": test_of(select), "select": full_select,
            "primary": look["exploratory"] is None, "exploratory": look["exploratory"],
            "look": look["look"] if (counts or not look["new_look"]) and look["exploratory"] is None else None,
            "new_look": bool(counts and look["exploratory"] is None), "n": look["n"],
            "information": look["information"], "seeds": look["seeds"], "nominal_alpha": look["nominal_alpha"],
            "boundary_z": look["boundary_z"] if counts else None,
            "alpha_spent": look["alpha_spent"] if counts or not look["new_look"] else None,
            "verdict": decision["verdict"], "winner": decision.get("winner"), "lead": decision.get("lead")}


def look_line(look: dict, decision: dict) -> str:
    """One sentence on where this collection stands in the sweep's sequence of looks."""
    test = look["primary_test"]
    what = f"{test['factor']} on {test['metric']}, {'all pairs' if test['slice'] is None else test['slice']}"
    if look["exploratory"]:
        return f"Exploratory collection ({look['exploratory']})."
    spent = look["alpha_spent"] if decision["verdict"] != "undetermined" or not look["new_look"] else None
    if spent is None:  # an undetermined verdict is not a look and spends nothing
        return (f"Primary test ({what}): not a look (undetermined spends no alpha); a look at {look['n']} seeds "
                f"per arm would test at {look['nominal_alpha']:.3g}.")
    again = "" if look["new_look"] else ", the same seeds as before"
    return (f"Look {look['look']} of the primary test ({what}{again}): tested at {look['nominal_alpha']:.3g}, "
            f"alpha spent so far {spent:.3g} of {look['alpha']:g} over up to {look['max_seeds']} seeds per arm "
            f"({SPENDING}).")
