"""Read a sweep directory into tables: one row per cell, whatever state it is in.

Never crashes on a broken sweep: a corrupt or truncated file is recorded in `problems` and the
cell is treated as not finished. Only cells that are `done` with a readable metrics.json count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ablate.heldout import PAIR_COLUMNS, outcome_arrays

NOT_AXES = ("seed", "+sweeps", "sweeps", "hydra.sweep.dir", "hydra.run.dir")


@dataclass
class Sweep:
    sweep_dir: Path
    cells: pd.DataFrame  # one row per cell: cell_id, arm, axes..., seed, state, metrics...
    axes: dict[str, list[str]]  # swept keys (seed excluded) and their values
    problems: list[dict] = field(default_factory=list)  # {"cell_id", "file", "problem"}
    data_stats: list[dict] = field(default_factory=list)  # shared/data-*.json
    _pairs: dict = field(default_factory=dict, repr=False)  # cell_id -> CellPairs | None, read once
    cache: dict = field(default_factory=dict, repr=False)  # derived arrays shared by the decision scopes

    def cell_dir(self, cell_id: str) -> Path:
        return self.sweep_dir / "cells" / cell_id

    @property
    def done(self) -> pd.DataFrame:
        return self.cells[self.cells.state == "done"]


def _read_json(path: Path, problems: list, cell_id: str | None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append({"cell_id": cell_id, "file": str(path), "problem": f"unreadable JSON: {error}"})
        return None


def _overrides_dict(overrides: list[str]) -> dict[str, str]:
    pairs = (o.partition("=") for o in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def arm_label(overrides: dict[str, str], axes: dict[str, list[str]]) -> str:
    """Cells that differ only by seed share an arm; the label lists the swept values."""
    parts = [f"{key}={overrides[key]}" for key in axes if key in overrides]
    return " ".join(parts) or "(defaults)"


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory at {sweep_dir}")
    problems: list[dict] = []
    sweep_json = _read_json(sweep_dir / "sweep.json", problems, None) or {}
    expected = {c["cell_id"]: c.get("overrides", []) for c in sweep_json.get("cells", [])}
    cells_root = sweep_dir / "cells"
    present = sorted(p.name for p in cells_root.iterdir() if p.is_dir()) if cells_root.is_dir() else []

    rows = []
    for cid in list(expected) + [c for c in present if c not in expected]:
        cell_dir = cells_root / cid
        status = _read_json(cell_dir / "status.json", problems, cid) if cid in present else None
        overrides = (status or {}).get("overrides", expected.get(cid, []))
        row = {"cell_id": cid, "overrides": " ".join(overrides), **_prefixed(_overrides_dict(overrides))}
        if status is None:
            row["state"] = "missing" if cid not in present else "unknown"
        else:
            row |= {"state": status.get("state", "unknown"), "error": status.get("error"),
                    "attempts": status.get("attempts"), "elapsed_s": status.get("elapsed_s"),
                    "objective": status.get("objective"), "lora_r": status.get("lora_r"),
                    "seed": status.get("seed", _overrides_dict(overrides).get("seed")),
                    "max_steps": status.get("max_steps")}
        if row["state"] == "done":
            metrics = _read_json(cell_dir / "metrics.json", problems, cid)
            if metrics is None:
                if not any(p["cell_id"] == cid for p in problems):
                    problems.append({"cell_id": cid, "file": str(cell_dir / "metrics.json"),
                                     "problem": "state is done but metrics.json is missing"})
                row["state"] = "corrupt"
            else:
                row |= metrics
        rows.append(row)

    cells = pd.DataFrame(rows)
    if cells.empty:
        cells = pd.DataFrame(columns=["cell_id", "overrides", "state", "seed"])
    override_cols = [c for c in cells.columns if c.startswith("override:")]
    axes = {}
    for col in override_cols:
        key = col.removeprefix("override:")
        values = [v for v in dict.fromkeys(cells[col].dropna()) if v != ""]
        if key not in NOT_AXES and len(values) > 1:
            axes[key] = values
    cells["arm"] = [arm_label({k: r.get(f"override:{k}") for k in axes if pd.notna(r.get(f"override:{k}"))}, axes)
                    for r in cells.to_dict("records")]
    for key in axes:
        cells[key] = cells[f"override:{key}"]
    cells = cells.drop(columns=override_cols)
    cells["seed"] = pd.to_numeric(cells["seed"], errors="coerce").astype("Int64")

    data_stats = []
    for path in sorted((sweep_dir / "shared").glob("data-*.json")):
        stats = _read_json(path, problems, None)
        if stats:
            data_stats.append(stats)
    return Sweep(sweep_dir, cells, axes, problems, data_stats)


def _prefixed(overrides: dict[str, str]) -> dict[str, str]:
    return {f"override:{k}": v for k, v in overrides.items()}


@dataclass
class CellPairs:
    """One cell's held-out pairs as arrays: ids, slices and the per-pair outcomes (ablate.heldout)."""

    pair_ids: np.ndarray
    slices: np.ndarray
    outcomes: dict[str, np.ndarray]  # logratio_margin, logratio_correct, avglogp_margin, avglogp_correct, ...


def read_pairs(sweep: Sweep, cell_id: str) -> CellPairs | None:
    """The cell's heldout_pairs.parquet, read once per collection; None (reported once) if unreadable."""
    if cell_id in sweep._pairs:
        return sweep._pairs[cell_id]
    path = sweep.cell_dir(cell_id) / "heldout_pairs.parquet"
    try:
        table = pq.read_table(path, columns=PAIR_COLUMNS)
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in PAIR_COLUMNS}
        numeric = {k: v.astype(float) for k, v in columns.items() if k not in ("pair_id", "slice")}
        pairs = CellPairs(columns["pair_id"].astype(str), columns["slice"], outcome_arrays(numeric))
    except Exception as error:  # truncated/corrupt parquet raises several arrow error types
        sweep.problems.append({"cell_id": cell_id, "file": str(path), "problem": f"unreadable: {error}"})
        pairs = None
    sweep._pairs[cell_id] = pairs
    return pairs


def read_jsonl(sweep: Sweep, cell_id: str, name: str) -> list[dict]:
    """Entries of train_log.jsonl / eval_log.jsonl; a torn or corrupt line is reported and skipped."""
    path = sweep.cell_dir(cell_id) / name
    entries = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return entries
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            problem = {"cell_id": cell_id, "file": f"{path}:{number}", "problem": "corrupt line skipped"}
            if problem not in sweep.problems:  # several diagnostics read the same log
                sweep.problems.append(problem)
    return entries
