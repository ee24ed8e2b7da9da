"""Diagnostics that explain a result or warn against trusting it (docs/ARCHITECTURE.md §6).

- overoptimisation: a cell's training margins keep rising while its held-out behaviour does not;
- chosen log-prob shift: the policy makes even the chosen answers less likely than the reference;
- length artifacts: chosen answers systematically longer (verbosity) or shorter (brevity) in training;
- seed outcomes: per arm, the runs that failed or collapsed, and the rate of such runs its seeds cannot exclude;
- factorial effects: main effect of each swept factor and the two-way interactions, with CIs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from ablate.collect.decide import evidence, metric_key, scope_strata
from ablate.collect.load import Sweep, read_jsonl
from ablate.collect.stats import contrast, seed_summary, t_quantile
from ablate.sweepdir import layout


def overoptimisation(sweep: Sweep, select, scope: str | None) -> list[dict]:
    """Per done cell: training margin, first vs second half; held-out metric, mid-training vs final."""
    key = metric_key(select.metric, scope)
    rows = []
    for cell in sweep.done.itertuples():
        train = [e for e in read_jsonl(sweep, cell.cell_id, layout.TRAIN_LOG) if "rewards/margins" in e]
        evals = [e for e in read_jsonl(sweep, cell.cell_id, layout.EVAL_LOG) if key in e]
        if len(train) < 2 or len(evals) < 2:
            continue
        half = train[-1]["step"] / 2
        first = [e["rewards/margins"] for e in train if e["step"] <= half]
        second = [e["rewards/margins"] for e in train if e["step"] > half]
        mid = min(evals[:-1], key=lambda e: abs(e["step"] - half))
        final = evals[-1]
        train_gain = float(np.mean(second) - np.mean(first)) if first and second else float("nan")
        heldout_gain = final[key] - mid[key]
        margin_gain = final.get("heldout/logratio_margin", np.nan) - mid.get("heldout/logratio_margin", np.nan)
        # The decision metric is what the comparison rests on; the held-out margin usually keeps
        # growing with the log-ratios and is reported as context, not as an all-clear.
        flagged = bool(train_gain > 0 and heldout_gain <= select.overoptimisation_tolerance)
        rows.append({"cell_id": cell.cell_id, "arm": cell.arm, "seed": cell.seed,
                     "train_margin_first_half": float(np.mean(first)) if first else None,
                     "train_margin_second_half": float(np.mean(second)) if second else None,
                     "heldout_mid_step": mid["step"], "heldout_mid": mid[key], "heldout_final": final[key],
                     "heldout_margin_gain": margin_gain, "flagged": flagged})
    return rows


def seed_outcomes(sweep: Sweep, select) -> list[dict]:
    """What each arm's seeds can and cannot exclude about runs that go wrong.

    A seed went wrong when its cell failed, or when it collapsed: its decision metric (all held-out
    pairs) lies more than `select.collapse_gap` below the median of its arm's finished seeds. With k
    of n seeds gone wrong, the one-sided (1 - alpha) upper confidence bound on the rate (Clopper-Pearson;
    with k = 0 it is 1 - alpha^(1/n), the "rule of three" 3/n at alpha 0.05) is a rate the seeds cannot
    exclude: 3 fine seeds of 3 still allow a recipe that fails 63% of the time.
    """
    from scipy.stats import beta

    key = metric_key(select.metric, None)
    rows = []
    for arm, group in sweep.cells.groupby("arm", sort=False):
        finished = group[group.state == "done"]
        values = pd.to_numeric(finished[key], errors="coerce") if key in finished else pd.Series(dtype=float)
        median = values.median() if values.notna().any() else math.nan
        collapsed = sorted(int(s) for s, v in zip(finished.seed, values, strict=True)
                           if not pd.isna(s) and math.isfinite(median) and v < median - select.collapse_gap)
        failed = sorted(int(s) for s in group[group.state == "failed"].seed if not pd.isna(s))
        n, k = len(finished) + len(failed), len(collapsed) + len(failed)
        upper = (1.0 if k >= n else float(beta.ppf(1 - select.alpha, k + 1, n - k))) if n else math.nan
        rows.append({"arm": arm, "seeds": n, "failed_seeds": failed, "collapsed_seeds": collapsed,
                     "gone_wrong": k, "rate_upper": upper})
    return rows


def exclusion_line(rows: list[dict], level: str) -> str | None:
    """One sentence for the console and the report: the largest rate of runs gone wrong no arm can exclude."""
    rows = [r for r in rows if r["seeds"]]
    if not rows:
        return None
    worst = max(rows, key=lambda r: r["rate_upper"])
    seen = [f"{r['arm']} {r['gone_wrong']} of {r['seeds']}" for r in rows if r["gone_wrong"]]
    where = f"seen in {'; '.join(seen)}" if seen else f"none in any arm ({min(r['seeds'] for r in rows)}+ seeds each)"
    return (f"runs gone wrong (failed, or collapsed below their arm's median): {where}; a rate up to "
            f"{worst['rate_upper']:.0%} is not excluded ({level} upper bound, {worst['arm']})")


def chosen_shift(sweep: Sweep) -> list[dict]:
    col = "heldout/chosen_logp_shift"
    if col not in sweep.done:
        return []
    return [{"cell_id": c, "arm": a, "seed": s, "chosen_logp_shift": float(v), "falling": bool(v < 0)}
            for c, a, s, v in zip(sweep.done.cell_id, sweep.done.arm, sweep.done.seed, sweep.done[col], strict=True)]


def length_artifacts(sweep: Sweep, select) -> list[dict]:
    """Chosen vs rejected lengths in the training pairs; a verdict when one side is systematically longer.

    The signal is the imbalance: chosen longer in 51% of pairs and shorter in none (the embedded
    task) is a strong verbosity bias even though most pairs are not longer at all.
    """
    findings = []
    for stats in sweep.data_stats:
        train = stats.get("train")
        longer, shorter = (_share(train, "chosen_longer_share"), _share(train, "chosen_shorter_share")) \
            if isinstance(train, dict) else (None, None)
        if (longer is None or shorter is None) and isinstance(train, dict) and train.get("examples") is not None:
            data = stats.get("data") if isinstance(stats.get("data"), dict) else {}
            findings.append({"data": data.get("kind"), **train, "verdict": (
                "not checked: unpaired training rows (KTO data) and no prompt with both a desirable and an "
                "undesirable completion to compare")})
            continue
        if longer is None or shorter is None:
            sweep.problem(None, "shared/data-*.json", "training-data length statistics unreadable: not checked")
            continue
        imbalance = longer - shorter
        if imbalance > select.length_imbalance:
            verdict = (f"verbosity: chosen is longer than rejected in {longer:.0%} of training pairs and shorter in "
                       f"{shorter:.0%}; an objective can win by preferring long answers (check length-controlled "
                       f"held-out slices)")
        elif -imbalance > select.length_imbalance:
            verdict = (f"brevity: chosen is shorter than rejected in {shorter:.0%} of training pairs and longer in "
                       f"{longer:.0%}; an objective can win by preferring short answers")
        else:
            verdict = (f"no systematic length difference (chosen longer in {longer:.0%}, shorter in {shorter:.0%} "
                       f"of training pairs)")
        data = stats.get("data") if isinstance(stats.get("data"), dict) else {}
        findings.append({"data": data.get("kind"), **train, "length_imbalance": imbalance, "verdict": verdict})
    return findings


def data_checks(sweep: Sweep) -> list[dict]:
    """What planning found in each data source (shared/data-*.json "checks"): one row per finding.

    Rows skipped under data.on_bad_row=skip (per file and reason), rows rewritten on reading,
    duplicate training pairs, held-out pairs whose prompt is also a training prompt.
    """
    findings = []
    for stats in sweep.data_stats:
        checks = stats.get("checks")
        if not isinstance(checks, dict):
            continue  # the embedded task, or a sweep prepared before the checks existed
        data = stats.get("data") if isinstance(stats.get("data"), dict) else {}
        source = data.get("kind")
        read = checks.get("rows_read") or {}
        for file, reasons in (checks.get("rows_skipped") or {}).items():
            for reason, count in reasons.items():
                findings.append({"data": source, "file": file, "finding": f"skipped: {reason}", "count": count,
                                 "of": read.get(file), "example": (checks.get("skipped_examples") or {}).get(reason)})
        for file, rewrites in (checks.get("rows_rewritten") or {}).items():
            for what, count in rewrites.items():
                findings.append({"data": source, "file": file, "finding": what, "count": count, "of": read.get(file)})
        duplicates = checks.get("duplicate_train_pairs") or {}
        if duplicates.get("count"):
            findings.append({"data": source, "file": None, "finding": "duplicate training pairs",
                             "count": duplicates["count"], "example": ", ".join(duplicates.get("examples", []))})
        overlap = checks.get("heldout_prompts_in_train") or {}
        if overlap.get("count"):
            findings.append({"data": source, "file": None,
                             "finding": "held-out pairs whose prompt is a training prompt",
                             "count": overlap["count"], "of": overlap.get("of"),
                             "example": ", ".join(e["pair_id"] for e in overlap.get("examples", []))})
    return findings


def _share(stats: dict, key: str) -> float | None:
    value = stats.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
    return float(value) if ok else None


def factorial_effects(sweep: Sweep, select, scope: str | None, arms: list[dict]) -> dict:
    """Main effects (each level vs the first) and two-way interactions of two-level factors, with CIs.

    Effects are contrasts of arm means averaged over the other factors' levels, estimated like every
    other comparison (ablate.collect.stats.contrast): seed by seed when every arm has the same seeds,
    with the variance between seeds and between held-out pairs. One seed per arm: no CI (the
    variance between training runs is unknown), and a note says so. Needs a complete grid.
    """
    factors = {k: v for k, v in sweep.axes.items() if len(v) >= 2}
    values = evidence(sweep, select.metric)["values"]
    usable = [a for a in arms if a["arm"] in values]
    present = {tuple(str(a["axes"].get(k)) for k in factors) for a in usable}
    grid = set(itertools.product(*[[str(v) for v in levels] for levels in factors.values()]))
    if len(factors) < 2 or not grid <= present:
        # An unbalanced grid would confound the factors (a missing corner shifts every marginal mean).
        note = ("needs two or more swept factors" if len(factors) < 2 else
                "needs every combination of levels with readable finished seeds")
        return {"factors": list(factors), "main_effects": [], "interactions": [], "note": note}
    mask, strata, weights = scope_strata(evidence(sweep, select.metric)["slices"], scope)
    seed_sets = {tuple(values[a["arm"]][0]) for a in usable}
    paired = len(seed_sets) == 1  # every arm has the same seeds: contrasts are formed seed by seed

    def contrast_of(coefs: dict[str, float]) -> dict:
        arm_names = list(coefs)
        result = contrast([values[a][1][:, mask] for a in arm_names], [coefs[a] for a in arm_names], strata,
                          weights, select.alpha, paired)
        has_ci = math.isfinite(result["ci_low"])
        return {"effect": result["estimate"], "ci_low": result["ci_low"], "ci_high": result["ci_high"],
                "seeds": result["seeds"], "paired": paired,
                "excludes_zero": bool(has_ci and (result["ci_low"] > 0 or result["ci_high"] < 0))}

    def cells_at(assignment: dict) -> list[str]:
        return [a["arm"] for a in usable if all(str(a["axes"].get(k)) == str(v) for k, v in assignment.items())]

    main = []
    for factor, levels in factors.items():
        base = cells_at({factor: levels[0]})
        for level in levels[1:]:
            other = cells_at({factor: level})
            if base and other:
                coefs = {a: 1 / len(other) for a in other} | {a: -1 / len(base) for a in base}
                main.append({"factor": factor, "level": level, "versus": levels[0], **contrast_of(coefs)})
    interactions = []
    for (fa, la), (fb, lb) in itertools.combinations([(k, v) for k, v in factors.items() if len(v) == 2], 2):
        corners = {(i, j): cells_at({fa: la[i], fb: lb[j]}) for i in (0, 1) for j in (0, 1)}
        if all(corners.values()):
            coefs: dict[str, float] = {}
            for (i, j), sign in {(1, 1): 1, (1, 0): -1, (0, 1): -1, (0, 0): 1}.items():
                for arm in corners[(i, j)]:
                    coefs[arm] = coefs.get(arm, 0) + sign / len(corners[(i, j)])
            interactions.append({"factors": [fa, fb],
                                 "definition": f"({fa}={la[1]} - {la[0]}) at {fb}={lb[1]} minus at {fb}={lb[0]}",
                                 **contrast_of(coefs)})
    result = {"factors": list(factors), "main_effects": main, "interactions": interactions}
    if min(len(values[a["arm"]][0]) for a in usable) < 2:
        result["note"] = ("an arm has one seed: no CI (the variance between training runs is unknown); "
                          "run more seeds")
    return result


# What each arm generates (eval.generate): the metrics every cell wrote under generation/, beside its ranking
GENERATION_METRICS = ("correct", "exact", "tokens_mean", "eos_share", "distinct_2", "reward_mean")
LENGTH_DRIFT = 0.25  # |arm's mean generated length / the reference's − 1| above this is called drift
BOUNDS = {"correct": (0, 1), "exact": (0, 1), "eos_share": (0, 1), "distinct_2": (0, 1), "tokens_mean": (0, math.inf)}


def generation_report(sweep: Sweep, select) -> dict:
    """Per arm, each generation metric's mean over seeds with a 95% t-interval over seeds (the same sampled prompts
    in every cell, so the interval is about seeds, given those prompts), the reference model's value, and flags
    where ranking and generation disagree: the arm ranks the chosen answer first in most held-out pairs (its
    primary metric's mean > 0.5) while what it generates drifts in length from the reference's by more than
    25%, or its generation correctness (embedded task) is below the reference's beyond its interval.
    Descriptive, like every diagnostic: no test, no claim of a winner."""
    done = sweep.done
    columns = [f"generation/{m}" for m in GENERATION_METRICS if f"generation/{m}" in done]
    if not columns:
        return {"arms": [], "reference": {}, "prompts": None, "note": "no generations (eval.generate off)"}
    reference = {}
    for metric in GENERATION_METRICS:
        col = f"generation/ref_{metric}"
        if col in done and done[col].notna().any():
            reference[metric] = float(pd.to_numeric(done[col], errors="coerce").dropna().iloc[0])
    ranking = metric_key(select.metric, None)
    arms = []
    for arm, group in done.groupby("arm", sort=False):
        stats = {}
        for col in columns:
            values = pd.to_numeric(group[col], errors="coerce").dropna().tolist()
            summary = seed_summary(values)
            n = summary["n"]
            half = t_quantile(0.975, n - 1) * summary["std"] / math.sqrt(n) if n > 1 else None
            low, high = BOUNDS.get(col.split("/", 1)[1], (-math.inf, math.inf))  # the interval within the range
            stats[col.split("/", 1)[1]] = {
                **summary, "low": max(low, summary["mean"] - half) if half is not None else None,
                "high": min(high, summary["mean"] + half) if half is not None else None}
        rank = seed_summary(pd.to_numeric(group[ranking], errors="coerce").tolist()) if ranking in group else None
        flags = []
        ranks_well = rank is not None and rank["n"] and rank["mean"] > 0.5
        length = stats.get("tokens_mean", {}).get("mean")
        if ranks_well and length is not None and reference.get("tokens_mean"):
            drift = length / reference["tokens_mean"] - 1
            if abs(drift) > LENGTH_DRIFT:
                flags.append(f"ranks well ({select.metric} {rank['mean']:.2f}) but generates {drift:+.0%} the "
                             f"reference's length ({length:.1f} vs {reference['tokens_mean']:.1f} tokens)")
        correct = stats.get("correct", {})
        if ranks_well and correct.get("high") is not None and reference.get("correct") is not None \
                and correct["high"] < reference["correct"]:
            flags.append(f"ranks well ({select.metric} {rank['mean']:.2f}) but generates the right answer less "
                         f"often than the reference ({correct['mean']:.2f}, interval up to {correct['high']:.2f}, "
                         f"vs {reference['correct']:.2f})")
        arms.append({"arm": arm, "seeds": int(len(group)), "ranking": rank["mean"] if rank else None,
                     "stats": stats, "flags": flags})
    prompts = None
    cell = sweep.cell_dir(done.cell_id.iloc[0])
    if (cell / layout.GENERATIONS).exists():
        prompts = int(pd.read_parquet(cell / layout.GENERATIONS, columns=["pair_id"]).pair_id.nunique())
    return {"arms": arms, "reference": reference, "prompts": prompts, "ranking_metric": select.metric}
