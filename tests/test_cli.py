"""The real command line, `python -m ablate [-m] ...`, in subprocesses (lightning-hydra-template style).

Each process pays ~6 s of imports, so there are few of them: the tiny 2x2 sweep runs once per module
and is re-run once to check that finished cells are skipped. The environment (ABLATE_CACHE, offline
flags) is inherited from the session fixture in conftest.py, so every process shares one embedded model.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY

from ablate.sweepdir.ids import cell_id

GRID = ["objective=dpo,simpo", "lora.r=8,16"]
ONE_SEED = "seed=0"  # a multirun runs seeds 0,1,2 unless told otherwise (conf/config.yaml hydra.sweeper.params)
GRID_CELLS = [(o, r) for o in ("dpo", "simpo") for r in ("8", "16")]


def ablate(repo_root: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=repo_root, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def output(proc: subprocess.CompletedProcess) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-5000:]}"


def table_rows(stdout: str, sweep_dir: Path, n_cells: int) -> list[str]:
    """The rows of the end-of-sweep table (after its title and header line)."""
    lines = stdout.splitlines()
    title = f"ablate sweep {sweep_dir} ({n_cells} cells)"
    assert title in lines, stdout
    start = lines.index(title) + 2  # title, header
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def sweep_cells(sweep_dir: Path) -> dict[tuple[str, str], dict]:
    """(objective, lora.r) -> {"cell_id": ..., "overrides": ...} from sweep.json."""
    cells = {}
    for cell in read_json(sweep_dir / "sweep.json")["cells"]:
        values = dict(o.split("=", 1) for o in cell["overrides"])
        cells[values["objective"], values["lora.r"]] = cell
    return cells


@pytest.fixture(scope="module")
def tiny_sweep(repo_root, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("cli_sweep")
    args = ["-m", *GRID, ONE_SEED, f"hydra.sweep.dir={sweep_dir}", *TINY]
    return sweep_dir, args, ablate(repo_root, *args)


# ----------------------------------------------------------------------------------------- sweep
def test_multirun_trains_every_cell_and_writes_sweep_json_and_table(tiny_sweep, compose_cfg):
    sweep_dir, _, proc = tiny_sweep
    assert proc.returncode == 0, output(proc)

    sweep = read_json(sweep_dir / "sweep.json")
    assert sweep["launcher"] == "local"
    assert sweep["axes"] == {"objective": ["dpo", "simpo"], "lora.r": ["8", "16"]}
    assert len(sweep["cells"]) == 4
    cells = sweep_cells(sweep_dir)
    assert sorted(cells) == sorted(GRID_CELLS)

    cell_dirs = sorted(p.name for p in (sweep_dir / "cells").iterdir())
    assert cell_dirs == sorted(c["cell_id"] for c in cells.values())
    for (objective, rank), cell in cells.items():
        # the seed axis comes first: it is the sweeper's own parameter, overridden on the command line
        assert cell["overrides"] == [ONE_SEED, f"objective={objective}", f"lora.r={rank}", *TINY]
        # The id is the hash of the semantic config: composing the same overrides in-process agrees.
        assert cell["cell_id"] == cell_id(compose_cfg(cell["overrides"]))
        cell_dir = sweep_dir / "cells" / cell["cell_id"]
        status = read_json(cell_dir / "status.json")
        assert status["state"] == "done", status
        assert status["overrides"] == cell["overrides"]
        metrics = read_json(cell_dir / "metrics.json")
        assert metrics["step"] == 6 and metrics["heldout/pairs"] == 32

    rows = table_rows(proc.stdout, sweep_dir, 4)
    assert len(rows) == 4, proc.stdout
    for (objective, rank), cell in cells.items():
        (row,) = [r for r in rows if r.split()[0] == cell["cell_id"]]
        assert row.split()[1:4] == [objective, rank, "done"]


def test_rerunning_a_sweep_skips_finished_cells(tiny_sweep, repo_root):
    sweep_dir, args, first = tiny_sweep
    assert first.returncode == 0, output(first)
    metrics_files = sorted((sweep_dir / "cells").glob("*/metrics.json"))
    assert len(metrics_files) == 4
    before = {p: p.stat().st_mtime_ns for p in metrics_files}
    status_before = {p: p.read_bytes() for p in (sweep_dir / "cells").glob("*/status.json")}

    proc = ablate(repo_root, *args)
    assert proc.returncode == 0, output(proc)
    log = proc.stdout + proc.stderr
    assert log.count("done already, skipped") == 4, output(proc)
    assert {p: p.stat().st_mtime_ns for p in metrics_files} == before
    assert {p: p.read_bytes() for p in status_before} == status_before
    assert len(table_rows(proc.stdout, sweep_dir, 4)) == 4
    assert len(read_json(sweep_dir / "sweep.json")["cells"]) == 4


# ------------------------------------------------------------------------------------ validation
def test_a_rerun_heals_the_sweep_dir_and_leaves_a_claimed_cell_alone(tiny_sweep, repo_root):
    """After the other tests of tiny_sweep: one done cell's metrics.json truncated (retrained, saying why), one
    cell held by a live claim of another launcher (left alone), a stale temporary file (removed)."""
    sweep_dir, args, first = tiny_sweep
    assert first.returncode == 0, output(first)
    damaged, claimed = sorted(p.name for p in (sweep_dir / "cells").iterdir())[:2]
    metrics = sweep_dir / "cells" / damaged / "metrics.json"
    intact = metrics.read_text()
    metrics.write_text(intact[: len(intact) // 2])
    other = subprocess.Popen(["sleep", "120"])  # stands for a launcher training `claimed` right now
    leftover = sweep_dir / "cells" / claimed / ".status.json.ab12cd34"
    try:
        status = read_json(sweep_dir / "cells" / claimed / "status.json")
        (sweep_dir / "cells" / claimed / "status.json").write_text(json.dumps(status | {"state": "running"}))
        (sweep_dir / "cells" / claimed / "claim.json").write_text(
            json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        leftover.write_text("half a status")
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))

        proc = ablate(repo_root, *args)
    finally:
        other.kill()
    assert proc.returncode == 0, output(proc)
    log = proc.stdout + proc.stderr
    assert f"cell {damaged} said done, but metrics.json is unreadable (JSONDecodeError" in log, output(proc)
    assert f"trained by pid {other.pid} on {socket.gethostname()} (another launcher), skipped" in log, output(proc)
    assert log.count("done already, skipped") == 2, output(proc)
    assert metrics.read_text() == intact  # retrained: deterministic on CPU
    retrained = read_json(sweep_dir / "cells" / damaged / "status.json")
    assert retrained["attempts"] == 2 and "metrics.json is unreadable" in retrained["retrained_because"]
    assert read_json(sweep_dir / "cells" / claimed / "status.json")["state"] == "running"  # not touched
    assert not leftover.exists()


def test_an_invalid_cell_stops_the_sweep_before_anything_trains(repo_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = ablate(repo_root, "-m", "objective.beta=0.1,-1", f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode != 0, output(proc)
    log = proc.stdout + proc.stderr
    assert "objective.beta=-1" in log, output(proc)  # names the bad cell by its overrides
    assert "objective.beta = -1" in log and "> 0" in log, output(proc)
    assert "objective.beta=0.1 " not in log  # ... and only the bad one
    assert not (sweep_dir / "cells").exists()
    assert not (sweep_dir / "shared").exists()
    assert not (sweep_dir / "sweep.json").exists()


def test_a_typo_fails_at_compose_time(repo_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = ablate(repo_root, "-m", "lora.rank=4", f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode != 0, output(proc)
    log = proc.stdout + proc.stderr
    assert "lora.rank" in log and "Key 'rank' not in 'LoraConfig'" in log, output(proc)
    assert not (sweep_dir / "cells").exists()


# ------------------------------------------------------------------------------------ single run
def test_single_run_writes_its_cell_under_the_run_dir(repo_root, tmp_path, compose_cfg):
    run_dir = tmp_path / "run"
    proc = ablate(repo_root, f"hydra.run.dir={run_dir}", *TINY)
    assert proc.returncode == 0, output(proc)
    cell_dir = run_dir / "cells" / cell_id(compose_cfg(TINY))
    assert (cell_dir / "metrics.json").is_file(), sorted(str(p) for p in run_dir.rglob("*"))
    assert read_json(cell_dir / "status.json")["state"] == "done"
    assert read_json(cell_dir / "metrics.json")["step"] == 6


# ------------------------------------------------------------------------------------- failures
def test_a_failing_cell_does_not_stop_the_others(repo_root, tmp_path):
    # IPO with tau = 1e-30: its target margin 1/(2 tau) = 5e29, squared, overflows float32, so the very first
    # loss (the step-0 evaluation) is inf. (A huge learning rate no longer works: Llama's RMSNorm maps
    # overflowing activations to zeros, and training stays finite.)
    sweep_dir = tmp_path / "sweep"
    proc = ablate(repo_root, "-m", "objective=ipo", "objective.tau=1e-30,0.1", ONE_SEED, f"hydra.sweep.dir={sweep_dir}",
                  *TINY)
    assert proc.returncode != 0, output(proc)  # the sweep reports the failure ...

    states = {}
    for cell in read_json(sweep_dir / "sweep.json")["cells"]:
        tau = dict(o.split("=", 1) for o in cell["overrides"])["objective.tau"]
        states[float(tau)] = read_json(sweep_dir / "cells" / cell["cell_id"] / "status.json")
    assert sorted(states) == [1e-30, 0.1]
    bad, good = states[1e-30], states[0.1]
    assert bad["state"] == "failed", bad
    assert "NonFiniteLoss" in bad["error"] and bad["failed_step"] == 0, bad
    # ... but the good cell, run AFTER the failing one, still trained.
    assert good["state"] == "done", good
    assert (sweep_dir / "cells" / good["cell_id"] / "metrics.json").is_file()
    assert not (sweep_dir / "cells" / bad["cell_id"] / "metrics.json").exists()
    rows = table_rows(proc.stdout, sweep_dir, 2)
    assert sorted(r.split()[2] for r in rows) == ["done", "failed"]


# ------------------------------------------------------------------------------------------ bars
@pytest.mark.slow
def test_mission_command_names_dpo_over_simpo_on_verbose_rejected(repo_root, tmp_path):
    """The README's headline command with the shipped defaults (three seeds, no shrinking): both objectives
    learn the task's rule, SimPO falls into the verbosity trap, and the collector says so: DPO the decisive winner
    on all pairs (the primary test), DPO's lead on verbose_rejected (exploratory)."""
    sweep_dir = tmp_path / "sweep"
    started, cpu_before = time.monotonic(), _children_cpu_s()
    proc = ablate(repo_root, "-m", *GRID, f"hydra.sweep.dir={sweep_dir}")
    seconds, cpu = time.monotonic() - started, _children_cpu_s() - cpu_before
    print(f"\nthe embedded 2x2x3 with its report: {seconds:.1f} s wall, {cpu:.1f} s CPU")
    assert proc.returncode == 0, output(proc)
    cells = read_json(sweep_dir / "sweep.json")["cells"]
    assert len(cells) == 12
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["cell_counts"] == {"done": 12}
    assert (summary["verdict"], summary["winner"]) == ("decisive", "dpo"), summary["explanation"]
    verbose = summary["slices"]["verbose_rejected"]  # a secondary scope: a lead, never a winner
    assert (verbose["verdict"], verbose["lead"]) == ("exploratory", "dpo"), verbose["explanation"]
    clean = {a["arm"]: a["stats"]["heldout/clean/avglogp_accuracy"]["mean"] for a in summary["arms"]}
    assert min(clean.values()) >= 0.7, clean  # both learn the rule; only the filler splits them
    # A loose bound that catches a gross slowdown only (measured quiet: 73 s wall, 133 s CPU on torch's 2 threads; on
    # the one thread tests/conftest.py gives each xdist worker: 86 s wall, 86 s CPU; 2 threads beside the other worker
    # in CI, before that setting: 332 s CPU)
    assert cpu <= 600, f"{cpu:.0f} s of CPU (README: about 75 s on 2 cores, 133 s of CPU, measured quiet)"

    # The same grid raced (README "Racing"): its round 1 is these 12 cells, seeds 0..2, so a race over a copy of the
    # finished cells (not of the decision ledger: a race in a sweep already tested is refused) trains nothing for its
    # first look; at the race's defaults (alpha kept for the later rounds) it then trains a seed per live arm per round
    # until DPO is the decisive winner, in fewer cells than the fixed 2x2x6 (measured: round 3, 20 cells).
    race_dir = tmp_path / "race"
    race_dir.mkdir()
    shutil.copytree(sweep_dir / "cells", race_dir / "cells")
    shutil.copy(sweep_dir / "sweep.json", race_dir / "sweep.json")
    proc = ablate(repo_root, "-m", *GRID, "hydra.sweeper.race=true", f"hydra.sweep.dir={race_dir}")
    assert proc.returncode == 0, output(proc)
    rounds = read_json(race_dir / "race.json")["rounds"]
    stops = [(r["stop"], r["winner"]) for r in rounds]
    assert stops == [(None, None)] * (len(rounds) - 1) + [("winner", "dpo")], rounds
    assert [r["n"] for r in rounds] == list(range(3, 3 + len(rounds)))
    assert 12 <= sum(len(r["new_cells"]) for r in rounds) < 24
    assert f"Race: decisive winner objective = dpo at round {len(rounds)}" in proc.stdout
    # the collector's single-look reading of the race's cells describes; it does not contradict the race's decision
    explanation = read_json(race_dir / "report" / "summary.json")["explanation"]
    assert "Lead at this look, unadjusted: objective = dpo" in explanation and "not a decisive claim" not in explanation
