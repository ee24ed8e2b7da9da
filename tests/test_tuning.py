"""Tuned comparisons: search spaces per objective with an equal budget (ablate/search_space.py, the sweeper),
selection on validation pairs and the decision on test pairs (ablate/collect/tuning.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.search_space import TuningError, check_spaces, expand, settings

SPACES = {"dpo": {"objective.beta": [0.05, 0.1, 0.3], "trainer.lr": [0.002, 0.004]},
          "simpo": {"objective.beta": [2.0, 5.0, 10.0], "trainer.lr": [0.002, 0.004]}}


# ------------------------------------------------------------------------------ search spaces
def test_spaces_expand_into_every_setting_times_the_other_keys():
    spaces = check_spaces(SPACES)
    swept = {"seed": ["seed=0", "seed=1", "seed=2"], "lora.r": ["lora.r=8", "lora.r=16"], "+x": ["+x=1"]}
    jobs, budget = expand(spaces, swept)
    assert budget == {o: {"settings": 6, "seeds": 3, "cells": 36} for o in ("dpo", "simpo")}
    assert len(jobs) == 72 and len({tuple(j) for j in jobs}) == 72
    assert ["objective=simpo", "objective.beta=10.0", "trainer.lr=0.002", "seed=1", "lora.r=16", "+x=1"] in jobs
    assert not any("objective=dpo" in j and "objective.beta=2.0" in j for j in jobs)  # own space only
    assert settings(spaces["dpo"])[:2] == [{"objective.beta": "0.05", "trainer.lr": "0.002"},
                                           {"objective.beta": "0.05", "trainer.lr": "0.004"}]


def test_unequal_budget_is_refused_with_the_counts():
    spaces = check_spaces({"dpo": {"objective.beta": [0.1, 0.3]},
                           "simpo": {"objective.beta": [2.0, 5.0], "objective.gamma": [0.5, 1.0]}})
    with pytest.raises(TuningError, match=r"dpo 2 settings x 3 seeds = 6 runs, simpo 4 settings x 3 seeds = 12 runs"):
        expand(spaces, {"seed": ["seed=0", "seed=1", "seed=2"]})


@pytest.mark.parametrize(("tune", "swept", "message"), [
    ({"dpo": {"seed": [0, 1]}}, {}, r"tune\.dpo\.seed: seed cannot be tuned"),
    ({"dpo": {"objective.beta": []}}, {}, r"tune\.dpo\.objective\.beta: must be a non-empty list"),
    ({"dpo": {"objective.beta": 0.1}}, {}, r"must be a non-empty list"),
    ({"dpo": {"objective.beta": [0.1, 0.1]}}, {}, r"listed twice"),
    ({"dpo": []}, {}, r"tune\.dpo: must map config keys"),
    ({"dpo": {"trainer.lr": [1.0, 2.0]}}, {"trainer.lr": ["trainer.lr=0.1"]}, r"tune\.dpo\.trainer\.lr: also set"),
    ({"dpo": {"trainer.lr": [1.0]}, "simpo": {"trainer.lr": [1.0]}},
     {"objective": ["objective=dpo", "objective=ipo"]}, r"objective=dpo,ipo"),
])
def test_bad_search_spaces_name_the_key(tune, swept, message):
    with pytest.raises(TuningError, match=message):
        expand(check_spaces(tune), swept)


def test_the_cli_refuses_an_unequal_budget_before_anything_runs(repo_root, tmp_path):
    (tmp_path / "conf" / "tsweeps").mkdir(parents=True)
    (tmp_path / "conf" / "tsweeps" / "unequal.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    tune:\n      dpo:\n        objective.beta: [0.05, 0.1]\n"
        "      simpo:\n        objective.beta: [2.0, 5.0]\n        objective.gamma: [1.0, 2.0]\n")
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "--config-dir", str(tmp_path / "conf"),
                           "+tsweeps=unequal", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "dpo 2 settings x 2 seeds = 4 runs, simpo 4 settings x 2 seeds = 8 runs" in proc.stderr
    assert not sweep_dir.exists()


@pytest.mark.parametrize("name", ["fair_dpo_vs_simpo", "fair_dpo_vs_simpo_qwen"])
def test_saved_fair_sweeps_have_equal_budgets_and_state_their_command(repo_root, name):
    import yaml

    path = Path(repo_root) / "sweeps" / f"{name}.yaml"
    text = path.read_text()
    assert f"python -m ablate -m +sweeps={name}" in text
    config = yaml.safe_load(text)
    assert config["data"]["validation_pairs"] >= 1
    _, budget = expand(check_spaces(config["hydra"]["sweeper"]["tune"]), {"seed": ["seed=0", "seed=1", "seed=2"]})
    assert len({b["cells"] for b in budget.values()}) == 1
