"""Run one cell: validate, skip if finished, train, and keep status.json true throughout."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from ablate.config import validate_cell
from ablate.review.tracking import make_tracker
from ablate.sweepdir import layout
from ablate.sweepdir.atomic import atomic_write_json, atomic_write_text
from ablate.sweepdir.ids import as_plain, cell_id, config_yaml
from ablate.sweepdir.layout import done_problem, is_done, read_status, update_status
from ablate.sweepdir.liveness import Claim
from ablate.train.objectives import provenance


def run_cell(cfg: DictConfig, sweep_dir: Path, overrides: list[str] | tuple[str, ...] = (), *,
             stop_requested=None, job_id: str | None = None) -> dict:
    """Train the cell `cfg` under <sweep_dir>/cells/<cell_id>/ and return its final metrics.

    A finished cell is not trained again; an interrupted one resumes from its checkpoint. A failing
    cell records its error, the step it reached and the traceback tail in status.json, then
    re-raises (so a SLURM job ends FAILED). `stop_requested` (a threading.Event) asks the trainer to
    checkpoint and stop at the next step boundary: the cell is then `preempted`.
    """
    validate_cell(cfg, overrides)
    cid = cell_id(cfg)
    cell_dir = layout.cell_dir(sweep_dir, cid)
    if is_done(cell_dir):
        return json.loads((cell_dir / layout.METRICS_JSON).read_text())
    problem = done_problem(cell_dir)
    if problem:  # said done, but its results are gone or damaged since: trained again, and the reason kept
        print(f"ablate: cell {cid} said done, but {problem}: training it again", file=sys.stderr, flush=True)

    from ablate.train.trainer import train  # heavy imports (torch, transformers) only when training

    if int(os.environ.get("RANK", "0")) != 0:  # other tasks of a multi-task cell: rank 0 keeps the books
        try:
            return train(cfg, cell_dir, Path(sweep_dir) / layout.SHARED, stop_requested=stop_requested)
        finally:
            _leave_process_group()

    # A sweep's launcher prepared the data at planning (then this only sees the stored file); a single
    # run does it here, so bad data stop it before the cell is marked running.
    from ablate.train.shared import prepare_sweep_data

    prepare_sweep_data([as_plain(cfg)], Path(sweep_dir) / layout.SHARED)
    cell_dir.mkdir(parents=True, exist_ok=True)
    # A local cell is claimed (CellBusy if another live launcher trains it); a SLURM job has SLURM's word instead.
    try:
        with Claim(cell_dir) if job_id is None else contextlib.nullcontext():
            return _train_cell(cfg, cell_dir, Path(sweep_dir), cid, overrides, stop_requested, job_id, problem)
    finally:
        _leave_process_group()


def _gpus_held(device: str) -> int:
    """GPUs this cell trains on, all its tasks together (one GPU per task on CUDA; none on the CPU or MPS)."""
    if not (device == "auto" or str(device).startswith("cuda")):
        return 0
    import torch

    if not torch.cuda.is_available():
        return 0
    return int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1)


def _leave_process_group() -> None:
    """A multi-task cell's ranks leave their process group once the cell has ended (a no-op otherwise)."""
    if "torch.distributed" in sys.modules:  # never imports torch for a cell that did not
        from ablate.train.distributed import shutdown

        shutdown()


def _train_cell(cfg, cell_dir: Path, sweep_dir: Path, cid: str, overrides, stop_requested, job_id, problem) -> dict:
    from ablate.train.trainer import Interrupted, train

    atomic_write_text(cell_dir / layout.CONFIG_YAML, config_yaml(as_plain(cfg)))
    atomic_write_json(cell_dir / layout.OBJECTIVE_JSON, provenance(as_plain(cfg)["objective"]))
    before = read_status(cell_dir)
    attempts = (before.attempts or 0) + 1
    requeues = (before.requeues or 0) + (before.state == "preempted")  # resumed from its checkpoint
    update_status(cell_dir, state="running", cell_id=cid, overrides=list(overrides), attempts=attempts,
                  requeues=requeues, host=socket.gethostname(), pid=os.getpid(), retrained_because=problem,
                  error=None, failed_step=None, traceback=None,  # a retry starts with a clean record
                  job_id=job_id, started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  # what the collector groups by, so it never parses config.yaml of every cell
                  objective=cfg.objective.name, lora_r=cfg.lora.r, seed=cfg.seed, max_steps=cfg.trainer.max_steps,
                  cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), gpus=_gpus_held(cfg.device))
    started = time.monotonic()
    tracker = make_tracker(cfg, cell_dir, Path(sweep_dir), cid, list(overrides))
    # status.json first, W&B after: whatever W&B does at the end (uploads, a lost network), the state is on disk
    try:
        metrics = train(cfg, cell_dir, Path(sweep_dir) / layout.SHARED, stop_requested=stop_requested, tracker=tracker)
    except Interrupted as stop:
        update_status(cell_dir, state="preempted", checkpoint_step=stop.step,
                      elapsed_s=round(time.monotonic() - started, 2))
        tracker.finish()  # the requeued job resumes the same W&B run
        raise
    except BaseException as error:
        update_status(cell_dir, state="failed", error=f"{type(error).__name__}: {error}",
                      failed_step=getattr(error, "step", None),
                      traceback=traceback.format_exc().splitlines()[-30:],
                      elapsed_s=round(time.monotonic() - started, 2))
        tracker.finish(failed=True)
        raise
    update_status(cell_dir, state="done", elapsed_s=round(time.monotonic() - started, 2))
    tracker.finish(summary=metrics)
    return metrics
