"""Tuned comparisons: search spaces per objective with an equal budget (ablate/sweep/search_space.py, the sweeper),
selection on validation pairs and the decision on test pairs (ablate/collect/tuning.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from ablate.sweep.search_space import TuningError, check_spaces, expand, settings
from ablate.train.objectives import OBJECTIVES

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


def run_tuned_sweep(repo_root, tmp_path, spaces: str, *overrides: str, timeout: int = 300):
    """`python -m ablate -m` on a sweep file holding `spaces` (YAML under hydra.sweeper.tune), from a
    --config-dir of its own; (process, sweep dir)."""
    (tmp_path / "conf" / "tsweeps").mkdir(parents=True)
    (tmp_path / "conf" / "tsweeps" / "sweep.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    tune:\n" + spaces)
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "--config-dir", str(tmp_path / "conf"),
                           "+tsweeps=sweep", *overrides, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    return proc, sweep_dir


def test_the_cli_refuses_an_unequal_budget_before_anything_runs(repo_root, tmp_path):
    proc, sweep_dir = run_tuned_sweep(
        repo_root, tmp_path, "      dpo:\n        objective.beta: [0.05, 0.1]\n"
        "      simpo:\n        objective.beta: [2.0, 5.0]\n        objective.gamma: [1.0, 2.0]\n", "seed=0,1")
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


# ------------------------------------------------------------------- selection and decision
# A synthetic tuned sweep, 100 held-out pairs (50 clean, 50 verbose_rejected): every 5th pair and the
# next one are validation (40 pairs), the other 60 are test. A setting is correct on the first v
# validation pairs and the first t test pairs (+ seed 1, - seed 2: the ordering holds in every seed).
SEEDS = (0, 1, 2)
NOISE = {0: 0, 1: 1, 2: -1}
TUNE = {"dpo": {"objective.beta": ["0.05", "0.1", "0.3"]}, "simpo": {"objective.beta": ["2", "5", "10"]}}
DEFAULTS = {"dpo": {"objective.beta": "0.1"}, "simpo": {"objective.beta": "2.0"}}  # 2.0 is the space's "2"
# (validation correct of 40, test correct of 60) per setting: DPO is best at 0.3, SimPO at 5 (validation);
# on test the tuned DPO beats the tuned SimPO, while at the defaults (0.1 vs 2) SimPO wins.
KNOWN = {("dpo", "0.05"): (20, 25), ("dpo", "0.1"): (26, 20), ("dpo", "0.3"): (32, 50),
         ("simpo", "2"): (24, 45), ("simpo", "5"): (30, 30), ("simpo", "10"): (28, 35)}


def split_layout(n: int = 100) -> list[str]:
    return ["validation" if i % 5 < 2 else "test" for i in range(n)]


def tuned_pairs(validation_correct: int, test_correct: int) -> pd.DataFrame:
    from sweep_fixtures import SLICES, correctness_table

    splits = split_layout()
    slices = [SLICES[i // 50] for i in range(100)]
    rank = {"validation": 0, "test": 0}
    correct = []
    for split in splits:
        limit = validation_correct if split == "validation" else test_correct
        correct.append(rank[split] < limit)
        rank[split] += 1
    table = correctness_table(correct, slices)
    table["split"] = splits
    return table


def tuned_sweep(sweep_dir: Path, known=KNOWN, skip=()) -> Path:
    from sweep_fixtures import Cell, write_sweep

    cells = []
    for (objective, beta), (v, t) in known.items():
        for seed in SEEDS:
            overrides = [f"objective={objective}", f"objective.beta={beta}", f"seed={seed}"]
            done = (objective, beta) not in skip
            cells.append(Cell(overrides, tuned_pairs(v + NOISE[seed], t + NOISE[seed]) if done else None,
                              state="done" if done else "pending"))
    write_sweep(sweep_dir, cells)
    (sweep_dir / "tuning.json").write_text(json.dumps({"spaces": TUNE, "defaults": DEFAULTS}))
    return sweep_dir


def collect_tuning(sweep_dir: Path) -> dict:
    from ablate.collect.collector import collect

    return collect(sweep_dir, plots=False)["tuning"]


def test_selection_finds_the_known_best_setting_and_decides_on_test_pairs(tmp_path):
    tuning = collect_tuning(tuned_sweep(tmp_path / "s"))
    assert tuning["split"]["validation"]["pairs"] == 40 and tuning["split"]["test"]["pairs"] == 60
    (group,) = tuning["groups"]
    selection = group["selection"]
    assert selection["dpo"]["selected"] == {"objective.beta": "0.3"}
    assert selection["simpo"]["selected"] == {"objective.beta": "5"}
    assert selection["simpo"]["default_in_space"]  # "2.0" from the config is the space's "2"
    means = {r["setting"]["objective.beta"]: r["mean"] for r in selection["dpo"]["table"]}
    assert means == pytest.approx({"0.05": 20 / 40, "0.1": 26 / 40, "0.3": 32 / 40})  # validation pairs only
    tuned, defaults = group["tuned"]["all"], group["at_defaults"]["all"]
    # selected on these runs: the rule's conditions hold, but the claim is exploratory (confirmed by `ablate confirm`)
    assert tuned["verdict"] == "exploratory" and tuned["lead"] == "dpo" and tuned["winner"] is None
    assert not tuned["decisive"] and "ablate confirm" in tuned["exploratory"]
    assert tuned["point"]["objective=dpo objective.beta=0.3"] == pytest.approx(50 / 60)  # test pairs only
    assert defaults["verdict"] == "exploratory" and defaults["lead"] == "simpo"
    assert defaults["point"]["objective=simpo objective.beta=2"] == pytest.approx(45 / 60)
    # 0.3 is the largest beta searched for DPO: the optimum may lie above it; SimPO's 5 is inside its space
    assert tuning["warnings"] == ["dpo: objective.beta = 0.3 is the largest value searched (0.05, 0.1, 0.3); "
                                  "its optimum may lie above it"]


def test_selection_never_reads_test_pairs(tmp_path):
    """Garbage on the test pairs (the worst validation setting of each objective made perfect there, the
    others all wrong) moves the test decision but not a single selection number."""
    import pyarrow.parquet as pq

    sweep_dir = tuned_sweep(tmp_path / "s")
    before = collect_tuning(sweep_dir)["groups"][0]
    worst = {"objective.beta=0.05", "objective.beta=2"}
    for cell_dir in (sweep_dir / "cells").iterdir():
        overrides = set(json.loads((cell_dir / "status.json").read_text())["overrides"])
        table = pq.read_table(cell_dir / "heldout_pairs.parquet").to_pandas()
        test = table.split == "test"
        sign = 1.0 if overrides & worst else -1.0
        table.loc[test, "chosen_logp"] = table.loc[test, "chosen_tokens"] * (-2.0 + sign * 37.5)
        table.loc[test, "rejected_logp"] = table.loc[test, "rejected_tokens"] * (-2.0 - sign * 37.5)
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), cell_dir / "heldout_pairs.parquet")
    after = collect_tuning(sweep_dir)["groups"][0]
    assert after["selection"] == before["selection"]
    # the decisions did read the garbage: the selected arms are wrong on every test pair, SimPO's default right
    assert set(after["tuned"]["all"]["point"].values()) == {0.0}
    assert after["at_defaults"]["all"]["point"]["objective=simpo objective.beta=2"] == pytest.approx(1.0)
    assert after["tuned"]["all"]["verdict"] != "decisive"


def test_ties_go_to_the_default_then_to_the_simpler_then_to_the_first_setting():
    from ablate.collect.tuning import select_setting

    order = [("0.05", "1"), ("0.1", "1"), ("0.1", "2"), ("0.3", "2")]
    x = {s: ([0, 1], np.array([[1.0, 0.0], [1.0, 0.0]])) for s in order}
    w = np.array([0.5, 0.5])
    assert select_setting(x, w, order, default=("0.1", "1"))["selected"] == ("0.1", "1")
    assert select_setting(x, w, order, default=("0.3", "3"))["selected"] == ("0.3", "2")  # the only one key off
    assert select_setting(x, w, order, default=None)["selected"] == ("0.05", "1")
    x[("0.1", "2")] = ([0, 1], np.array([[1.0, 1.0], [1.0, 0.0]]))  # strictly best: no tie to break
    result = select_setting(x, w, order, default=("0.1", "1"))
    assert result["selected"] == ("0.1", "2") and result["tied"] == []


def test_a_setting_without_finished_seeds_leaves_the_tuned_verdict_undetermined(tmp_path):
    tuning = collect_tuning(tuned_sweep(tmp_path / "s", skip={("simpo", "10")}))
    group = tuning["groups"][0]
    assert group["tuned"]["all"]["verdict"] == "undetermined"
    assert any("simpo: no usable finished seeds in 1 of 3 settings" in r for r in group["tuned"]["all"]["reasons"])
    assert group["at_defaults"]["all"]["lead"] == "simpo"  # the default arms are all there


def test_a_sweep_without_a_split_says_so(tmp_path):
    from sweep_fixtures import GOLDEN_SIZES, golden_sweep

    sweep_dir = tmp_path / "s"
    golden_sweep(sweep_dir)
    assert GOLDEN_SIZES
    (sweep_dir / "tuning.json").write_text(json.dumps({"spaces": {"dpo": {"lora.r": ["8", "16"]}}, "defaults": {}}))
    tuning = collect_tuning(sweep_dir)
    assert tuning["groups"] == [] and "no validation/test split" in tuning["reasons"][0]


def test_report_shows_selection_both_decisions_split_sizes_edges_and_sensitivity(tmp_path):
    from ablate.collect.collector import collect

    sweep_dir = tuned_sweep(tmp_path / "s")
    collect(sweep_dir)
    report = (sweep_dir / "report" / "report.md").read_text()
    section = report[report.index("## Tuned comparison"):report.index("## Decision")]
    assert "40 validation pairs (clean 20, verbose_rejected 20) and 60 test pairs (clean 30, verbose_rejected 30)" \
        in section
    assert "The test pairs played no part in selection" in section
    assert "| dpo | objective.beta=0.3 | objective.beta=0.1 | 0.800 ± 0.025 (3 seeds) |" in section
    lead = "exploratory lead {} (confirm it on fresh seeds: ablate confirm)"
    assert f"Tuned, on test pairs: {lead.format('dpo')}" in section
    assert f"| all pairs | {lead.format('dpo')};" in section and f"| {lead.format('simpo')};" in section
    assert "objective.beta = 0.3 is the largest value searched" in section
    assert (sweep_dir / "report" / "plots" / "sensitivity.png").stat().st_size > 10_000
    assert "Sensitivity: validation avglogp_accuracy" in (sweep_dir / "report" / "report.html").read_text()


@pytest.mark.parametrize("damage", ["garbled tuning.json", "wrong shape", "truncated parquet", "no split column"])
def test_a_damaged_tuned_sweep_is_reported_never_a_crash(tmp_path, damage):
    import pyarrow.parquet as pq

    from ablate.collect.collector import collect

    sweep_dir = tuned_sweep(tmp_path / "s")
    cell = sorted((sweep_dir / "cells").iterdir())[0]
    if damage == "garbled tuning.json":
        (sweep_dir / "tuning.json").write_bytes(b'{"spaces": {"dpo": [\xff')
    elif damage == "wrong shape":
        (sweep_dir / "tuning.json").write_text(json.dumps({"spaces": {"dpo": {"objective.beta": [0.1]}}}))
    elif damage == "truncated parquet":
        data = (cell / "heldout_pairs.parquet").read_bytes()
        (cell / "heldout_pairs.parquet").write_bytes(data[: len(data) // 2])
    else:
        table = pq.read_table(cell / "heldout_pairs.parquet").drop(["split"])
        pq.write_table(table, cell / "heldout_pairs.parquet")
    summary = collect(sweep_dir)
    assert not any("internal error" in p["problem"] for p in summary["problems"]), summary["problems"]
    assert (sweep_dir / "report" / "report.md").exists()
    if damage in ("garbled tuning.json", "wrong shape"):
        assert "tuning" not in summary and any("tuning.json" in p["file"] for p in summary["problems"])
    elif damage == "truncated parquet":  # a setting of one objective lacks evidence: its best is not known
        assert summary["tuning"]["groups"][0]["tuned"]["all"]["verdict"] == "undetermined"
    else:  # the split is the sweep's: the other cells record it, this cell's pairs are the same pairs
        assert summary["tuning"]["groups"][0]["tuned"]["all"]["lead"] == "dpo"


# --------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_shrunken_fair_sweep_end_to_end(repo_root, tmp_path):
    """A fair sweep through the real command line, shrunk (tiny cells, 2 settings x 1 seed per objective):
    tuning.json, the split column in every cell, and the tuned section in the report."""
    from conftest import TINY

    proc, sweep_dir = run_tuned_sweep(
        repo_root, tmp_path, "      dpo:\n        objective.beta: [0.1, 0.3]\n"
        "      simpo:\n        objective.beta: [2.0, 5.0]\n", "data.validation_pairs=12", "seed=0",
        "hydra.sweeper.confirm=3", *TINY, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tuning = json.loads((sweep_dir / "tuning.json").read_text())
    assert tuning["defaults"] == {"dpo": {"objective.beta": "0.1"}, "simpo": {"objective.beta": "2.0"}}
    assert tuning["budget"]["dpo"] == tuning["budget"]["simpo"] == {"settings": 2, "seeds": 1, "cells": 2}
    import pyarrow.parquet as pq

    cells = list((sweep_dir / "cells").iterdir())
    assert len(cells) == 4
    for cell in cells:
        splits = pq.read_table(cell / "heldout_pairs.parquet").column("split").to_pylist()
        assert splits.count("validation") == 12 and splits.count("test") == 32 - 12
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    (group,) = summary["tuning"]["groups"]
    assert {o: e["selected"] is not None for o, e in group["selection"].items()} == {"dpo": True, "simpo": True}
    assert group["at_defaults"]["all"]["arms"] == {"dpo": "objective=dpo objective.beta=0.1",
                                                   "simpo": "objective=simpo objective.beta=2.0"}
    assert "tuned (all test pairs)" in proc.stdout + proc.stderr
    assert not [p for p in summary["problems"] if "internal error" in p["problem"]], summary["problems"]
    assert "## Tuned comparison" in (sweep_dir / "report" / "report.md").read_text()
    # a tuning sweep claims nothing: its verdicts are exploratory until confirmed on fresh seeds
    assert summary["decisive"] is False and summary["decision"]["exploratory"].startswith("a tuning sweep")
    assert group["tuned"]["all"]["decisive"] is False

    # the confirmation stage ran as the next local step (hydra.sweeper.confirm=3): the selected settings, 3 fresh seeds
    confirm_dir = sweep_dir.with_name("sweep_confirm")
    picked = {o: e["selected"] for o, e in group["selection"].items()}
    assert f"on fresh seeds 1,2,3 in {confirm_dir}" in proc.stdout
    # `ablate confirm` gives the same command (here printed, not run: the confirmation exists already)
    printed = subprocess.run([sys.executable, "-m", "ablate.cli", "confirm", str(sweep_dir), "data.split_seed=7",
                              "--seeds", "3", "--print"], cwd=repo_root, env=os.environ.copy(), capture_output=True,
                             text=True, timeout=120)
    assert printed.returncode == 0 and f"data.split_seed=7 hydra.sweep.dir={confirm_dir}" in printed.stdout
    record = json.loads((confirm_dir / "tuning.json").read_text())
    assert record["confirms"] == str(sweep_dir.resolve())
    assert record["spaces"] == {o: {k: [v] for k, v in s.items()} for o, s in picked.items()}
    assert record["budget"]["dpo"] == {"settings": 1, "seeds": 3, "cells": 3}
    confirmed = json.loads((confirm_dir / "report" / "summary.json").read_text())
    assert "tuning" not in confirmed  # nothing left to select
    assert confirmed["decision"]["exploratory"] is None and confirmed["decision"]["look"]["look"] == 1
    assert confirmed["explanation"].startswith(f"Confirmation of {sweep_dir.resolve()}")
    assert confirmed["decision"]["pairs"] == 32 - 12  # the test pairs only
    assert sorted(a["seeds"] == [1, 2, 3] for a in confirmed["arms"]) == [True, True]

    # the same confirmation as a race (ablate confirm --race): seeds from 1 (past the tuning sweep's), each look on the
    # test pairs, the selected settings as its arms
    confirm_dir.rename(tmp_path / "fixed_confirm")
    raced = subprocess.run([sys.executable, "-m", "ablate.cli", "confirm", str(sweep_dir), "--race", "--seeds", "4"],
                           cwd=repo_root, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    assert raced.returncode == 0, raced.stdout[-3000:] + raced.stderr[-3000:]
    assert f"on a race from seed 1 in {confirm_dir}" in raced.stdout
    race = json.loads((confirm_dir / "race.json").read_text())
    assert race["settings"]["first_seed"] == 1 and race["settings"]["max_seeds"] == 4
    assert sorted(a[:2] for a in race["arms"]) == sorted(  # each objective at its selected setting, then the rest
        [f"objective={o}", *(f"{k}={v}" for k, v in s.items())] for o, s in picked.items())
    assert race["rounds"][0]["new_cells"][0].endswith("seed=1") and race["rounds"][0]["pairs"] == 32 - 12
    confirmed = json.loads((confirm_dir / "report" / "summary.json").read_text())
    assert confirmed["race"]["stop"] == race["rounds"][-1]["stop"]
    assert f"Confirmation of {sweep_dir.resolve()}" in confirmed["explanation"]
    assert json.loads((confirm_dir / "tuning.json").read_text())["confirms"] == str(sweep_dir.resolve())


# ------------------------------------------------------------------------------- default search spaces
NO_DEFAULT_SPACE = {"sft", "combo", "mpo", "rpo"}  # nothing of their own to tune (sft), or terms (combinations)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - NO_DEFAULT_SPACE))
def test_every_objective_has_a_default_space_of_six_valid_settings(name):
    """conf/objective_tuning/spaces/<name>.yaml: the objective's own parameters, 6 settings (equal budgets),
    every value within the parameter's range rule."""
    from ablate.config import objective_rule
    from ablate.sweep.search_space import default_space

    space = default_space(name)
    assert len(settings(check_spaces({name: space})[name])) == 6
    for key, values in space.items():
        param = key.removeprefix("objective.")
        assert key.startswith("objective.") and param in OBJECTIVES[name].hyperparameters, key
        ok, wanted = objective_rule(name, param)
        assert all(ok(v) for v in values), f"{name}.{param}: {values} not all {wanted}"


def test_a_list_of_objectives_takes_their_default_spaces():
    from ablate.sweep.search_space import default_space

    spaces = check_spaces(["dpo", "apo_zero"])
    assert spaces == check_spaces({"dpo": default_space("dpo"), "apo_zero": default_space("apo_zero")})
    assert check_spaces({"dpo": "default", "simpo": {"objective.beta": [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]}})["dpo"] == \
        spaces["dpo"]
    jobs, budget = expand(spaces, {"seed": ["seed=0", "seed=1"]})
    assert budget["dpo"] == budget["apo_zero"] == {"settings": 6, "seeds": 2, "cells": 12} and len(jobs) == 24
    with pytest.raises(TuningError, match="sft has no default search space"):
        check_spaces(["dpo", "sft"])
