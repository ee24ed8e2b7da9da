"""Cells on disk (ablate/cells.py): content-addressed ids, atomic writes, status.json, "finished"."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from ablate.cells import atomic_write_json, cell_id, is_done, read_status, semantic_config, update_status


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
    assert read_status(tmp_path) == {}
    update_status(tmp_path, state="running", attempts=1, error=None)
    status = update_status(tmp_path, state="failed", error="boom")
    on_disk = read_status(tmp_path)
    assert on_disk == status
    assert on_disk["state"] == "failed"
    assert on_disk["error"] == "boom"
    assert on_disk["attempts"] == 1  # kept from the first update
    assert "updated_at" in on_disk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_read_status_tolerates_corrupt_file(tmp_path):
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) == {}


def test_is_done_needs_metrics_and_state_done(tmp_path):
    assert not is_done(tmp_path)
    update_status(tmp_path, state="done")
    assert not is_done(tmp_path)  # state done but no metrics.json
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
