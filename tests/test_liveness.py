"""A sweep directory that heals itself: dead local cells are seen, damaged "done" cells retrained, leftovers
cleaned, the data record rebuilt, and a claimed cell never trained by two launchers at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pandas as pd
import pytest

from ablate.collect.load import load_sweep
from ablate.sweep.status import reconcile
from ablate.sweepdir.atomic import clean_stale_temp_files
from ablate.sweepdir.layout import CellStatus, done_problem, is_done, read_status
from ablate.sweepdir.liveness import CellBusy, Claim, claim_holder, local_cell_dead

HOST = socket.gethostname()


@pytest.fixture
def other_process():
    """A live process that is not this one (its pid stands for another launcher)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_claim(cell_dir, host: str, pid: int, age_s: float = 0.0) -> None:
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "claim.json").write_text(json.dumps({"host": host, "pid": pid}))
    os.utime(cell_dir / "claim.json", (time.time() - age_s, time.time() - age_s))


def test_a_live_claim_keeps_a_second_launcher_out_and_a_dead_one_is_taken_over(tmp_path, other_process):
    cell = tmp_path / "cells" / "abc"
    write_claim(cell, HOST, other_process.pid)
    assert claim_holder(cell)["pid"] == other_process.pid
    with pytest.raises(CellBusy, match=rf"trained by pid {other_process.pid} on {HOST}"):
        with Claim(cell):
            pass

    other_process.kill()
    other_process.wait()
    assert claim_holder(cell) is None
    with Claim(cell):
        assert json.loads((cell / "claim.json").read_text())["pid"] == os.getpid()
    assert not (cell / "claim.json").exists()  # released


def test_a_claim_from_another_host_lives_as_long_as_its_heartbeat(tmp_path):
    cell = tmp_path / "cells" / "abc"
    write_claim(cell, "other-host", 12345, age_s=10)
    with pytest.raises(CellBusy):
        Claim(cell).__enter__()
    write_claim(cell, "other-host", 12345, age_s=3600)  # no heartbeat for an hour
    with Claim(cell):
        pass


def test_the_heartbeat_touches_the_claim(tmp_path, monkeypatch):
    monkeypatch.setattr("ablate.sweepdir.liveness.HEARTBEAT_S", 0.05)
    cell = tmp_path / "c"
    with Claim(cell):
        os.utime(cell / "claim.json", (0, 0))
        time.sleep(0.5)
        assert time.time() - (cell / "claim.json").stat().st_mtime < 5


def local_sweep(tmp_path, status: dict):
    cid = "abcdefabcdef"
    (tmp_path / "cells" / cid).mkdir(parents=True)
    (tmp_path / "cells" / cid / "status.json").write_text(json.dumps({"overrides": ["seed=0"], **status}))
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": [{"cell_id": cid, "overrides": ["seed=0"]}]}))
    return tmp_path / "cells" / cid


def test_a_killed_local_cell_is_failed_for_status_and_collector_not_running_for_ever(tmp_path):
    pid = dead_pid()
    cell = local_sweep(tmp_path, {"state": "running", "host": HOST, "pid": pid})
    assert f"process {pid} on {HOST} is gone" in local_cell_dead(cell, read_status(cell))

    sweep = load_sweep(tmp_path)
    assert list(sweep.cells.state) == ["failed"]
    assert any(f"process {pid}" in p["problem"] for p in sweep.problems)

    (row,) = reconcile(tmp_path).to_dict("records")
    assert row["state"] == "failed" and f"process {pid} on {HOST} is gone" in row["error"]


def test_a_running_local_cell_stays_running(tmp_path):
    cell = local_sweep(tmp_path, {"state": "running", "host": HOST, "pid": os.getpid()})
    assert local_cell_dead(cell, CellStatus(state="running", host=HOST, pid=os.getpid())) is None
    assert list(reconcile(tmp_path).state) == ["running"]


def test_a_done_cell_with_a_damaged_result_is_not_done(tmp_path):
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "status.json").write_text(json.dumps({"state": "done"}))
    (cell / "metrics.json").write_text('{"step": 6, "heldout/pairs"')  # truncated
    pd.DataFrame({"pair_id": ["a"]}).to_parquet(cell / "heldout_pairs.parquet")
    assert "metrics.json is unreadable (JSONDecodeError" in done_problem(cell) and not is_done(cell)

    (cell / "metrics.json").write_text('{"step": 6}')
    assert done_problem(cell) is None and is_done(cell)
    (cell / "heldout_pairs.parquet").write_bytes(b"PAR1 truncated")
    assert "heldout_pairs.parquet is unreadable" in done_problem(cell) and not is_done(cell)


def test_leftover_temporary_files_are_cleaned_once_old(tmp_path):
    cell = tmp_path / "cells" / "abc"
    cell.mkdir(parents=True)
    old_tmp, fresh_tmp = cell / ".metrics.json.k2x_9ab1", cell / ".status.json.q1w2e3r4"
    old_dir, staging = tmp_path / ".report.old-4242", tmp_path / ".0123abcd4567ef89-ab12cd34"
    keep = [cell / ".hydra", tmp_path / ".gitignore", cell / "metrics.json"]
    for path in (old_tmp, fresh_tmp, keep[1], keep[2]):
        path.write_text("x")
    for path in (old_dir, staging, keep[0]):
        path.mkdir()
    for path in (old_tmp, old_dir, staging, *keep):
        os.utime(path, (time.time() - 3600, time.time() - 3600))

    removed = clean_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([old_tmp, old_dir, staging])
    assert fresh_tmp.exists() and all(p.exists() for p in keep)


def test_the_data_record_is_rewritten_when_missing(tmp_path, compose_cfg):
    from ablate.train.embedded import build_tokenizer
    from ablate.train.shared import tokenized_pairs

    cfg = compose_cfg(["data.n_train=32", "data.n_heldout_per_slice=8"])
    tokenized_pairs(cfg, build_tokenizer(), tmp_path)
    (record,) = tmp_path.glob("data-*.json")
    first = record.read_text()
    record.unlink()  # as if killed between tokens-*.pt and data-*.json
    tokenized_pairs(cfg, build_tokenizer(), tmp_path)
    assert record.read_text() == first
