"""ablate's SLURM launcher: validate the whole sweep, submit it through submitit, return at once.

Finished cells and cells whose job is still queued or running are skipped, so re-running the same
command after failures or preemption submits only what is missing. The collector runs as a job
that starts when every cell job has ended. `hydra.launcher.wait=true` follows the sweep to the end.
"""

# No `from __future__ import annotations`: see local.py.

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher

from hydra_plugins.ablate_launcher import LauncherSetup

log = logging.getLogger(__name__)


@dataclass
class CollectorJobConf:
    enabled: bool = True
    resources: dict = field(default_factory=lambda: {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 4,
                                                     "timeout_min": 30, "tasks_per_node": 1, "nodes": 1})


@dataclass
class AblateSlurmLauncherConf:
    _target_: str = "hydra_plugins.ablate_launcher.slurm.AblateSlurmLauncher"
    cluster: str = "slurm"  # submitit cluster: slurm (debug/local run jobs without SLURM, for tests)
    partition: Any = None
    account: Any = None
    qos: Any = None
    timeout_min: int = 60
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: int = 32
    nodes: int = 1
    tasks_per_node: int = 1
    constraint: Any = None
    array_parallelism: int = 64
    setup: list = field(default_factory=list)
    additional_parameters: dict = field(default_factory=dict)
    signal_delay_s: int = 120
    max_array_size: Any = None
    profiles: list = field(default_factory=list)
    collector: CollectorJobConf = field(default_factory=CollectorJobConf)
    wait: bool = False
    poll_s: float = 10.0
    dry_run: bool = False
    force: bool = False  # submit even the requests the partition can never run (ablate.sweep.partition)


ConfigStore.instance().store(group="hydra/launcher", name="ablate_slurm", node=AblateSlurmLauncherConf,
                             provider="ablate")


class AblateSlurmLauncher(LauncherSetup, Launcher):
    def __init__(self, **launcher_keys) -> None:
        # Hydra passes hydra.launcher's keys (checked against AblateSlurmLauncherConf). launch() reads the same keys
        # from the composed config instead: a DictConfig, the form submission and `ablate resubmit` share.
        super().__init__()

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from ablate.sweep.plan import start_sweep
        from ablate.sweepdir.liveness import sweep_lock

        launcher = self.config.hydra.launcher
        started = time.monotonic()
        sweep_dir, cells = start_sweep(self, job_overrides, initial_job_idx, "slurm")
        # another launcher on this sweep waits here until these jobs are in sweep.json, then skips them
        with sweep_lock(sweep_dir):
            submitted = self._submit(launcher, started, sweep_dir, cells)
        if submitted is None:  # dry run
            return [self._ret(c) for c in cells]
        if launcher.wait and submitted["jobs"]:
            from ablate.sweep.status import reconcile

            self._follow(sweep_dir, submitted, launcher.poll_s)
            # Followed to the end: failed cells fail the command, as with the local launcher.
            table = reconcile(sweep_dir).set_index("cell_id")
            failed = {cid: table.loc[cid, "error"] for cid in table.index if table.loc[cid, "state"] == "failed"}
            return [self._ret(c, failed.get(c.cell_id, "")) if c.cell_id in failed else self._ret(c) for c in cells]
        return [self._ret(c) for c in cells]

    def _submit(self, launcher, started, sweep_dir, cells) -> dict | None:
        """Decide what to submit and submit it (None for a dry run); called with the sweep's lock held. What can
        never run (a request no node holds, unless forced; micro-batches the tasks cannot share) is refused with
        one message naming every such cell, exit 2, before anything is submitted."""
        from ablate.sweep.partition import ImpossibleRequest
        from ablate.sweep.slurm import cell_resources, check_submission, submit_cells
        from ablate.sweep.status import ALIVE, reconcile
        from ablate.sweepdir import layout
        from ablate.sweepdir.atomic import atomic_write_text
        from ablate.sweepdir.ids import config_yaml

        state = reconcile(sweep_dir).set_index("cell_id")
        todo, skipped = [], {"done": 0, "queued or running": 0}
        for cell in cells:
            if layout.is_done(layout.cell_dir(sweep_dir, cell.cell_id)):
                skipped["done"] += 1
            elif cell.cell_id in state.index and state.loc[cell.cell_id, "slurm_state"] in ALIVE:
                skipped["queued or running"] += 1
            else:
                todo.append((cell.task_config, cell.overrides, cell.cell_id))
        try:
            if launcher.dry_run:
                if todo:
                    check_submission(todo, launcher)
                plain = {c.cell_id: c.plain for c in cells}
                for _, _, cid in todo:
                    atomic_write_text(layout.cell_dir(sweep_dir, cid) / layout.CONFIG_YAML, config_yaml(plain[cid]))
                profiles = {repr(cell_resources(launcher, cfg)) for cfg, _, _ in todo}
                print(f"dry run: {len(cells)} cells valid, {len(todo)} to submit in {len(profiles)} resource "
                      f"profile(s), {skipped['done']} done, {skipped['queued or running']} queued/running; "
                      f"sweep.json written to {sweep_dir} in {time.monotonic() - started:.2f} s; nothing submitted",
                      flush=True)
                return None
            # a race's first round: its race job runs after the cells instead of the collector (ablate.sweep.race)
            collector = getattr(self, "collector_job", None)
            submitted = (submit_cells(sweep_dir, todo, launcher, self.config.select, collector=collector) if todo
                         else {"jobs": {}})
        except ImpossibleRequest as error:
            print(f"ablate: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        self._print_submission(sweep_dir, cells, todo, skipped, submitted)
        return submitted

    @staticmethod
    def _ret(cell, failure: str | None = None) -> JobReturn:
        # Detached: the cells' results arrive later, in their folders; Hydra only needs a completed handle.
        if failure is not None:
            error = RuntimeError(f"cell {cell.cell_id} ({' '.join(cell.overrides)}) failed: {failure} "
                                 "(see its status.json; `ablate status` lists every failed cell)")
            return JobReturn(overrides=cell.overrides, cfg=cell.task_config, status=JobStatus.FAILED,
                             _return_value=error)
        return JobReturn(overrides=cell.overrides, cfg=cell.task_config, status=JobStatus.COMPLETED,
                         _return_value=None)

    @staticmethod
    def _print_submission(sweep_dir, cells, todo, skipped, submitted) -> None:
        arrays = ", ".join(f"{a['job_id']} ({a['cells']} cells)" for a in submitted.get("arrays", []))
        lines = [f"ablate: {len(cells)} cells; submitted {len(todo)}; skipped {skipped['done']} done and "
                 f"{skipped['queued or running']} queued/running",
                 f"  sweep dir:     {sweep_dir}"]
        if arrays:
            lines.append(f"  job arrays:    {arrays}")
        if submitted.get("collector_job"):
            lines.append(f"  collector job: {submitted['collector_job']} (starts when every cell has ended)")
        lines += [f"  follow:        ablate status {sweep_dir}",
                  f"  after:         ablate collect {sweep_dir}   (the collector job does it for you)",
                  f"  on failures:   ablate resubmit {sweep_dir} --failed   (or re-run this command)",
                  f"  stop:          ablate cancel {sweep_dir}"]
        print("\n".join(lines), flush=True)

    @staticmethod
    def _follow(sweep_dir: Path, submitted: dict, poll_s: float) -> None:
        from tqdm.auto import tqdm

        from ablate.progress import is_terminal
        from ablate.sweep.status import ALIVE, reconcile, slurm_states

        total = len(reconcile(sweep_dir))
        # on a terminal a bar; in a log file (nohup, CI) one plain line whenever the counts change
        terminal, last = is_terminal(sys.stderr), None
        with tqdm(total=total, desc="cells ended", unit="cell", disable=not terminal) as bar:
            while True:
                table = reconcile(sweep_dir)
                ended = int(table.state.isin(["done", "failed"]).sum())
                counts = {"done": int((table.state == "done").sum()), "failed": int((table.state == "failed").sum())}
                if terminal:
                    bar.n = ended
                    bar.set_postfix(**counts)
                    bar.refresh()
                elif (ended, counts) != last:
                    print(f"cells ended {ended}/{total}: done={counts['done']} failed={counts['failed']}",
                          file=sys.stderr, flush=True)
                last = (ended, counts)
                collector = submitted.get("collector_job")
                collector_state = slurm_states([collector]).get(collector) if collector else "COMPLETED"
                if ended == total and collector_state not in ALIVE:
                    break
                time.sleep(poll_s)
        print(f"ablate: sweep ended; report: {sweep_dir / 'report' / 'report.html'}", flush=True)

