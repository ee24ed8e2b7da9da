"""Submitting cells to SLURM through submitit: resource profiles, arrays under MaxArraySize, the collector.

Cells may need different resources (a larger rank or model needs more memory or GPUs): each cell's
resources are the launcher's defaults updated by every matching entry of `profiles`; cells with the
same resources share job arrays, each array holding at most MaxArraySize cells. The collector is
one more job, started by SLURM once every cell job has ended (`afterany`), whatever the outcome.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from itertools import groupby
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from ablate.sweep.jobs import CellJob, CollectJob
from ablate.sweep.partition import ImpossibleRequest, check_requests, read_partition
from ablate.sweep.status import ALIVE, slurm_states
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import atomic_write_text
from ablate.sweepdir.ids import as_plain, config_yaml
from ablate.sweepdir.layout import read_sweep, update_status, updating_sweep
from ablate.train.distributed import task_split_problem

log = logging.getLogger(__name__)
RESOURCE_KEYS = ("partition", "account", "qos", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb",
                 "nodes", "tasks_per_node", "constraint")


def cell_resources(launcher: DictConfig, cell_config: DictConfig) -> dict:
    """The launcher's resources, updated by each profile whose `when` matches the cell's config."""
    resources = {key: launcher[key] for key in RESOURCE_KEYS}
    for profile in launcher.get("profiles") or []:
        when = profile.get("when") or {}
        if all(str(OmegaConf.select(cell_config, key)) == str(value) for key, value in when.items()):
            resources |= {key: value for key, value in profile.items() if key != "when"}
    unknown = set(resources) - set(RESOURCE_KEYS)
    if unknown:
        raise ValueError(f"hydra.launcher.profiles: unknown resource keys {sorted(unknown)}; known: {RESOURCE_KEYS}")
    return resources


def profile_key(resources: dict) -> str:
    """Cells with equal resources share job arrays: the key they are grouped and sorted by."""
    return repr(sorted(resources.items(), key=str))


def executor_parameters(resources: dict, launcher: DictConfig, name: str) -> dict:
    params = {
        "name": name,
        "timeout_min": resources["timeout_min"],
        "gpus_per_node": resources["gpus_per_node"],
        "cpus_per_task": resources["cpus_per_task"],
        "mem_gb": resources["mem_gb"],
        "nodes": resources["nodes"],
        "tasks_per_node": resources["tasks_per_node"],
        "slurm_array_parallelism": launcher.array_parallelism,
        "slurm_setup": list(launcher.setup or []),
        "slurm_additional_parameters": dict(launcher.additional_parameters or {}),
        "slurm_signal_delay_s": launcher.signal_delay_s,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if resources[key] is not None:
            params[f"slurm_{key}"] = resources[key]
    if not params["gpus_per_node"]:
        params.pop("gpus_per_node")
    return params


def max_array_size(configured: int | None) -> int:
    """The cluster's MaxArraySize (an array's indices must stay below it); 1001 is SLURM's default."""
    if configured:
        return configured
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1001
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
    return int(match.group(1)) if match else 1001


def check_resources(profiled: list[tuple[dict, DictConfig, list[str], str]], launcher: DictConfig) -> None:
    """Refuse (ImpossibleRequest) cells, or the collector job, that the partition can never run.

    Skipped for submitit's debug/local clusters, and with a warning when scontrol cannot be asked.
    """
    if launcher.cluster != "slurm":
        return
    groups: dict[str, tuple[dict, list[str]]] = {}
    for resources, _, _, cid in profiled:
        groups.setdefault(profile_key(resources), (resources, []))[1].append(cid)
    if launcher.collector.enabled:
        collector = {key: launcher[key] for key in RESOURCE_KEYS} | dict(launcher.collector.resources)
        groups["collector"] = (collector, ["the collector job (hydra.launcher.collector.resources)"])
    try:
        partitions = {name: read_partition(name) for name in {r.get("partition") for r, _ in groups.values()}}
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("could not read the partition's limits (%s): resources not checked before submission", error)
        return
    check_requests(list(groups.values()), partitions, launcher.max_array_size)


def check_task_split(profiled: list[tuple[dict, DictConfig, list[str], str]]) -> None:
    """Refuse cells whose micro-batches their tasks (tasks_per_node x nodes) cannot share evenly: every rank
    of a multi-task cell takes an equal share (ablate/train/distributed.py). Not forceable: the cell would fail."""
    lines = []
    for resources, cfg, overrides, cid in profiled:
        tasks = int(resources.get("tasks_per_node") or 1) * int(resources.get("nodes") or 1)
        problem = task_split_problem(cfg.trainer, tasks)
        if problem:
            lines.append(f"  cell {cid} [{' '.join(overrides) or '(no overrides)'}]: {problem}")
    if lines:
        raise ImpossibleRequest("these cells cannot be split over their tasks; nothing was submitted:\n"
                                + "\n".join(lines))


def _executor(sweep_dir: Path, launcher: DictConfig) -> submitit.AutoExecutor:
    # one folder per job: logs, pickles and the generated sbatch script stay next to the sweep
    return submitit.AutoExecutor(folder=str(sweep_dir / layout.SLURM / "%j"), cluster=launcher.cluster)


def check_submission(cells: list[tuple[DictConfig, list[str], str]], launcher: DictConfig) -> list[tuple]:
    """Refuse (ImpossibleRequest) what can never run, before anything is submitted: micro-batches the tasks cannot
    share evenly (never forceable), and requests no node of the partition can hold (unless `force`). Returns the
    cells as (resources, config, overrides, cell_id), sorted by resource profile."""
    profiled = sorted(((cell_resources(launcher, cfg), cfg, ov, cid) for cfg, ov, cid in cells),
                      key=lambda c: profile_key(c[0]))
    check_task_split(profiled)
    if not launcher.get("force", False):  # an older sweep.json (ablate resubmit) has no `force`
        check_resources(profiled, launcher)
    return profiled


def submit_cells(sweep_dir: Path, cells: list[tuple[DictConfig, list[str], str]], launcher: DictConfig,
                 select: DictConfig, collector=None) -> dict:
    """Check (check_submission), then submit (config, overrides, cell_id) cells and the collector; record job ids in
    sweep.json and status.json. Callers that may race another launcher hold the sweep's lock. `collector`: the job
    that runs after the cells instead of the collector (a race's RaceJob, which collects too)."""
    sweep_dir = Path(sweep_dir)
    name = f"ablate-{sweep_dir.name}"
    profiled = check_submission(cells, launcher)
    for _, cfg, ov, cid in profiled:  # before submission: a job that starts at once must not be overwritten
        cell_dir = layout.cell_dir(sweep_dir, cid)
        atomic_write_text(cell_dir / layout.CONFIG_YAML, config_yaml(as_plain(cfg)))
        # job_id=None: the job id of an earlier attempt must not stand for the new job (reconcile would judge the
        # cell by the old job's end); the new id is in sweep.json, and the job writes it here when it starts
        update_status(cell_dir, state="pending", cell_id=cid, overrides=list(ov), error=None, job_id=None,
                      submitted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    executor = _executor(sweep_dir, launcher)
    chunk = max_array_size(launcher.max_array_size)
    jobs: dict[str, str] = {}
    arrays = []
    for _, group in groupby(profiled, key=lambda c: profile_key(c[0])):
        group = list(group)
        executor.update_parameters(**executor_parameters(group[0][0], launcher, name))
        for start in range(0, len(group), chunk):
            part = group[start : start + chunk]
            with executor.batch():
                submitted = [executor.submit(CellJob(cfg, str(sweep_dir), ov)) for _, cfg, ov, _ in part]
            for (_, _, _, cid), job in zip(part, submitted, strict=True):
                jobs[cid] = str(job.job_id)
            arrays.append({"job_id": str(submitted[0].job_id).split("_")[0], "cells": len(part),
                           "resources": group[0][0]})

    collector_job = None
    if launcher.collector.enabled and arrays:
        # The collector waits for the jobs just submitted AND for the sweep's cells still queued or running from an
        # earlier submission (a resubmission of failed cells while others still run), so its report is complete.
        earlier = [job for cid, job in (read_sweep(sweep_dir).jobs or {}).items() if cid not in jobs]
        still_alive = {job.split("_")[0] for job, state in slurm_states(earlier).items() if state in ALIVE}
        masters = ":".join(dict.fromkeys([a["job_id"] for a in arrays] + sorted(still_alive)))
        collector_resources = {key: launcher[key] for key in RESOURCE_KEYS} | dict(launcher.collector.resources)
        params = executor_parameters(collector_resources, launcher, f"{name}-collect")
        params["slurm_additional_parameters"] = params["slurm_additional_parameters"] | {
            "dependency": f"afterany:{masters}", "kill-on-invalid-dep": "no"}
        params.pop("slurm_array_parallelism")
        executor.update_parameters(**params)
        job = collector if collector is not None else CollectJob(str(sweep_dir), OmegaConf.to_container(select))
        collector_job = str(executor.submit(job).job_id)

    with updating_sweep(sweep_dir) as record:
        record.jobs = (record.jobs or {}) | jobs
        record.arrays = (record.arrays or []) + arrays
        if collector_job:
            record.collector_job = collector_job  # the latest; every one, for `ablate cancel`, in collector_jobs
            record.collector_jobs = (record.collector_jobs or []) + [collector_job]
        record.slurm = OmegaConf.to_container(launcher, resolve=True)
        record.select = OmegaConf.to_container(select, resolve=True)
    return {"jobs": jobs, "arrays": arrays, "collector_job": collector_job}
