"""`ablate status`: golden output from a sweep directory and canned squeue/sacct answers.

The SLURM answers are canned so that the table is exact; the real clients are exercised by
tests/test_slurm_launcher.py (status while a sweep runs, reasons of a job that cannot start).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ablate.sweep.status
from ablate.cli import main

GOLDEN = Path(__file__).parent / "golden" / "status.txt"
CELLS = {  # cell id: (job, status.json, progress.json or None)
    "aaaaaaaaaaaa": ("11_0", {"state": "done", "attempts": 1, "max_steps": 150},
                     {"step": 150, "max_steps": 150, "since_step": 0, "since": 1000.0, "at": 1075.0}),
    "bbbbbbbbbbbb": ("11_1", {"state": "running", "attempts": 2, "requeues": 1, "max_steps": 150},
                     {"step": 60, "max_steps": 150, "since_step": 40, "since": 1000.0, "at": 1010.0}),
    "cccccccccccc": ("12_0", {"state": "pending", "attempts": 0, "max_steps": 150}, None),
    "dddddddddddd": ("11_2", {"state": "running", "attempts": 1, "max_steps": 150},
                     {"step": 20, "max_steps": 150, "since_step": 0, "since": 1000.0, "at": 1010.0}),
}
SLURM = {  # what the real clients print for these jobs
    ("sacct",): "11_0|COMPLETED\n11_1|RUNNING\n11_2|OUT_OF_MEMORY\n12_0|PENDING\n",
    ("squeue", "%i %T"): "11_1 RUNNING\n12_0 PENDING\n",
    ("squeue", "%i %r"): "11_1 None\n12_0 PartitionConfig\n",
}


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch) -> Path:
    cells = []
    for i, (cid, (_, status, progress)) in enumerate(CELLS.items()):
        cells.append({"cell_id": cid, "overrides": [f"seed={i}", "objective=dpo", "lora.r=8"]})
        cell_dir = tmp_path / "cells" / cid
        cell_dir.mkdir(parents=True)
        (cell_dir / "status.json").write_text(json.dumps(status))
        if progress:
            (cell_dir / "progress.json").write_text(json.dumps(progress))
        if status["state"] == "done":
            (cell_dir / "metrics.json").write_text("{}")
    jobs = {cid: job for cid, (job, _, _) in CELLS.items()}
    (tmp_path / "sweep.json").write_text(json.dumps({"cells": cells, "jobs": jobs}))

    def canned(cmd: list[str]) -> str:
        key = ("sacct",) if cmd[0] == "sacct" else ("squeue", cmd[cmd.index("-o") + 1])
        return SLURM[key]

    monkeypatch.setattr(ablate.sweep.status, "_run", canned)
    return tmp_path


def test_status_table_matches_the_golden_file(sweep_dir, capsys):
    assert main(["status", str(sweep_dir)]) == 0
    out = capsys.readouterr().out.replace(str(sweep_dir), "<sweep_dir>")
    if os.environ.get("ABLATE_UPDATE_GOLDEN") == "1":  # after a deliberate change of the table: review the diff
        GOLDEN.write_text(out)
    assert out == GOLDEN.read_text(), out


def test_status_json_has_reason_progress_and_eta(sweep_dir, capsys):
    assert main(["status", str(sweep_dir), "--json"]) == 0
    cells = {c["cell_id"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    running, pending, dead = cells["bbbbbbbbbbbb"], cells["cccccccccccc"], cells["dddddddddddd"]
    # 20 steps in 10 s since this attempt resumed at step 40: 0.5 s/step, 90 steps to go
    assert (running["step"], running["max_steps"], running["s_per_step"], running["eta_s"]) == (60, 150, 0.5, 45.0)
    assert (running["attempts"], running["requeues"], running["slurm_state"]) == (2, 1, "RUNNING")
    assert (pending["slurm_state"], pending["reason"], pending["step"]) == ("PENDING", "PartitionConfig", 0)
    # killed by SLURM: failed, with SLURM as the witness, and no ETA
    assert dead["state"] == "failed" and dead["error"] == "SLURM job 11_2 ended OUT_OF_MEMORY" and dead["eta_s"] is None


def test_watch_redraws_until_interrupted(sweep_dir, capsys, monkeypatch):
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", sleep)
    assert main(["status", str(sweep_dir), "--watch", "5"]) == 0
    assert sleeps == [5.0, 5.0] and capsys.readouterr().out.count("4 cells") == 2
