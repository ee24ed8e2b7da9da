"""W&B runs of the cells (offline; run files read back with wandb's own record format): identity,
curves and summaries, the same run after an interruption, WANDB_DIR, and W&B failures that never
cost a cell."""

from __future__ import annotations

import json
import socket

import pytest
import wandb
from conftest import StopAfter
from wandb_records import offline_runs

from ablate.config import cell_problems
from ablate.review import tracking
from ablate.review.tracking import STEP_METRIC, cell_identity, wandb_run_id
from ablate.sweep.run import run_cell
from ablate.train.trainer import Interrupted

SWEEP_AXES = {"objective": ["dpo", "simpo"], "lora.r": ["8", "16"], "seed": ["0", "1"]}
CELL = ["objective=dpo", "lora.r=16", "seed=1"]
SECRET = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key


def write_sweep_json(sweep_dir, axes=SWEEP_AXES):
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"axes": axes}))


def files_containing(root, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_identity_names_the_arm_as_the_collector_does(compose_cfg, tmp_path):
    write_sweep_json(tmp_path, SWEEP_AXES | {"trainer.max_steps": ["6", "8"]})
    cfg = compose_cfg([*CELL, "trainer.max_steps=6"])
    identity = cell_identity(cfg, tmp_path, [*CELL, "trainer.max_steps=6", "logger=wandb"])
    assert identity == {
        "arm": "objective=dpo lora.r=16 trainer.max_steps=6",  # ablate.sweepdir.layout.arm_label; seed excluded
        "name": "dpo r=16 max_steps=6 seed=1",
        "tags": ["objective=dpo", "lora.r=16", "seed=1", "trainer.max_steps=6"],  # swept values only
    }


def test_identity_of_a_single_run_without_sweep_json(compose_cfg, tmp_path):
    cfg = compose_cfg(["objective=simpo", "seed=3"])
    assert cell_identity(cfg, tmp_path, ["objective=simpo", "seed=3"]) == {
        "arm": "(defaults)", "name": "simpo seed=3", "tags": []}


def test_a_combination_is_tagged_with_its_terms(compose_cfg, tmp_path):
    cfg = compose_cfg(["objective=mpo", "seed=0"])
    identity = cell_identity(cfg, tmp_path, ["objective=mpo", "seed=0"])
    assert identity["tags"] == ["term=dpo:0.8", "term=bco_pair:0.2", "term=sft:1"]


def test_logger_mode_and_timeout_are_range_checked(compose_cfg):
    problems = cell_problems(compose_cfg(["logger=wandb", "logger.mode=ofline", "logger.init_timeout=0"]))
    assert any(p.startswith("logger.mode = ofline") for p in problems), problems
    assert any(p.startswith("logger.init_timeout = 0") for p in problems), problems
    assert cell_problems(compose_cfg(["logger=wandb", "logger.mode=offline"])) == []


@pytest.mark.slow
def test_cell_run_identity_curves_and_resume(compose_cfg, tiny_overrides, tmp_path, monkeypatch):
    """One cell, interrupted at step 3 and resumed: two run files of ONE run, W&B_DIR honoured."""
    wandb_dir = tmp_path / "wandb_dir"
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    sweep_dir = tmp_path / "sweep"
    write_sweep_json(sweep_dir)
    overrides = [*CELL, *tiny_overrides]
    cfg = compose_cfg([*overrides, "logger=wandb", "logger.mode=offline", "logger.project=ablate-test",
                       "logger.tags=[mine]"])
    with pytest.raises(Interrupted):
        run_cell(cfg, sweep_dir, overrides, stop_requested=StopAfter(3))
    metrics = run_cell(cfg, sweep_dir, overrides)  # resumes from the checkpoint

    cell_dir = next((sweep_dir / "cells").iterdir())
    status = json.loads((cell_dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2 and status["checkpoint_step"] == 3
    assert not (cell_dir / "wandb").exists()  # WANDB_DIR decides where run files go
    runs = offline_runs(wandb_dir)
    assert len(runs) == 2, runs  # one W&B process per attempt ...
    expected = wandb_run_id(sweep_dir, cell_dir.name)
    assert {run.run_id for _, run in runs} == {expected}  # ... both logging to the same run
    for _, run in runs:
        assert (run.project, run.group, run.job_type) == ("ablate-test", "sweep", "dpo")
        assert run.name == "dpo r=16 seed=1"
        assert run.tags == ["mine", "objective=dpo", "lora.r=16", "seed=1"]
        assert run.config["arm"] == "objective=dpo lora.r=16" and run.config["cell_id"] == cell_dir.name
        assert run.config["lora"]["r"] == 16 and run.config["objective"]["name"] == "dpo"  # the resolved config
    first, second = (run for _, run in runs)
    steps = [[row[STEP_METRIC] for row in run.history] for run in (first, second)]
    assert steps[0][0] == 0 and max(steps[0]) <= 3 and steps[1][-1] == 6 and min(steps[1]) > 3, steps
    logged = {key for run in (first, second) for row in run.history for key in row}
    assert {"loss", "rewards/margins", "grad_norm", "learning_rate", "eval_loss", "heldout/avglogp_accuracy",
            "heldout/clean/avglogp_accuracy", STEP_METRIC} <= logged
    assert all(row["_step"] == row[STEP_METRIC] for row in second.history)  # W&B's step is the training step
    defined = {m.glob_name or m.name: m.step_metric for m in second.metrics}
    assert defined["heldout/*"] == defined["rewards/*"] == defined["loss"] == STEP_METRIC
    # the summary holds plain final values (what a bar chart of the arms plots), from metrics.json
    assert second.summary["heldout/avglogp_accuracy"] == metrics["heldout/avglogp_accuracy"]
    assert second.exit_code == 0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def unreachable_wandb_server():
    """Online mode, a (fake) API key, and a W&B server URL where nothing listens."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking, "_server_unreachable", [])
        mp.delenv("WANDB_DIR")  # run files in the cell directory
        mp.setenv("WANDB_MODE", "online")
        mp.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
        mp.setenv("WANDB_API_KEY", SECRET)
        mp.setenv("HF_TOKEN", "hf_" + SECRET[:30])
        wandb.teardown()  # wandb reads the environment once per process, at its first run
        yield
    wandb.teardown()  # the next test's runs read the restored environment


@pytest.mark.slow
def test_online_failure_is_a_warning_the_cell_finishes_offline_and_no_secret_is_written(
        compose_cfg, tiny_overrides, tmp_path, unreachable_wandb_server, caplog):
    cfg = compose_cfg([*tiny_overrides, "logger=wandb", "logger.init_timeout=3", "trainer.max_steps=3"])
    metrics = run_cell(cfg, tmp_path)

    cell_dir = next((tmp_path / "cells").iterdir())
    assert json.loads((cell_dir / "status.json").read_text())["state"] == "done"
    assert "could not start online" in caplog.text and "logging offline instead" in caplog.text
    runs = offline_runs(cell_dir / "wandb")  # the offline fallback: everything is there for `wandb sync`
    assert len(runs) == 1
    run = runs[0][1]
    assert run.run_id == wandb_run_id(tmp_path, cell_dir.name)
    assert run.summary["heldout/avglogp_accuracy"] == pytest.approx(metrics["heldout/avglogp_accuracy"])
    assert tracking._server_unreachable  # the next cell of this process goes offline at once
    for secret in (SECRET, "hf_" + SECRET[:30]):
        assert files_containing(tmp_path, secret) == []
