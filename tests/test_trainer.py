"""The shared trainer (ablate/train/trainer.py, ARCHITECTURE.md §3-§5) through ablate.sweep.run.run_cell, in-process.

Cells are shrunk to a few seconds (6 steps, 64 training pairs, 2 x 16 held-out pairs). Most tests
read cells trained once per module in one sweep directory (`sweep`); tests that need their own
shared/ directory train in tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, StopAfter

import ablate.train.trainer
from ablate.data.heldout import PAIR_COLUMNS, heldout_metrics
from ablate.sweep.run import run_cell
from ablate.train.data_order import DataOrder
from ablate.train.embedded import verbosity_trap_pairs
from ablate.train.objectives import OBJECTIVES
from ablate.train.trainer import Interrupted, NonFiniteLoss

N_HELDOUT = 2 * 16

TRL_TRAIN_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                  "logps/chosen", "logps/rejected", "grad_norm", "learning_rate"}
TRL_EVAL_KEYS = {f"eval_{k}" for k in TRL_TRAIN_KEYS - {"grad_norm", "learning_rate"}}
NEUTRAL = ("pairs", "logratio_margin", "logratio_accuracy", "logratio_ties", "avglogp_margin", "avglogp_accuracy",
           "chosen_logp_shift")
HELDOUT_KEYS = {f"heldout/{m}" for m in NEUTRAL} | {f"heldout/{s}/{m}" for s in ("clean", "verbose_rejected")
                                                      for m in NEUTRAL}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def only_cell(sweep_dir: Path) -> Path:
    cells = list((sweep_dir / "cells").iterdir())
    assert len(cells) == 1, cells
    return cells[0]


def all_finite(entry: dict) -> bool:
    return all(math.isfinite(v) for v in entry.values() if isinstance(v, (int, float)))


class Sweep:
    """A sweep directory whose cells are trained on first request and then reused."""

    def __init__(self, path: Path, compose):
        self.path, self.compose, self.cells = path, compose, {}

    def cell(self, *overrides: str) -> tuple[dict, Path]:
        """(metrics, cell_dir) of the tiny cell with these overrides."""
        if overrides not in self.cells:
            metrics = run_cell(self.compose([*TINY, *overrides]), self.path, list(overrides))
            cell_dirs = [d for d in (self.path / "cells").iterdir()
                         if read_json(d / "status.json")["overrides"] == list(overrides)]
            assert len(cell_dirs) == 1
            self.cells[overrides] = metrics, cell_dirs[0]
        return self.cells[overrides]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, compose_cfg) -> Sweep:
    return Sweep(tmp_path_factory.mktemp("sweep"), compose_cfg)


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    # load_dataset writes Arrow caches; keep them out of ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


# ------------------------------------------------------------------------------- every objective
# Every objective's loss and gradient are checked without training (tests/test_objectives.py, test_lean_logps.py,
# test_trl_conformance.py); a tiny cell trains the first seven and one of each kind added with TRL's loss types:
# a combination, reference-free SFT, a batch-dependent sort, a reshaped reward, a divergence, an unpaired loss, and
# each objective that asks for more than summed log-probs (LD-DPO's tails, WPO's weights).
TRAINED = ["dpo", "ipo", "hinge", "simpo", "cpo", "orpo", "kto", "mpo", "sft", "aot", "alphapo", "fdpo",
           "apo_zero_unpaired", "ld_dpo", "wpo"]


def test_the_trained_objectives_cover_every_kind():
    assert set(TRAINED) <= set(OBJECTIVES)
    kinds = {(o.uses_reference, o.needs_kl_batch, o.unpaired, o.combination, o.sequence_parts)
             for o in OBJECTIVES.values()}
    assert kinds == {(o.uses_reference, o.needs_kl_batch, o.unpaired, o.combination, o.sequence_parts)
                     for o in (OBJECTIVES[n] for n in TRAINED)}


@pytest.mark.parametrize("objective", TRAINED)
def test_each_kind_of_objective_trains_a_tiny_cell(sweep, objective):
    metrics, cell_dir = sweep.cell(f"objective={objective}")

    status = read_json(cell_dir / "status.json")
    assert status["state"] == "done" and status["error"] is None and status["attempts"] == 1
    assert status["cell_id"] == cell_dir.name
    for name in ("config.yaml", "objective.json", "train_log.jsonl", "eval_log.jsonl", "heldout_pairs.parquet",
                 "metrics.json"):
        assert (cell_dir / name).is_file(), name
    assert f"name: {objective}" in (cell_dir / "config.yaml").read_text()
    ran = read_json(cell_dir / "objective.json")
    assert ran["objective"] == objective and ran["formula"] and len(ran["source_sha256"]) == 16
    assert not [p.name for p in cell_dir.iterdir() if p.name.startswith(".")]  # no temp files left behind

    train_log = read_jsonl(cell_dir / "train_log.jsonl")
    assert [e["step"] for e in train_log] == [2, 4, 6]
    for entry in train_log:
        assert TRL_TRAIN_KEYS <= entry.keys()
        assert all_finite(entry), entry
        assert 0 <= entry["rewards/accuracies"] <= 1
        assert entry["logps/chosen"] < 0 and entry["logps/rejected"] < 0

    eval_log = read_jsonl(cell_dir / "eval_log.jsonl")
    assert [e["step"] for e in eval_log] == [0, 3, 6]
    for entry in eval_log:
        assert TRL_EVAL_KEYS | HELDOUT_KEYS <= entry.keys()
        assert not {"eval_grad_norm", "eval_learning_rate"} & entry.keys()
        assert all_finite(entry), entry
        assert entry["heldout/pairs"] == N_HELDOUT
        assert entry["heldout/clean/pairs"] == entry["heldout/verbose_rejected/pairs"] == N_HELDOUT // 2

    assert read_json(cell_dir / "metrics.json") == metrics == eval_log[-1]
    if objective == "ld_dpo":  # the reference files of the cells before it gained the tails (and kept the rest)
        shared = next(p for p in cell_dir.parents if (p / "shared").is_dir()) / "shared"
        for path in shared.glob("reference-*.pt"):
            assert {"chosen", "chosen_tail", "rejected_tail"} <= torch.load(path, weights_only=False).keys(), path
    assert all_finite(metrics)

    pairs = pd.read_parquet(cell_dir / "heldout_pairs.parquet")
    assert list(pairs.columns) == PAIR_COLUMNS
    assert len(pairs) == N_HELDOUT and pairs.pair_id.is_unique
    assert pairs.slice.value_counts().to_dict() == {"clean": N_HELDOUT // 2, "verbose_rejected": N_HELDOUT // 2}
    assert (pairs.chosen_tokens > 0).all() and (pairs.rejected_tokens > 0).all()
    heldout = {k: v for k, v in metrics.items() if k.startswith("heldout/")}
    assert heldout.keys() == HELDOUT_KEYS
    assert heldout == pytest.approx(heldout_metrics(pairs), rel=1e-12, abs=1e-12)


def test_heldout_pairs_are_the_tasks_heldout_pairs(sweep, compose_cfg):
    _, cell_dir = sweep.cell("objective=dpo")
    _, expected = verbosity_trap_pairs(compose_cfg(TINY).data)
    pairs = pd.read_parquet(cell_dir / "heldout_pairs.parquet")
    assert list(pairs.pair_id) == [p.pair_id for p in expected]
    assert list(pairs.slice) == [p.slice for p in expected]


def test_validation_test_split_is_scored_and_recorded_per_pair(sweep, compose_cfg, tmp_path):
    """data.validation_pairs tags every held-out pair validation or test; both are scored and summarised."""
    # its own sweep dir: other data means other shared files, which the module's sweep counts
    split = ["objective=dpo", "data.validation_pairs=12", "data.split_seed=3"]
    metrics = run_cell(compose_cfg([*TINY, *split]), tmp_path, split)
    (cell_dir,) = (tmp_path / "cells").iterdir()
    pairs = pd.read_parquet(cell_dir / "heldout_pairs.parquet")
    assert list(pairs.columns) == [*PAIR_COLUMNS, "split"]
    assert pairs.split.value_counts().to_dict() == {"test": N_HELDOUT - 12, "validation": 12}
    assert metrics == pytest.approx(metrics | heldout_metrics(pairs))
    for split in ("validation", "test"):
        part = pairs[pairs.split == split]
        assert metrics[f"{split}/pairs"] == len(part)
        assert metrics[f"{split}/avglogp_accuracy"] == pytest.approx(heldout_metrics(part)["heldout/avglogp_accuracy"])
    unsplit, _ = sweep.cell("objective=dpo")
    assert not any(k.startswith(("validation/", "test/")) for k in unsplit)  # off by default: nothing changes
    assert unsplit["heldout/avglogp_accuracy"] != metrics["validation/avglogp_accuracy"]


# --------------------------------------------------------------------------------- determinism
def test_same_cell_twice_gives_identical_files_and_another_seed_does_not(sweep, compose_cfg, tmp_path):
    _, first = sweep.cell("objective=dpo")
    run_cell(compose_cfg([*TINY, "objective=dpo"]), tmp_path, ["objective=dpo"])  # fresh shared/ too
    second = tmp_path / "cells" / first.name
    assert (second / "metrics.json").read_bytes() == (first / "metrics.json").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(second / "heldout_pairs.parquet"),
                                  pd.read_parquet(first / "heldout_pairs.parquet"), check_exact=True)
    assert read_jsonl(second / "train_log.jsonl") == read_jsonl(first / "train_log.jsonl")

    other_seed, other_dir = sweep.cell("objective=dpo", "seed=1")
    assert other_dir.name != first.name
    assert other_seed["heldout/logratio_margin"] != read_json(first / "metrics.json")["heldout/logratio_margin"]
    assert read_jsonl(other_dir / "train_log.jsonl")[0]["loss"] != read_jsonl(first / "train_log.jsonl")[0]["loss"]


def test_step_zero_policy_is_the_reference(sweep):
    # LoRA B starts at zero: before any update the policy IS the adapter-disabled reference.
    _, cell_dir = sweep.cell("objective=dpo")
    step0 = read_jsonl(cell_dir / "eval_log.jsonl")[0]
    assert step0["step"] == 0
    assert step0["eval_rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert step0["eval_rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert step0["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert step0["heldout/logratio_margin"] == pytest.approx(0, abs=1e-5)
    assert step0["heldout/chosen_logp_shift"] == pytest.approx(0, abs=1e-6)
    last = read_jsonl(cell_dir / "eval_log.jsonl")[-1]
    assert abs(last["heldout/logratio_margin"]) > 1e-4  # and training does move it away


# ----------------------------------------------------------------------------- shared inputs
def test_reference_and_tokens_are_shared_by_every_cell_of_a_sweep(sweep):
    sweep.cell("objective=dpo")
    sweep.cell("objective=simpo")
    shared = sweep.path / "shared"
    assert len(list(shared.glob("tokens-*.pt"))) == 1
    assert len(list(shared.glob("reference-heldout-*.pt"))) == 1
    # Training reference log-probs cover the pairs a run visits (less than an epoch here): one file
    # per visiting plan, i.e. per seed among the cells that use a reference, whatever their objective.
    statuses = [read_json(d / "status.json") for d in (sweep.path / "cells").iterdir()]
    plans = {s["seed"] for s in statuses if OBJECTIVES[s["objective"]].uses_reference}
    assert len(list(shared.glob("reference-train-*.pt"))) == len(plans) >= 1
    assert not [p.name for p in shared.iterdir() if p.name.startswith(".")]


def test_training_reference_covers_exactly_the_visited_pairs(sweep):
    sweep.cell("objective=dpo")
    visited = set(DataOrder(64, 8, seed=0).visited(6))  # TINY: 64 pairs, batch 8, 6 steps
    assert len(visited) < 64  # less than an epoch: the rest is never scored
    files = list((sweep.path / "shared").glob("reference-train-*.pt"))
    scored = [set((~torch.load(f, weights_only=False)["chosen"].isnan()).nonzero().flatten().tolist())
              for f in files]
    assert visited in scored


def test_reference_free_sweep_never_scores_training_reference(compose_cfg, tmp_path):
    run_cell(compose_cfg([*TINY, "objective=simpo"]), tmp_path, ["objective=simpo"])
    shared = tmp_path / "shared"
    assert len(list(shared.glob("tokens-*.pt"))) == 1
    assert len(list(shared.glob("reference-heldout-*.pt"))) == 1  # the neutral metrics need it
    assert list(shared.glob("reference-train-*.pt")) == []


def test_shared_reference_is_the_base_model_score(sweep):
    # The reference file and the held-out table agree: the table's ref columns are the shared file.
    _, cell_dir = sweep.cell("objective=dpo")
    (ref_file,) = (sweep.path / "shared").glob("reference-heldout-*.pt")
    ref = torch.load(ref_file, weights_only=False)
    pairs = pd.read_parquet(cell_dir / "heldout_pairs.parquet")
    assert pairs.ref_chosen_logp.tolist() == ref["chosen"].double().tolist()
    assert pairs.ref_rejected_logp.tolist() == ref["rejected"].double().tolist()


# ---------------------------------------------------------------------------------- resume
def test_finished_cell_is_not_trained_again(sweep, compose_cfg, monkeypatch):
    metrics, cell_dir = sweep.cell("objective=dpo")
    before = {p.name: p.stat().st_mtime_ns for p in cell_dir.iterdir()}

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(ablate.train.trainer, "train", must_not_train)
    again = run_cell(compose_cfg([*TINY, "objective=dpo"]), sweep.path, ["objective=dpo"])
    assert again == metrics
    assert {p.name: p.stat().st_mtime_ns for p in cell_dir.iterdir()} == before
    assert read_json(cell_dir / "status.json")["attempts"] == 1


def test_length_grouped_cell_resumed_mid_run_equals_an_uninterrupted_one(sweep, compose_cfg, tmp_path):
    overrides = ["objective=dpo", "trainer.group_by_length=true"]
    _, whole = sweep.cell(*overrides)
    cfg = compose_cfg([*TINY, *overrides])
    with pytest.raises(Interrupted):
        run_cell(cfg, tmp_path, overrides, stop_requested=StopAfter(4))
    assert read_json(only_cell(tmp_path) / "status.json")["checkpoint_step"] == 4
    run_cell(cfg, tmp_path, overrides)
    resumed = only_cell(tmp_path)
    assert resumed.name == whole.name
    assert (resumed / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    assert read_jsonl(resumed / "train_log.jsonl") == read_jsonl(whole / "train_log.jsonl")
    # grouping did change the batches (the longest pairs first here): another cell, other data
    _, plain = sweep.cell("objective=dpo")
    assert plain.name != whole.name
    first = [read_jsonl(d / "train_log.jsonl")[0]["logps/chosen"] for d in (plain, whole)]
    assert first[1] < first[0]


def test_a_batch_dependent_objective_resumed_mid_run_equals_an_uninterrupted_one(sweep, compose_cfg, tmp_path):
    """aot sorts within the micro-batch (sft averages its tokens there): no objective keeps state across batches and
    the batch of a step is a function of (seed, step), so a resumed cell is byte-identical to an uninterrupted one."""
    overrides = ["objective=aot"]
    _, whole = sweep.cell(*overrides)
    cfg = compose_cfg([*TINY, *overrides])
    with pytest.raises(Interrupted):
        run_cell(cfg, tmp_path, overrides, stop_requested=StopAfter(3))
    run_cell(cfg, tmp_path, overrides)
    resumed = only_cell(tmp_path)
    assert (resumed / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    assert read_jsonl(resumed / "train_log.jsonl") == read_jsonl(whole / "train_log.jsonl")


# ------------------------------------------------------------------------------ NaN handling
def test_nan_loss_fails_the_cell_at_its_step_and_a_rerun_retries(sweep, compose_cfg, tmp_path, monkeypatch):
    real = OBJECTIVES["dpo"]
    calls = []

    def nan_from_third_call(logps, **hparams):
        out = real.loss(logps, **hparams)
        calls.append(1)
        if len(calls) >= 3:  # call 1: the step-0 evaluation; calls 2, 3: training steps 1, 2
            return dataclasses.replace(out, losses=out.losses * float("nan"))
        return out

    monkeypatch.setitem(OBJECTIVES, "dpo", dataclasses.replace(real, loss=nan_from_third_call))
    cfg = compose_cfg([*TINY, "objective=dpo"])
    with pytest.raises(NonFiniteLoss) as raised:
        run_cell(cfg, tmp_path, ["objective=dpo"])
    assert raised.value.step == 2

    cell_dir = only_cell(tmp_path)
    status = read_json(cell_dir / "status.json")
    assert status["state"] == "failed"
    assert status["failed_step"] == 2
    assert "NonFiniteLoss" in status["error"] and "loss is nan" in status["error"]
    assert any("NonFiniteLoss" in line for line in status["traceback"])
    assert not (cell_dir / "metrics.json").exists()
    assert not (cell_dir / "heldout_pairs.parquet").exists()

    monkeypatch.setitem(OBJECTIVES, "dpo", real)  # the cause is gone: the same cell trains on a re-run
    metrics = run_cell(cfg, tmp_path, ["objective=dpo"])
    status = read_json(cell_dir / "status.json")
    assert status["state"] == "done" and status["attempts"] == 2 and status["error"] is None
    assert read_json(cell_dir / "metrics.json") == metrics
    # The retry starts clean: its logs and results are those of a cell that never failed.
    assert [e["step"] for e in read_jsonl(cell_dir / "eval_log.jsonl")] == [0, 3, 6]
    assert metrics == sweep.cell("objective=dpo")[0]
    # Nothing of the failed attempt may survive in the status of a finished cell.
    assert status.get("failed_step") is None and status.get("traceback") is None, status


# ------------------------------------------------------------------------- grad accumulation
def test_gradient_accumulation_trains_and_logs(sweep):
    metrics, cell_dir = sweep.cell("objective=dpo", "trainer.grad_accum=2")
    assert read_json(cell_dir / "status.json")["state"] == "done"
    train_log = read_jsonl(cell_dir / "train_log.jsonl")
    assert [e["step"] for e in train_log] == [2, 4, 6]
    for entry in train_log:
        assert TRL_TRAIN_KEYS <= entry.keys() and all_finite(entry)
        assert entry["epoch"] == pytest.approx(entry["step"] * 8 / 64)
    assert all_finite(metrics)
    # Two micro-batches of 4 see the same 8 pairs as one batch of 8: the first logged means agree.
    plain = read_jsonl(sweep.cell("objective=dpo")[1] / "train_log.jsonl")
    assert train_log[0]["logps/chosen"] == pytest.approx(plain[0]["logps/chosen"], rel=1e-4)


# --------------------------------------------------------------------------- data from files
@pytest.fixture
def trap_pairs(compose_cfg):
    return verbosity_trap_pairs(compose_cfg(TINY).data)


FILE_TRAINER = [o for o in TINY if not o.startswith("data.")] + ["data.max_length=64", "data.max_prompt_length=16"]


def check_data_cell(sweep_dir: Path, metrics: dict, heldout) -> None:
    cell_dir = only_cell(sweep_dir)
    assert read_json(cell_dir / "status.json")["state"] == "done"
    assert metrics["heldout/pairs"] == len(heldout)
    for name in ("clean", "verbose_rejected"):
        assert metrics[f"heldout/{name}/pairs"] == sum(p.slice == name for p in heldout)
        assert 0 <= metrics[f"heldout/{name}/avglogp_accuracy"] <= 1
    assert all_finite(metrics)
    pairs = pd.read_parquet(cell_dir / "heldout_pairs.parquet")
    assert sorted(pairs.slice.unique()) == ["clean", "verbose_rejected"]
    assert len(pairs) == len(heldout)


def rows(pairs, with_slice: bool) -> list[dict]:
    columns = ("prompt", "chosen", "rejected", "slice") if with_slice else ("prompt", "chosen", "rejected")
    return [{c: getattr(p, c) for c in columns} for p in pairs]


def test_data_from_jsonl_and_parquet_files(compose_cfg, tmp_path, trap_pairs, datasets_cache):
    train, heldout = trap_pairs
    train_file, heldout_file = tmp_path / "train.jsonl", tmp_path / "heldout.parquet"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows(train, with_slice=False)))
    pd.DataFrame(rows(heldout, with_slice=True)).to_parquet(heldout_file)

    overrides = ["data=files", f"data.train_files=['{train_file}']", f"data.heldout_files=['{heldout_file}']",
                 *FILE_TRAINER]
    metrics = run_cell(compose_cfg(overrides), tmp_path / "sweep", overrides)
    check_data_cell(tmp_path / "sweep", metrics, heldout)


def test_data_from_local_hub_style_dataset_dir(compose_cfg, tmp_path, trap_pairs, datasets_cache):
    train, heldout = trap_pairs
    data_dir = tmp_path / "dataset"
    data_dir.mkdir()
    # Every split of a dataset has the same columns (datasets infers one schema); training pairs have no slice.
    schema = pa.schema([(c, pa.string()) for c in ("prompt", "chosen", "rejected", "slice")])
    for split, pairs in (("train", train), ("test", heldout)):
        table = pa.Table.from_pylist(rows(pairs, with_slice=True), schema=schema)
        pq.write_table(table, data_dir / f"{split}-00000-of-00001.parquet")

    overrides = ["data=hub", f"data.path='{data_dir}'", *FILE_TRAINER]
    metrics = run_cell(compose_cfg(overrides), tmp_path / "sweep", overrides)
    check_data_cell(tmp_path / "sweep", metrics, heldout)
