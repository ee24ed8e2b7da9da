"""Plan a sweep before anything runs: compose and validate every cell, write sweep.json.

Launchers (local now, SLURM too) receive every cell's overrides at once from Hydra; this module
turns them into cells with ids, raising ONE error that lists every bad cell so nothing starts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, open_dict

from ablate.config import ConfigError, cell_problems
from ablate.paths import DISTRIBUTION
from ablate.redact import redact
from ablate.sweep import hydra_api
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import clean_stale_temp_files
from ablate.sweepdir.ids import as_plain, cell_id
from ablate.sweepdir.layout import SweepRecord, grid_axes, override_values, read_status, updating_sweep
from ablate.sweepdir.liveness import sweep_lock

log = logging.getLogger(__name__)


@dataclass
class PlannedCell:
    cell_id: str
    overrides: list[str]
    task_config: DictConfig  # the cell's config, without Hydra's node
    plain: dict  # the same, resolved to plain containers (fast to check, hash and dump)
    _composition: DictConfig  # the shared composition (hydra node included) it was derived from
    _value_overrides: list
    job_num: int

    def full_config(self) -> DictConfig:
        """The complete config Hydra's run_job expects, with the cell's job dir (local launcher)."""
        config = copy.deepcopy(self._composition)
        hydra_api.apply_value_overrides(self._value_overrides, config)
        with open_dict(config):
            config.hydra.overrides.task = self.overrides
            config.hydra.job.id = config.hydra.job.num = self.job_num
            config.hydra.sweep.subdir = f"{layout.CELLS}/{self.cell_id}"  # Hydra's job dir IS the cell dir
        return config


def plan_cells(config_loader, base_config: DictConfig, job_overrides, initial_job_idx: int = 0) -> list[PlannedCell]:
    """Compose every cell; raise ConfigError listing every invalid one. Duplicates are run once.

    Composing a config with Hydra costs ~0.15 s, so cells are composed once per distinct set of
    GROUP overrides (objective=dpo, model=hub, ...); each cell's value overrides (lora.r=8, seed=3)
    are then applied to a copy with Hydra's own override code, exactly as Hydra would after composing.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_api.check()
    parser = OverridesParser.create()
    compositions: dict[tuple[str, ...], tuple[DictConfig, DictConfig] | Exception] = {}
    cells, errors, seen = [], [], set()
    for num, overrides in enumerate(job_overrides, start=initial_job_idx):
        overrides = list(overrides)
        label = " ".join(overrides) or "(no overrides)"
        try:
            parsed = parser.parse_overrides(overrides)
            is_group = [hydra_api.group_exists(config_loader, o.key_or_group) for o in parsed]
            groups = tuple(o.input_line for o, g in zip(parsed, is_group, strict=True) if g)
            if groups not in compositions:
                try:
                    composed = config_loader.load_sweep_config(base_config, list(groups))
                    task = copy.deepcopy(composed)
                    with open_dict(task):
                        del task["hydra"]  # copying Hydra's large node per cell cost most of the time
                    compositions[groups] = (composed, task)
                except Exception as error:  # unknown group option, schema violation in a file
                    compositions[groups] = error
            if isinstance(compositions[groups], Exception):
                raise compositions[groups]
            values = [o for o, g in zip(parsed, is_group, strict=True) if not g]
            if any(o.key_or_group.startswith("hydra.") for o in values):
                raise ValueError("hydra.* keys cannot vary between cells; set them once, outside the sweep")
            composed, task = compositions[groups]
            task = copy.deepcopy(task)
            hydra_api.apply_value_overrides(values, task)
        except Exception as error:  # unknown key, wrong type, bad syntax
            errors.append(f"[{label}]: {error}")
            continue
        plain = as_plain(task)
        problems = cell_problems(plain)
        if problems:
            errors.append(f"[{label}]:\n    " + "\n    ".join(problems))
            continue
        planned = PlannedCell(cell_id(plain), overrides, task, plain, composed, values, num)
        if planned.cell_id not in seen:
            seen.add(planned.cell_id)
            cells.append(planned)
    if errors:
        raise ConfigError(f"{len(errors)} of {len(job_overrides)} cells are invalid; nothing was run:\n  "
                          + "\n  ".join(errors))
    return cells


def start_sweep(launcher, job_overrides, initial_job_idx: int, name: str) -> tuple[Path, list[PlannedCell]]:
    """What every ablate launcher does first: logging, every cell validated, every data source read,
    validated and tokenised once (one message and exit 2 if anything is bad: nothing runs, nothing is
    submitted), the sweep directory and its sweep.json."""
    from hydra.core.utils import configure_log, setup_globals

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every process would plan and run the sweep
        print("ablate: a sweep (-m) cannot run under torchrun (WORLD_SIZE is set): every process would plan, "
              "lock and launch it. Run one cell per torchrun (without -m, with hydra.run.dir=...), or let the "
              "SLURM launcher start several tasks per cell (hydra.launcher.tasks_per_node)", file=sys.stderr,
              flush=True)
        raise SystemExit(2)
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    try:
        cells = plan_cells(launcher.hydra_context.config_loader, launcher.config, job_overrides, initial_job_idx)
    except ConfigError as error:  # the message says it all; a traceback would bury it
        print(f"ConfigError: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    from ablate.data.readers import DataError
    from ablate.train.shared import prepare_sweep_data  # imports torch: only once the configs are known good

    try:
        for line in prepare_sweep_data([cell.plain for cell in cells], sweep_dir / layout.SHARED):
            print(f"ablate: {line}", flush=True)
    except DataError as error:
        print(f"DataError: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    sweep_dir.mkdir(parents=True, exist_ok=True)
    removed = clean_stale_temp_files(sweep_dir)
    if removed:
        log.info(f"ablate: removed {len(removed)} temporary file(s) left by killed writers, e.g. {removed[0]}")
    with sweep_lock(sweep_dir):
        write_sweep_json(sweep_dir, cells, launcher=name)
    return sweep_dir, cells


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_sweep_json(sweep_dir: Path, cells: list[PlannedCell], launcher: str) -> SweepRecord:
    """sweep.json: grid axes, cells, launcher, versions. Cells of earlier runs of the sweep are kept."""
    packages = (DISTRIBUTION, "torch", "transformers", "peft", "hydra-core", "submitit", "wandb", "pandas")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    with updating_sweep(sweep_dir) as record:
        known = {c["cell_id"]: c for c in record.cells}
        known |= {c.cell_id: {"cell_id": c.cell_id, "overrides": c.overrides} for c in cells}
        record.cells = list(known.values())
        record.axes = grid_axes([c.overrides for c in cells])
        record.launcher = launcher
        record.command = redact(" ".join(sys.argv))  # a key passed on the command line is not written down
        if Path(sys.argv[0]).parent.name == "ablate":  # the arguments of `python -m ablate`: the add-seeds command
            record.argv = [redact(a) for a in sys.argv[1:]]
        record.python = sys.version.split()[0]
        record.versions = versions
        record.git_sha = _git_sha()
    return record


TABLE_METRICS = ("avglogp_accuracy", "logratio_accuracy")


def cell_table(sweep_dir: Path, cells: list[PlannedCell]):
    """One row per cell: its swept values, state and final held-out metrics (overall and per slice)."""
    import pandas as pd

    axes = grid_axes([c.overrides for c in cells])
    rows = []
    for cell in cells:
        cell_dir = layout.cell_dir(sweep_dir, cell.cell_id)
        values = override_values(cell.overrides)
        row = {"cell": cell.cell_id, **{k: values.get(k, "") for k in axes}}
        row["state"] = read_status(cell_dir).state or "missing"
        try:
            metrics = json.loads((cell_dir / layout.METRICS_JSON).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            metrics = {}
        for key, value in metrics.items():
            parts = key.split("/")
            if parts[0] == "heldout" and parts[-1] in TABLE_METRICS:
                row["/".join(parts[1:])] = round(value, 3)
        rows.append(row)
    return pd.DataFrame(rows)
