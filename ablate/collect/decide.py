"""Arms, seed-aware comparisons and the decision rule (docs/ARCHITECTURE.md §6).

An arm is every cell that differs only by seed. The best arm (highest decision metric, mean over
seeds and held-out pairs) is compared with every other arm on the SAME held-out pairs, seed by seed
when they share seeds, with a CI that counts the variance between training runs AND between held-out
pairs (ablate.collect.stats). The winning value of `select.factor` (e.g. the objective) is:

- decisive: every arm with another value of the factor is beaten with a CI above zero, a gain of at
  least `min_extra_pairs` held-out pairs (accuracy metrics) or `min_margin_gain` (margin metrics),
  and at least `min_seeds` seeds behind each comparison;
- not decisive: all the evidence is there, but some rival is within noise (the report says how many
  seeds would resolve it);
- undetermined: the evidence is not there: too few seeds (seed variance unknown), an arm with no
  finished seed, a finished cell whose per-pair results cannot be read, disagree on the pairs or
  hold non-finite values, or a planned cell of a compared arm that failed or has not finished (named,
  with the command that reruns it). An arm is never left out to make a winner, and a failed seed
  never silently drops out of its arm: with `select.failed_cells=worst` it counts instead as the
  worst outcome (accuracy 0 on every pair; for margins, the lowest value any cell of the sweep has on
  the pair), so a recipe that diverges is penalised, never flattered.

Requiring every rival's CI to exclude zero is an intersection-union test: no multiplicity correction
is needed for "beats all of them" to hold at level alpha/2 one-sided (tests/test_calibration.py
measures the rate on null sweeps).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.collect.load import Sweep, read_jsonl, read_pairs
from ablate.collect.stats import (
    contrast,
    equivalent,
    pair_weights,
    partly_paired_contrast,
    probability_of_improvement,
    seeds_to_resolve,
)
from ablate.sweepdir import layout

PAIR_COLUMN = {
    "avglogp_accuracy": "avglogp_correct",
    "logratio_accuracy": "logratio_correct",
    "avglogp_margin": "avglogp_margin",
    "logratio_margin": "logratio_margin",
    "chosen_logp_shift": "chosen_logp_shift",
}
ACCURACY_METRICS = ("avglogp_accuracy", "logratio_accuracy")
UNFINISHED = ("pending", "running", "preempted", "missing", "unknown")
FAILED_CELLS = ("undetermined", "worst")  # select.failed_cells
# why a race's collection is exploratory (ablate.collect.race): the race's own decision, made at each round's level, is
# the claim, and the collector's single-look reading of the same cells only describes the last look
RACE_CLAIMS = "a race: its claim is its own decision, made round by round at each round's level (race.json)"


def scope_label(scope: str | None) -> str:
    names = {None: "all pairs", "all": "all pairs", "macro": "macro (slices weigh the same)"}
    return names.get(scope, f"{scope} pairs")


def metric_key(metric: str, scope: str | None) -> str:
    """The metrics.json key of a metric in a scope (None: all pairs). 'macro' has no single key."""
    return f"heldout/{metric}" if scope in (None, "all", "macro") else f"heldout/{scope}/{metric}"


def confidence(alpha: float) -> str:
    """'95%' for alpha 0.05, '99.5%' for 0.005, '96.9%' at a look tested at 0.031: labels follow the level used."""
    return f"{100 * (1 - alpha):.4g}%"


def arm_stats(sweep: Sweep) -> list[dict]:
    """Per arm: its cells and their states, the finished seeds, and per-metric mean/std over them."""
    metric_cols = [c for c in sweep.cells.columns if c.startswith("heldout/") and not c.endswith(("/pairs", "_ties"))]
    done = sweep.done
    # one vectorised pass over every metric column (a per-arm, per-column loop cost seconds at 1,000 cells)
    numeric = done[metric_cols].apply(pd.to_numeric, errors="coerce").groupby(done.arm, sort=False)
    counts, means, stds = (frame.to_dict("index") for frame in (numeric.count(), numeric.mean(), numeric.std(ddof=1)))
    arms = []
    for arm, group in sweep.cells.groupby("arm", sort=False):
        finished = group[group.state == "done"]
        first = group.iloc[0]
        stats = ({col: {"n": int(counts[arm][col]), "mean": float(means[arm][col]), "std": float(stds[arm][col])}
                  for col in metric_cols} if arm in counts else {})
        arms.append({
            "arm": arm,
            "axes": {key: first.get(key) for key in sweep.axes},
            "objective": first.get("objective"),
            "lora_r": _int_or_none(first.get("lora_r")),
            "cells": len(group),
            "done": len(finished),
            "failed": int(group.state.isin(["failed", "corrupt"]).sum()),
            "unfinished": int(group.state.isin(UNFINISHED).sum()),
            "complete": len(finished) == len(group),
            "seeds": sorted(_int_or_none(s) for s in finished.seed if not pd.isna(s)),
            "stats": stats,
        })  # fmt: skip
    return arms


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------ evidence
def evidence(sweep: Sweep, metric: str, failed_cells: str = "undetermined") -> dict:
    """Every arm's per-pair values of the metric on one reference set of held-out pairs (read once).

    {"values": {arm: (seeds, seeds x pairs matrix)}, "missing": {arm: [reasons]}, "pair_ids", "slices"}.
    An arm with ANY finished cell that cannot be used (unreadable or missing per-pair file, other
    pairs, non-finite values, a corrupt metrics.json) goes to `missing`, whole: its remaining seeds
    could not speak for it. With failed_cells="worst", each failed cell adds its seed with the worst
    outcome on every pair (see the module docstring).
    """
    key = ("evidence", metric, failed_cells)
    if key in sweep.cache:
        return sweep.cache[key]
    cells = sweep.cells[sweep.cells.state.isin(["done", "corrupt"])]
    cells = cells.sort_values("seed", key=lambda s: pd.to_numeric(s, errors="coerce"))
    pairs = {cid: read_pairs(sweep, cid) for cid, state in zip(cells.cell_id, cells.state, strict=True)
             if state == "done"}
    keys = {cid: p.pair_ids.tobytes() for cid, p in pairs.items() if p is not None}
    reference_key = Counter(keys.values()).most_common(1)[0][0] if keys else None
    reference = next((pairs[cid] for cid, k in keys.items() if k == reference_key), None)
    column = PAIR_COLUMN[metric]
    values, missing = {}, {}
    for arm, group in cells.groupby("arm", sort=False):
        seeds, rows, reasons = [], [], []
        for cid, seed, state in zip(group.cell_id, group.seed, group.state, strict=True):
            where = f"cell {cid} (seed {seed})"
            p = pairs.get(cid)
            if state == "corrupt":
                reasons.append(f"{where}: metrics.json unreadable")
            elif p is None:
                reasons.append(f"{where}: heldout_pairs.parquet missing or unreadable")
            elif keys[cid] != reference_key:
                reasons.append(f"{where}: evaluated on other held-out pairs than the rest of the sweep")
                sweep.problem(cid, sweep.cell_dir(cid) / layout.HELDOUT_PAIRS,
                              "held-out pairs differ from the other cells'")
            elif p.nonfinite:
                reasons.append(f"{where}: {p.nonfinite} held-out pair(s) with non-finite values")
            elif pd.isna(seed):
                reasons.append(f"{where}: no seed recorded in status.json")
            else:
                seeds.append(int(seed))
                rows.append(np.asarray(p.outcomes[column], dtype=float))
        if reasons:
            missing[arm] = reasons
        elif rows:
            values[arm] = (seeds, np.vstack(rows))
    if failed_cells == "worst" and reference is not None:
        _add_worst_seeds(sweep, values, missing, column, reference_key, pairs, keys)
    result = {"values": values, "missing": missing,
              "pair_ids": None if reference is None else reference.pair_ids,
              "slices": None if reference is None else reference.slices}
    sweep.cache[key] = result
    return result


def _add_worst_seeds(sweep: Sweep, values: dict, missing: dict, column: str, reference_key, pairs, keys) -> None:
    """Each failed cell's seed joins its arm with the worst outcome on every pair (select.failed_cells=worst)."""
    readable = [np.asarray(pairs[cid].outcomes[column], dtype=float) for cid, k in keys.items() if k == reference_key]
    if column.endswith("_correct"):
        worst = np.zeros_like(readable[0])
    else:  # margins: the lowest value any finished cell of the sweep has on the pair
        worst = np.nanmin(np.vstack(readable), axis=0)
    failed = sweep.cells[sweep.cells.state == "failed"]
    for arm, group in failed.groupby("arm", sort=False):
        if arm in missing:
            continue
        seeds, x = values.get(arm, ([], np.empty((0, len(worst)))))
        extra = [int(s) for s in group.seed if not pd.isna(s) and int(s) not in seeds]
        if extra:
            values[arm] = (seeds + extra, np.vstack([x, *[worst] * len(extra)]))


def scope_strata(slices: np.ndarray, scope: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mask of the scope's pairs, their strata, stratum weights). Strata are slices, weighted by size
    (all pairs, one slice) or equally (macro)."""
    tagged = np.array([s is not None and not pd.isna(s) for s in slices])
    if scope is None or scope == "all":
        mask = np.ones(len(slices), bool)
    elif scope == "macro":
        mask = tagged
    else:
        mask = tagged & (slices.astype(object) == scope)
    strata = np.where(tagged[mask], slices[mask].astype(object), "").astype(str)
    names = sorted(set(strata))
    if scope == "macro":
        weights = {s: 1 / len(names) for s in names}
    else:
        weights = {s: float((strata == s).sum()) / len(strata) for s in names}
    return mask, strata, weights


# ---------------------------------------------------------------------------------- the rule
def compare_arms(values: dict[str, tuple[list[int], np.ndarray]], strata: np.ndarray, weights: dict,
                 factor_of: dict[str, object], select, *, accuracy: bool) -> dict:
    """The decision on arms' per-pair values (no I/O: the calibration simulation calls this directly).

    values: arm -> (seeds, seeds x pairs) on the scope's pairs. factor_of: arm -> its value of the
    compared factor (arms with another value are the rivals the winner must beat).
    """
    alpha = select.alpha
    n_pairs = len(strata)
    arm_estimates = {arm: contrast([x], [1.0], strata, weights, alpha, paired=False) for arm, (_, x) in values.items()}
    point = {arm: e["estimate"] for arm, e in arm_estimates.items()}
    best = max(point, key=point.get)
    comparisons = [versus(values, best, arm, strata, weights, select, accuracy=accuracy)
                   for arm in values if arm != best]
    rivals = [c for c in comparisons if factor_of[c["arm"]] != factor_of[best]]
    too_few = sorted(arm for arm, (seeds, _) in values.items() if len(seeds) < select.min_seeds)
    if not rivals:
        verdict = "undetermined"
    elif too_few:
        verdict = "undetermined"
    elif all(c["decisive"] for c in rivals):
        verdict = "decisive"
    else:
        verdict = "not decisive"
    return {"verdict": verdict, "decisive": verdict == "decisive", "best_arm": best, "point": point,
            "arm_estimates": arm_estimates, "comparisons": comparisons, "rivals": [c["arm"] for c in rivals],
            "too_few_seeds": too_few, "pairs": n_pairs}


def versus(values: dict[str, tuple[list[int], np.ndarray]], best: str, arm: str, strata: np.ndarray, weights: dict,
           select, *, accuracy: bool) -> dict:
    """`best` against `arm` on the same pairs: seed by seed when they share 2+ seeds, else per arm."""
    alpha = select.alpha
    w = pair_weights(strata, weights)
    best_seeds, best_x = values[best]
    seeds, x = values[arm]
    common = sorted(set(best_seeds) & set(seeds))
    if len(common) >= 2 and len(common) < max(len(best_seeds), len(seeds)):
        # some seeds shared, some not (an arm resumed or extended on its own): every seed counts
        a, b = best_x, x
        result = partly_paired_contrast(a, b, best_seeds, seeds, strata, weights, alpha)
    elif len(common) >= 2:  # seed k of both arms: same data order, so compare seed by seed
        a = best_x[[best_seeds.index(s) for s in common]]
        b = x[[seeds.index(s) for s in common]]
        result = contrast([a, b], [1.0, -1.0], strata, weights, alpha, paired=True)
    else:
        a, b = best_x, x
        result = contrast([a, b], [1.0, -1.0], strata, weights, alpha, paired=False)
    diff = result["estimate"]
    comparison = {"arm": arm, "difference": diff, "se": result["se"], "df": result["df"],
                  "ci_low": result["ci_low"], "ci_high": result["ci_high"], "paired": result["paired"],
                  "seeds": result["seeds"], "seed_values": sorted(common) if result["paired"] else None,
                  "shared_seeds": len(common),
                  "p_improvement": probability_of_improvement(a @ w, b @ w),
                  "p_improvement_pairs": len(a) * len(b),  # seed pairs behind it: with 3 v 3, steps of 1/9
                  "equivalent": equivalent(result, select.equivalence_margin, alpha),
                  "one_seed_var": result["one_seed_var"], "pair_var": result["pair_var"]}
    if accuracy:
        # a count under every weighting: how many more of the scope's pairs the best arm gets right, per seed
        # (with slices weighted by size this is difference x pairs; under macro it is not)
        extra = float(a.mean(axis=0).sum() - b.mean(axis=0).sum())
        comparison["extra_pairs"] = extra
        enough = extra >= select.min_extra_pairs - 1e-9  # a float mean of counts
    else:
        enough = diff > select.min_margin_gain
    comparison["replicated"] = result["seeds"] >= select.min_seeds
    comparison["decisive"] = bool(comparison["replicated"] and result["ci_low"] > 0 and enough)
    comparison["enough_gain"] = bool(enough)
    return comparison


def decide(sweep: Sweep, select, scope: str | None, arms: list[dict], *, exploratory: str | None = None,
           alpha_at=None, plan_limit: int = 100, pairs: np.ndarray | None = None) -> dict:
    """The decision for one scope: all pairs (None), one slice, or 'macro' (slices weigh the same).

    `exploratory`: why this decision may not claim anything (another scope or metric than the sweep's
    primary test, or a test whose alpha is spent; ablate.collect.sequential): where the rule's conditions
    hold, the verdict is "exploratory" with a `lead`, never "decisive". `alpha_at(n)`: the level a next
    look at n seeds per arm would get, for seed planning up to `plan_limit` seeds (default: select.alpha).
    `pairs`: a mask of the reference held-out pairs to decide on (a confirmation stage's test pairs); None: all.
    """
    metric = select.metric
    factor = select.factor if select.factor in sweep.axes else None
    info = {a["arm"]: a for a in arms}
    result = {"scope": scope or "all", "metric": metric, "factor": factor, "verdict": "undetermined",
              "alpha_used": select.alpha,
              "winner": None, "decisive": False, "best_arm": None, "comparisons": [], "point": {},
              "arm_estimates": {}, "reasons": [], "seeds_needed": None}
    ev = evidence(sweep, metric, select.failed_cells)
    if ev["missing"]:
        result["reasons"] += [f"evidence missing for {arm}: {'; '.join(why)}" for arm, why in ev["missing"].items()]
    never = [a["arm"] for a in arms if a["arm"] not in ev["values"] and a["arm"] not in ev["missing"]]
    if never:
        result["reasons"].append(f"no finished seed in {', '.join(never)}")
    result["unfinished_arms"] = [a["arm"] for a in arms if a["unfinished"]]
    result["failed_arms"] = [a["arm"] for a in arms if a["failed"]]
    not_finished = unfinished_cells(sweep, select)
    if not_finished:
        result["not_finished_cells"] = not_finished
        result["rerun_command"] = rerun_command(sweep)
        result["reasons"].append(f"{len(not_finished)} planned cell(s) not finished: "
                                 + "; ".join(c["what"] for c in not_finished)
                                 + f"; rerun: {result['rerun_command']}")
    values = ev["values"]
    if not values:
        result["explanation"] = "No arm has a finished seed with readable held-out pairs: nothing to compare."
        return result

    slices = ev["slices"]
    if pairs is not None:  # a confirmation stage: the validation pairs chose its settings, the test pairs decide
        values = {arm: (seeds, x[:, pairs]) for arm, (seeds, x) in values.items()}
        slices = slices[pairs]
    mask, strata, weights = scope_strata(slices, scope)
    if not mask.any():  # a slice named in some metrics.json but absent from the per-pair files
        result["reasons"].append(f"no held-out pairs of slice {scope!r} in the per-pair files")
        result["explanation"] = f"Undetermined: {result['reasons'][-1]}."
        return result
    values = {arm: (seeds, x[:, mask]) for arm, (seeds, x) in values.items()}
    factor_of = {arm: (info[arm]["axes"].get(factor) if factor else arm) for arm in values}
    outcome = compare_arms(values, strata, weights, factor_of, select, accuracy=metric in ACCURACY_METRICS)
    result |= outcome
    if outcome["too_few_seeds"]:
        result["reasons"].append(f"fewer than select.min_seeds = {select.min_seeds} seeds in "
                                 f"{', '.join(outcome['too_few_seeds'])}: the variance between training runs "
                                 f"is unknown or too poorly known")
    if not outcome["rivals"]:
        result["reasons"].append("no arm with another value of the compared factor: nothing to decide")
    if result["reasons"]:
        result["verdict"], result["decisive"] = "undetermined", False
    best = outcome["best_arm"]
    result["winner"] = factor_of[best] if result["decisive"] else None
    result["exploratory"] = exploratory
    if exploratory and result["decisive"]:
        result["verdict"], result["decisive"], result["lead"], result["winner"] = ("exploratory", False,
                                                                                   result["winner"], None)
    result["seeds_needed"] = (None if exploratory else
                              seeds_needed(result, select, alpha_at=alpha_at, limit=plan_limit))
    same_factor = [info[c["arm"]] for c in result["comparisons"]
                   if factor_of[c["arm"]] == factor_of[best] and c["equivalent"]]
    recommended = _tie_break(sweep, select, info[best], same_factor)
    if recommended["arm"] != best and result["verdict"] in ("decisive", "exploratory"):
        # the lower rank is recommended in the winner's place only if it, too, beats every rival decisively
        accuracy = metric in ACCURACY_METRICS
        beaten = [versus(values, recommended["arm"], r, strata, weights, select, accuracy=accuracy)
                  for r in outcome["rivals"]]
        if not all(c["decisive"] for c in beaten):
            close = [c["arm"] for c in beaten if not c["decisive"]]
            recommended = {"arm": best, "reason": f"{recommended['arm']} would be preferred (equivalent to {best}, "
                           f"lower rank and training margins) but does not itself beat {', '.join(close)} "
                           f"decisively: the best arm stays"}
    result["recommended_arm"], result["tie_break"] = recommended["arm"], recommended["reason"]
    result["explanation"] = _explain(result, select)
    return result


def unfinished_cells(sweep: Sweep, select) -> list[dict]:
    """Planned cells that did not finish, each with what happened to it: failed (error and step), still running,
    never started. Corrupt cells are reported by the evidence; with failed_cells=worst failed ones are scored."""
    states = UNFINISHED + (() if select.failed_cells == "worst" else ("failed",))
    rows = []
    for cell in sweep.cells[sweep.cells.state.isin(states)].itertuples(index=False):
        seed = "?" if pd.isna(cell.seed) else int(cell.seed)
        if cell.state == "failed":
            step = "" if pd.isna(cell.failed_step) else f" at step {int(cell.failed_step)}"
            what = f"failed{step}: {cell.error}" if isinstance(cell.error, str) and cell.error else f"failed{step}"
        elif cell.state in ("missing", "unknown"):
            what = "never ran"
        else:
            what = f"{cell.state}, not finished"
        rows.append({"cell_id": cell.cell_id, "arm": cell.arm, "seed": seed, "state": cell.state,
                     "what": f"{cell.arm} seed {seed} (cell {cell.cell_id}) {what}"})
    return rows


def rerun_command(sweep: Sweep) -> str:
    """The command that trains the planned cells again without retraining the finished ones."""
    from ablate.collect.plan import add_seeds_command, sweep_command

    if (Path(sweep.sweep_dir) / layout.RACE_JSON).exists():  # a race picks its seeds; its command goes on (SLURM too)
        return sweep_command(sweep, [] if sweep.record.get("argv") else ["hydra.sweeper.race=true"])
    if isinstance(sweep.record.get("slurm"), dict):
        return f"ablate resubmit {sweep.sweep_dir} --failed"
    seeds = sweep.cells.seed.dropna()
    return add_seeds_command(sweep, len(set(int(s) for s in seeds)))


def seeds_needed(result: dict, select, *, alpha_at=None, limit: int = 100) -> dict | None:
    """How many seeds per arm would settle what the evidence has not: {"seeds": n or None, "current", "why"}.

    Planned from the observed seed-to-seed spread of each unresolved comparison, for its observed
    difference (or select.min_effect) at select.power and the level a look at that many seeds would
    get (`alpha_at(n)`; select.alpha without one), up to `limit` seeds. None when the decision is
    decisive or blocked by missing evidence (no number of seeds fixes an unreadable file).
    """
    if result["verdict"] == "decisive" or any(r.startswith(("evidence missing", "no finished"))
                                              for r in result["reasons"]):
        return None
    rivals = [c for c in result["comparisons"] if c["arm"] in result.get("rivals", [])]
    current = min([c["seeds"] for c in rivals] or [0])
    plans, why = [], []
    for c in rivals:
        if c["decisive"] or not math.isfinite(c["one_seed_var"]):
            continue  # settled, or one seed: its variance is unknown (min_seeds below covers it)
        if not c["enough_gain"] and not select.min_effect:
            plans.append(None)
            why.append(f"vs {c['arm']}: the observed difference is below the minimum gain, so more seeds "
                       f"would not make it decisive")
            continue
        effect = select.min_effect or abs(c["difference"])
        n = seeds_to_resolve(effect, c["one_seed_var"], c["pair_var"], alpha_at or select.alpha, select.power,
                             start=c["seeds"] + 1, limit=limit)
        plans.append(n)
        level = (f"the level a look at {n} seeds gets ({alpha_at(n):.3g})" if alpha_at and n
                 else f"alpha {select.alpha:g}")
        why.append(f"vs {c['arm']}: {f'more than {limit}' if n is None else n} seeds for a {select.power:.0%} chance "
                   f"to resolve a difference of {effect:.3g} at {level}")
    if current < select.min_seeds:
        seeds = max([select.min_seeds, *[n for n in plans if n]])
    elif plans and all(n is not None for n in plans):
        seeds = max(plans)
    else:
        seeds = None
    return {"seeds": seeds, "current": current, "why": why}


def final_train_margin(sweep: Sweep, cell_id: str) -> float:
    log = read_jsonl(sweep, cell_id, layout.TRAIN_LOG)
    return float(log[-1]["rewards/margins"]) if log and "rewards/margins" in log[-1] else math.nan


def _tie_break(sweep: Sweep, select, best_arm: dict, equivalent_same_factor: list[dict]) -> dict:
    """Prefer a lower LoRA rank only when it is EQUIVALENT to the best arm (two one-sided tests within
    select.equivalence_margin, not merely "not significantly worse") and its final training margins
    are lower (overfitting guard)."""
    if not select.prefer_lower_rank or not equivalent_same_factor:
        return {"arm": best_arm["arm"], "reason": None}
    done = sweep.done

    def margin(arm):
        values = [final_train_margin(sweep, c) for c in done[done.arm == arm["arm"]].cell_id]
        return float(np.nanmean(values)) if any(map(math.isfinite, values)) else math.nan

    best_margin = margin(best_arm)
    lower = [a for a in equivalent_same_factor if a["lora_r"] is not None and best_arm["lora_r"] is not None
             and a["lora_r"] < best_arm["lora_r"] and margin(a) < best_margin]
    if not lower:
        return {"arm": best_arm["arm"], "reason": None}
    choice = min(lower, key=lambda a: a["lora_r"])
    return {"arm": choice["arm"], "reason": (
        f"{choice['arm']} is equivalent to {best_arm['arm']} within ±{select.equivalence_margin:g} on held-out pairs "
        f"and has lower final training margins ({margin(choice):.3g} vs {best_margin:.3g}): the lower rank is "
        f"preferred (select.prefer_lower_rank)")}


def _explain(result: dict, select) -> str:
    metric, scope = result["metric"], result["scope"]
    best, point = result["best_arm"], result["point"]
    where = {"all": "all held-out pairs", "macro": "the mean over held-out slices"}.get(scope, f"{scope} pairs")
    level = confidence(select.alpha)
    lines = [f"Best arm by {metric} on {where}: {best} ({point[best]:.3f})."]
    for c in result["comparisons"]:
        if c["arm"] not in result["rivals"]:
            continue
        extra = f", {c['extra_pairs']:+.1f} pairs" if "extra_pairs" in c else ""
        how = (f"seed by seed over {c['seeds']} seeds" if c["paired"]
               else f"{c['seeds']}+ seeds per arm, {c['shared_seeds']} shared" if c.get("shared_seeds", 0) >= 2
               else f"{c['seeds']}+ seeds per arm, unpaired")
        if math.isfinite(c["ci_low"]):
            interval = f"{level} CI [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] ({how})"
        else:
            interval = f"no CI ({how}: the variance between seeds is unknown)"
        verdict = "beaten decisively" if c["decisive"] else "NOT beaten decisively"
        lines.append(f"vs {c['arm']} ({point[c['arm']]:.3f}): difference {c['difference']:+.3f}, {interval}{extra}, "
                     f"P(better) {c['p_improvement']:.2f} over {c['p_improvement_pairs']} seed pairs: {verdict}.")
    same = [c["arm"] for c in result["comparisons"] if c["arm"] not in result["rivals"] and c["equivalent"]]
    if same:
        lines.append(f"{', '.join(same)} {'is' if len(same) == 1 else 'are'} equivalent to {best} within "
                     f"±{select.equivalence_margin:g} (two one-sided tests).")
    if result["verdict"] == "decisive":
        lines.append(f"Decisive winner: {result['factor'] or 'arm'} = {result['winner']} (every rival's CI excludes 0 "
                     f"with {select.min_seeds}+ seeds and the gain meets the minimum).")
    elif result["verdict"] == "exploratory" and result["exploratory"] == RACE_CLAIMS:
        # not "not a decisive claim": the race's own decision, stated before this, may well be decisive
        lines.append(f"Lead at this look, unadjusted: {result['factor'] or 'arm'} = {result['lead']} (every "
                     f"rival's {level} CI excludes 0 at a single look's level; the claim is the race's decision).")
    elif result["verdict"] == "exploratory":
        lines.append(f"Exploratory lead: {result['factor'] or 'arm'} = {result['lead']} (every rival's {level} CI "
                     f"excludes 0, but this is {result['exploratory']}: not a decisive claim).")
    elif result["verdict"] == "undetermined":
        lines.append("Undetermined: " + "; ".join(result["reasons"]) + ".")
    else:
        lines.append("No decisive winner: at least one rival is within noise or below the minimum gain"
                     + (f" (and this is {result['exploratory']})." if result.get("exploratory") else "."))
    if result["verdict"] in ("decisive", "exploratory") and select.failed_cells == "worst" and result["failed_arms"]:
        lines.append(f"Failed seeds of {', '.join(result['failed_arms'])} counted as the worst outcome "
                     "(select.failed_cells=worst).")
    plan = result.get("seeds_needed")
    if plan and plan["seeds"]:
        lines.append(f"Run {plan['seeds']} seeds per arm (now {plan['current']}) to settle it.")
    elif plan and plan["why"]:
        lines.append("More seeds are unlikely to settle it: " + "; ".join(plan["why"]) + ".")
    if result.get("tie_break"):
        lines.append(f"Tie-break: {result['tie_break']}.")
    return " ".join(lines)
