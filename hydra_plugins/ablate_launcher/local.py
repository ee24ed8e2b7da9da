"""ablate's local Hydra launcher: validate the whole sweep, then run its cells in this process.

Cells run one after another in-process because importing torch + transformers costs seconds per
process. Finished cells are skipped, a failing cell does not stop the others, and the sweep ends
with a table of every cell's held-out metrics.
"""

# No `from __future__ import annotations` here: Hydra's plugin scan executes this module without
# registering it in sys.modules, and dataclasses then cannot resolve string annotations.

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, run_job
from hydra.plugins.launcher import Launcher

from ablate.sweepdir import layout
from hydra_plugins.ablate_launcher import LauncherSetup

log = logging.getLogger(__name__)


@dataclass
class AblateLocalLauncherConf:
    _target_: str = "hydra_plugins.ablate_launcher.local.AblateLocalLauncher"
    workers: int = 1  # > 1: that many worker processes, each on its own GPU when there are GPUs


ConfigStore.instance().store(group="hydra/launcher", name="ablate_local", node=AblateLocalLauncherConf,
                             provider="ablate")


class AblateLocalLauncher(LauncherSetup, Launcher):
    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.workers = workers
        # a race (the sweeper's _race) collects after each round's look instead: a collection before the look would
        # report the new cells under the previous round's decision
        self.collect_at_end = True

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from ablate.sweep.plan import cell_table, start_sweep

        sweep_dir, cells = start_sweep(self, job_overrides, initial_job_idx, "local")
        log.info(f"ablate: {len(cells)} cells valid, sweep dir {sweep_dir}")

        if self.workers > 1:
            returns = self._run_in_workers(sweep_dir, cells)
        else:
            returns = self._run_in_process(sweep_dir, cells)
        table = cell_table(sweep_dir, cells)
        print(f"\nablate sweep {sweep_dir} ({len(cells)} cells)\n{table.to_string(index=False)}\n", flush=True)
        if self.collect_at_end:
            collect_and_describe(sweep_dir, self.config.select)
        return returns

    def _run_in_process(self, sweep_dir: Path, cells) -> list[JobReturn]:
        from ablate.sweepdir.layout import is_done
        from ablate.sweepdir.liveness import claim_holder

        returns = []
        for i, cell in enumerate(cells, start=1):
            label = " ".join(cell.overrides) or "(defaults)"
            cell_dir = layout.cell_dir(sweep_dir, cell.cell_id)
            holder = None if is_done(cell_dir) else claim_holder(cell_dir)
            if is_done(cell_dir) or holder:
                why = "done already" if holder is None else \
                    f"trained by pid {holder.get('pid')} on {holder.get('host')} (another launcher)"
                log.info(f"[{i}/{len(cells)}] {cell.cell_id} {label}: {why}, skipped")
                returns.append(JobReturn(overrides=cell.overrides, cfg=cell.task_config, status=JobStatus.COMPLETED,
                                         _return_value=None, working_dir=str(cell_dir)))
                continue
            log.info(f"[{i}/{len(cells)}] {cell.cell_id} {label}")
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cell.full_config(),
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            if ret.status == JobStatus.FAILED:
                log.error(f"[{i}/{len(cells)}] {cell.cell_id} failed: {ret._return_value!r} (see status.json)")
            returns.append(ret)
        return returns

    def _run_in_workers(self, sweep_dir: Path, cells) -> list[JobReturn]:
        """Cells in `workers` spawned processes; each takes one GPU of CUDA_VISIBLE_DEVICES when there are any."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        gpus = _visible_gpus()
        context = multiprocessing.get_context("spawn")  # fork + an initialised CUDA or torch runtime = trouble
        devices = context.Queue()
        for i in range(self.workers):
            devices.put(gpus[i % len(gpus)] if gpus else None)
        log.info(f"ablate: {len(cells)} cells on {self.workers} workers" + (f", GPUs {gpus}" if gpus else ""))
        returns = []
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_pin_worker,
                                 initargs=(devices,)) as pool:
            futures = {pool.submit(_run_cell_in_worker, cell.task_config, str(sweep_dir), cell.overrides): cell
                       for cell in cells}
            for future in as_completed(futures):
                cell = futures[future]
                error = future.exception()
                status = JobStatus.FAILED if error else JobStatus.COMPLETED
                if error:
                    log.error(f"{cell.cell_id} failed: {error!r} (see status.json)")
                returns.append(JobReturn(overrides=cell.overrides, cfg=cell.task_config, status=status,
                                         _return_value=error or future.result(),
                                         working_dir=str(layout.cell_dir(sweep_dir, cell.cell_id))))
        return returns

def collect_and_describe(sweep_dir: Path, select) -> None:
    """Run the collector with the sweep's own decision rule (`select`: the config's) and print the decision; a
    collector error never loses the cells (a race's looks are in race.json): it is logged with the retry command."""
    from ablate.collect import collect, describe
    from ablate.config import select_config

    try:
        summary = collect(sweep_dir, select_config(base=select))
    except Exception as error:
        log.error(f"collector failed ({type(error).__name__}: {error}); the cells are intact, "
                  f"retry with: ablate collect {sweep_dir}")
        return
    print(describe(summary), flush=True)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def _pin_worker(devices) -> None:
    """Runs once in each worker before torch is imported there: this worker sees one GPU, or none."""
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def _run_cell_in_worker(task_config, sweep_dir: str, overrides: list[str]):
    from ablate.sweep.run import run_cell

    return run_cell(task_config, sweep_dir, overrides)
