"""Put the pieces together: load, decide per scope, diagnose, write report/."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ablate.collect.decide import FAILED_CELLS, PAIR_COLUMN, arm_stats, confidence, decide, evidence, scope_label
from ablate.collect.diagnostics import (
    chosen_shift,
    data_checks,
    exclusion_line,
    factorial_effects,
    generation_report,
    length_artifacts,
    overoptimisation,
    seed_outcomes,
)
from ablate.collect.load import Sweep, load_sweep, objectives_ran
from ablate.collect.plan import add_seeds_command
from ablate.collect.race import EXPLORATORY as EXPLORATORY_RACE
from ablate.collect.race import race_line, race_summary, rule_changes
from ablate.collect.sequential import at_alpha, ledger_entry, look_line, plan_look
from ablate.collect.tuning import EXPLORATORY as EXPLORATORY_TUNING
from ablate.collect.tuning import read_tuning, test_pairs, tuned_comparison, tuned_line
from ablate.config import select_config
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import atomic_write_bytes, atomic_write_json, replace_dir
from ablate.sweepdir.ledger import append_entry, read_ledger
from ablate.verdicts import verdict_phrase

# report/ is replaced whole at every collection, but the published W&B Report's id must survive it,
# so that publishing again updates that report instead of making a new one (ablate.review.wandb_report)
OUTLIVE_A_COLLECTION = ("wandb_report.json",)


class SelectError(ValueError):
    """A decision rule that cannot be applied to this sweep (unknown metric or slice); nothing is written."""


def check_select(select: DictConfig, sweep: Sweep | None = None) -> None:
    """Refuse a rule that cannot apply, before anything is read or written."""
    if select.metric not in PAIR_COLUMN:
        raise SelectError(f"select.metric = {select.metric!r}: must be one of {', '.join(PAIR_COLUMN)}")
    for key, low in (("alpha", 0.0), ("power", 0.0)):
        if not low < select[key] < 1:
            raise SelectError(f"select.{key} = {select[key]}: must be in (0, 1)")
    if select.failed_cells not in FAILED_CELLS:
        raise SelectError(f"select.failed_cells = {select.failed_cells!r}: must be one of {', '.join(FAILED_CELLS)}")
    if select.max_seeds < 1:
        raise SelectError(f"select.max_seeds = {select.max_seeds}: must be >= 1 (the seeds per arm over which the "
                          f"primary test spends alpha across looks)")
    if select.min_seeds < 2:
        raise SelectError(f"select.min_seeds = {select.min_seeds}: must be >= 2 (one seed says nothing about the "
                          f"variance between training runs)")
    if sweep is not None and select.slice not in (None, "macro"):
        if sweep.slices and select.slice not in sweep.slices:
            raise SelectError(f"select.slice = {select.slice!r}: no held-out pairs in it "
                              f"(slices: {', '.join(sweep.slices)})")


def _guarded(sweep: Sweep, name: str, compute, default):
    """A diagnostic that fails must not take the decision (or the report) down with it: the failure is
    reported as a problem. tests/test_collect_fuzz.py asserts it never happens on broken sweeps."""
    try:
        return compute()
    except Exception as error:  # noqa: BLE001 - the collector must survive any sweep state
        sweep.problem(None, "collector", f"internal error in {name}: {type(error).__name__}: {error}")
        return default


def summarise(sweep: Sweep, select: DictConfig) -> dict:
    """Everything summary.json holds: arms, decisions per scope, diagnostics, problems."""
    recorded = OmegaConf.to_container(select)
    # The rule is read in every comparison: plain attributes, not OmegaConf's (seconds at 1,000 cells)
    select = SimpleNamespace(**OmegaConf.to_container(select, resolve=True))
    arms = arm_stats(sweep)
    slices = sweep.slices
    tuning = read_tuning(sweep)  # a tuned sweep: selection on validation pairs, decision on test pairs
    ev = evidence(sweep, select.metric, select.failed_cells)
    confirms = (tuning or {}).get("confirms")
    # a confirmation stage decides on its test pairs only; a tuning sweep (selection on its own runs) claims nothing
    pairs = test_pairs(sweep, ev["pair_ids"]) if confirms and ev["pair_ids"] is not None else None
    look = plan_look(*read_ledger(sweep.sweep_dir), select, {arm: seeds for arm, (seeds, _) in ev["values"].items()})
    if tuning and not confirms and not look["exploratory"]:
        look["exploratory"] = EXPLORATORY_TUNING
    race = race_summary(sweep.sweep_dir)
    if race is not None and not race.get("tuning"):  # the race's decision is the claim; the collector's is exploratory
        look["exploratory"] = EXPLORATORY_RACE
    if look["exploratory"]:
        headline = decide(sweep, select, select.slice, arms, exploratory=look["exploratory"], pairs=pairs)
    else:  # the primary test, at the level this look may spend
        headline = decide(sweep, at_alpha(select, look["nominal_alpha"]), select.slice, arms,
                          alpha_at=look["alpha_at"], plan_limit=select.max_seeds, pairs=pairs)
    headline["look"] = {key: value for key, value in look.items() if key != "alpha_at"}
    stage = (f"Confirmation of {confirms}: its selected settings on fresh seeds, decided on the test pairs only. "
             if confirms else "")
    headline["explanation"] = f"{stage}{look_line(look, headline)} {headline['explanation']}"
    # every other scope too, so a report decided on one slice still says what happens elsewhere: exploratory,
    # since the primary test (and its alpha) is the one scope declared in advance
    scopes = ([None] if select.slice is not None else []) + [s for s in slices if s != select.slice]
    secondary = f"a secondary scope (the primary test is on {scope_label(select.slice)})"
    per_slice = {s or "all": decide(sweep, select, s, arms, exploratory=secondary, pairs=pairs) for s in scopes}
    plan = headline.get("seeds_needed")
    if plan and plan.get("seeds"):
        plan["command"] = add_seeds_command(sweep, plan["seeds"])
    counts = sweep.cells.state.value_counts().to_dict()
    tuning = tuning if tuning and not confirms else None  # a confirmation stage has nothing left to select
    verdict = {"verdict": headline["verdict"], "winner": headline["winner"], "decisive": headline["decisive"]}
    if race is not None and race.get("tuning"):  # a tuning race selects and claims nothing: the rounds are described
        headline["explanation"] = f"{race_line(race, select.factor)} {headline['explanation']}"
    elif race is not None:  # the race's own decision is the claim (ablate.collect.race)
        stop = race.get("stop")  # none when race.json is unreadable: the race claims nothing
        verdict = {"verdict": "decisive" if stop == "winner" else "not decisive" if stop else "undetermined",
                   "winner": race.get("winner"), "decisive": stop == "winner"}
        changed = rule_changes(race, vars(select))
        note = (f" The race decided with {changed}: its decision stands under its own rule; this collection's reading "
                f"below is exploratory." if changed else "")
        factor = (race.get("select") or {}).get("factor", select.factor)  # the race's own (none when torn)
        headline["explanation"] = f"{race_line(race, factor)}{note} {headline['explanation']}"
    return {
        "sweep_dir": str(sweep.sweep_dir),
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "select": recorded,
        "axes": sweep.axes,
        "cell_counts": {str(k): int(v) for k, v in counts.items()},
        "complete": counts.get("done", 0) == len(sweep.cells),
        **verdict,
        "explanation": headline["explanation"],
        **({"race": race} if race is not None else {}),
        "decision": headline,
        "slices": per_slice,
        "arms": arms,
        "objectives": _guarded(sweep, "objective records", lambda: objectives_ran(sweep), {}),
        **({"tuning": _guarded(sweep, "tuning", lambda: tuned_comparison(sweep, select, arms, tuning),
                               {"groups": [], "reasons": ["failed"], "warnings": []})} if tuning else {}),
        "diagnostics": {
            "overoptimisation": _guarded(sweep, "overoptimisation", lambda: overoptimisation(sweep, select,
                                                                                             select.slice), []),
            "chosen_logp_shift": _guarded(sweep, "chosen_logp_shift", lambda: chosen_shift(sweep), []),
            "length": _guarded(sweep, "length", lambda: length_artifacts(sweep, select), []),
            "data_checks": _guarded(sweep, "data_checks", lambda: data_checks(sweep), []),
            "generation": _guarded(sweep, "generation", lambda: generation_report(sweep, select),
                                   {"arms": [], "reference": {}, "prompts": None, "note": "failed"}),
            "seed_outcomes": _guarded(sweep, "seed_outcomes", lambda: seed_outcomes(sweep, select), []),
            "factorial": _guarded(sweep, "factorial", lambda: factorial_effects(sweep, select, select.slice, arms),
                                  {"factors": [], "main_effects": [], "interactions": [], "note": "failed"}),
        },
        "not_finished": sweep.cells[sweep.cells.state != "done"]
        .reindex(columns=["cell_id", "arm", "state", "error"]).to_dict("records"),
        "problems": sweep.problems,
    }


def _json_safe(obj):
    """NaN/inf are not JSON: write null. numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is not None and not isinstance(obj, str | int | float | bool) and _is_na(obj):
        return None
    return obj


def _is_na(obj) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(obj))
    except (TypeError, ValueError):
        return False


def collect(sweep_dir: str | Path, select: DictConfig | None = None, *, plots: bool = True) -> dict:
    """Collect a sweep: write report/ (summary.json, cells.csv, report.md, report.html, plots/); return the summary.

    report/ is built in a temporary folder and swapped in whole: a reader sees the old report or the
    new one, never a mix (ablate.sweepdir.atomic.replace_dir).
    """
    select = select if select is not None else select_config()
    check_select(select)
    sweep = load_sweep(sweep_dir)
    check_select(select, sweep)
    summary = _json_safe(summarise(sweep, select))
    sweep_dir = Path(sweep_dir)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=sweep_dir))
    try:
        atomic_write_bytes(staging / "cells.csv", sweep.cells.to_csv(index=False).encode())
        if plots:
            from ablate.collect.report import write_report

            _guarded(sweep, "report", lambda: write_report(sweep, summary, staging), None)
            summary["problems"] = _json_safe(sweep.problems)  # plotting reads logs and may find more
        for name in OUTLIVE_A_COLLECTION:
            if (sweep_dir / layout.REPORT / name).is_file():
                shutil.copy2(sweep_dir / layout.REPORT / name, staging / name)
        # compact: the indenting encoder is pure Python and cost a second at 1,000 cells
        atomic_write_json(staging / "summary.json", summary, indent=None)
        replace_dir(staging, sweep_dir / layout.REPORT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # the report now shows this verdict: the ledger remembers it (the next collection's look depends on it)
    decision = summary["decision"]
    append_entry(sweep_dir, ledger_entry(decision["look"], select, decision, summary["collected_at"],
                                         summary["select"]))
    from ablate.review.collector_run import review_in_wandb

    review_in_wandb(sweep_dir, summary)  # W&B collector run + Report when the cells used logger=wandb; never raises
    return summary


def describe(summary: dict) -> str:
    """The decision in a few lines for a terminal: headline, each slice, flags, what to run, where the report is."""
    lines = [summary["explanation"]]
    for group in (summary.get("tuning") or {}).get("groups", []):
        lines.append(tuned_line(group, summary["decision"]["scope"]))
    for scope, decision in summary["slices"].items():
        lines.append(f"  slice {scope} (exploratory): {verdict_phrase(decision)} (best arm {decision.get('best_arm')})")
    exclusion = exclusion_line(summary["diagnostics"].get("seed_outcomes", []), confidence(summary["select"]["alpha"]))
    if exclusion:
        lines.append(f"  {exclusion}")
    flagged = [r for r in summary["diagnostics"]["overoptimisation"] if r["flagged"]]
    if flagged:
        lines.append(f"  overoptimisation flagged in {len(flagged)} cell(s): held-out gains stalled while "
                     f"training margins rose (see the report)")
    for problem in summary["problems"]:
        lines.append(f"  problem: {problem['file']}: {problem['problem']}")
    plan = summary["decision"].get("seeds_needed") or {}
    if plan.get("command"):
        lines.append(f"  to settle it, add seeds (finished cells are skipped):\n    {plan['command']}")
    lines.append(f"report: {Path(summary['sweep_dir']) / 'report' / 'report.html'}")
    return "\n".join(lines)
