"""The decision on real sweeps of the embedded task, through the real command line (ARCHITECTURE.md §6, issue "Decisions
that hold up"): three seeds by default, an A/A sweep that must not name a winner, and the printed command that
adds seeds to an undetermined sweep.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

from ablate.collect import collect
from ablate.config import select_config

# A short but real training run: long enough for seeds to differ, short enough for CI (~3 s a cell).
SHORT = ["trainer.max_steps=40", "trainer.eval_every=20", "trainer.log_every=10", "trainer.batch_size=8",
         "data.n_train=320", "data.n_heldout_per_slice=100", "trainer.eval_batch_size=100", "threads=1"]


def ablate(repo_root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=repo_root, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def test_a_multirun_runs_three_seeds_unless_told(repo_root, tmp_path):
    # dry runs of the SLURM launcher plan the sweep and write sweep.json without training (or a cluster)
    planned = {}
    for name, extra in {"default": [], "one seed": ["seed=5"]}.items():
        sweep_dir = tmp_path / name.replace(" ", "_")
        proc = ablate(repo_root, "-m", "objective=dpo,simpo", "lora.r=8,16", *extra, "hydra/launcher=slurm",
                      "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep_dir}")
        assert proc.returncode == 0, output(proc)
        cells = json.loads((sweep_dir / "sweep.json").read_text())["cells"]
        planned[name] = sorted({o for c in cells for o in c["overrides"] if o.startswith("seed=")})
        assert len(cells) == 4 * len(planned[name])
    assert planned == {"default": ["seed=0", "seed=1", "seed=2"], "one seed": ["seed=5"]}


@pytest.fixture(scope="module")
def aa_sweep(repo_root, tmp_path_factory):
    """One recipe, six seeds, split into two "arms" by a key that does not change training: trainer.eval_every
    only decides when held-out pairs are scored (scoring draws no random numbers). Arm 20 has seeds 0-2, arm 19
    seeds 3-5, so the arms are unpaired, as in an A/A check."""
    sweep_dir = tmp_path_factory.mktemp("aa")
    base = [o for o in SHORT if not o.startswith("trainer.eval_every")]
    for every, seeds in (("20", "0,1,2"), ("19", "3,4,5")):
        proc = ablate(repo_root, "-m", f"trainer.eval_every={every}", f"seed={seeds}", *base,
                      f"hydra.sweep.dir={sweep_dir}")
        assert proc.returncode == 0, output(proc)
    return sweep_dir


@pytest.mark.slow
def test_aa_three_seeds_per_arm_is_not_decisive(aa_sweep):
    summary = collect(aa_sweep, select_config(["factor=trainer.eval_every"]), plots=False)
    assert len(summary["arms"]) == 2 and all(len(a["seeds"]) == 3 for a in summary["arms"])
    for decision in [summary["decision"], *summary["slices"].values()]:
        assert decision["verdict"] == "not decisive", decision["explanation"]
        (comparison,) = decision["comparisons"]
        assert comparison["paired"] is False and comparison["seeds"] == 3
        assert comparison["ci_low"] < 0 < comparison["ci_high"]


@pytest.mark.slow
def test_aa_one_seed_per_arm_is_undetermined(aa_sweep, tmp_path):
    # every one-seed-per-arm split of the same sweep: seed 0 (arm 20) against seed 3, 4 or 5 (arm 19)
    sweep = json.loads((aa_sweep / "sweep.json").read_text())
    for other in ("3", "4", "5"):
        keep = [c for c in sweep["cells"] if f"seed={other}" in c["overrides"] or "seed=0" in c["overrides"]]
        split = tmp_path / f"split-{other}"
        (split / "cells").mkdir(parents=True)
        (split / "sweep.json").write_text(json.dumps(sweep | {"cells": keep}))
        for cell in keep:
            shutil.copytree(aa_sweep / "cells" / cell["cell_id"], split / "cells" / cell["cell_id"])
        summary = collect(split, select_config(["factor=trainer.eval_every"]), plots=False)
        assert summary["verdict"] == "undetermined" and summary["winner"] is None
        assert "variance between training runs" in summary["explanation"]
        assert all(c["ci_low"] is None for c in summary["decision"]["comparisons"])  # no interval from one seed


@pytest.mark.slow
def test_the_printed_command_adds_the_missing_seeds(repo_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = ablate(repo_root, "-m", "objective=dpo,simpo", "seed=0", f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode == 0, output(proc)
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert summary["verdict"] == "undetermined"
    plan = summary["decision"]["seeds_needed"]
    assert plan["seeds"] == 3 and plan["command"] in proc.stdout
    command = shlex.split(plan["command"])
    assert command[:3] == ["python", "-m", "ablate"] and "seed=0,1,2" in command
    assert f"hydra.sweep.dir={sweep_dir.resolve()}" in command

    proc = ablate(repo_root, *command[3:])
    assert proc.returncode == 0, output(proc)
    assert (proc.stdout + proc.stderr).count("done already, skipped") == 2, output(proc)  # seed 0 of both arms
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert [len(a["seeds"]) for a in summary["arms"]] == [3, 3]
    assert not any("min_seeds" in r for r in summary["decision"]["reasons"]), summary["explanation"]
