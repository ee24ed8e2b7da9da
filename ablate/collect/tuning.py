"""Tuned comparisons: each objective at its best setting, selected on validation pairs, decided on test pairs.

A sweep launched with `hydra.sweeper.tune` (ablate/sweep/search_space.py) has one arm per (objective,
setting of its search space, other swept values) and a <sweep_dir>/tuning.json with the spaces and
each tuned key's default; its cells tag every held-out pair `validation` or `test`
(data.validation_pairs). Here, per combination of the other swept keys ("group"):

1. Selection, on VALIDATION pairs only: for each objective, the setting with the best seed-mean of
   the decision metric (select.metric on select.slice). Ties (equal means) go to the default
   setting, then to the setting with the fewest keys off their defaults, then to the first in the
   space's order. `select_setting` receives validation columns alone: it cannot see a test pair.
2. Decision, on TEST pairs only: the selected arms compared with the unchanged seed-aware rule
   (ablate.collect.decide.compare_arms), as any sweep's arms are.
3. The same decision at the shared defaults (each objective's default setting), when every
   objective's default setting is in its space: the answer an untuned ablation would give.

Selecting on the pairs that then decide would inflate the winner (the best of six noisy settings
looks better than it is); a disjoint test split keeps the decision honest.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np

from ablate.collect.decide import ACCURACY_METRICS, compare_arms, evidence, scope_strata
from ablate.collect.load import Sweep, _read_object, read_pairs
from ablate.collect.race import dropped_arms
from ablate.collect.stats import pair_weights
from ablate.sweepdir.layout import TUNING_JSON, override_values

TIE = 1e-12  # seed means this close are equal (accuracies are counts over the same pairs)
EXPLORATORY = ("a tuning sweep: the settings were selected on these same runs, so only their confirmation on fresh "
               "seeds may be decisive (ablate confirm <sweep_dir>)")


# ------------------------------------------------------------------------------ tuning.json
def read_tuning(sweep: Sweep) -> dict | None:
    """tuning.json's spaces and defaults; None when the sweep is not tuned (or the file is unusable:
    reported as a problem, never a crash)."""
    problems: list[dict] = []
    record = _read_object(sweep.sweep_dir / TUNING_JSON, problems, None)
    for p in problems:
        sweep.problem(p["cell_id"], p["file"], p["problem"])
    if record is None:
        return None
    spaces, defaults = record.get("spaces"), record.get("defaults") or {}
    ok = (isinstance(spaces, dict) and spaces and isinstance(defaults, dict)
          and all(isinstance(s, dict) and s and all(isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                                                    for v in s.values()) for s in spaces.values()))
    if not ok:
        sweep.problem(None, sweep.sweep_dir / TUNING_JSON, "not a tuning record ({spaces: {objective: {key: "
                                                           "[values]}}, defaults}): no tuned comparison")
        return None
    defaults = {o: (defaults.get(o) if isinstance(defaults.get(o), dict) else {}) for o in spaces}
    confirms = record.get("confirms")
    return {"spaces": spaces, "defaults": defaults, "budget": record.get("budget"),
            "confirms": confirms if isinstance(confirms, str) else None}


def same_value(a, b) -> bool:
    """'2' and '2.0' are the same setting (the config writes 2.0 where the space wrote 2)."""
    if a is None or b is None:
        return a is b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _settings(space: dict[str, list[str]]) -> list[tuple[str, ...]]:
    return list(product(*space.values()))


# -------------------------------------------------------------------------------- selection
def select_setting(candidates: dict[tuple, tuple[list[int], np.ndarray]], weights: np.ndarray,
                   order: list[tuple], default: tuple | None) -> dict:
    """The best setting by seed-mean validation value. No I/O and no test pair in reach.

    candidates: setting -> (seeds, seeds x VALIDATION pairs of the scope); weights: the scope's pair
    weights; order: the space's settings in order; default: the default setting (or None).
    """
    table = []
    for setting in order:
        if setting not in candidates:
            continue
        seeds, x = candidates[setting]
        per_seed = x @ weights
        table.append({"setting": setting, "seeds": list(seeds), "per_seed": per_seed.tolist(),
                      "mean": float(per_seed.mean()),
                      "std": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else math.nan})
    if not table:
        return {"selected": None, "table": table, "tied": []}
    best = max(row["mean"] for row in table)
    tied = [row["setting"] for row in table if row["mean"] >= best - TIE]

    def simplicity(setting):  # default first, then fewest keys off the default, then the space's order
        off = len(setting) if default is None else sum(not same_value(a, b) for a, b in zip(setting, default,
                                                                                           strict=True))
        return (off != 0, off, order.index(setting))

    return {"selected": min(tied, key=simplicity), "table": table, "tied": tied if len(tied) > 1 else []}


def edge_warnings(objective: str, space: dict[str, list[str]], setting: tuple) -> list[str]:
    """A selected numeric value at the end of its searched range: the optimum may lie beyond it."""
    warnings = []
    for (key, values), value in zip(space.items(), setting, strict=True):
        try:
            numbers = sorted(float(v) for v in values)
            chosen = float(value)
        except (TypeError, ValueError):
            continue
        if len(numbers) < 2:
            continue
        side = "smallest" if chosen == numbers[0] else "largest" if chosen == numbers[-1] else None
        if side:
            beyond = "below" if side == "smallest" else "above"
            warnings.append(f"{objective}: {key} = {value} is the {side} value searched "
                            f"({', '.join(values)}); its optimum may lie {beyond} it")
    return warnings


# --------------------------------------------------------------------------------- the whole
def tuned_comparison(sweep: Sweep, select, arms: list[dict], tuning: dict) -> dict:
    """Selection per (group, objective) on validation pairs; tuned and default decisions on test pairs."""
    spaces, defaults = tuning["spaces"], tuning["defaults"]
    result = {"spaces": spaces, "defaults": defaults, "budget": tuning.get("budget"), "groups": [],
              "reasons": [], "split": None}
    ev = evidence(sweep, select.metric)
    if ev["pair_ids"] is None:
        result["reasons"].append("no finished cell with readable held-out pairs")
        return result
    splits, why = _reference_splits(sweep, ev["pair_ids"])
    if splits is None:
        result["reasons"].append(why)
        return result
    slices = ev["slices"]
    result["split"] = _split_sizes(splits, slices)
    parts = {name: splits == name for name in ("validation", "test")}
    if not all(m.any() for m in parts.values()):
        result["reasons"].append("the held-out pairs are not split into both validation and test pairs")
        return result

    tuned_keys = {k for space in spaces.values() for k in space}
    other_keys = [k for k in sweep.axes if k not in tuned_keys and k != "objective"]
    groups: dict[tuple, dict] = {}
    for arm in arms:
        cells = sweep.cells[sweep.cells.arm == arm["arm"]]
        overrides = override_values(str(cells.overrides.iloc[0]).split()) if len(cells) else {}
        objective = overrides.get("objective", arm.get("objective"))
        if objective not in spaces:
            continue
        setting = tuple(overrides.get(k) for k in spaces[objective])
        group = tuple((k, overrides.get(k)) for k in other_keys)
        groups.setdefault(group, {}).setdefault(objective, {})[setting] = arm
    scopes = list(dict.fromkeys([select.slice, *([None] if select.slice is not None else []),
                                 *[s for s in sweep.slices if s != select.slice]]))
    dropped = dropped_arms(sweep.sweep_dir)  # a tuning race: the settings it dropped are out of the selection
    for group, by_objective in groups.items():
        result["groups"].append(_group(sweep, select, ev, parts, slices, spaces, defaults, dict(group),
                                       by_objective, scopes, dropped))
    result["warnings"] = [w for g in result["groups"] for w in g["warnings"]]
    return result


def _reference_splits(sweep: Sweep, pair_ids: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The sweep's validation/test tag per reference pair, from every finished cell that records one
    (read already by `evidence`); (None, why) when none does or they disagree."""
    seen = set()
    for cid in sweep.done.cell_id:
        pairs = read_pairs(sweep, cid)
        if pairs is not None and pairs.splits is not None and np.array_equal(pairs.pair_ids, pair_ids):
            seen.add(tuple(np.asarray(pairs.splits).astype(str)))
    if not seen:
        return None, "the cells' held-out pairs carry no validation/test split: set data.validation_pairs"
    if len(seen) > 1:
        return None, "the cells disagree on which held-out pairs are validation and which test (data.split_seed?)"
    return np.array(seen.pop()), None


def test_pairs(sweep: Sweep, pair_ids: np.ndarray) -> np.ndarray | None:
    """Mask of the reference pairs tagged `test` (a confirmation stage decides on these); None without a split."""
    splits, _ = _reference_splits(sweep, pair_ids)
    return None if splits is None else splits == "test"


def validation_pairs(sweep: Sweep, pair_ids: np.ndarray) -> np.ndarray | None:
    """Mask of the reference pairs tagged `validation` (a tuning race selects on these); None without a split."""
    splits, _ = _reference_splits(sweep, pair_ids)
    return None if splits is None else splits == "validation"


def _split_sizes(splits: np.ndarray, slices) -> dict:
    sizes = {}
    for name in ("validation", "test"):
        mask = splits == name
        tagged = [s for s in np.asarray(slices, dtype=object)[mask] if isinstance(s, str)]
        sizes[name] = {"pairs": int(mask.sum()), "slices": {s: tagged.count(s) for s in sorted(set(tagged))}}
    return sizes


def _restrict(ev: dict, arm: str, part: np.ndarray, slices, scope) -> tuple[list[int], np.ndarray, tuple] | None:
    """(seeds, seeds x pairs of `part` in `scope`, (strata, weights)) of one arm; None without evidence."""
    if arm not in ev["values"]:
        return None
    seeds, x = ev["values"][arm]
    part_slices = np.asarray(slices, dtype=object)[part]
    mask, strata, weights = scope_strata(part_slices, scope)
    if not mask.any():
        return None
    return seeds, x[:, part][:, mask], (strata, weights)


def _group(sweep, select, ev, parts, slices, spaces, defaults, group, by_objective, scopes,
           dropped=frozenset()) -> dict:
    out = {"group": group, "selection": {}, "warnings": [], "reasons": [], "tuned": {}, "at_defaults": {}}
    chosen, at_default = {}, {}
    for objective, space in spaces.items():
        settings_ = _settings(space)
        arms_of = by_objective.get(objective, {})
        default = tuple(defaults.get(objective, {}).get(k) for k in space)
        default_setting = next((s for s in settings_ if all(same_value(a, b) for a, b in zip(s, default,
                                                                                             strict=True))), None)
        candidates, missing, raced_out = {}, [], []
        strata_weights = None
        for setting in settings_:
            arm = arms_of.get(setting)
            if arm is not None and arm["arm"] in dropped:
                raced_out.append(_label(space, setting))
                continue
            data = None if arm is None else _restrict(ev, arm["arm"], parts["validation"], slices, select.slice)
            if data is None:
                missing.append(_label(space, setting))
                continue
            seeds, x, strata_weights = data
            candidates[setting] = (seeds, x)
        weights = pair_weights(*strata_weights) if strata_weights else None
        pick = select_setting(candidates, weights, settings_, default_setting) if candidates else \
            {"selected": None, "table": [], "tied": []}
        selected = pick["selected"]
        entry = {
            "selected": None if selected is None else dict(zip(space, selected, strict=True)),
            "selected_arm": None if selected is None else arms_of[selected]["arm"],
            "default": dict(zip(space, default, strict=True)),
            "default_in_space": default_setting is not None,
            "tied": [_label(space, s) for s in pick["tied"]],
            "missing": missing,
            "dropped_by_race": raced_out,
            "table": [{"setting": dict(zip(space, r["setting"], strict=True)), "arm": arms_of[r["setting"]]["arm"],
                       **{k: v for k, v in r.items() if k != "setting"}} for r in pick["table"]],
        }
        out["selection"][objective] = entry
        if missing:
            out["reasons"].append(f"{objective}: no usable finished seeds in {len(missing)} of {len(settings_)} "
                                  f"settings ({'; '.join(missing[:3])}{'; ...' if len(missing) > 3 else ''}): "
                                  f"its best setting is not known")
        if selected is not None:
            chosen[objective] = arms_of[selected]["arm"]
            out["warnings"] += edge_warnings(objective, space, selected)
        if default_setting is not None and default_setting in arms_of:
            at_default[objective] = arms_of[default_setting]["arm"]
    for scope in scopes:
        key = scope or "all"
        out["tuned"][key] = _decide_on_test(ev, parts["test"], slices, scope, chosen, select, out["reasons"])
        complete = len(at_default) == len(spaces) and all(
            out["selection"][o]["default_in_space"] for o in spaces)
        out["at_defaults"][key] = (_decide_on_test(ev, parts["test"], slices, scope, at_default, select, [])
                                   if complete else {"verdict": "not run", "winner": None, "reasons": [
                                       "a default setting is not in its search space (or has no cells)"]})
    return out


def _label(space: dict, setting: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in zip(space, setting, strict=True))


def _decide_on_test(ev, test, slices, scope, arm_of: dict[str, str], select, reasons: list[str]) -> dict:
    """compare_arms on the test pairs of `scope` between one arm per objective."""
    values, strata_weights, missing = {}, None, []
    for objective, arm in arm_of.items():
        data = _restrict(ev, arm, test, slices, scope)
        if data is None:
            missing.append(objective)
            continue
        seeds, x, strata_weights = data
        values[arm] = (seeds, x)
    why = list(reasons) + [f"{o}: no test pairs of its arm in this scope" for o in missing]
    if len(values) < 2:
        why.append("fewer than two objectives to compare")
        return {"verdict": "undetermined", "winner": None, "decisive": False, "reasons": why, "arms": arm_of}
    factor_of = {arm: objective for objective, arm in arm_of.items()}
    outcome = compare_arms(values, *strata_weights, factor_of, select, accuracy=select.metric in ACCURACY_METRICS)
    if outcome["too_few_seeds"]:
        why.append(f"fewer than select.min_seeds = {select.min_seeds} seeds in {', '.join(outcome['too_few_seeds'])}")
    verdict = "undetermined" if why else outcome["verdict"]
    # Selected on the same training runs (validation pairs of these seeds): a tuned verdict is exploratory. Only a
    # confirmation on fresh seeds (`ablate confirm`, ablate/sweep/confirm.py) may be decisive.
    lead = factor_of[outcome["best_arm"]] if verdict == "decisive" else None
    return {**outcome, "verdict": "exploratory" if lead else verdict, "decisive": False, "reasons": why,
            "arms": arm_of, "winner": None, "lead": lead, "best_objective": factor_of[outcome["best_arm"]],
            "exploratory": EXPLORATORY}


def tuned_line(group: dict, scope: str) -> str:
    """One terminal line per group: tuned verdict (test pairs) next to the verdict at shared defaults."""
    def verdict(d: dict | None) -> str:
        if not d or d.get("verdict") == "not run":
            return "not run"
        if d["verdict"] == "exploratory":
            return f"exploratory lead {d['lead']}"
        return f"{d['verdict']} (best {d.get('best_objective')})"

    where = " ".join(f"{k}={v}" for k, v in group["group"].items())
    picks = "; ".join(f"{o}: {' '.join(f'{k}={v}' for k, v in (e['selected'] or {}).items()) or 'none'}"
                      for o, e in group["selection"].items())
    return (f"  tuned{f' [{where}]' if where else ''} ({scope} test pairs): {verdict(group['tuned'].get(scope))}; "
            f"at shared defaults: {verdict(group['at_defaults'].get(scope))}; selected on validation: {picks}")
