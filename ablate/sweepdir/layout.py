"""The sweep directory's layout and its two records, sweep.json and status.json: the one owner of both.

    <sweep_dir>/
      sweep.json                  SweepRecord: grid axes, cells, launcher, job ids, versions, git sha
      tuning.json                 the search spaces of a tuned sweep (ablate.sweep.search_space)
      decisions.jsonl             the decision ledger: what every collection tested (ablate.sweepdir.ledger)
      race.json                   a race's settings, arms and rounds (ablate.sweep.race)
      shared/                     tokens, reference log-probs and data records shared by the cells
      cells/<cell_id>/
        config.yaml               the cell's resolved config
        status.json               CellStatus: pending | running | done | failed | preempted, error, attempts ...
        progress.json  claim.json the trainer's step and speed; the local launcher's claim (ablate.sweepdir.liveness)
        train_log.jsonl  eval_log.jsonl  heldout_pairs.parquet
        metrics.json              final metrics, written last
        checkpoint/               resumable state while the cell runs
      report/                     the collector's output, swapped in whole
      slurm/<job_id>/             submitit's files of each SLURM job

Every module finds a file through this one (`cell_dir`, the names below), reads and updates the two
records through `read_*` / `update_*` (atomic: readers never see half a file) and asks `is_done`, the
one definition of a finished cell. Override strings (`objective=dpo`) become grid axes and arm labels
here too, so the launchers, W&B and the collector group cells the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ablate.sweepdir.atomic import atomic_write_json

SWEEP_JSON = "sweep.json"
TUNING_JSON = "tuning.json"
RACE_JSON = "race.json"
SHARED = "shared"
CELLS = "cells"
REPORT = "report"
SLURM = "slurm"  # submitit's folder per job: logs, pickles, sbatch scripts
CONFIG_YAML = "config.yaml"
OBJECTIVE_JSON = "objective.json"  # the objective that ran: settings, formula, source fingerprint
STATUS_JSON = "status.json"
PROGRESS_JSON = "progress.json"
TRAIN_LOG = "train_log.jsonl"
EVAL_LOG = "eval_log.jsonl"
HELDOUT_PAIRS = "heldout_pairs.parquet"
GENERATIONS = "generations.parquet"  # eval.generate: what the cell's model wrote for the sampled held-out prompts
METRICS_JSON = "metrics.json"
CHECKPOINT = "checkpoint"

# Keys of a cell's overrides that never make an arm: the seed is the replication, the rest say where files go.
NOT_AXES = ("seed", "+sweeps", "sweeps", "hydra.sweep.dir", "hydra.run.dir")


def cell_dir(sweep_dir: str | Path, cell_id: str) -> Path:
    return Path(sweep_dir) / CELLS / cell_id


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class _Record:
    """A JSON record file as a dataclass. Keys it does not declare (written by another version of ablate) are
    kept in `extra` and written back untouched; `write_none` says whether unset (None) fields are written."""

    write_none: ClassVar[bool] = True
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: dict):
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in obj.items() if k in known},
                   extra={k: v for k, v in obj.items() if k not in known})

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        extra = values.pop("extra")
        return extra | {k: v for k, v in values.items() if self.write_none or v is not None}


# ------------------------------------------------------------------------------------ status.json
@dataclass
class CellStatus(_Record):
    """status.json of one cell. Unknown keys are refused when written (with the valid ones named) and
    ignored when read (a newer ablate may add some); values are stored as given."""

    FORMAT = 1

    state: str | None = None  # None: no status.json yet
    cell_id: str | None = None
    overrides: list = field(default_factory=list)
    attempts: int = 0
    requeues: int = 0
    error: str | None = None
    failed_step: int | None = None
    traceback: list | None = None
    checkpoint_step: int | None = None
    retrained_because: str | None = None
    job_id: str | None = None
    host: str | None = None
    pid: int | None = None
    cuda_visible_devices: str | None = None
    gpus: int | None = None  # GPUs the cell held (all its tasks): a race's max_gpu_hours counts elapsed_s x gpus
    submitted_at: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    elapsed_s: float | None = None
    # what the collector groups by, so it never parses every cell's config.yaml
    objective: str | None = None
    lora_r: int | None = None
    seed: int | None = None
    max_steps: int | None = None
    format: int = FORMAT


def _check_fields(record_type, fields: dict) -> None:
    declared = [f.name for f in dataclasses.fields(record_type) if f.name != "extra"]
    unknown = sorted(set(fields) - set(declared))
    if unknown:
        valid = ", ".join(declared)
        raise TypeError(f"{record_type.__name__} has no field(s) {', '.join(unknown)}; valid: {valid}")


def read_status_object(cell: Path) -> dict | None:
    """status.json as its JSON object; None when absent. Raises ValueError/OSError on an unreadable file."""
    try:
        text = (Path(cell) / STATUS_JSON).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object (a {type(value).__name__})")
    return value


def read_status(cell: Path) -> CellStatus:
    """The cell's status; an empty CellStatus (state None) when there is none or it cannot be read."""
    try:
        value = read_status_object(cell)
    except (OSError, ValueError):
        value = None
    return CellStatus.from_json(value) if value is not None else CellStatus()


def update_status(cell: Path, **fields) -> CellStatus:
    """Read, change `fields`, stamp `updated_at` and write status.json atomically; returns the new status."""
    _check_fields(CellStatus, fields)
    status = dataclasses.replace(read_status(cell), **fields, updated_at=_now(), format=CellStatus.FORMAT)
    atomic_write_json(Path(cell) / STATUS_JSON, status.to_json())
    return status


# ------------------------------------------------------------------------------------ done
def is_finite_number(x) -> bool:
    """A finite real number as read back from a JSON file or a table: not a bool, None, NaN, inf or pandas' NA."""
    kind = type(x)
    if kind is float or kind is int:  # what json.loads gives: checked first, the ABC check is slow (collect of 1,000
        return math.isfinite(x)  # cells asks 200,000 times)
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def metrics_problem(metrics: dict) -> str | None:
    """Why a metrics.json cannot stand for a finished cell: a held-out value that is not a finite number."""
    bad = [k for k, v in metrics.items() if k.startswith("heldout/") and not is_finite_number(v)]
    return f"non-numeric or non-finite values: {', '.join(sorted(bad)[:5])}" if bad else None


def read_metrics(cell: Path) -> tuple[dict | None, str | None]:
    """metrics.json of a cell whose status says done, and why it cannot stand for a finished cell (None: it can)."""
    try:
        metrics = json.loads((Path(cell) / METRICS_JSON).read_bytes().decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return None, "metrics.json is missing"
    except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError; a directory in its place is OSError
        return None, f"metrics.json is unreadable ({type(error).__name__}: {error})"
    if not isinstance(metrics, dict):
        return None, f"metrics.json is not a JSON object (a {type(metrics).__name__})"
    if (why := metrics_problem(metrics)) is not None:
        return metrics, f"metrics.json has {why}"
    return metrics, None


def done_problem(cell: Path) -> str | None:
    """Why a cell whose status.json says done cannot be trusted, else None (also None when it does not say done).

    Done means: status.json state `done`, metrics.json (written last) a JSON object of finite held-out
    numbers, and heldout_pairs.parquet readable (its footer). A re-run trains a cell with a problem
    again instead of skipping it for ever.
    """
    cell = Path(cell)
    if read_status(cell).state != "done":
        return None
    _, problem = read_metrics(cell)
    if problem is None:
        try:
            import pyarrow.parquet as pq

            pq.read_metadata(cell / HELDOUT_PAIRS)
        except Exception as error:  # missing, truncated, not parquet: pyarrow raises several kinds
            problem = f"heldout_pairs.parquet is unreadable ({type(error).__name__}: {error})"
    return problem


def is_done(cell: Path) -> bool:
    """The one definition of a finished cell (see done_problem): launchers skip it, the collector counts it."""
    return read_status(cell).state == "done" and done_problem(cell) is None


# ------------------------------------------------------------------------------------ sweep.json
@dataclass
class SweepRecord(_Record):
    """sweep.json: what was planned and submitted. Cells of earlier runs of the sweep stay listed."""

    FORMAT = 1
    write_none: ClassVar[bool] = False  # a key is present once it has been set (e.g. `slurm`: launched there)

    cells: list = field(default_factory=list)  # [{"cell_id", "overrides"}], in planning order
    axes: dict = field(default_factory=dict)  # swept key -> values (every key with more than one value)
    launcher: str | None = None
    command: str | None = None  # the command line, secrets redacted
    argv: list | None = None  # the arguments of `python -m ablate`, for the add-seeds command
    created_at: str | None = None
    updated_at: str | None = None
    python: str | None = None
    versions: dict = field(default_factory=dict)
    git_sha: str | None = None
    # SLURM only (absent from a local sweep's file): the latest job of each cell, the arrays, collector jobs,
    # launcher and decision settings
    jobs: dict | None = None
    arrays: list | None = None
    collector_job: str | None = None
    collector_jobs: list | None = None
    slurm: dict | None = None
    select: dict | None = None
    format: int = FORMAT

    def overrides_of(self) -> dict[str, list[str]]:
        """cell id -> its overrides (a list: values may hold spaces)."""
        return {c["cell_id"]: list(c.get("overrides", [])) for c in self.cells}


def read_sweep_object(sweep_dir: str | Path) -> dict:
    """sweep.json as its JSON object; FileNotFoundError naming the directory when there is none."""
    path = Path(sweep_dir) / SWEEP_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {sweep_dir} an ablate sweep directory?")
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def read_sweep(sweep_dir: str | Path) -> SweepRecord:
    return SweepRecord.from_json(read_sweep_object(sweep_dir))


@contextlib.contextmanager
def updating_sweep(sweep_dir: str | Path) -> Iterator[SweepRecord]:
    """`with updating_sweep(d) as record:` change it; written atomically on exit (a new record if none).
    Callers that may race another launcher hold `liveness.sweep_lock` around it."""
    path = Path(sweep_dir) / SWEEP_JSON
    record = read_sweep(sweep_dir) if path.exists() else SweepRecord()
    yield record
    record.updated_at = _now()
    record.created_at = record.created_at or record.updated_at
    record.format = SweepRecord.FORMAT
    atomic_write_json(path, record.to_json())


# ------------------------------------------------------------------------------------ overrides
def override_values(overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["+x=1", "lora.r=8"]` -> `{"x": "1", "lora.r": "8"}`: the one parser of Hydra override strings into keys."""
    pairs = (o.partition("=") for o in overrides)
    return {key.lstrip("+~"): value for key, _, value in pairs}


def grid_axes(cell_overrides: list[list[str]]) -> dict[str, list[str]]:
    """The swept keys (every key that takes more than one value) and their values, in command-line order."""
    axes: dict[str, list[str]] = {}
    for overrides in cell_overrides:
        for key, value in override_values(overrides).items():
            if value not in axes.setdefault(key, []):
                axes[key].append(value)
    return {k: v for k, v in axes.items() if len(v) > 1}


def arm_axes(axes: dict[str, list[str]]) -> dict[str, list[str]]:
    """The axes that make arms: every swept key but the seed and where files go."""
    return {k: v for k, v in axes.items() if k not in NOT_AXES}


def arm_label(values: dict[str, str], axes: dict[str, list[str]]) -> str:
    """Cells that differ only by seed share an arm; the label lists their swept values in the axes' order."""
    parts = [f"{key}={values[key]}" for key in axes if key in values]
    return " ".join(parts) or "(defaults)"
