"""Arms, paired comparisons and the decision rule (DESIGN §6).

An arm is every cell that differs only by seed. The best arm (highest decision metric, pooled over
seeds) is compared with every other arm on the SAME held-out pairs: a paired bootstrap CI of the
difference (pairs resampled, and seeds when an arm has several) and McNemar's exact test on per-pair
correctness (Holm-corrected). The winning value of `select.factor` (e.g. the objective) is decisive
only when the best arm beats every arm with another value of it: CI above zero AND a gain of at least
`min_extra_pairs` held-out pairs (accuracy metrics) or `min_margin_gain` (margin metrics).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

from ablate.collect.load import Sweep, read_jsonl, read_pairs
from ablate.collect.stats import PairBootstrap, holm, mcnemar_exact, percentile_ci, seed_ci

PAIR_COLUMN = {
    "avglogp_accuracy": "avglogp_correct",
    "logratio_accuracy": "logratio_correct",
    "avglogp_margin": "avglogp_margin",
    "logratio_margin": "logratio_margin",
    "chosen_logp_shift": "chosen_logp_shift",
}
ACCURACY_METRICS = ("avglogp_accuracy", "logratio_accuracy")


def metric_key(metric: str, scope: str | None) -> str:
    """The metrics.json key of a metric in a scope (None: all pairs). 'macro' has no single key."""
    return f"heldout/{metric}" if scope in (None, "macro") else f"heldout/{scope}/{metric}"


def arm_stats(sweep: Sweep, alpha: float) -> list[dict]:
    """Per arm: its cells, how many are done, whether it is complete, and seed stats of every held-out metric."""
    arms = []
    metric_cols = [c for c in sweep.cells.columns if c.startswith("heldout/") and not c.endswith(("/pairs", "_ties"))]
    for arm, group in sweep.cells.groupby("arm", sort=False):
        done = group[group.state == "done"]
        first = group.iloc[0]
        arms.append({
            "arm": arm,
            "axes": {key: first.get(key) for key in sweep.axes},
            "objective": first.get("objective"),
            "lora_r": _int_or_none(first.get("lora_r")),
            "cells": len(group),
            "done": len(done),
            "complete": len(done) == len(group),
            "seeds": sorted(_int_or_none(s) for s in done.seed if s is not None and not pd.isna(s)),
            "stats": {col: seed_ci(done[col].tolist(), alpha) for col in metric_cols if col in done},
        })  # fmt: skip
    return arms


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _arm_matrices(sweep: Sweep, done: pd.DataFrame, arms: list[str], metric: str):
    """Per arm: (seeds, seeds x pairs matrix of the metric's per-pair values), all on the same pairs.

    The reference pair set is the one most cells have; a cell evaluated on other pairs (another data
    config) is reported and left out rather than derailing every other cell.
    """
    cells = {arm: [(seed, cid) for seed, cid in zip(done.seed[done.arm == arm], done.cell_id[done.arm == arm],
                                                      strict=True)] for arm in arms}
    pairs = {cid: read_pairs(sweep, cid) for arm_cells in cells.values() for _, cid in arm_cells}
    keys = {cid: p.pair_ids.tobytes() for cid, p in pairs.items() if p is not None}
    if not keys:
        return {}, None, None
    reference_key = Counter(keys.values()).most_common(1)[0][0]
    reference = next(pairs[cid] for cid, key in keys.items() if key == reference_key)
    column = PAIR_COLUMN[metric]
    matrices = {}
    for arm, arm_cells in cells.items():
        seeds, rows = [], []
        for seed, cid in arm_cells:
            if cid not in keys:
                continue
            if keys[cid] != reference_key:
                sweep.problems.append({"cell_id": cid, "file": str(sweep.cell_dir(cid) / "heldout_pairs.parquet"),
                                       "problem": "held-out pairs differ from the other cells': left out"})
                continue
            seeds.append(seed)
            rows.append(np.asarray(pairs[cid].outcomes[column], dtype=float))
        if rows:
            matrices[arm] = (seeds, np.vstack(rows))
    return matrices, reference.pair_ids, reference.slices


def decide(sweep: Sweep, select, scope: str | None, arms: list[dict]) -> dict:
    """The decision for one scope: all pairs (None), one slice, or 'macro' (slices weigh the same)."""
    metric = select.metric
    if metric not in PAIR_COLUMN:
        raise ValueError(f"select.metric = {metric!r}: must be one of {', '.join(PAIR_COLUMN)}")
    done = sweep.done.sort_values("seed", key=lambda s: pd.to_numeric(s, errors="coerce"))
    complete = [a for a in arms if a["complete"] and a["done"] > 0]
    result = {"scope": scope or "all", "metric": metric, "winner": None, "decisive": False,
              "incomplete_arms": [a["arm"] for a in arms if not a["complete"]], "comparisons": []}
    if not complete:
        result["explanation"] = "No arm has all its cells done: nothing to compare."
        return result

    # Per-pair values of every complete arm on the same pairs; rows sorted by seed (done is sorted).
    cache_key = ("matrices", metric)
    if cache_key not in sweep.cache:  # reused by the other scopes
        sweep.cache[cache_key] = _arm_matrices(sweep, done, [a["arm"] for a in complete], metric)
    matrices, pair_ids, slices = sweep.cache[cache_key]
    seeds_of = {arm: seeds for arm, (seeds, _) in matrices.items()}
    values = {arm: matrix for arm, (_, matrix) in matrices.items()}
    if not values:
        result["explanation"] = "No readable held-out pairs in any complete arm."
        return result

    in_scope = _scope_mask(slices, scope)
    if not in_scope.any():
        known = sorted({s for s in slices if s is not None})
        raise ValueError(f"select.slice = {scope!r}: no held-out pairs in it (slices: {', '.join(known) or 'none'})")
    strata = np.where(pd.isna(slices[in_scope]), "", slices[in_scope]).astype(str)
    if scope == "macro":
        weights = {s: 1 / len(set(strata)) for s in sorted(set(strata))}
    else:
        weights = {s: float((strata == s).sum()) / len(strata) for s in sorted(set(strata))}
    boot = PairBootstrap(strata, weights, select.n_bootstrap, select.bootstrap_seed)
    values = {arm: v[:, in_scope] for arm, v in values.items()}
    point = {arm: boot.point(v) for arm, v in values.items()}
    replicates = boot.resample_arms(values)
    n_pairs = int(in_scope.sum())

    best = max(point, key=point.get)
    best_arm = next(a for a in complete if a["arm"] == best)
    factor = select.factor if select.factor in sweep.axes else None
    comparisons = []
    for arm, v in values.items():
        if arm == best:
            continue
        diff = point[best] - point[arm]
        low, high = percentile_ci(replicates[best] - replicates[arm], select.alpha)
        comparison = {"arm": arm, "difference": diff, "ci_low": low, "ci_high": high}
        if metric in ACCURACY_METRICS:
            common = sorted(set(seeds_of[best]) & set(seeds_of[arm]))  # the same seed: same data order
            rows_best = [seeds_of[best].index(s) for s in common]
            rows_other = [seeds_of[arm].index(s) for s in common]
            comparison |= {"mcnemar": mcnemar_exact(values[best][rows_best] > 0, v[rows_other] > 0),
                           "mcnemar_seeds": common, "extra_pairs": diff * n_pairs}
            enough = diff * n_pairs >= select.min_extra_pairs - 1e-9  # diff is a float mean of counts
        else:
            enough = diff > select.min_margin_gain
        comparison["decisive"] = bool(low > 0 and enough)
        comparisons.append(comparison)
    if comparisons and metric in ACCURACY_METRICS:
        adjusted = holm([c["mcnemar"]["p_value"] for c in comparisons])
        for c, p in zip(comparisons, adjusted, strict=True):
            c["mcnemar"]["p_holm"] = p

    def factor_value(arm_name):
        return next(a for a in complete if a["arm"] == arm_name)["axes"].get(factor) if factor else arm_name

    rivals = [c for c in comparisons if factor_value(c["arm"]) != factor_value(best)]
    decisive = bool(rivals) and all(c["decisive"] for c in rivals)
    tied = [best] + [c["arm"] for c in comparisons if not c["decisive"]]
    recommended = _tie_break(sweep, select, best_arm, [a for a in complete if a["arm"] in tied
                                                       and factor_value(a["arm"]) == factor_value(best)])
    result |= {
        "pairs": n_pairs,
        "factor": factor,
        "best_arm": best,
        "point": point,
        "winner": factor_value(best) if decisive else None,
        "decisive": decisive,
        "recommended_arm": recommended["arm"],
        "tie_break": recommended["reason"],
        "comparisons": comparisons,
    }
    result["explanation"] = _explain(result, select, rivals, point)
    return result


def _scope_mask(slices: np.ndarray, scope: str | None) -> np.ndarray:
    if scope is None:
        return np.ones(len(slices), bool)
    if scope == "macro":
        return np.array([s is not None and not pd.isna(s) for s in slices])
    return slices == scope


def final_train_margin(sweep: Sweep, cell_id: str) -> float:
    log = read_jsonl(sweep, cell_id, "train_log.jsonl")
    return float(log[-1]["rewards/margins"]) if log and "rewards/margins" in log[-1] else math.nan


def _tie_break(sweep: Sweep, select, best_arm: dict, tied_same_factor: list[dict]) -> dict:
    """Within noise, prefer the lowest LoRA rank whose training margins are lower (overfitting guard)."""
    if not select.prefer_lower_rank or len(tied_same_factor) < 2:
        return {"arm": best_arm["arm"], "reason": None}
    done = sweep.done

    def margin(arm):
        return float(np.nanmean([final_train_margin(sweep, c) for c in done[done.arm == arm["arm"]].cell_id]))

    best_margin = margin(best_arm)
    lower = [a for a in tied_same_factor if a["lora_r"] is not None and best_arm["lora_r"] is not None
             and a["lora_r"] < best_arm["lora_r"] and margin(a) < best_margin]
    if not lower:
        return {"arm": best_arm["arm"], "reason": None}
    choice = min(lower, key=lambda a: a["lora_r"])
    return {"arm": choice["arm"], "reason": (
        f"{choice['arm']} is within noise of {best_arm['arm']} on held-out pairs and has lower final "
        f"training margins ({margin(choice):.3g} vs {best_margin:.3g}): the lower rank is preferred "
        f"(select.prefer_lower_rank)")}


def _explain(result: dict, select, rivals: list[dict], point: dict) -> str:
    metric, scope = result["metric"], result["scope"]
    best = result["best_arm"]
    where = {"all": "all held-out pairs", "macro": "the mean over held-out slices"}.get(scope, f"{scope} pairs")
    what = f"{metric} on {where}"
    lines = [f"Best arm by {what}: {best} ({point[best]:.3f})."]
    for c in rivals:
        extra = f", {c['extra_pairs']:+.1f} pairs" if "extra_pairs" in c else ""
        verdict = "beaten decisively" if c["decisive"] else "NOT beaten decisively"
        lines.append(f"vs {c['arm']} ({point[c['arm']]:.3f}): difference {c['difference']:+.3f}, "
                     f"{100 * (1 - select.alpha):.0f}% CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]{extra}: {verdict}.")
    if not rivals:
        lines.append("No arm with another value of the compared factor: nothing to decide.")
    if result["decisive"]:
        lines.append(f"Decisive winner: {result['factor'] or 'arm'} = {result['winner']} (every rival's CI excludes 0 "
                     f"and the gain meets the minimum).")
    else:
        lines.append("No decisive winner: at least one rival is within noise or below the minimum gain.")
    if result.get("tie_break"):
        lines.append(f"Tie-break: {result['tie_break']}.")
    if result["incomplete_arms"]:
        lines.append(f"Incomplete arms left out: {', '.join(result['incomplete_arms'])} (the decision may change).")
    return " ".join(lines)
