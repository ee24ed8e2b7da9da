"""How few cells can ANY race of this shape spend? A best case to read ablate's race against.

The race ablate runs adds one seed per live arm per round from select.min_seeds (3) and must keep its error at
alpha over all rounds. Give such a race what ablate's race does not have: the seed variance KNOWN (a z test
instead of t on n - 1 df), the best of a grid of designs (maximum seeds, alpha spending, a futility stop on the z
statistic at every look), boundaries calibrated by simulation. Its expected seeds per arm under the alternative,
divided by the fixed design's seeds at the same power (both known-variance), is what the best design of the grid
reaches: not a proof of optimality, but a race that estimates its variance cannot expect to do better.

Two arms: the power the fixed 8-seed design has for +4 points (0.38) and 0.8. Four arms, one better (the fixed
8-seed design's power for +8 points, 0.8): every rival is dropped as soon as the best beats it at the look's
boundary, with no multiplicity correction (optimistic), or by Holm's step-down over the live rivals as ablate's
race drops them (each drop claims "X is not the best"); the winner is declared when all are dropped. The fixed
design (one look, the best beating each rival at alpha: one claim, "a0 is best", needs no correction) has its
power curve simulated over 3..16 seeds.

ablate measures its own race against the fixed design with ITS rule, the seed variance estimated (t on n - 1
df where seeds dominate), which needs more seeds than the known-variance z test for the same power, most of all
at few seeds. The last columns read the known-variance race against that yardstick too (fixed t tests on n - 1
df at the same power): more optimistic still, since the race keeps its known variance.

Wald's SPRT bound is the theoretical floor for any sequential test of two arms (one seed at a time from the
first, known variance, no overshoot): E[n] = ((1 - b) ln((1 - b)/a) + b ln(b/(1 - a))) / (theta^2 / 2), one-sided
level a = alpha/2, b = 1 - power, against the fixed design's (z_{1-alpha/2} + z_power)^2 / theta^2.

    python benchmarks/race_bound.py            # the README's tables, about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np
from scipy import stats

ALPHA = 0.05


def spent_by(t: float, rho: float | None) -> float:
    """ablate.collect.sequential's spending families: Pocock-type, or alpha * t^rho."""
    return ALPHA * math.log(1 + (math.e - 1) * t) if rho is None else ALPHA * t ** rho


def boundaries(first: int, nmax: int, rho: float | None, rng, sims: int) -> np.ndarray:
    """|Z| boundaries at looks first..nmax spending alpha as the family says (Monte Carlo under the null)."""
    looks = np.arange(first, nmax + 1)
    z = np.abs(rng.normal(size=(sims, nmax)).cumsum(1)[:, looks - 1]) / np.sqrt(looks)
    alive, spent, out = np.ones(sims, bool), 0.0, []
    for k, n in enumerate(looks):
        m = int(round((spent_by(n / nmax, rho) - spent) * sims))
        ranked = np.sort(z[alive, k])[::-1]
        c = ranked[m] if 0 <= m < len(ranked) else np.inf
        crossed = alive & (z[:, k] > c)
        spent += crossed.mean()
        alive &= ~crossed
        out.append(c)
    return np.array(out)


def race(first: int, nmax: int, rho: float | None, futility: float, theta: float, rng,
         sims: int) -> tuple[float, float]:
    """(power, expected seeds per arm) of the known-variance race with per-seed drift theta (in seed s.d.)."""
    looks = np.arange(first, nmax + 1)
    bounds = boundaries(first, nmax, rho, rng, 4 * sims)
    z = (rng.normal(size=(sims, nmax)) + theta).cumsum(1)[:, looks - 1] / np.sqrt(looks)
    alive, wins, seeds = np.ones(sims, bool), 0, np.zeros(sims)
    for k, n in enumerate(looks):
        wins += int((alive & (z[:, k] > bounds[k])).sum())
        stop = alive & ((np.abs(z[:, k]) > bounds[k]) | (z[:, k] < futility) | (n == nmax))
        seeds[stop] = n
        alive &= ~stop
    return wins / sims, float(seeds.mean())


def four_arms(first: int, nmax: int, rho: float | None, futility: float, theta: float, rng,
              sims: int, holm: bool = False) -> tuple[float, float]:
    """(power, expected cells) of the known-variance race of 4 arms, arm 0 better by theta (per seed, in the s.d. of
    one seed's paired difference). Without `holm`, each rival is dropped at the boundary of one comparison (no
    multiplicity correction: optimistic); with it, as ablate's race drops: Holm's step-down over the live rivals at
    the look's nominal level (the strongest at level/m, the next at level/(m - 1), ...)."""
    looks = np.arange(first, nmax + 1)
    bounds = boundaries(first, nmax, rho, rng, 4 * sims)
    levels = 2 * stats.norm.sf(bounds)  # each look's nominal two-sided level
    # seed k of every arm shares its data order: paired differences of two arms per seed ~ N(shift, 1)
    runs = rng.normal(scale=math.sqrt(0.5), size=(sims, 4, nmax)) + np.array([theta, 0, 0, 0])[None, :, None]
    wins, cells = 0, np.zeros(sims)
    for i in range(sims):
        live, ran = [0, 1, 2, 3], np.zeros(4)
        for k, n in enumerate(looks):
            ran[live] = n
            means = runs[i, live, :n].mean(axis=1)
            best = live[int(np.argmax(means))]
            z = {j: (runs[i, best, :n] - runs[i, j, :n]).sum() / math.sqrt(n) for j in live if j != best}
            if holm:
                order, gone = sorted(z, key=z.get, reverse=True), set()
                for step, j in enumerate(order):
                    if z[j] <= stats.norm.isf(levels[k] / 2 / (len(order) - step)):
                        break
                    gone.add(j)
                live = [j for j in live if j not in gone]
            else:
                live = [j for j in live if j == best or z[j] <= bounds[k]]
            if len(live) == 1:
                wins += best == 0
                break
            if min(z[j] for j in live if j != best) < futility or n == nmax:
                break
        cells[i] = ran.sum()
    return wins / sims, float(cells.mean())


def four_arms_fixed(n: int, theta: float, rng, sims: int, t_test: bool = False) -> float:
    """Power of the fixed design of 4 arms at n seeds: arm 0 the best seen and beating each rival at alpha (with
    `t_test`, each paired difference's variance estimated: t on n - 1 df, as ablate's rule where seeds dominate)."""
    runs = rng.normal(scale=math.sqrt(0.5), size=(sims, 4, n)) + np.array([theta, 0, 0, 0])[None, :, None]
    means = runs.mean(axis=2)
    diffs = runs[:, :1, :] - runs[:, 1:, :]
    if t_test:
        z, crit = diffs.mean(axis=2) / (diffs.std(axis=2, ddof=1) / math.sqrt(n)), stats.t.isf(ALPHA / 2, n - 1)
    else:
        z, crit = diffs.sum(axis=2) / math.sqrt(n), stats.norm.isf(ALPHA / 2)
    return float(((means.argmax(axis=1) == 0) & (z > crit).all(axis=1)).mean())


def table_four(sims: int, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    theta = _solve(lambda t: four_arms_fixed(8, t, rng, 10 * sims) - 0.8, 0.3, 2.0)
    curve = {n: four_arms_fixed(n, theta, rng, 10 * sims) for n in range(3, 17)}
    t_curve = {n: four_arms_fixed(n, theta, rng, 10 * sims, t_test=True) for n in range(3, 25)}
    lines = ["| drops | power of the fixed design at 8 seeds | best design found (max seeds, spending, futility z) | "
             "its power | its cells | the fixed design's cells at its power | ratio | the fixed t tests' cells at its "
             "power | ratio to them |", "|---|---|---|---|---|---|---|---|---|"]
    for holm in (False, True):
        found = []
        for nmax, rho, futility in itertools.product((8, 10, 12), (None, 1.0, 3.0), (-np.inf, 0.0, 0.5, 1.0)):
            power, cells = four_arms(3, nmax, rho, futility, theta, rng, sims, holm=holm)
            same = _seeds_at(power, curve)
            if same and power >= curve[8] - 0.01:  # at least the fixed 8-seed design's power (Monte-Carlo error)
                found.append((cells / (4 * same), power, cells, 4 * same, nmax, "pocock" if rho is None else
                              f"rho {rho:g}", futility))
        ratio, power, cells, fixed, nmax, spending, futility = min(found)
        drops = "Holm over the live rivals (as ablate)" if holm else "each rival at one comparison's boundary"
        t_fixed = 4 * _seeds_at(power, t_curve)
        lines.append(f"| {drops} | {curve[8]:.3f} | {nmax}, {spending}, {futility:g} | {power:.3f} | {cells:.1f} | "
                     f"{fixed:.1f} | {ratio:.2f} | {t_fixed:.1f} | {cells / t_fixed:.2f} |")
    return "\n".join(lines)


def _solve(f, low: float, high: float, steps: int = 12) -> float:
    for _ in range(steps):  # bisection on a (noisy) increasing function
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) < 0 else (low, mid)
    return (low + high) / 2


def _seeds_at(power: float, curve: dict[int, float]) -> float | None:
    points = sorted(curve.items())
    for (n0, p0), (n1, p1) in zip(points, points[1:], strict=False):
        if p0 <= power <= p1 and p1 > p0:
            return n0 + (n1 - n0) * (power - p0) / (p1 - p0)
    return None


def t_test_seeds(power: float, theta: float) -> float | None:
    """Seeds per arm a fixed one-look t test on n - 1 df (the seed variance ESTIMATED, as ablate's rule where seeds
    dominate) needs for this power at per-seed drift theta; interpolated between whole seeds (None beyond 64)."""
    def power_at(n: int) -> float:
        crit, nc = stats.t.isf(ALPHA / 2, n - 1), theta * math.sqrt(n)
        return float(stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))

    return _seeds_at(power, {n: power_at(n) for n in range(2, 65)})


def sprt_ratio(power: float) -> float:
    a, b = ALPHA / 2, 1 - power
    steps = (1 - b) * math.log((1 - b) / a) + b * math.log(b / (1 - a))
    return steps * 2 / (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(power)) ** 2


def table(sims: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["| power (of the fixed design at 8 seeds) | first look | best design found (max seeds, spending, "
             "futility z) | its power | its seeds / fixed seeds at equal power | Wald's SPRT floor | its seeds / "
             "a fixed t test's at equal power |", "|---|---|---|---|---|---|---|"]
    for power in (0.38, 0.80):
        theta = (stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(power)) / math.sqrt(8)
        for first in (3, 2):
            found = []
            for nmax, rho, futility in itertools.product(range(8, 17, 2), (None, 1.0, 2.0, 3.0),
                                                         (-np.inf, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25)):
                p, seeds = race(first, nmax, rho, futility, theta, rng, sims)
                if p >= power - 0.01:  # equal power within Monte-Carlo error
                    found.append((seeds / 8, p, nmax, "pocock" if rho is None else f"rho {rho:g}", futility))
            ratio, p, nmax, spending, futility = min(found)
            t_seeds = t_test_seeds(p, theta)
            lines.append(f"| {power} | {first} seeds | {nmax}, {spending}, {futility:g} | {p:.3f} | {ratio:.2f} | "
                         f"{sprt_ratio(power):.2f} | {8 * ratio / t_seeds:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sims", type=int, default=20000)
    sims = parser.parse_args().sims
    print(table(sims))
    print()
    print(table_four(max(sims // 10, 500)))
