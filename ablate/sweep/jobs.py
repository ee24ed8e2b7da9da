"""What runs inside a SLURM job: one cell (CellJob) or the sweep's collector (CollectJob).

Preemption and timeout. SLURM sends USR2 `signal_delay_s` before the end; submitit's handler calls
`CellJob.checkpoint()` in the main thread, wherever the training loop happens to be. A checkpoint
taken there could catch the optimiser half-way through a step, so the trainer runs in a worker
thread: `checkpoint()` asks it to stop at the next step boundary, waits until it has saved its
checkpoint, and then lets submitit requeue the job. The requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import os
import threading
import time

import submitit
from omegaconf import DictConfig, OmegaConf

from ablate.sweepdir import layout
from ablate.sweepdir.ids import cell_id
from ablate.sweepdir.layout import update_status


def export_distributed_env() -> dict[str, str]:
    """torch.distributed's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) from submitit's JobEnvironment."""
    env = submitit.JobEnvironment()
    values = {
        "RANK": str(env.global_rank),
        "LOCAL_RANK": str(env.local_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_WORLD_SIZE": str(env.num_tasks // max(1, env.num_nodes)),
        "MASTER_ADDR": env.hostnames[0],
        # a port derived from the job id, so two jobs sharing a node do not collide
        "MASTER_PORT": str(20000 + int("".join(c for c in str(env.job_id) if c.isdigit()) or 0) % 20000),
    }
    os.environ.update(values)
    return values


class CellJob(submitit.helpers.Checkpointable):
    def __init__(self, config: DictConfig, sweep_dir: str, overrides: list[str]):
        self.config = config  # resolved, without the hydra node
        self.sweep_dir = sweep_dir
        self.overrides = overrides
        self.cell_id = cell_id(config)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def __call__(self) -> dict:
        from ablate.sweep.run import run_cell

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            export_distributed_env()
        cell_dir = layout.cell_dir(self.sweep_dir, self.cell_id)
        outcome: dict = {}

        def work():
            try:
                outcome["metrics"] = run_cell(self.config, self.sweep_dir, self.overrides, stop_requested=self._stop,
                                              job_id=str(env.job_id))
            except BaseException as error:  # handed to the main thread, which re-raises it
                outcome["error"] = error

        self._worker = threading.Thread(target=work, name=f"cell-{self.cell_id}", daemon=True)
        self._worker.start()
        while self._worker.is_alive():
            self._worker.join(timeout=1.0)  # short waits keep the main thread free to take signals
        if "error" in outcome:
            raise outcome["error"]  # the job ends FAILED, with the error in status.json
        update_status(cell_dir, job_id=str(env.job_id))
        return outcome["metrics"]

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on USR2 (preemption or timeout): checkpoint at a step boundary, then requeue."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
        fresh = CellJob(self.config, self.sweep_dir, self.overrides)  # a new Event and no thread to pickle
        return submitit.helpers.DelayedSubmission(fresh, *args, **kwargs)

    def __getstate__(self):
        return {"config": self.config, "sweep_dir": self.sweep_dir, "overrides": self.overrides}

    def __setstate__(self, state):
        self.__init__(state["config"], state["sweep_dir"], state["overrides"])


class CollectJob:
    """The collector as a SLURM job; it starts when every cell has ended (afterany dependency)."""

    def __init__(self, sweep_dir: str, select: dict):
        self.sweep_dir = sweep_dir
        self.select = select

    def __call__(self) -> dict:
        from ablate.collect import collect, describe
        from ablate.config import select_config
        from ablate.sweep.status import reconcile

        time.sleep(1)  # let sacct record the cells' final states
        reconcile(self.sweep_dir)
        summary = collect(self.sweep_dir, select_config(base=OmegaConf.create(self.select)))
        print(describe(summary), flush=True)
        from ablate.sweep.confirm import ConfirmError, requested, run_confirmation

        seeds = requested(self.sweep_dir)
        if seeds and not summary.get("not_finished"):
            # a tuned sweep with hydra.sweeper.confirm: the confirmation's cells and collector go to the queue now
            try:
                run_confirmation(self.sweep_dir, seeds)
            except ConfirmError as error:
                print(f"ablate confirm: {error}", flush=True)
        return {"winner": summary["winner"], "decisive": summary["decisive"]}

