"""Diagnostics that explain a result or warn against trusting it (DESIGN §6).

- overoptimisation: a cell's training margins keep rising while its held-out behaviour does not;
- chosen log-prob shift: the policy makes even the chosen answers less likely than the reference;
- length artifacts: chosen answers systematically longer (verbosity) or shorter (brevity) in training;
- factorial effects: main effect of each swept factor and the two-way interactions, with CIs.
"""

from __future__ import annotations

import itertools

import numpy as np

from ablate.collect.decide import metric_key
from ablate.collect.load import Sweep, read_jsonl
from ablate.collect.stats import percentile_ci


def overoptimisation(sweep: Sweep, select, scope: str | None) -> list[dict]:
    """Per done cell: training margin, first vs second half; held-out metric, mid-training vs final."""
    key = metric_key(select.metric, scope)
    rows = []
    for cell in sweep.done.itertuples():
        train = [e for e in read_jsonl(sweep, cell.cell_id, "train_log.jsonl") if "rewards/margins" in e]
        evals = [e for e in read_jsonl(sweep, cell.cell_id, "eval_log.jsonl") if key in e]
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
        train = stats.get("train", {})
        longer, shorter = train.get("chosen_longer_share", 0), train.get("chosen_shorter_share", 0)
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
        findings.append({"data": stats.get("data", {}).get("kind"), **train, "length_imbalance": imbalance,
                         "verdict": verdict})
    return findings


def factorial_effects(sweep: Sweep, select, scope: str | None, arms: list[dict]) -> dict:
    """Main effects (each level vs the first) and two-way interactions of two-level factors, with CIs.

    Effects are contrasts of arm means averaged over the other factors' levels; CIs come from a
    bootstrap over seeds within each arm. Needs at least two swept factors and complete arms.
    """
    factors = {k: v for k, v in sweep.axes.items() if len(v) >= 2}
    complete = [a for a in arms if a["complete"] and a["done"] > 0]
    present = {tuple(str(a["axes"].get(k)) for k in factors) for a in complete}
    grid = set(itertools.product(*[[str(v) for v in levels] for levels in factors.values()]))
    if len(factors) < 2 or not grid <= present:
        # An unbalanced grid would confound the factors (a missing corner shifts every marginal mean).
        note = "needs two or more swept factors" if len(factors) < 2 else "needs every combination of levels complete"
        return {"factors": list(factors), "main_effects": [], "interactions": [], "note": note}
    values = _arm_seed_values(sweep, select, scope, complete)
    rng = np.random.default_rng(select.bootstrap_seed)
    boot_means = {arm: v[rng.integers(0, len(v), size=(select.n_bootstrap, len(v)))].mean(axis=1)
                  for arm, v in values.items()}  # (B,) per arm
    point_means = {arm: v.mean() for arm, v in values.items()}

    def contrast(weights: dict[str, float]) -> dict:
        point = sum(w * point_means[a] for a, w in weights.items())
        low, high = percentile_ci(sum(w * boot_means[a] for a, w in weights.items()), select.alpha)
        return {"effect": float(point), "ci_low": low, "ci_high": high, "excludes_zero": bool(low > 0 or high < 0)}

    def cells_at(assignment: dict) -> list[str]:
        return [a["arm"] for a in complete if all(str(a["axes"].get(k)) == str(v) for k, v in assignment.items())]

    main = []
    for factor, levels in factors.items():
        base = cells_at({factor: levels[0]})
        for level in levels[1:]:
            other = cells_at({factor: level})
            if base and other:
                weights = {a: 1 / len(other) for a in other} | {a: -1 / len(base) for a in base}
                main.append({"factor": factor, "level": level, "versus": levels[0], **contrast(weights)})
    interactions = []
    for (fa, la), (fb, lb) in itertools.combinations([(k, v) for k, v in factors.items() if len(v) == 2], 2):
        corners = {(i, j): cells_at({fa: la[i], fb: lb[j]}) for i in (0, 1) for j in (0, 1)}
        if all(corners.values()):
            weights: dict[str, float] = {}
            for (i, j), sign in {(1, 1): 1, (1, 0): -1, (0, 1): -1, (0, 0): 1}.items():
                for arm in corners[(i, j)]:
                    weights[arm] = weights.get(arm, 0) + sign / len(corners[(i, j)])
            interactions.append({"factors": [fa, fb],
                                 "definition": f"({fa}={la[1]} - {la[0]}) at {fb}={lb[1]} minus at {fb}={lb[0]}",
                                 **contrast(weights)})
    return {"factors": list(factors), "main_effects": main, "interactions": interactions}


def _arm_seed_values(sweep: Sweep, select, scope: str | None, complete: list[dict]) -> dict[str, np.ndarray]:
    done = sweep.done
    if scope == "macro":
        cols = [c for c in done.columns if c.startswith("heldout/") and c.endswith(f"/{select.metric}")
                and c.count("/") == 2]
        per_cell = done[cols].mean(axis=1)
    else:
        per_cell = done[metric_key(select.metric, scope)]
    return {a["arm"]: per_cell[done.arm == a["arm"]].to_numpy(dtype=float) for a in complete}
