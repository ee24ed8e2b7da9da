"""W&B runs of the cells (logger=wandb), and starting any W&B run so that W&B never costs a cell.

One run per cell (docs/ARCHITECTURE.md §9): group = the sweep, job_type = the objective, name = arm + seed
(`dpo r=16 seed=2`), tags = the cell's swept values, config = the resolved config plus `arm` (the
collector's arm label, so W&B groups runs exactly as the report compares them) and `cell_id`.
The run id is a hash of (sweep directory, cell id): a cell requeued after preemption, or resubmitted
after a failure, continues the same W&B run.

W&B failures are warnings. An online run that cannot start (no network, bad key, quota) falls back
to an offline run, whose files are published later with `wandb sync`; anything else that fails
leaves the cell without a W&B run. Training and the files on disk go on either way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from ablate.redact import redact
from ablate.sweepdir.ids import config_hash
from ablate.sweepdir.layout import arm_axes, arm_label, override_values, read_sweep

log = logging.getLogger(__name__)

# Training metrics are TRL's names; the step metric is transformers' WandbCallback's, so ablate's
# curves line up with TRL runs in the same project. Summaries stay W&B's default, the last value
# (a summary="last" option would turn each into a {"last": value} dict that bar charts cannot plot);
# a finished cell then overwrites them with metrics.json, the held-out metrics at the end.
STEP_METRIC = "train/global_step"
METRIC_GLOBS = ("loss", "rewards/*", "logps/*", "grad_norm", "learning_rate", "epoch", "eval_*", "heldout/*")
OFFLINE_MODES = ("offline", "dryrun", "disabled")

# Why W&B's server could not be reached from this process, once it could not: later runs (the next
# cells of a local sweep) go offline at once instead of each waiting ~15 s for the same failure.
_server_unreachable: list[str] = []


class NoTracker:
    def log(self, entry: dict) -> None:
        pass

    def table(self, name: str, frame) -> None:
        pass

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        pass


class WandbTracker:
    """A cell's W&B run; after the first failed call it stops talking to W&B (with one warning)."""

    def __init__(self, run):
        self.run = run
        self._call("define_metric", self._define_metrics)

    def _define_metrics(self) -> None:
        # One glob per family rather than "*", which would also match the step metric itself.
        self.run.define_metric(STEP_METRIC)
        for name in METRIC_GLOBS:
            self.run.define_metric(name, step_metric=STEP_METRIC, step_sync=True)

    def log(self, entry: dict) -> None:
        if self.run is None:
            return
        step = int(entry["step"])
        values = {k: v for k, v in entry.items() if k != "step"}
        self._call("log", lambda: self.run.log(values | {STEP_METRIC: step}, step=step))

    def table(self, name: str, frame) -> None:
        """A pandas frame as a W&B table (e.g. the cell's generations)."""
        if self.run is None:
            return
        import wandb

        self._call("table", lambda: self.run.log({name: wandb.Table(dataframe=frame)}))

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        if self.run is None:
            return
        if summary:
            self._call("summary", lambda: self.run.summary.update(summary))
        if self.run is not None:
            self._call("finish", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None

    def _call(self, what: str, call) -> None:
        try:
            call()
        except Exception as error:
            log.warning(f"W&B {what} failed ({describe_error(error)}); the cell goes on without W&B")
            self.run = None


def make_tracker(cfg: DictConfig, cell_dir: Path, sweep_dir: Path, cell_id: str, overrides: list[str]):
    if cfg.logger.kind != "wandb":
        return NoTracker()
    try:
        from ablate.sweepdir.ids import as_plain
        from ablate.train.objectives import provenance

        identity = cell_identity(cfg, sweep_dir, overrides)
        logger = cfg.logger
        run = start_run(
            f"cell {cell_id}", mode=logger.mode, init_timeout=logger.init_timeout,
            finish_timeout=logger.finish_timeout, project=logger.project,
            entity=logger.entity, group=logger.group or sweep_group(sweep_dir), job_type=cfg.objective.name,
            name=identity["name"], tags=[*logger.tags, *identity["tags"]], id=wandb_run_id(sweep_dir, cell_id),
            resume="allow", dir=run_files_dir(cell_dir),
            config=as_plain(cfg) | {"arm": identity["arm"], "cell_id": cell_id,
                                    "objective_provenance": provenance(as_plain(cfg)["objective"])},
        )
        return WandbTracker(run) if run is not None else NoTracker()
    except Exception as error:
        log.warning(f"W&B: no run for cell {cell_id} ({describe_error(error)}); the cell goes on without W&B")
        return NoTracker()


def wandb_run_id(sweep_dir: Path, cell_id: str) -> str:
    return config_hash([str(Path(sweep_dir).resolve()), cell_id])[:16]


def sweep_group(sweep_dir: Path) -> str:
    """A sweep's W&B group when logger.group is null: its directory's name."""
    return Path(sweep_dir).resolve().name


def run_files_dir(default: Path) -> str | None:
    """Where W&B writes a run's files: $WANDB_DIR when set (wandb reads it), else `default`."""
    if os.environ.get("WANDB_DIR"):
        return None
    Path(default).mkdir(parents=True, exist_ok=True)
    return str(default)


def cell_identity(cfg: DictConfig, sweep_dir: Path, overrides: list[str]) -> dict:
    """The cell's arm (as the collector labels it), its W&B name and tags, from sweep.json's grid axes."""
    values = override_values(overrides)
    try:
        axes = read_sweep(sweep_dir).axes
    except (FileNotFoundError, ValueError):  # a single run has no sweep.json
        axes = {}
    swept = [key for key in axes if key in values]
    arms = arm_axes({key: axes[key] for key in swept})
    arm = arm_label(values, arms)
    arm_keys = list(arms)
    short = [f"{key.rsplit('.', 1)[-1]}={values[key]}" for key in arm_keys if key != "objective"]
    return {
        "arm": arm,
        "name": " ".join([cfg.objective.name, *short, f"seed={cfg.seed}"]),
        # W&B's limit is 64 characters per tag; a combination's terms and weights get a tag each
        "tags": [f"{key}={values[key]}"[:64] for key in swept] + [
            f"term={t['name']}:{t['weight']:g}"[:64] for t in (cfg.objective.get("terms") or [])],
    }


def start_run(what: str, *, mode: str | None, init_timeout: float, finish_timeout: float, **init_args):
    """wandb.init that never raises: the run, an offline run if online failed, or None (with a warning).

    `finish_timeout` bounds how long run.finish() waits for uploads; what is left stays on disk for
    `wandb sync` (W&B's default is to wait forever, which a lost network would turn into a hung cell).
    """
    import wandb

    settings = wandb.Settings(init_timeout=init_timeout, finish_timeout=finish_timeout)
    effective = mode or os.environ.get("WANDB_MODE") or "online"
    attempts = [mode] if effective in OFFLINE_MODES else [mode, "offline"]
    if _server_unreachable and effective not in OFFLINE_MODES:
        attempts = ["offline"]
        log.warning(f"W&B: the {what} run logs offline (earlier in this process: {_server_unreachable[0]})")
    for attempt in attempts:
        try:
            return wandb.init(mode=attempt, settings=settings, **init_args)
        except Exception as error:
            wandb.teardown()  # a failed init leaves its run id registered in wandb's service process
            if attempt != "offline" and "offline" in attempts:
                _server_unreachable.append(describe_error(error))
                log.warning(f"W&B: the {what} run could not start online ({describe_error(error)}); logging offline "
                            f"instead: publish later with `wandb sync` (README: Review in W&B)")
            else:
                log.warning(f"W&B: no run for the {what} ({describe_error(error)}); files on disk are unaffected")
    return None


def describe_error(error: Exception) -> str:
    """`Type: first line of the message`, secrets masked: what a W&B warning says."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return redact(f"{type(error).__name__}: {first_line}")
