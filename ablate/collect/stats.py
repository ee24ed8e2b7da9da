"""The statistics behind a decision: seed CIs, the paired bootstrap, McNemar's exact test, Holm.

Kept free of sweep I/O so each function can be checked against scipy or a hand derivation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def seed_ci(values, alpha: float = 0.05) -> dict[str, float]:
    """Mean, sample std and the t-interval over seeds; CI is NaN with fewer than two seeds."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


class PairBootstrap:
    """Shared resamples of held-out pairs, so that differences between arms are PAIRED.

    Every arm is resampled with the same pair draws (common random numbers): the difference of two
    arms' bootstrap means is then the bootstrap of their per-pair difference. Seeds are resampled
    independently per arm. Pairs are drawn within strata (slices) with fixed per-stratum weights,
    which gives a macro average over slices when each stratum weighs the same.
    """

    def __init__(self, strata: np.ndarray, stratum_weights: dict, n_bootstrap: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.n_bootstrap = n_bootstrap
        n_pairs = len(strata)
        # weights (P, B): how much pair i counts in resample b (draw count x its stratum's weight / size)
        self.weights = np.zeros((n_pairs, n_bootstrap))
        self._seed_draws: dict[int, np.ndarray] = {}
        self.point_weights = np.zeros(n_pairs)
        for stratum, weight in stratum_weights.items():
            members = np.flatnonzero(strata == stratum)
            counts = self.rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_bootstrap)
            self.weights[members, :] = counts.T * (weight / len(members))
            self.point_weights[members] = weight / len(members)

    def point(self, values: np.ndarray) -> float:
        """The statistic on the data itself: values (S, P) -> weighted mean over pairs, mean over seeds."""
        return float((values @ self.point_weights).mean())

    def resample_arms(self, arms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`resample` for many arms with ONE matmul: 168 small products cost ~20x more than one large."""
        names = list(arms)
        stacked = np.vstack([arms[n] for n in names]) @ self.weights  # (sum of seeds, B)
        out, row = {}, 0
        for name in names:
            n_seeds = arms[name].shape[0]
            out[name] = self._over_seeds(stacked[row : row + n_seeds])
            row += n_seeds
        return out

    def _over_seeds(self, per_seed: np.ndarray) -> np.ndarray:
        n_seeds = per_seed.shape[0]
        if n_seeds == 1:
            return per_seed[0]
        if n_seeds not in self._seed_draws:
            self._seed_draws[n_seeds] = self.rng.integers(0, n_seeds, size=(self.n_bootstrap, n_seeds))  # (B, S)
        return np.take_along_axis(per_seed.T, self._seed_draws[n_seeds], axis=1).mean(axis=1)

    def resample(self, values: np.ndarray) -> np.ndarray:
        """(B,) bootstrap replicates of `point` for one arm (values: seeds x pairs, rows sorted by seed).

        Arms with as many seeds share the seed draws too: row k is seed k of every arm, and a seed
        fixes the data order and adapter init, so seeds are paired across arms like pairs are.
        """
        return self._over_seeds(values @ self.weights)  # (S, B): one matmul instead of B gathers


def percentile_ci(replicates: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict:
    """McNemar's exact test on paired 0/1 outcomes (any shape, paired element-wise).

    Only discordant pairs carry information: b = A right and B wrong, c = the reverse. Under H0
    b ~ Binomial(b + c, 1/2), symmetric, so the exact two-sided p-value is
    min(1, 2·P[X ≤ min(b, c)]) — what scipy.stats.binomtest returns, at a fraction of its cost.
    """
    a, b_ = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), b + c, 0.5)))
    return {"a_only": b, "b_only": c, "p_value": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()
