"""A cell spread over two processes (gloo on CPU) matches the same cell in one process: DDP, with
accumulation and gradient checkpointing, FSDP, sharded scoring, and a resume from a checkpoint."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from ablate.sweep.run import run_cell
from ablate.train.distributed import task_split_problem


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, config: dict, sweep_dir: str, cache: str, stop: bool) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ABLATE_CACHE": cache})
    from ablate.train.trainer import Interrupted

    stop_requested = threading.Event()
    if stop:  # as submitit's handler would on rank 0: checkpoint at the first step boundary
        stop_requested.set()
    try:
        run_cell(OmegaConf.create(config), sweep_dir, stop_requested=stop_requested)
    except Interrupted:
        pass


def _two_ranks(cfg, sweep_dir: Path, stop: bool = False) -> Path:
    config = OmegaConf.to_container(cfg, resolve=True)
    mp.spawn(_rank_main, args=(2, _free_port(), config, str(sweep_dir), os.environ["ABLATE_CACHE"], stop),
             nprocs=2, join=True)
    (cell,) = list((sweep_dir / "cells").iterdir())  # both ranks trained the same cell; rank 0 alone wrote it
    return cell


def _assert_same_run(single_dir: Path, spread_dir: Path, rel: float = 1e-4) -> None:
    """Same data order and the same averaged gradients: only the float summation order differs."""
    single = json.loads((single_dir / "metrics.json").read_text())
    spread = json.loads((spread_dir / "metrics.json").read_text())
    assert set(spread) == set(single)
    for key, value in single.items():
        assert spread[key] == pytest.approx(value, rel=rel, abs=1e-5), key
    train_single = (single_dir / "train_log.jsonl").read_text().splitlines()
    train_spread = (spread_dir / "train_log.jsonl").read_text().splitlines()
    assert len(train_single) == len(train_spread)
    for a, b in zip(train_single, train_spread, strict=True):
        a, b = json.loads(a), json.loads(b)
        assert b["loss"] == pytest.approx(a["loss"], rel=rel)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=10 * rel)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-3, abs=1e-5)
    # Held-out scoring was sharded over the ranks: every pair comes back once, in dataset order.
    pairs_single = pd.read_parquet(single_dir / "heldout_pairs.parquet")
    pairs_spread = pd.read_parquet(spread_dir / "heldout_pairs.parquet")
    assert pairs_spread.pair_id.is_unique and list(pairs_spread.pair_id) == list(pairs_single.pair_id)
    assert pairs_spread.notna().all().all()
    numbers = pairs_single.select_dtypes("number").columns
    pd.testing.assert_frame_equal(pairs_spread[numbers], pairs_single[numbers], rtol=rel)


def _single(cfg, sweep_dir: Path) -> Path:
    run_cell(cfg, sweep_dir)
    (cell,) = list((sweep_dir / "cells").iterdir())
    return cell


@pytest.mark.slow
def test_two_tasks_match_one_process(compose_cfg, tiny_overrides, tmp_path):
    cfg = compose_cfg([*tiny_overrides, "objective=dpo", "threads=1"])
    single = _single(cfg, tmp_path / "single")
    spread = _two_ranks(cfg, tmp_path / "ddp")
    status = json.loads((spread / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1
    assert spread.name == single.name
    _assert_same_run(single, spread)
    # the reference log-probs were sharded too, and written once, by rank 0
    assert sorted(p.name for p in (tmp_path / "ddp" / "shared").glob("reference-*")) == \
        sorted(p.name for p in (tmp_path / "single" / "shared").glob("reference-*"))


@pytest.mark.slow
def test_two_tasks_with_accumulation_and_checkpointing_match_one_process(compose_cfg, tiny_overrides, tmp_path):
    """KTO on unpaired rows (a no-grad KL batch beside the DDP forward; ranks whose share holds only
    desirable or only undesirable examples), 2 micro-batches per step (no_sync on the first),
    non-reentrant gradient checkpointing under DDP."""
    from test_kto_unpaired import unpaired_rows, write_jsonl

    from ablate.train.embedded import verbosity_trap_pairs

    train, heldout = verbosity_trap_pairs(compose_cfg(tiny_overrides).data)
    files = [write_jsonl(tmp_path / "train.jsonl", unpaired_rows(train)),
             write_jsonl(tmp_path / "heldout.jsonl", unpaired_rows(heldout, with_slice=True))]
    cfg = compose_cfg([*(o for o in tiny_overrides if not o.startswith("data.")), "data=files",
                       f"data.train_files=['{files[0]}']", f"data.heldout_files=['{files[1]}']", "data.max_length=64",
                       "data.max_prompt_length=16", "objective=kto", "threads=1", "trainer.grad_accum=2",
                       "engine.gradient_checkpointing=true"])
    _assert_same_run(_single(cfg, tmp_path / "single"), _two_ranks(cfg, tmp_path / "ddp"))


@pytest.mark.slow
def test_fsdp_on_two_tasks_matches_one_process_and_resumes_from_its_checkpoint(compose_cfg, tiny_overrides, tmp_path):
    """FSDP2 runs on CPU with gloo: decoder layers and the root sharded, LoRA gradients reduce-scattered.
    Interrupted after step 1, the gathered checkpoint is scattered back on resume."""
    cfg = compose_cfg([*tiny_overrides, "objective=dpo", "threads=1", "engine.parallel=fsdp"])
    single = _single(cfg, tmp_path / "single")
    interrupted = _two_ranks(cfg, tmp_path / "fsdp", stop=True)
    assert json.loads((interrupted / "status.json").read_text())["state"] == "preempted"
    assert (interrupted / "checkpoint" / "state.pt").exists()
    resumed = _two_ranks(cfg, tmp_path / "fsdp")
    assert not (resumed / "checkpoint").exists()
    _assert_same_run(single, resumed)


def test_a_micro_batch_must_split_evenly_over_the_tasks():
    trainer = {"batch_size": 12, "grad_accum": 2}
    assert task_split_problem(trainer, 1) is None and task_split_problem(trainer, 2) is None
    assert task_split_problem(trainer, 3) is None and task_split_problem(trainer, 6) is None
    problem = task_split_problem(trainer, 4)
    assert "trainer.batch_size / trainer.grad_accum = 12 / 2 = 6" in problem and "4 tasks" in problem


@pytest.mark.slow
def test_fsdp_with_accumulation_and_checkpointing_matches_one_process(compose_cfg, tiny_overrides, tmp_path):
    """FSDP2's per-layer weight gathering inside non-reentrant checkpointing (the recompute gathers again),
    and 2 micro-batches per step whose gradients are reduce-scattered once (set_requires_gradient_sync)."""
    cfg = compose_cfg([*tiny_overrides, "objective=simpo", "threads=1", "engine.parallel=fsdp",
                       "engine.gradient_checkpointing=true", "trainer.grad_accum=2"])
    _assert_same_run(_single(cfg, tmp_path / "single"), _two_ranks(cfg, tmp_path / "fsdp"))


def test_a_sweep_under_torchrun_is_refused_before_planning(repo_root, tmp_path):
    import subprocess
    import sys

    env = os.environ | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, "-m", "ablate", "-m", "objective=dpo,simpo", "seed=0",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "a sweep (-m) cannot run under torchrun" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep" / "cells").exists() and not (tmp_path / "sweep" / "sweep.json").exists()
