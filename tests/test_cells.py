"""Cells on disk (ablate/sweepdir/): content-addressed ids, atomic writes, typed status.json, "finished"."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from ablate.sweepdir.atomic import atomic_write_json
from ablate.sweepdir.ids import cell_id, semantic_config
from ablate.sweepdir.layout import (
    CellStatus,
    SweepRecord,
    arm_axes,
    arm_label,
    grid_axes,
    is_done,
    override_values,
    read_status,
    read_sweep,
    update_status,
    updating_sweep,
)


# ----------------------------------------------------------------------------------- cell id
def test_cell_id_is_12_hex_and_stable(compose_cfg):
    first = cell_id(compose_cfg(["objective=simpo", "lora.r=16"]))
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert cell_id(compose_cfg(["objective=simpo", "lora.r=16"])) == first
    # override order is not part of the config
    assert cell_id(compose_cfg(["lora.r=16", "objective=simpo"])) == first


@pytest.mark.parametrize(
    "override", ["seed=1", "objective.beta=0.2", "lora.r=16", "data.n_train=100", "objective=simpo", "trainer.lr=1e-3"]
)
def test_cell_id_changes_with_semantic_config(compose_cfg, override):
    assert cell_id(compose_cfg([override])) != cell_id(compose_cfg([]))


@pytest.mark.parametrize(
    "overrides",
    [
        ["device=cpu"],
        ["device=cuda:1"],
        ["threads=2"],
        ["logger.kind=wandb"],
        ["select.alpha=0.01"],  # the collector's decision rule: changing it must not retrain anything
        # how a cell computes (speed, memory), not what: a memory setting must not retrain a sweep
        ["engine.head_chunk=64", "engine.eval_batch_tokens=512", "engine.gradient_checkpointing=true",
         "engine.autocast=bf16", "engine.attn_implementation=eager"],
        ["hydra.run.dir=/somewhere/else", "hydra.sweep.dir=/another/sweep", "hydra.sweep.subdir=cells/x"],
    ],
)
def test_cell_id_ignores_device_threads_logger_select_and_paths(compose_cfg, overrides):
    assert cell_id(compose_cfg(overrides)) == cell_id(compose_cfg([]))


def test_cell_id_ignores_a_resolved_hydra_node(compose_cfg):
    """A config that still carries (resolved) Hydra paths hashes like the task config."""
    base = compose_cfg([])
    ids = set()
    for where in ("/a", "/b"):
        cfg = base.copy()
        with open_dict(cfg):
            cfg.hydra = OmegaConf.create({"run": {"dir": where}, "sweep": {"dir": where, "subdir": f"{where}/cells"}})
        ids.add(cell_id(cfg))
    assert ids == {cell_id(base)}


# ------------------------------------------------------------------------------ atomic files
def test_atomic_write_json_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "cell" / "metrics.json"  # the parent is created
    atomic_write_json(path, {"a": 1, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 1, "b": [1, 2]}
    atomic_write_json(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}  # replaced, not merged
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_atomic_write_json_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})  # not JSON-serialisable: fails before any write
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ------------------------------------------------------------------------------------ status
def test_update_status_merges_fields(tmp_path):
    assert read_status(tmp_path) == CellStatus()
    update_status(tmp_path, state="running", attempts=1, error=None)
    status = update_status(tmp_path, state="failed", error="boom")
    on_disk = read_status(tmp_path)
    assert on_disk == status
    assert on_disk.state == "failed"
    assert on_disk.error == "boom"
    assert on_disk.attempts == 1  # kept from the first update
    assert on_disk.updated_at
    raw = json.loads((tmp_path / "status.json").read_text())
    assert raw["format"] == CellStatus.FORMAT and raw["state"] == "failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_update_status_refuses_unknown_fields_naming_the_valid_ones(tmp_path):
    with pytest.raises(TypeError, match=r"no field\(s\) stat; valid: state, cell_id"):
        update_status(tmp_path, stat="done")
    assert not (tmp_path / "status.json").exists()


def test_read_status_keeps_known_fields_and_ignores_new_ones(tmp_path):
    """A status.json from a newer ablate (an extra key) or an older one (no `format`) still reads."""
    (tmp_path / "status.json").write_text(json.dumps({"state": "done", "attempts": 2, "added_later": 1}))
    assert read_status(tmp_path) == CellStatus(state="done", attempts=2)
    update_status(tmp_path, attempts=3)  # a key this version does not know is written back untouched
    assert json.loads((tmp_path / "status.json").read_text())["added_later"] == 1


def test_read_status_tolerates_corrupt_file(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) == CellStatus()
    (tmp_path / "status.json").write_text("[1, 2]")
    assert read_status(tmp_path) == CellStatus()


def test_sweep_record_round_trips_and_keeps_earlier_cells(tmp_path):
    with updating_sweep(tmp_path) as record:
        record.cells = [{"cell_id": "a" * 12, "overrides": ["seed=0"]}]
        record.jobs = {"a" * 12: "7_0"}
    first = read_sweep(tmp_path)
    assert first.created_at and first.format == SweepRecord.FORMAT and first.jobs == {"a" * 12: "7_0"}
    with updating_sweep(tmp_path) as record:
        record.cells.append({"cell_id": "b" * 12, "overrides": ["seed=1"]})
    again = read_sweep(tmp_path)
    assert again.overrides_of() == {"a" * 12: ["seed=0"], "b" * 12: ["seed=1"]}
    assert again.created_at == first.created_at
    assert "slurm" not in json.loads((tmp_path / "sweep.json").read_text())  # unset fields are not written


def test_override_parsing_axes_and_arm_labels():
    cells = [["seed=0", "objective=dpo", "lora.r=8"], ["seed=1", "objective=dpo", "+lora.r=16"],
             ["seed=0", "objective=simpo", "lora.r=8", "hydra.sweep.dir=/x"]]
    assert override_values(cells[1]) == {"seed": "1", "objective": "dpo", "lora.r": "16"}
    axes = grid_axes(cells)
    assert axes == {"seed": ["0", "1"], "objective": ["dpo", "simpo"], "lora.r": ["8", "16"]}
    assert arm_axes(axes) == {"objective": ["dpo", "simpo"], "lora.r": ["8", "16"]}
    assert arm_label(override_values(cells[1]), arm_axes(axes)) == "objective=dpo lora.r=16"
    assert arm_label({}, {}) == "(defaults)"


def test_is_done_needs_metrics_and_state_done(tmp_path):
    assert not is_done(tmp_path)
    update_status(tmp_path, state="done")
    assert not is_done(tmp_path)  # state done but no metrics.json
    atomic_write_json(tmp_path / "metrics.json", {"heldout/logratio_accuracy": float("nan")})
    assert not is_done(tmp_path)  # a non-finite held-out value is no result
    atomic_write_json(tmp_path / "metrics.json", {"heldout/logratio_accuracy": 1.0})
    assert not is_done(tmp_path)  # and its held-out table, readable (tests/test_liveness.py: damaged results)
    pd.DataFrame({"pair_id": ["p0"]}).to_parquet(tmp_path / "heldout_pairs.parquet")
    assert is_done(tmp_path)
    update_status(tmp_path, state="running")  # e.g. a rerun started
    assert not is_done(tmp_path)
    (tmp_path / "status.json").unlink()
    assert not is_done(tmp_path)  # metrics.json alone is not enough


def test_split_keys_change_the_cell_id_only_when_the_split_is_on(compose_cfg):
    """Sweeps on disk from before the validation/test split keep their cell ids."""
    plain = OmegaConf.to_container(compose_cfg([]), resolve=True)
    assert "validation_pairs" not in json.dumps(semantic_config(plain))
    assert cell_id(compose_cfg(["data.split_seed=5"])) == cell_id(compose_cfg([]))
    on = cell_id(compose_cfg(["data.validation_pairs=100"]))
    assert on != cell_id(compose_cfg([]))
    assert cell_id(compose_cfg(["data.validation_pairs=100", "data.split_seed=5"])) != on


def test_group_by_length_changes_the_cell_id_only_when_on(compose_cfg):
    """Sweeps on disk from before trainer.group_by_length keep their cell ids: off, the key is not hashed."""
    plain = OmegaConf.to_container(compose_cfg([]), resolve=True)
    before_the_key = json.loads(json.dumps(plain))
    del before_the_key["trainer"]["group_by_length"]
    assert cell_id(plain) == cell_id(before_the_key)
    assert cell_id(compose_cfg(["trainer.group_by_length=false"])) == cell_id(plain)
    assert cell_id(compose_cfg(["trainer.group_by_length=true"])) != cell_id(plain)
