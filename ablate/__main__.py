"""`python -m ablate [-m] key=value ...`: one cell, or a sweep of cells with -m (Hydra multirun)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ablate.config import ConfigError, register_configs
from ablate.data.readers import DataError
from ablate.paths import CONF_DIR
from ablate.sweep.run import run_cell

register_configs()
# `${ablate_suffix:}` in hydra.sweep.dir: two sweeps started in the same second get different folders.
# Cached, so every reference in this process resolves to the same value.
OmegaConf.register_new_resolver("ablate_suffix", lambda: secrets.token_hex(2), use_cache=True, replace=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir)
    if multirun:  # the launcher validated config and data before this cell; a failure here is the cell's own
        return run_cell(cfg, sweep_dir, overrides=list(hydra_cfg.overrides.task))
    try:
        return run_cell(cfg, sweep_dir, overrides=list(hydra_cfg.overrides.task))
    except (ConfigError, DataError) as error:  # as a sweep would: one message, exit 2, no traceback
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
