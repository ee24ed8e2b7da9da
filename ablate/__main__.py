"""`python -m ablate [-m] key=value ...`: one cell, or a sweep of cells with -m (Hydra multirun)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ablate.config import register_configs
from ablate.run import run_cell

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir)
    return run_cell(cfg, sweep_dir, overrides=list(hydra_cfg.overrides.task))


if __name__ == "__main__":
    main()
