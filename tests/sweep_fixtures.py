"""Synthetic sweep directories in the layout the collector reads (docs/ARCHITECTURE.md §3), without training anything.

    <dir>/sweep.json                      {"cells": [{"cell_id", "overrides"}], "axes": {...}}
    <dir>/cells/<id>/status.json          {"state", "overrides", "objective", "lora_r", "seed", "error", ...}
    <dir>/cells/<id>/heldout_pairs.parquet   columns ablate.data.heldout.PAIR_COLUMNS
    <dir>/cells/<id>/metrics.json         {"step", **ablate.data.heldout.heldout_metrics(that table)}
    <dir>/cells/<id>/train_log.jsonl      one entry per 10 steps, with "rewards/margins"
    <dir>/cells/<id>/eval_log.jsonl       steps 0, max_steps/2, max_steps, with heldout/* keys
    <dir>/shared/data-<hash>.json         {"data": {"kind"}, "train": {length statistics}}

Held-out pairs are built from a per-pair margin m (±1 from a correctness pattern, or given), so every
metric is known exactly. With n_w, n_l the chosen/rejected token counts (8/12, alternating) and a base
average log-prob B = -2:
    chosen_logp = n_w (B + m/2),  rejected_logp = n_l (B - m/2),  ref_chosen = n_w B,  ref_rejected = n_l B
so   avglogp margin = m,   logratio margin = m (n_w + n_l) / 2 = 10 m,   chosen_logp_shift = m / 2,
and every number is a dyadic rational (exact in floating point).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ablate.data.heldout import PAIR_COLUMNS, heldout_metrics
from ablate.sweepdir.layout import grid_axes, override_values

SLICES = ("clean", "verbose_rejected")
BASE_AVGLOGP = -2.0


# ------------------------------------------------------------------------------------- pair tables
def slice_layout(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    """Pair ids p0000, p0001, ... and their slices, in contiguous blocks in the order of `sizes`."""
    slices = [name for name, n in sizes.items() for _ in range(n)]
    return [f"p{i:04d}" for i in range(len(slices))], slices


def prefix_correct(counts: dict[str, int], sizes: dict[str, int]) -> np.ndarray:
    """Correct on the FIRST counts[s] pairs of each slice s, wrong on the rest (so overlaps are known)."""
    parts = []
    for name, n in sizes.items():
        k = counts.get(name, 0)
        assert 0 <= k <= n, (name, k, n)
        parts.append(np.arange(n) < k)
    return np.concatenate(parts)


def pairs_table(margins: Sequence[float] | np.ndarray, slices: Sequence[str | None],
                pair_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """A heldout_pairs table whose per-pair avglogp margin is exactly `margins` (see the module doc)."""
    m = np.asarray(margins, dtype=float)
    n = len(m)
    ids = list(pair_ids) if pair_ids is not None else [f"p{i:04d}" for i in range(n)]
    even = np.arange(n) % 2 == 0
    chosen_tokens = np.where(even, 8, 12).astype(np.int64)
    rejected_tokens = np.where(even, 12, 8).astype(np.int64)
    table = pd.DataFrame({
        "pair_id": ids,
        "slice": list(slices),
        "chosen_logp": chosen_tokens * (BASE_AVGLOGP + m / 2),
        "rejected_logp": rejected_tokens * (BASE_AVGLOGP - m / 2),
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
        "ref_chosen_logp": chosen_tokens * BASE_AVGLOGP,
        "ref_rejected_logp": rejected_tokens * BASE_AVGLOGP,
    })  # fmt: skip
    return table[PAIR_COLUMNS]


def correctness_table(correct: Sequence[bool] | np.ndarray, slices: Sequence[str | None],
                      pair_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Margin +1 where correct, -1 where not."""
    return pairs_table(np.where(np.asarray(correct, bool), 1.0, -1.0), slices, pair_ids)


def counts_table(counts: dict[str, int], sizes: dict[str, int]) -> pd.DataFrame:
    ids, slices = slice_layout(sizes)
    return correctness_table(prefix_correct(counts, sizes), slices, ids)


# ------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    overrides: list[str]
    pairs: pd.DataFrame | None = None  # held-out pairs of a finished cell
    state: str = "done"
    error: str | None = None
    final_train_margin: float = 1.0  # train_log rewards/margins rise linearly from 0 to this
    train_margins: Sequence[float] | None = None  # or exactly these (one per logged step, every 10 steps)
    heldout_trend: str = "rising"  # eval_log: held-out metrics at mid-training below ("rising") or above the final
    max_steps: int = 100
    on_disk: bool = True  # False: listed in sweep.json only, no directory (a cell never started)
    extra_status: dict = field(default_factory=dict)

    @property
    def cell_id(self) -> str:
        return cell_id_of(self.overrides)


def cell_id_of(overrides: Iterable[str]) -> str:
    return hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:12]


def _jsonl(entries: list[dict]) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


def _shifted(metrics: dict, delta: float) -> dict:
    """Every held-out metric (not the counts) moved by delta."""
    return {k: (v + delta if k.startswith("heldout/") and not k.endswith(("/pairs", "_ties")) else v)
            for k, v in metrics.items()}


def write_cell(sweep_dir: Path, cell: Cell) -> None:
    cell_dir = Path(sweep_dir) / "cells" / cell.cell_id
    cell_dir.mkdir(parents=True, exist_ok=True)
    values = override_values(cell.overrides)
    status = {
        "state": cell.state, "cell_id": cell.cell_id, "overrides": list(cell.overrides), "attempts": 1,
        "error": cell.error, "objective": values.get("objective", "dpo"), "lora_r": int(values.get("lora.r", 8)),
        "seed": int(values.get("seed", 0)), "max_steps": cell.max_steps,
        "elapsed_s": 1.5 if cell.state in ("done", "failed") else None, **cell.extra_status,
    }  # fmt: skip
    (cell_dir / "status.json").write_text(json.dumps(status))
    if cell.state == "running" or cell.pairs is None:
        return
    steps = list(range(10, cell.max_steps + 1, 10))
    margins = (list(cell.train_margins) if cell.train_margins is not None
               else [cell.final_train_margin * s / cell.max_steps for s in steps])
    assert len(margins) == len(steps)
    train_log = [{"step": s, "epoch": s / 50, "learning_rate": 1e-3, "loss": 0.69 - 0.1 * m, "rewards/chosen": m / 2,
                  "rewards/rejected": -m / 2, "rewards/margins": m, "rewards/accuracies": 0.5 + 0.01 * (i + 1),
                  "logps/chosen": -20.0, "logps/rejected": -25.0, "grad_norm": 1.0}
                 for i, (s, m) in enumerate(zip(steps, margins, strict=True))]
    (cell_dir / "train_log.jsonl").write_text(_jsonl(train_log))
    metrics = {"step": cell.max_steps, **heldout_metrics(cell.pairs)}
    mid_delta = -0.05 if cell.heldout_trend == "rising" else 0.05
    eval_log = [{**_shifted(metrics, -0.3), "step": 0, "eval_loss": 0.69},
                {**_shifted(metrics, mid_delta), "step": cell.max_steps // 2, "eval_loss": 0.6},
                {**metrics, "eval_loss": 0.5}]
    (cell_dir / "eval_log.jsonl").write_text(_jsonl(eval_log))
    if cell.state == "failed":  # died after some evaluations: logs but no final files
        return
    pq.write_table(pa.Table.from_pandas(cell.pairs, preserve_index=False), cell_dir / "heldout_pairs.parquet")
    (cell_dir / "metrics.json").write_text(json.dumps(metrics))  # written last, like the trainer


def data_stats(kind: str = "embedded", longer: float = 0.5, shorter: float = 0.3, pairs: int = 200) -> dict:
    return {"data": {"kind": kind},
            "train": {"pairs": pairs, "chosen_tokens_mean": 10.0 + 4 * (longer - shorter),
                      "rejected_tokens_mean": 10.0, "chosen_longer_share": longer, "chosen_shorter_share": shorter},
            "heldout": {"pairs": 100, "chosen_tokens_mean": 10.0, "rejected_tokens_mean": 10.0,
                        "chosen_longer_share": 0.0, "chosen_shorter_share": 0.0}}


def write_sweep(sweep_dir: Path, cells: list[Cell], data: list[dict] | None = None) -> Path:
    """Write the whole sweep; `data` = the shared/data-*.json contents (default: one neutral file)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweep = {"axes": grid_axes([c.overrides for c in cells]), "launcher": "local",
             "cells": [{"cell_id": c.cell_id, "overrides": list(c.overrides)} for c in cells]}
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep, indent=1))
    for cell in cells:
        if cell.on_disk:
            write_cell(sweep_dir, cell)
    shared = sweep_dir / "shared"
    shared.mkdir(exist_ok=True)
    for i, stats in enumerate(data if data is not None else [data_stats()]):
        (shared / f"data-{i:04d}abcdef0123.json").write_text(json.dumps(stats))
    return sweep_dir


# ------------------------------------------------------------------------------------- the 2x2x3
GOLDEN_SIZES = {"clean": 50, "verbose_rejected": 50}
# (objective, lora.r) -> per seed 0, 1, 2: (correct clean pairs, correct verbose_rejected pairs) out of 50 + 50
GOLDEN_COUNTS = {
    ("dpo", "8"): [(44, 40), (45, 38), (43, 39)],  # 84 83 82 -> accuracy mean 0.83, std 0.01
    ("dpo", "16"): [(45, 40), (44, 39), (46, 41)],  # 85 83 87 -> mean 0.85, std 0.02  (best arm)
    ("simpo", "8"): [(44, 12), (43, 12), (45, 12)],  # 56 55 57 -> mean 0.56, std 0.01
    ("simpo", "16"): [(45, 15), (44, 18), (46, 12)],  # 60 62 58 -> mean 0.60, std 0.02
}


def arm_label(objective: str, rank: str) -> str:
    return f"objective={objective} lora.r={rank}"


def grid_cells(counts: dict[tuple[str, str], list[tuple[int, int]]], sizes: dict[str, int] = GOLDEN_SIZES,
               final_margin: dict[str, float] | None = None) -> list[Cell]:
    """objective x lora.r x seed cells (objective outermost, seed innermost), pairs from prefix counts."""
    final_margin = final_margin or {}
    cells = []
    for (objective, rank), per_seed in counts.items():
        for seed, seed_counts in enumerate(per_seed):
            table = counts_table(dict(zip(sizes, seed_counts, strict=True)), sizes)
            cells.append(Cell([f"objective={objective}", f"lora.r={rank}", f"seed={seed}"], table,
                              final_train_margin=final_margin.get(rank, 1.0)))
    return cells


def golden_sweep(sweep_dir: Path, final_margin: dict[str, float] | None = None, data: list[dict] | None = None):
    return write_sweep(sweep_dir, grid_cells(GOLDEN_COUNTS, final_margin=final_margin), data)


# ----------------------------------------------------------------------------------- broken files
def corrupt_json(path: Path) -> None:
    """Truncate a JSON file in the middle (a torn, non-atomic write)."""
    text = Path(path).read_text()
    Path(path).write_text(text[: len(text) // 2])


def truncate_file(path: Path) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def corrupt_jsonl_line(path: Path, line: int) -> None:
    """Replace line `line` (1-based) by a torn one."""
    lines = Path(path).read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2] + "\n"
    Path(path).write_text("".join(lines))


# ------------------------------------------------------------------------------------ a big sweep
def large_sweep(sweep_dir: Path, objectives: int = 7, ranks: Sequence[int] = (4, 8, 16, 32),
                lrs: Sequence[str] = ("1e-4", "2e-4", "5e-4", "1e-3", "2e-3", "5e-3"), seeds: int = 6,
                sizes: dict[str, int] | None = None, rng_seed: int = 0) -> Path:
    """objectives x ranks x lrs x seeds cells (7*4*6*6 = 1008 by default), random correctness per pair."""
    sizes = sizes or {"clean": 300, "verbose_rejected": 300}
    ids, slices = slice_layout(sizes)
    rng = np.random.default_rng(rng_seed)
    cells = []
    for o in range(objectives):
        for r in ranks:
            for li, lr in enumerate(lrs):
                rate = 0.55 + 0.04 * o + 0.005 * li
                for seed in range(seeds):
                    margins = np.where(rng.random(len(ids)) < rate, 1.0, -1.0)
                    cells.append(Cell([f"objective=obj{o}", f"lora.r={r}", f"trainer.lr={lr}", f"seed={seed}"],
                                      pairs_table(margins, slices, ids), final_train_margin=1.0 + r / 32))
    return write_sweep(sweep_dir, cells)
