"""Experiment tracking: every logged entry of a cell also goes to W&B when logger=wandb.

The W&B run id is a hash of (sweep directory, cell id), so a cell requeued after preemption, or
resubmitted after a failure, continues the same W&B run instead of starting a new one.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ablate.cells import config_hash


class NoTracker:
    def log(self, entry: dict) -> None:
        pass

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        pass


class WandbTracker:
    def __init__(self, cfg: DictConfig, cell_dir: Path, sweep_dir: Path, cell_id: str, overrides: list[str]):
        import wandb

        from ablate.config import as_plain

        logger = cfg.logger
        self.run_id = wandb_run_id(sweep_dir, cell_id)
        self.run = wandb.init(
            project=logger.project, entity=logger.entity, group=logger.group or Path(sweep_dir).name,
            name=" ".join(overrides) or cell_id, id=self.run_id, resume="allow", dir=str(cell_dir),
            config=as_plain(cfg) | {"cell_id": cell_id}, tags=list(logger.tags), mode=logger.mode,
            job_type="cell",
        )

    def log(self, entry: dict) -> None:
        self.run.log({k: v for k, v in entry.items() if k != "step"}, step=int(entry["step"]))

    def finish(self, summary: dict | None = None, failed: bool = False) -> None:
        if summary:
            self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)


def wandb_run_id(sweep_dir: Path, cell_id: str) -> str:
    return config_hash([str(Path(sweep_dir).resolve()), cell_id])[:16]


def make_tracker(cfg: DictConfig, cell_dir: Path, sweep_dir: Path, cell_id: str, overrides: list[str]):
    if cfg.logger.kind == "wandb":
        return WandbTracker(cfg, cell_dir, sweep_dir, cell_id, overrides)
    return NoTracker()
