"""Periodic checkpoints (trainer.checkpoint_every): a cell killed without warning resumes from its newest one.

A SIGKILL (an OOM kill, a node failure, a time limit without a signal) gives no step boundary to save at, so
only what was written before counts. The test kills a real sweep process with SIGKILL at a drawn step, runs
the same command again (its launcher takes over the dead claim) and compares the finished cell with an
uninterrupted run of the same command: metrics, per-pair file and logs byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ablate.train.trainer import checkpoint_interval_s

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CELL = ["objective=dpo", "trainer.max_steps=40", "trainer.eval_every=15", "trainer.log_every=5",
        "trainer.batch_size=8", "data.n_train=64", "data.n_heldout_per_slice=16", "trainer.eval_batch_size=32",
        "threads=1", "seed=0"]


def sweep(sweep_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ablate", "-m", *CELL, *extra, f"hydra.sweep.dir={sweep_dir}"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finished(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def the_cell(sweep_dir: Path) -> Path:
    (cell,) = (sweep_dir / "cells").iterdir()
    return cell


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("whole")
    finished(sweep(sweep_dir))
    return the_cell(sweep_dir)


def test_a_cell_killed_at_a_random_step_resumes_from_its_newest_checkpoint(uninterrupted, tmp_path):
    kill_after = random.Random(1).randint(3, 30)  # the checkpoint step to wait for before the SIGKILL (drawn once)
    process = sweep(tmp_path, "trainer.checkpoint_every=0.00001")  # every step boundary (< 1 ms)
    state = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        files = list(tmp_path.glob("cells/*/checkpoint/state.pt"))
        if files:
            try:
                state = torch.load(files[0], weights_only=False)["step"]
            except (OSError, EOFError, RuntimeError):  # caught mid-rename: look again
                state = None
            if state is not None and state >= kill_after:
                os.killpg(process.pid, signal.SIGKILL)
                break
        time.sleep(0.005)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the cell finished before the kill: draw another step"
    cell = the_cell(tmp_path)
    assert not (cell / "metrics.json").exists()
    killed_at = torch.load(cell / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert killed_at >= kill_after
    progress = json.loads((cell / "progress.json").read_text())
    assert progress["checkpoints"]["written"] >= 1

    finished(sweep(tmp_path))  # the same command again: it takes over the dead claim and resumes
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "done"
    assert (cell / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(cell / "heldout_pairs.parquet"),
                                  pd.read_parquet(uninterrupted / "heldout_pairs.parquet"), check_exact=True)
    for log in ("train_log.jsonl", "eval_log.jsonl"):
        assert (cell / log).read_text() == (uninterrupted / log).read_text(), log
    assert not (cell / "checkpoint").exists()


def test_checkpoint_every_defaults_to_30_minutes_in_a_slurm_job_only(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert checkpoint_interval_s({"checkpoint_every": None}) is None
    assert checkpoint_interval_s({"checkpoint_every": 2.5}) == 150.0
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert checkpoint_interval_s({"checkpoint_every": None}) == 1800.0
    assert checkpoint_interval_s({"checkpoint_every": 0}) is None
