"""Read a sweep directory into tables: one row per cell, whatever state it is in.

Never crashes on a sweep directory in any state (tests/test_collect_fuzz.py): a truncated, garbled,
non-UTF-8 or wrongly typed file is recorded in `problems` and the cell is treated as not finished
("corrupt" when it claimed to be done). Only cells that are `done` with a readable metrics.json
count; whether their per-pair evidence is complete is judged by the decision (ablate.collect.decide).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ablate.data.heldout import PAIR_COLUMNS, outcome_arrays
from ablate.sweepdir import layout
from ablate.sweepdir.layout import arm_axes, arm_label, grid_axes, is_finite_number, override_values
from ablate.sweepdir.liveness import local_cell_dead

BASE_COLUMNS = ["cell_id", "overrides", "state", "error", "failed_step", "attempts", "elapsed_s", "objective",
                "lora_r", "seed", "max_steps"]


@dataclass
class Sweep:
    sweep_dir: Path
    cells: pd.DataFrame  # one row per cell: cell_id, arm, axes..., seed, state, metrics...
    axes: dict[str, list[str]]  # swept keys (seed excluded) and their values
    problems: list[dict] = field(default_factory=list)  # {"cell_id", "file", "problem"}
    data_stats: list[dict] = field(default_factory=list)  # shared/data-*.json
    record: dict = field(default_factory=dict)  # sweep.json (empty when missing or unreadable)
    _pairs: dict = field(default_factory=dict, repr=False)  # cell_id -> CellPairs | None, read once
    cache: dict = field(default_factory=dict, repr=False)  # derived arrays shared by the decision scopes

    def cell_dir(self, cell_id: str) -> Path:
        return layout.cell_dir(self.sweep_dir, cell_id)

    @property
    def done(self) -> pd.DataFrame:
        return self.cells[self.cells.state == "done"]

    @property
    def slices(self) -> list[str]:
        """Held-out slices the finished cells report (heldout/<slice>/<metric> keys)."""
        return sorted({c.split("/")[1] for c in self.cells.columns if c.startswith("heldout/") and c.count("/") == 2})

    def problem(self, cell_id: str | None, file, problem: str) -> None:
        entry = {"cell_id": cell_id, "file": str(file), "problem": problem}
        if entry not in self.problems:  # several readers may meet the same broken file
            self.problems.append(entry)


def _read_text(path: Path) -> str:
    """A file's text; bytes that are not UTF-8 become U+FFFD instead of an exception."""
    return path.read_bytes().decode("utf-8", errors="replace")


def _read_object(path: Path, problems: list, cell_id: str | None) -> dict | None:
    """A JSON object from `path`; None (with a problem recorded, unless the file is just absent) otherwise."""
    try:
        value = json.loads(_read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError; a directory in its place is OSError
        problems.append({"cell_id": cell_id, "file": str(path), "problem": f"unreadable JSON: {error}"})
        return None
    if not isinstance(value, dict):
        problems.append({"cell_id": cell_id, "file": str(path),
                         "problem": f"not a JSON object (a {type(value).__name__})"})
        return None
    return value


def _overrides_list(value) -> list[str]:
    return [str(o) for o in value] if isinstance(value, list) else []


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep directory at {sweep_dir}")
    problems: list[dict] = []
    record = _read_object(sweep_dir / layout.SWEEP_JSON, problems, None) or {}
    listed = record.get("cells") if isinstance(record.get("cells"), list) else []
    expected = {str(c["cell_id"]): _overrides_list(c.get("overrides"))
                for c in listed if isinstance(c, dict) and c.get("cell_id")}
    cells_root = sweep_dir / layout.CELLS
    present = sorted(p.name for p in cells_root.iterdir() if p.is_dir()) if cells_root.is_dir() else []

    rows, override_lists = [], []
    for cid in list(expected) + [c for c in present if c not in expected]:
        cell_dir = cells_root / cid
        status = _read_object(cell_dir / layout.STATUS_JSON, problems, cid) if cid in present else None
        if cid not in expected and status is None:
            # Not a cell of this sweep (a stray or copied folder): reported, never a fake arm.
            problems.append({"cell_id": None, "file": str(cell_dir),
                             "problem": "folder under cells/ that is not a cell of this sweep (not in sweep.json, "
                                        "no status.json): ignored"})
            continue
        overrides = _overrides_list((status or {}).get("overrides")) or expected.get(cid, [])
        override_lists.append(overrides)
        row = {"cell_id": cid, "overrides": " ".join(overrides), **_prefixed(override_values(overrides))}
        if status is None:
            row["state"] = "missing" if cid not in present else "unknown"
        else:
            row |= {key: status.get(key) for key in BASE_COLUMNS[2:]}
            row["state"] = str(status.get("state") or "unknown")
            if row["seed"] is None:
                row["seed"] = override_values(overrides).get("seed")
        dead = local_cell_dead(cell_dir, layout.CellStatus.from_json(status)) if status is not None else None
        if dead:  # a killed local run shows `running` for ever otherwise
            problems.append({"cell_id": cid, "file": str(cell_dir / layout.STATUS_JSON), "problem": dead})
            row["state"] = "failed"
        if row["state"] == "done":  # layout's definition of done; the pairs are read (and judged) by the decision
            metrics, why = layout.read_metrics(cell_dir)
            if why:
                problems.append({"cell_id": cid, "file": str(cell_dir / layout.METRICS_JSON), "problem": why})
                row["state"] = "corrupt"
            else:
                row |= {k: v for k, v in metrics.items() if k.startswith(("heldout/", "generation/")) or k == "step"}
        rows.append(row)

    cells = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(BASE_COLUMNS + [k for r in rows for k in r])))
    override_cols = [c for c in cells.columns if c.startswith("override:")]
    axes = arm_axes(grid_axes(override_lists))  # the launchers' and W&B's arms (ablate.sweepdir.layout)
    cells["arm"] = [arm_label({k: r.get(f"override:{k}") for k in axes if pd.notna(r.get(f"override:{k}"))}, axes)
                    for r in cells.to_dict("records")]
    for key in axes:
        cells[key] = cells[f"override:{key}"]
    cells = cells.drop(columns=override_cols)
    cells["seed"] = pd.to_numeric(cells["seed"], errors="coerce").astype("Int64")
    cells["state"] = cells["state"].fillna("unknown").astype(str)

    data_stats = []
    for path in sorted((sweep_dir / layout.SHARED).glob("data-*.json")):
        stats = _read_object(path, problems, None)
        if stats:
            data_stats.append(stats)
    return Sweep(sweep_dir, cells, axes, problems, data_stats, record)


def _prefixed(overrides: dict[str, str]) -> dict[str, str]:
    return {f"override:{k}": v for k, v in overrides.items()}


@dataclass
class CellPairs:
    """One cell's held-out pairs as arrays: ids, slices and the per-pair outcomes (ablate.data.heldout)."""

    pair_ids: np.ndarray
    slices: np.ndarray
    outcomes: dict[str, np.ndarray]  # logratio_margin, logratio_correct, avglogp_margin, avglogp_correct, ...
    nonfinite: int = 0  # pairs with a NaN/inf log-prob or token count: never scored (see ablate.collect.decide)
    splits: np.ndarray | None = None  # validation | test per pair (data.validation_pairs); None: not split


def read_pairs(sweep: Sweep, cell_id: str) -> CellPairs | None:
    """The cell's heldout_pairs.parquet, read once per collection; None (reported once) if unreadable."""
    if cell_id in sweep._pairs:
        return sweep._pairs[cell_id]
    path = sweep.cell_dir(cell_id) / layout.HELDOUT_PAIRS
    try:
        # one thread: a few hundred rows gain nothing from arrow's pool, and on a busy node its
        # threads turned 1,000 small reads from 1 s into 8 s
        # every column in one read (ablate writes only these, plus `split` in tuned sweeps): a separate
        # schema read to pick them would open each file twice
        table = pq.read_table(path, use_threads=False, pre_buffer=False)
        absent = [name for name in PAIR_COLUMNS if name not in table.column_names]
        if absent:
            raise ValueError(f"no column(s) {', '.join(absent)}")
        names = PAIR_COLUMNS + (["split"] if "split" in table.column_names else [])
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}
        numeric = {k: v.astype(float) for k, v in columns.items() if k not in ("pair_id", "slice", "split")}
        finite = np.logical_and.reduce([np.isfinite(v) for v in numeric.values()])
        pairs = CellPairs(columns["pair_id"].astype(str), columns["slice"], outcome_arrays(numeric),
                          int((~finite).sum()), columns.get("split"))
        if pairs.nonfinite:
            sweep.problem(cell_id, path, f"{pairs.nonfinite} held-out pair(s) with non-finite values (not scored)")
    except Exception as error:  # truncated/corrupt parquet raises several arrow error types
        sweep.problem(cell_id, path, "missing" if not path.exists() else f"unreadable: {error}")
        pairs = None
    sweep._pairs[cell_id] = pairs
    return pairs


def read_jsonl(sweep: Sweep, cell_id: str, name: str) -> list[dict]:
    """Entries of train_log.jsonl / eval_log.jsonl with a numeric step, numeric values only.

    A torn, garbled or wrongly typed line is reported and skipped; a non-numeric value inside an
    otherwise good entry is dropped from it (every logged value is a number).
    """
    path = sweep.cell_dir(cell_id) / name
    cache_key = ("jsonl", cell_id, name)
    if cache_key in sweep.cache:
        return sweep.cache[cache_key]
    entries = []
    try:
        lines = _read_text(path).splitlines()
    except OSError:  # absent, or not a file
        lines = []
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        step = entry.get("step") if isinstance(entry, dict) else None
        if not is_finite_number(step):
            sweep.problem(cell_id, f"{path}:{number}", "corrupt line skipped")
            continue
        entries.append({k: v for k, v in entry.items() if is_finite_number(v)})
    sweep.cache[cache_key] = entries
    return entries


def objectives_ran(sweep: Sweep) -> dict[str, dict]:
    """Per arm, the objective its finished cells ran (their objective.json: name, settings, formula, source
    fingerprint), with every fingerprint seen, and how many finished cells have no record (trained before ablate
    wrote one). Two fingerprints in one arm (the loss code changed during the sweep) are a problem the report
    lists: arms compare what ran, not what the config says."""
    out: dict[str, dict] = {}
    for arm, group in sweep.done.groupby("arm", sort=False):
        records = []
        for cid in group.cell_id:
            path = sweep.cell_dir(cid) / layout.OBJECTIVE_JSON
            problems: list[dict] = []
            record = _read_object(path, problems, cid)
            for p in problems:
                sweep.problem(p["cell_id"], p["file"], p["problem"])
            records.append(record)  # None: a cell trained before ablate wrote objective.json (the report says so)
        known = [r for r in records if r is not None]
        if not known:
            out[arm] = {"unrecorded": len(records)}
            continue
        fingerprints = sorted({str(r.get("source_sha256")) for r in known})
        if len(fingerprints) > 1:
            sweep.problem(None, sweep.sweep_dir, f"arm {arm}: its cells ran {len(fingerprints)} versions of the loss "
                                                 f"code (source fingerprints {', '.join(fingerprints)}); retrain them "
                                                 f"with one version before comparing")
        out[arm] = known[0] | {"fingerprints": fingerprints, "cells": len(known),
                               "unrecorded": len(records) - len(known)}
    return out

