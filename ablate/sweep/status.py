"""Where every cell of a sweep stands: status.json, reconciled with what SLURM says of its job.

A job killed by SLURM (OOM, node failure, scancel, time limit without checkpoint) cannot write its
own status.json; it stays `running` or `pending` there. `reconcile` asks squeue/sacct and marks
such cells `failed` with the SLURM state as the error, so the collector, `ablate status` and
resubmission all see the truth.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ablate.progress import format_duration
from ablate.sweepdir import layout
from ablate.sweepdir.layout import read_status, read_sweep, update_status
from ablate.sweepdir.liveness import local_cell_dead

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
         "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
DEAD = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
        "REVOKED", "SPECIAL_EXIT"}


COLUMNS = ["cell_id", "overrides", "state", "job_id", "slurm_state", "reason", "step", "max_steps", "s_per_step",
           "eta_s", "attempts", "requeues", "error"]


def _run(cmd: list[str]) -> str | None:
    """stdout of a SLURM client command; None when it is not installed or failed (controller unreachable ...)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        # squeue -j with ids the controller has forgotten (ended > MinJobAge ago) fails: an answer, "none of them"
        return "" if "Invalid job id" in out.stderr else None
    return out.stdout


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state for each job id ("12" or array task "12_3"): squeue for live jobs, sacct for ended ones."""
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    states: dict[str, str] = {}
    masters = sorted({j.split("_")[0] for j in ids})
    arrays_in_sacct = set()
    for line in (_run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(masters)]) or "").splitlines():
        job, _, state = line.partition("|")
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> "CANCELLED"
        for task in _array_tasks(job.strip()):
            states[task] = state
        if "_" in job:
            arrays_in_sacct.add(job.split("_")[0])
    # squeue is authoritative while a job is queued or running (sacct lags by a few seconds)
    queue = _run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(masters)])
    for line in (queue or "").splitlines():
        job, _, state = line.strip().partition(" ")
        for task in _array_tasks(job):
            states[task] = state
    out = {}
    for j in ids:
        master = j.split("_")[0]
        if j in states:
            out[j] = states[j]
        elif master in states:  # an array cancelled before any task started: one line for all of them
            out[j] = states[master]
        elif "_" in j and master in arrays_in_sacct and queue is not None:
            # Neither queued (squeue answered) nor accounted, though its array is: SLURM drops the record of a task
            # cancelled before it started (scancel 12_3 on a pending array); cancelled is how it can have gone.
            out[j] = "CANCELLED"
        else:
            out[j] = "UNKNOWN"
    return out


def slurm_reasons(job_ids: list[str]) -> dict[str, str]:
    """squeue's reason (%r: Resources, Priority, PartitionConfig, Dependency, ...) for each queued or running job."""
    masters = sorted({j.split("_")[0] for j in job_ids if j})
    if not masters:
        return {}
    reasons = {}
    for line in (_run(["squeue", "-h", "-r", "-o", "%i %r", "-j", ",".join(masters)]) or "").splitlines():
        job, _, reason = line.strip().partition(" ")
        for task in _array_tasks(job):
            reasons[task] = reason.strip()
    return {j: reasons.get(j, reasons.get(j.split("_")[0], "")) for j in job_ids if j}


def cell_progress(cell_dir: Path) -> dict:
    """step, max_steps, seconds per step and ETA of a cell, from the progress.json its trainer rewrites at every
    logging step (this attempt's first step and time, the latest step and time)."""
    try:
        p = json.loads((cell_dir / layout.PROGRESS_JSON).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    steps = p["step"] - p["since_step"]
    per_step = (p["at"] - p["since"]) / steps if steps > 0 else None
    eta = per_step * (p["max_steps"] - p["step"]) if per_step is not None else None
    return {"step": p["step"], "max_steps": p["max_steps"], "s_per_step": per_step, "eta_s": eta,
            "progress_at": p["at"]}


def _array_tasks(job: str) -> list[str]:
    """sacct's JobID as job ids: "12", "12_3", or the not-yet-started tasks of an array "12_[4-6,9%2]" -> 12_4 ..."""
    match = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job)
    if not match:
        return [job]
    master, spec = match.group(1), match.group(2).split("%")[0]
    tasks = []
    for part in filter(None, spec.split(",")):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last or first).isdigit():
            return [job]
        tasks += [f"{master}_{i}" for i in range(int(first), int(last or first) + 1)]
    return tasks


@dataclass
class Death:
    """A cell whose status.json says it is alive, though its job or process is gone: what reconcile records."""

    cell_id: str
    error: str
    job_id: str | None


def survey(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[Death]]:
    """One row per cell (state, job id, SLURM state, step, attempts, error) and the cells found dead; writes nothing.

    A cell is dead when status.json says pending/running/preempted (or nothing) but SLURM says its job ended
    (OOM, node failure, scancel), a pending cell's job completed without a result, or the local process that
    ran it is gone. The table already shows such cells as failed; `record_deaths` writes it down.
    """
    sweep_dir = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    statuses = {cid: read_status(layout.cell_dir(sweep_dir, cid)) for cid in sweep.overrides_of()}
    # sweep.json holds the latest submission of each cell; status.json the job that last ran it (the same id
    # once it has started), or nothing (local runs, cells not yet started)
    job_of = {cid: (sweep.jobs or {}).get(cid) or status.job_id for cid, status in statuses.items()}
    slurm = slurm_states([j for j in job_of.values() if j])
    reasons = slurm_reasons([j for j in job_of.values() if j and slurm.get(j) in ALIVE])
    rows, deaths = [], []
    for cid, overrides in sweep.overrides_of().items():
        status, job = statuses[cid], job_of[cid]
        state = status.state or "missing"
        slurm_state = slurm.get(job) if job else None
        cell = layout.cell_dir(sweep_dir, cid)
        death = None
        if state in ("pending", "running", "preempted", "missing") and slurm_state in DEAD:
            death = Death(cid, f"SLURM job {job} ended {slurm_state}", job)  # SLURM is the only witness
        elif not job and (dead := local_cell_dead(cell, status)):
            death = Death(cid, dead, None)
        elif state == "pending" and slurm_state == "COMPLETED":
            death = Death(cid, f"SLURM job {job} completed but the cell wrote no result", job)
        if death is not None:
            deaths.append(death)
            state, error = "failed", death.error
        else:
            error = status.error
        progress = cell_progress(cell)
        if state != "running":  # ETA and speed only mean something for a cell that is training now
            progress = progress | {"eta_s": None} if progress else {}
        rows.append({"cell_id": cid, "overrides": " ".join(overrides), "state": state,
                     "job_id": job, "slurm_state": slurm_state, "reason": reasons.get(job) or None,
                     "step": progress.get("step", 0 if state in ("pending", "missing") else None),
                     "max_steps": progress.get("max_steps", status.max_steps),
                     "s_per_step": progress.get("s_per_step"), "eta_s": progress.get("eta_s"),
                     "attempts": status.attempts or 0, "requeues": status.requeues or 0, "error": error})
    return pd.DataFrame(rows, columns=COLUMNS), deaths


def record_deaths(sweep_dir: str | Path, deaths: list[Death]) -> None:
    """Mark each dead cell failed in its status.json, with the witness's word as the error."""
    for death in deaths:
        job = {"job_id": death.job_id} if death.job_id else {}
        update_status(layout.cell_dir(sweep_dir, death.cell_id), state="failed", error=death.error, **job)


def reconcile(sweep_dir: str | Path) -> pd.DataFrame:
    """`survey` and `record_deaths` in one: the table, with every dead cell now failed on disk too (this writes)."""
    table, deaths = survey(sweep_dir)
    record_deaths(sweep_dir, deaths)
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value) -> str:
    return "" if _missing(value) else str(value)


def format_status(table: pd.DataFrame, sweep_dir: str | Path) -> str:
    """`ablate status`: counts per state, then one row per cell. SLURM's reason says why a job waits
    (Resources, Priority, PartitionConfig: never, Dependency, ...); speed and ETA are the cell's own."""
    counts = table.state.value_counts()
    lines = [f"{sweep_dir}: {len(table)} cells — " + ", ".join(f"{n} {state}" for state, n in counts.items())]
    rows = []
    for r in table.itertuples(index=False):
        slurm = _text(r.slurm_state) + (f" ({r.reason})" if _text(r.reason) not in ("", "None") else "")
        step = "" if _missing(r.step) else f"{int(r.step)}" + ("" if _missing(r.max_steps) else f"/{int(r.max_steps)}")
        rows.append({"cell_id": r.cell_id, "overrides": _clip(r.overrides, 48), "state": r.state,
                     "job": _text(r.job_id), "slurm": slurm, "step": step,
                     "s/step": "" if _missing(r.s_per_step) else f"{r.s_per_step:.2f}",
                     "eta": "" if _missing(r.eta_s) else format_duration(r.eta_s), "attempts": str(r.attempts),
                     "requeues": str(r.requeues), "error": _clip(_text(r.error), 60)})
    if rows:
        columns = list(rows[0])
        widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
        lines.append("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
        lines += ["  ".join(row[c].ljust(widths[c]) for c in columns).rstrip() for row in rows]
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
