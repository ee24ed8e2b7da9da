"""Put the pieces together: load, decide per scope, diagnose, write report/."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ablate.cells import atomic_write_bytes, atomic_write_json
from ablate.collect.decide import arm_stats, decide
from ablate.collect.diagnostics import chosen_shift, factorial_effects, length_artifacts, overoptimisation
from ablate.collect.load import Sweep, load_sweep

SELECT_DEFAULTS = Path(__file__).resolve().parents[2] / "conf" / "select" / "default.yaml"


def select_config(overrides: list[str] | tuple[str, ...] = (), base: DictConfig | None = None) -> DictConfig:
    """conf/select/default.yaml (or `base`) with `key=value` overrides, checked against the schema."""
    from ablate.config import SelectConfig

    schema = OmegaConf.structured(SelectConfig)
    if base is None:
        defaults = OmegaConf.load(SELECT_DEFAULTS)
        defaults.pop("defaults", None)
        base = OmegaConf.merge(schema, defaults)
    else:
        base = OmegaConf.merge(schema, base)
    return OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))


def summarise(sweep: Sweep, select: DictConfig) -> dict:
    """Everything summary.json holds: arms, decisions per scope, diagnostics, problems."""
    arms = arm_stats(sweep, select.alpha)
    slices = sorted({col.split("/")[1] for col in sweep.cells.columns
                     if col.startswith("heldout/") and col.count("/") == 2})
    headline = decide(sweep, select, select.slice, arms)
    # every other scope too, so a report decided on one slice still says what happens elsewhere
    scopes = ([None] if select.slice is not None else []) + [s for s in slices if s != select.slice]
    per_slice = {s or "all": decide(sweep, select, s, arms) for s in scopes}
    counts = sweep.cells.state.value_counts().to_dict()
    return {
        "sweep_dir": str(sweep.sweep_dir),
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "select": OmegaConf.to_container(select),
        "axes": sweep.axes,
        "cell_counts": {str(k): int(v) for k, v in counts.items()},
        "complete": counts.get("done", 0) == len(sweep.cells),
        "winner": headline["winner"],
        "decisive": headline["decisive"],
        "explanation": headline["explanation"],
        "decision": headline,
        "slices": per_slice,
        "arms": arms,
        "diagnostics": {
            "overoptimisation": overoptimisation(sweep, select, select.slice),
            "chosen_logp_shift": chosen_shift(sweep),
            "length": length_artifacts(sweep, select),
            "factorial": factorial_effects(sweep, select, select.slice, arms),
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
    """Collect a sweep: write report/ (summary.json, cells.csv, report.md, report.html, plots/); return the summary."""
    sweep = load_sweep(sweep_dir)
    select = select if select is not None else select_config()
    summary = _json_safe(summarise(sweep, select))
    report_dir = Path(sweep_dir) / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(report_dir / "cells.csv", sweep.cells.to_csv(index=False).encode())
    if plots:
        from ablate.collect.report import write_report

        write_report(sweep, summary, report_dir)
        summary["problems"] = _json_safe(sweep.problems)  # plotting reads logs and may find more
    atomic_write_json(report_dir / "summary.json", summary)
    from ablate.wandb_review import review_in_wandb

    review_in_wandb(sweep_dir, summary)  # W&B collector run + Report when the cells used logger=wandb; never raises
    return summary


def describe(summary: dict) -> str:
    """The decision in a few lines for a terminal: headline, each slice, flags, where the report is."""
    lines = [summary["explanation"]]
    for scope, decision in summary["slices"].items():
        verdict = f"decisive winner {decision['winner']}" if decision["decisive"] else "no decisive winner"
        lines.append(f"  slice {scope}: {verdict} (best arm {decision.get('best_arm')})")
    flagged = [r for r in summary["diagnostics"]["overoptimisation"] if r["flagged"]]
    if flagged:
        lines.append(f"  overoptimisation flagged in {len(flagged)} cell(s): held-out gains stalled while "
                     f"training margins rose (see the report)")
    for problem in summary["problems"]:
        lines.append(f"  problem: {problem['file']}: {problem['problem']}")
    lines.append(f"report: {Path(summary['sweep_dir']) / 'report' / 'report.html'}")
    return "\n".join(lines)
