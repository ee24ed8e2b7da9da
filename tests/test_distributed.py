"""A cell spread over two tasks (gloo on CPU) matches the same cell in one process."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from ablate.run import run_cell


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, config: dict, sweep_dir: str, cache: str) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ABLATE_CACHE": cache})
    run_cell(OmegaConf.create(config), sweep_dir)


@pytest.mark.slow
def test_two_tasks_match_one_process(compose_cfg, tiny_overrides, tmp_path):
    cfg = compose_cfg([*tiny_overrides, "objective=dpo", "threads=1"])
    single = run_cell(cfg, tmp_path / "single")

    config = OmegaConf.to_container(cfg, resolve=True)
    mp.spawn(_rank_main, args=(2, _free_port(), config, str(tmp_path / "ddp"), os.environ["ABLATE_CACHE"]),
             nprocs=2, join=True)
    cells = list((tmp_path / "ddp" / "cells").iterdir())
    assert len(cells) == 1  # both ranks trained the same cell; rank 0 alone wrote it
    status = json.loads((cells[0] / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 1
    spread = json.loads((cells[0] / "metrics.json").read_text())
    # Same data order and same summed gradients: only the float summation order differs.
    for key, value in single.items():
        assert spread[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    train_single = (tmp_path / "single" / "cells" / cells[0].name / "train_log.jsonl").read_text().splitlines()
    train_spread = (cells[0] / "train_log.jsonl").read_text().splitlines()
    assert len(train_single) == len(train_spread)
    for a, b in zip(train_single, train_spread, strict=True):
        a, b = json.loads(a), json.loads(b)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-3, abs=1e-5)
