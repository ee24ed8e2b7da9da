"""The statistics behind a decision: seed-aware estimates, their CIs, equivalence, seed planning.

Kept free of sweep I/O so each function can be checked by hand, against scipy, and by simulation
(tests/test_calibration.py). The data of one arm is a matrix X (seeds x pairs) of a per-pair
held-out value (correct 0/1, or a margin) on the SAME held-out pairs for every arm.

The model (docs/ARCHITECTURE.md §6: the seed is the unit of replication; held-out pairs are a second level):

    x[k, i] = mu + s_k + u_i + e[k, i]

s_k is the training run (seed k: data order, adapter init), u_i the held-out pair, e their
interaction. An estimate is a contrast of arms, sum_a c_a * mean_k (sum_i w_i x_a[k, i]), with
pair weights w of the decision scope (uniform; per slice; macro = slices weigh the same). Its
variance, Var_s/n + Var_u/P + Var_e/(nP), is estimated in two parts:

- A, between seeds: the scope value of each seed, v_k = sum_i w_i x[k, i]. With the same seeds in
  every arm (seed k of every arm shares its data order), the contrast is formed seed by seed,
  D_k = sum_a c_a v_a[k], and A = var(D) / n (a paired t); otherwise each arm adds
  c_a^2 var(v_a) / n_a (Welch). A estimates Var_s/n + Var_e/(nP): the interaction is in it.
- B, between held-out pairs, beyond the interaction: from m_i = sum_a c_a mean_k x_a[k, i],
  sum over slices s of W_s^2 (var_s(m) - the seed x pair interaction mean square / n) / P_s
  (two-way ANOVA; stratified sampling of pairs within slices; floored at 0). B estimates Var_u/P.

The CI is estimate ± sqrt(t^2 A + z^2 B): the seed part takes the t quantile on n - 1 degrees of
freedom (n = seeds; the fewest of any arm when unpaired), the pair part, estimated from hundreds of
pairs, the normal one. Why not one Welch-Satterthwaite df for the sum: at 2-3 seeds the estimated
df grows exactly when the seed variance is underestimated by chance, and the simulation measured
11% false "decisive" calls at 2 seeds (alpha 5%). With fewer than two seeds per arm the seed
variance is unknown: no CI, never decisive. Coverage at 1-5 seeds is checked by simulation
(tests/test_calibration.py), not assumed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


@functools.lru_cache(maxsize=4096)
def t_quantile(q: float, df: float) -> float:
    """scipy's t quantile, cached: a 1,000-cell sweep asks for the same few thousands of times."""
    return float(stats.t.ppf(q, df))


@functools.lru_cache(maxsize=64)
def z_quantile(q: float) -> float:
    return float(stats.norm.ppf(q))


def seed_summary(values) -> dict[str, float]:
    """Mean and sample std over seeds of a per-cell metric (descriptive: no interval)."""
    x = np.asarray([v for v in values if v is not None and not _nan(v)], dtype=float)
    n = len(x)
    return {"n": n, "mean": float(x.mean()) if n else math.nan, "std": float(x.std(ddof=1)) if n > 1 else math.nan}


def _nan(v) -> bool:
    try:
        return math.isnan(v)
    except TypeError:
        return False


def pair_weights(strata: np.ndarray, stratum_weights: dict) -> np.ndarray:
    """(P,) weights summing to 1: each stratum's weight spread evenly over its pairs."""
    w = np.zeros(len(strata))
    for stratum, weight in stratum_weights.items():
        members = strata == stratum
        w[members] = weight / members.sum()
    return w


# A variance (in squared metric units) below this, relative to the estimate's square, is float rounding, not data.
NO_VARIATION = 1e-20
# A stratum with fewer pairs than this borrows the scope's pooled between-pair variance (see contrast).
MIN_STRATUM_PAIRS = 3


def contrast(arms: Sequence[np.ndarray], coefs: Sequence[float], strata: np.ndarray, stratum_weights: dict,
             alpha: float, paired: bool) -> dict:
    """Estimate and CI of sum_a c_a * (arm a's scope value, mean over its seeds); see the module doc.

    `arms`: one (seeds x pairs) matrix per arm; with `paired`, row k of every matrix is the same seed.
    Returns the estimate, its se and CI (NaN without seed replication or without any variation), the
    seed part A and pair part B of the variance, the variance of one seed's contrast (for planning),
    and the number of seeds behind it.
    """
    w = pair_weights(strata, stratum_weights)
    per_seed = [x @ w for x in arms]  # (n_a,) scope value of each seed
    estimate = float(sum(c * v.mean() for c, v in zip(coefs, per_seed, strict=True)))
    if paired:
        diff = sum(c * x for c, x in zip(coefs, arms, strict=True))  # (n, P) the contrast, seed by seed
        n_seeds = len(diff)
        one_seed_var = float((diff @ w).var(ddof=1)) if n_seeds > 1 else math.nan
        seed_var = one_seed_var / n_seeds
        tables = [(1.0, diff)]  # whose seed x pair interaction sits in the seed part
    else:
        n_seeds = min(len(v) for v in per_seed)
        arm_vars = [c * c * float(v.var(ddof=1)) if len(v) > 1 else math.nan
                    for c, v in zip(coefs, per_seed, strict=True)]
        one_seed_var = sum(arm_vars)  # one seed of each arm
        seed_var = sum(var / len(v) for var, v in zip(arm_vars, per_seed, strict=True))
        tables = list(zip(coefs, arms, strict=True))
    m = sum(c * x.mean(axis=0) for c, x in zip(coefs, arms, strict=True))  # (P,) per-pair contrast
    pair_var = _pair_variance(m, tables, strata, stratum_weights)
    result = {"estimate": estimate, "se": math.nan, "df": math.nan, "ci_low": math.nan, "ci_high": math.nan,
              "seed_var": seed_var, "one_seed_var": one_seed_var, "pair_var": pair_var, "seeds": n_seeds,
              "paired": bool(paired)}
    return _with_interval(result, alpha)


def partly_paired_contrast(a: np.ndarray, b: np.ndarray, seeds_a: list[int], seeds_b: list[int], strata: np.ndarray,
                           stratum_weights: dict, alpha: float) -> dict:
    """A − B when the arms share some seeds but not all (an arm resumed or extended on its own): every seed
    counts, not only the shared ones.

    With per-seed scope values a_k, b_k, the seed part of the variance of mean(a) − mean(b) is
    s_A²/n_A + s_B²/n_B − 2 c s_AB / (n_A n_B): c shared seeds, s_AB their covariance (seed k of both arms
    shares its data order). It is the paired variance when every seed is shared and Welch's when none
    is. t on min(n_A, n_B) − 1 df; the pair part is the unpaired one (each arm's seed x pair interaction
    within its own table). Calibration: tests/test_calibration.py (partial overlap).
    """
    w = pair_weights(strata, stratum_weights)
    va, vb = a @ w, b @ w
    common = sorted(set(seeds_a) & set(seeds_b))
    na, nb, c = len(va), len(vb), len(common)
    var_a = float(va.var(ddof=1)) if na > 1 else math.nan
    var_b = float(vb.var(ddof=1)) if nb > 1 else math.nan
    cov = 0.0
    if c >= 2:
        cov = float(np.cov(va[[seeds_a.index(s) for s in common]], vb[[seeds_b.index(s) for s in common]])[0, 1])
    seed_var = max(var_a / na + var_b / nb - 2 * c * cov / (na * nb), 0.0)
    m = a.mean(axis=0) - b.mean(axis=0)
    pair_var = _pair_variance(m, [(1.0, a), (-1.0, b)], strata, stratum_weights)
    result = {"estimate": float(va.mean() - vb.mean()), "se": math.nan, "df": math.nan, "ci_low": math.nan,
              "ci_high": math.nan, "seed_var": seed_var, "one_seed_var": max(var_a + var_b - 2 * cov, 0.0),
              "pair_var": pair_var, "seeds": min(na, nb), "paired": False, "shared_seeds": c}
    return _with_interval(result, alpha)


def _pair_variance(m: np.ndarray, tables: list, strata: np.ndarray, stratum_weights: dict) -> float:
    """The pair part B of a contrast whose per-pair values are `m`, less the seed x pair interaction of `tables`."""

    def excess(members: np.ndarray) -> float:
        """Between-pair variance of the contrast beyond the seed x pair interaction, on these pairs."""
        between = float(m[members].var(ddof=1))
        interaction = sum(c * c * _interaction_mean_square(x[:, members]) / len(x) for c, x in tables if len(x) > 1)
        return max(between - interaction, 0.0)

    pair_var = 0.0
    pooled = None  # the scope's pooled excess, for strata too small to estimate their own
    for stratum, weight in stratum_weights.items():
        members = strata == stratum
        size = int(members.sum())
        if size < MIN_STRATUM_PAIRS:
            # A stratum of a pair or two has no usable variance of its own, yet under macro weighting it may
            # carry half the weight: skipping it made the CI too narrow. It borrows the pooled variance.
            if pooled is None:
                pooled = excess(np.ones(len(strata), bool)) if len(strata) > 2 else 0.0
            pair_var += weight * weight * pooled / size
            continue
        pair_var += weight * weight * excess(members) / size
    return pair_var


def _with_interval(result: dict, alpha: float) -> dict:
    """The CI estimate ± sqrt(t(n−1)² seed part + z² pair part), when there is an honest one."""
    estimate, seed_var, pair_var, n_seeds = result["estimate"], result["seed_var"], result["pair_var"], result["seeds"]
    if not math.isfinite(seed_var) or seed_var + pair_var <= NO_VARIATION * max(1.0, estimate * estimate):
        # one seed (seed variance unknown), or no variation beyond float rounding (a perfectly separated
        # comparison sums to 1e-30, not 0): no honest interval, never one like [0.9999999999999957, 1.00000000000001]
        return result
    df = n_seeds - 1
    half = math.sqrt(t_quantile(1 - alpha / 2, df) ** 2 * seed_var + z_quantile(1 - alpha / 2) ** 2 * pair_var)
    return result | {"se": math.sqrt(seed_var + pair_var), "df": float(df), "ci_low": estimate - half,
                     "ci_high": estimate + half}


def _interaction_mean_square(x: np.ndarray) -> float:
    """Residual mean square of a two-way (seeds x pairs) table without replication: estimates Var_e."""
    n, p = x.shape
    resid = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    return float((resid * resid).sum()) / ((n - 1) * (p - 1))


def equivalent(result: dict, margin: float | None, alpha: float) -> bool | None:
    """Two one-sided tests at level alpha: the (1 - 2 alpha) CI lies inside (-margin, +margin).

    None when no margin is configured or the estimate has no standard error (too few seeds).
    """
    if not margin or not math.isfinite(result["se"]):
        return None
    half = math.sqrt(t_quantile(1 - alpha, result["df"]) ** 2 * result["seed_var"]
                     + z_quantile(1 - alpha) ** 2 * result["pair_var"])
    return bool(result["estimate"] - half > -margin and result["estimate"] + half < margin)


def probability_of_improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """P(A > B) over every (seed of A, seed of B) pair, ties counted half (rliable's probability of
    improvement, Agarwal et al. 2021, on one task): the Mann-Whitney U statistic / (n_A n_B)."""
    a, b = np.asarray(a, float)[:, None], np.asarray(b, float)[None, :]
    return float(((a > b) + 0.5 * (a == b)).mean())


def seeds_to_resolve(effect: float, one_seed_var: float, pair_var: float, alpha, power: float,
                     *, start: int = 2, limit: int = 100) -> int | None:
    """Fewest seeds per arm at which `contrast` would call `effect` (two-sided, level alpha) with
    probability `power`. `alpha` may be a function of the seeds per arm (the level a look at n seeds
    gets under alpha spending, ablate.collect.sequential); 0 there means no look at n can decide.

    `one_seed_var` is the variance of ONE seed's contrast (var(D) paired; var_A + var_B unpaired),
    `pair_var` the held-out-pair part B, which more seeds cannot shrink. The test statistic is taken
    as noncentral t on n - 1 df. None when even `limit` seeds would not do: the effect is too small
    for the seed noise, or for the held-out pairs (more pairs, not seeds, would help).
    """
    effect = abs(effect)
    if effect == 0 or not math.isfinite(one_seed_var):
        return None
    level_at = alpha if callable(alpha) else (lambda n: alpha)
    for n in range(max(start, 2), limit + 1):
        level = level_at(n)
        if level <= 0:
            continue
        seed_var = one_seed_var / n
        se = math.sqrt(seed_var + pair_var)
        if se == 0:
            return n
        df = n - 1
        z = z_quantile(1 - level / 2)
        half = math.sqrt(t_quantile(1 - level / 2, df) ** 2 * seed_var + z * z * pair_var)
        if float(stats.nct.sf(half / se, df, effect / se)) >= power:
            return n
    return None
