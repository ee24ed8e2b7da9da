"""W&B tracking (offline): one run per cell, the same run id after an interruption and resume."""

from __future__ import annotations

import json

import pytest

from ablate.run import run_cell
from ablate.tracking import wandb_run_id
from ablate.trainer import Interrupted


class StopAfter:
    """A stop request that becomes true at the k-th step boundary (what a USR2 handler would set)."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls == self.k


@pytest.mark.slow
def test_wandb_run_survives_interruption(compose_cfg, tiny_overrides, tmp_path):
    cfg = compose_cfg([*tiny_overrides, "logger=wandb", "logger.mode=offline", "logger.project=ablate-test"])
    with pytest.raises(Interrupted):
        run_cell(cfg, tmp_path, stop_requested=StopAfter(3))
    metrics = run_cell(cfg, tmp_path)  # resumes from the checkpoint

    cell_dir = next((tmp_path / "cells").iterdir())
    status = json.loads((cell_dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2 and status["checkpoint_step"] == 3
    runs = sorted((cell_dir / "wandb").glob("offline-run-*"))
    expected = wandb_run_id(tmp_path, cell_dir.name)
    assert len(runs) == 2, runs  # one W&B process per attempt ...
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {expected}  # ... both logging to the same run
    assert all((r / f"run-{expected}.wandb").stat().st_size > 0 for r in runs)
    assert metrics["heldout/pairs"] == 32
