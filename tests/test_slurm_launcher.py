"""ablate's SLURM launcher against a real single-node SLURM cluster (tests/slurm/cluster.py, ARCHITECTURE.md §2, §8).

The real command line runs in subprocesses, with the session's environment (ABLATE_CACHE, offline flags) plus the
cluster's (SLURM_CONF, PATH): sbatch exports it to the jobs, so every job shares the embedded model built once, in
this process, before the first submission. Cells are tiny (`TINY`, one torch thread) except the one that is
interrupted. The cluster has 2 fake GPUs, so cells with --gpus-per-node=1 run two at a time; cells without a GPU
share its 8 (over-subscribed) CPU slots.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY as CONFTEST_TINY

from ablate.sweepdir.ids import cell_id

pytestmark = pytest.mark.slurm

REPO_ROOT = Path(__file__).resolve().parents[1]
# not semantic (same cell id): one torch thread keeps concurrent jobs from over-subscribing the CPUs
TINY = [*CONFTEST_TINY, "threads=1"]
# Small resources, so that several cells fit on the test node; --time 10 min.
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
GRID = ["objective=dpo,simpo", "lora.r=8,16"]
# The r=16 cells get a resource profile of their own (more memory): two arrays.
PROFILES = "hydra.launcher.profiles=[{when: {lora.r: 16}, mem_gb: 2}]"
ENDED = 240  # seconds: generous, the machine may be shared with other test runs


# ------------------------------------------------------------------------------------------ helpers
def run_ablate(cluster, *args: str, module: str = "ablate", timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m ablate ARGS` (or `-m ablate.cli`: the `ablate` console script) against the test cluster."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=cluster.client_env(),
                          capture_output=True, text=True, timeout=timeout)


def cli(cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_ablate(cluster, *args, module="ablate.cli", timeout=timeout)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"--- exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-5000:]}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def status_of(sweep_dir: Path, cid: str) -> dict:
    try:
        return read_json(sweep_dir / "cells" / cid / "status.json")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, cluster=None, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            diag = cluster.run("squeue", "-h", "-o", "%i %T %r").stdout if cluster is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\nsqueue:\n{diag}")
        time.sleep(poll)


def sweep_jobs(cluster, sweep_dir: Path) -> list[str]:
    """Ids of this sweep's jobs still in squeue (jobs are named ablate-<sweep dir name>[-collect])."""
    res = cluster.run("squeue", "-h", "-r", "-o", "%i %j")
    return [line.split()[0] for line in res.stdout.splitlines()
            if line.split()[1:] and line.split()[1].startswith(f"ablate-{sweep_dir.name}")]


def wait_sweep_ended(cluster, sweep_dir: Path, timeout: float = ENDED) -> None:
    wait_for(lambda: not sweep_jobs(cluster, sweep_dir), timeout, f"every job of {sweep_dir} to end", cluster)


def task_state(states: dict[str, str], job: str) -> str | None:
    """The state of one job or array task ("12", "12_1") in {sacct JobID: State}. Array tasks that never started
    share one line: "12" or "12_[0-1%2]"."""
    if job in states:
        return states[job]
    master, _, task = job.partition("_")
    for key, state in states.items():
        pending = re.fullmatch(rf"{master}_\[([\d,-]+)(%\d+)?\]", key)
        if key == master or (pending and task and any(
                int(a) <= int(task) <= int(b or a) for a, _, b in (r.partition("-") for r in pending[1].split(",")))):
            return state
    return None


def sacct_of(cluster, job: str) -> str | None:
    """sacct's final state of a job or array task, once every task of its job has ended."""
    return task_state(cluster.wait_job(job.split("_")[0], timeout=60), job)


def cells_by(sweep_dir: Path, key: str) -> dict[str, str]:
    """{value of override `key`: cell id} from sweep.json."""
    out = {}
    for cell in read_json(sweep_dir / "sweep.json")["cells"]:
        values = dict(o.split("=", 1) for o in cell["overrides"])
        out[values[key]] = cell["cell_id"]
    return out


@pytest.fixture(scope="module")
def embedded_model(compose_cfg):
    """Builds the embedded model once, here, so that concurrent jobs do not each build it (ABLATE_CACHE)."""
    from ablate.train.embedded import embedded_model_dir

    return embedded_model_dir(compose_cfg([]).model)


@pytest.fixture(scope="module")
def e2e(slurm_cluster, embedded_model, tmp_path_factory):
    """The 2x2 sweep, submitted detached: its dir and args, the command's process and duration, the jobs of the
    sweep still queued or running when it returned, and `ablate status` run right after."""
    sweep_dir = tmp_path_factory.mktemp("slurm_e2e")
    args = ["-m", *GRID, "seed=0", *SLURM, "hydra.launcher.gpus_per_node=1", PROFILES, f"hydra.sweep.dir={sweep_dir}",
            *TINY]
    started = time.monotonic()
    proc = run_ablate(slurm_cluster, *args)
    seconds = time.monotonic() - started
    alive_after_submit = sweep_jobs(slurm_cluster, sweep_dir)
    status = cli(slurm_cluster, "status", str(sweep_dir))  # while the sweep runs
    return {"dir": sweep_dir, "args": args, "proc": proc, "seconds": seconds, "alive": alive_after_submit,
            "status": status}


# --------------------------------------------------------------------------------------------- 2x2
def test_2x2_submits_detached_and_the_collector_job_writes_the_report(e2e, slurm_cluster):
    sweep_dir, proc = e2e["dir"], e2e["proc"]
    assert proc.returncode == 0, output(proc)
    # Detached: the command returned while the sweep was still queued/running (the collector waits for every cell).
    assert e2e["alive"], f"nothing of the sweep was queued or running when the command returned\n{output(proc)}"
    assert e2e["seconds"] < 90, e2e["seconds"]

    sweep = read_json(sweep_dir / "sweep.json")
    assert sweep["launcher"] == "slurm"
    assert len(sweep["cells"]) == 4
    jobs, collector = sweep["jobs"], sweep["collector_job"]
    assert sorted(jobs) == sorted(c["cell_id"] for c in sweep["cells"])
    # two resource profiles -> two arrays of two cells; r=16 cells asked for 2 GB
    arrays = sweep["arrays"]
    assert len(arrays) == 2 and [a["cells"] for a in arrays] == [2, 2], arrays
    assert sorted(a["resources"]["mem_gb"] for a in arrays) == [1, 2]
    assert {a["resources"]["gpus_per_node"] for a in arrays} == {1}
    by_rank = {}
    for cell in sweep["cells"]:
        rank = dict(o.split("=", 1) for o in cell["overrides"])["lora.r"]
        by_rank.setdefault(rank, set()).add(jobs[cell["cell_id"]].split("_")[0])
    assert len(by_rank["8"]) == len(by_rank["16"]) == 1 and by_rank["8"] != by_rank["16"], by_rank

    # what the command printed: the sweep dir, the job ids, how to follow it
    out = proc.stdout
    assert str(sweep_dir) in out, output(proc)
    for array in arrays:
        assert array["job_id"] in out, output(proc)
    assert f"collector job: {collector}" in out, output(proc)
    for command in ("status", "collect", "resubmit", "cancel"):
        assert f"ablate {command} {sweep_dir}" in out, output(proc)

    # `ablate status` while the sweep ran
    status = e2e["status"]
    assert status.returncode == 0, output(status)
    assert f"{sweep_dir}: 4 cells" in status.stdout, output(status)
    for cid in jobs:
        assert cid in status.stdout, output(status)

    # every cell ends done, SLURM agrees, and the collector job (afterany) writes the report
    assert slurm_cluster.wait_job(collector, timeout=ENDED) == {collector: "COMPLETED"}
    for cid, job in jobs.items():
        assert sacct_of(slurm_cluster, job) == "COMPLETED", (cid, job)
        status = status_of(sweep_dir, cid)
        assert status["state"] == "done", status
        assert status["attempts"] == 1, status
        assert status["job_id"] == job, status
        assert status["cuda_visible_devices"] in {"0", "1"}, status  # --gpus-per-node=1: one GPU each
        assert (sweep_dir / "cells" / cid / "metrics.json").is_file()
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["cell_counts"] == {"done": 4}, summary.get("cell_counts")
    assert (sweep_dir / "report" / "report.html").is_file()


def test_rerunning_the_command_skips_finished_cells_and_submits_nothing(e2e, slurm_cluster):
    sweep_dir = e2e["dir"]
    wait_sweep_ended(slurm_cluster, sweep_dir)
    before = read_json(sweep_dir / "sweep.json")
    metrics = {p: p.stat().st_mtime_ns for p in (sweep_dir / "cells").glob("*/metrics.json")}
    assert len(metrics) == 4

    proc = run_ablate(slurm_cluster, *e2e["args"])
    assert proc.returncode == 0, output(proc)
    assert "submitted 0" in proc.stdout and "skipped 4 done" in proc.stdout, output(proc)
    assert "job arrays" not in proc.stdout and "collector job:" not in proc.stdout, output(proc)
    assert not sweep_jobs(slurm_cluster, sweep_dir)
    after = read_json(sweep_dir / "sweep.json")
    assert after["jobs"] == before["jobs"] and after["arrays"] == before["arrays"]
    assert after["collector_job"] == before["collector_job"]
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics


# ----------------------------------------------------------------------------------------- failures
def test_a_failing_cell_is_failed_in_sacct_and_status_while_the_other_finishes(slurm_cluster, embedded_model,
                                                                                tmp_path):
    # IPO with tau = 1e-30: (h - 1/(2 tau))^2 overflows float32, so the step-0 evaluation's loss is inf.
    # Followed to the end (hydra.launcher.wait=true): the command returns once the collector job has ended, and
    # fails, as the local launcher does, because a cell failed.
    sweep_dir = tmp_path / "failing"  # also the job name: ablate-failing
    proc = run_ablate(slurm_cluster, "-m", "objective=ipo", "objective.tau=0.1,1e-30", "seed=0", *SLURM,
                      "hydra.launcher.gpus_per_node=0", "hydra.launcher.wait=true", "hydra.launcher.poll_s=1",
                      f"hydra.sweep.dir={sweep_dir}", *TINY,
                      timeout=ENDED)
    assert proc.returncode == 1, output(proc)
    assert "sweep ended" in proc.stdout, output(proc)
    assert "NonFiniteLoss" in proc.stderr, output(proc)
    assert not sweep_jobs(slurm_cluster, sweep_dir)
    sweep = read_json(sweep_dir / "sweep.json")
    cells = {float(tau): cid for tau, cid in cells_by(sweep_dir, "objective.tau").items()}
    good, bad = cells[0.1], cells[1e-30]
    collector = sweep["collector_job"]

    assert slurm_cluster.wait_job(collector, timeout=60) == {collector: "COMPLETED"}
    assert sacct_of(slurm_cluster, sweep["jobs"][bad]) == "FAILED"
    assert sacct_of(slurm_cluster, sweep["jobs"][good]) == "COMPLETED"
    bad_status, good_status = status_of(sweep_dir, bad), status_of(sweep_dir, good)
    assert bad_status["state"] == "failed", bad_status
    assert "NonFiniteLoss" in bad_status["error"] and bad_status["failed_step"] == 0, bad_status
    assert not (sweep_dir / "cells" / bad / "metrics.json").exists()
    assert good_status["state"] == "done", good_status
    assert (sweep_dir / "cells" / good / "metrics.json").is_file()

    # the collector ran although a cell failed (afterany), and names the failed cell
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["cell_counts"] == {"done": 1, "failed": 1}, summary.get("cell_counts")
    assert bad in json.dumps(summary)
    status = cli(slurm_cluster, "status", str(sweep_dir))
    assert status.returncode == 0, output(status)
    assert "1 done" in status.stdout and "1 failed" in status.stdout and "NonFiniteLoss" in status.stdout, \
        output(status)

    # re-running the command would redo only the failed cell (a dry run says so without submitting it)
    proc = run_ablate(slurm_cluster, "-m", "objective=ipo", "objective.tau=0.1,1e-30", "seed=0", *SLURM,
                      "hydra.launcher.gpus_per_node=0", "hydra.launcher.dry_run=true", f"hydra.sweep.dir={sweep_dir}",
                      *TINY)
    assert proc.returncode == 0, output(proc)
    assert "dry run: 2 cells valid, 1 to submit in 1 resource profile(s), 1 done" in proc.stdout, output(proc)
    assert read_json(sweep_dir / "sweep.json")["jobs"] == sweep["jobs"]


# -------------------------------------------------------------------------------- interrupt + requeue
LONG = [  # ~10-30 s of training: long enough to interrupt after the first log line
    "seed=1",
    "trainer.max_steps=300",
    "data.n_train=400",
    "trainer.eval_every=100",
    "trainer.log_every=10",
    "trainer.batch_size=8",
    "data.n_heldout_per_slice=16",
    "trainer.eval_batch_size=32",
    "threads=1",
]


def test_a_task_killed_without_warning_resumes_from_its_periodic_checkpoint_after_a_requeue(
        slurm_activated, embedded_model, compose_cfg, tmp_path):
    """SIGKILL of the cell's process inside its job (an OOM kill: no signal reaches the cell) fails the job; a
    `scontrol requeue` runs it again, and the cell resumes from its newest periodic checkpoint, ending identical to
    an uninterrupted run (trainer.checkpoint_every changes nothing computed: the same cell id)."""
    import os
    import signal

    import torch

    from ablate.sweep.run import run_cell

    cluster = slurm_activated
    sweep_dir = tmp_path / "killed"
    every = ["trainer.checkpoint_every=0.0002"]  # every ~12 ms of training: a checkpoint at nearly every step
    proc = run_ablate(cluster, "-m", *LONG, *every, *SLURM, "hydra.launcher.gpus_per_node=0",
                      "hydra.launcher.collector.enabled=false", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, output(proc)
    ((cid, job),) = read_json(sweep_dir / "sweep.json")["jobs"].items()
    state = sweep_dir / "cells" / cid / "checkpoint" / "state.pt"

    def checkpoint_step() -> int:
        try:
            return torch.load(state, weights_only=False)["step"]
        except (OSError, EOFError, RuntimeError, KeyError):  # not there yet, or caught mid-rename
            return 0

    wait_for(lambda: checkpoint_step() >= 40, ENDED, "a periodic checkpoint past step 40", cluster, poll=0.05)
    running = status_of(sweep_dir, cid)
    os.kill(running["pid"], signal.SIGKILL)  # same host: the single-node test cluster
    assert sacct_of(cluster, job) in ("FAILED", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY"), sacct_of(cluster, job)
    killed_at = checkpoint_step()
    assert 40 <= killed_at < 300 and not (sweep_dir / "cells" / cid / "metrics.json").exists()

    threads = torch.get_num_threads()
    try:  # the same cell uninterrupted, in this process, while SLURM runs the requeued job
        reference = run_cell(compose_cfg([*LONG, *every]), tmp_path / "reference", [*LONG, *every])
    finally:
        torch.set_num_threads(threads)
    requeue = cluster.run("scontrol", "requeue", job)
    assert requeue.returncode == 0, requeue.stderr
    done = wait_for(lambda: (s := status_of(sweep_dir, cid)).get("state") in ("done", "failed") and s, ENDED,
                    "the requeued cell to end", cluster)
    assert done["state"] == "done" and done["attempts"] == 2, done
    cell_dir = sweep_dir / "cells" / cid
    assert read_json(cell_dir / "metrics.json") == reference
    steps = [json.loads(line)["step"] for line in (cell_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 301, 10)), steps  # resumed at the checkpoint: every logging step once
    assert not (cell_dir / "checkpoint").exists()


def test_an_interrupted_job_requeues_and_resumes_from_its_checkpoint(slurm_activated, embedded_model, compose_cfg,
                                                                     tmp_path):
    import submitit
    import torch

    from ablate.sweep.run import run_cell

    cluster = slurm_activated
    sweep_dir = tmp_path / "interrupted"  # also the job name: ablate-interrupted
    proc = run_ablate(cluster, "-m", *LONG, *SLURM, "hydra.launcher.gpus_per_node=0",
                      "hydra.launcher.collector.enabled=false", f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, output(proc)
    ((cid, job),) = read_json(sweep_dir / "sweep.json")["jobs"].items()
    cell_dir = sweep_dir / "cells" / cid
    log = cell_dir / "train_log.jsonl"

    wait_for(lambda: log.exists() and log.read_text().strip(), ENDED, "the first train_log line", cluster, poll=0.1)
    submitit.SlurmJob(folder=sweep_dir / "slurm" / "%j", job_id=job)._interrupt()  # preemption: TERM, then USR2

    preempted = wait_for(lambda: (s := status_of(sweep_dir, cid)).get("state") in ("preempted", "done") and s,
                         60, "the cell to checkpoint", cluster, poll=0.1)
    assert preempted["state"] == "preempted", f"the cell finished before the interrupt reached it: {preempted}"
    assert 0 < preempted["checkpoint_step"] < 300, preempted
    assert preempted["attempts"] == 1
    assert (cell_dir / "checkpoint" / "state.pt").is_file()

    # While SLURM requeues the job (11-17 s), train the same cell uninterrupted, in this process.
    reference_dir = tmp_path / "reference"
    cfg = compose_cfg(LONG)
    assert cell_id(cfg) == cid
    threads = torch.get_num_threads()
    try:
        reference = run_cell(cfg, reference_dir, LONG)
    finally:
        torch.set_num_threads(threads)  # the cell's threads=1 must not slow down later tests of this session

    done = wait_for(lambda: (s := status_of(sweep_dir, cid)).get("state") in ("done", "failed") and s, ENDED,
                    "the requeued cell to end", cluster)
    assert done["state"] == "done", done
    assert done["attempts"] == 2 and done["requeues"] == 1, done  # requeued once ...
    assert done["checkpoint_step"] == preempted["checkpoint_step"]
    assert sacct_of(cluster, job) == "COMPLETED"
    assert not (cell_dir / "checkpoint").exists()  # removed once finished

    # ... and resumed from the checkpoint, not from step 0: every logging step once, in order
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(10, 301, 10)), steps
    eval_steps = [json.loads(line)["step"] for line in (cell_dir / "eval_log.jsonl").read_text().splitlines()]
    assert eval_steps == [0, 100, 200, 300], eval_steps
    submitit_log = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*/*_log.out"))
    assert "Calling checkpoint method" in submitit_log and f"Requeued job {job}" in submitit_log, submitit_log

    # the final metrics equal the uninterrupted run's
    metrics = read_json(cell_dir / "metrics.json")
    assert metrics.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, float):
            assert math.isclose(metrics[key], value, rel_tol=1e-6, abs_tol=1e-9) or (
                math.isnan(value) and math.isnan(metrics[key])), (key, metrics[key], value)
        else:
            assert metrics[key] == value, key


# ------------------------------------------------------------------------------- cancel + resubmit
def test_cancel_marks_cells_failed_and_resubmit_failed_finishes_them(slurm_cluster, embedded_model, tmp_path):
    cluster = slurm_cluster
    # A job holding both GPUs keeps the cells (one GPU each) queued until we let them go.
    blocker = cluster.sbatch("--gpus-per-node=2", "-o", "/dev/null", "--wrap", "sleep 600")
    try:
        wait_for(lambda: cluster.run("squeue", "-h", "-o", "%T", "-j", str(blocker)).stdout.strip() == "RUNNING",
                 60, "the blocker job to run", cluster)
        sweep_dir = tmp_path / "cancelled"  # also the job name: ablate-cancelled
        proc = run_ablate(cluster, "-m", "objective=dpo,simpo", "seed=0", *SLURM, "hydra.launcher.gpus_per_node=1",
                          f"hydra.sweep.dir={sweep_dir}", *TINY)
        assert proc.returncode == 0, output(proc)
        sweep = read_json(sweep_dir / "sweep.json")
        jobs, collector = sweep["jobs"], sweep["collector_job"]
        assert len(jobs) == 2 and len(sweep_jobs(cluster, sweep_dir)) == 3  # 2 cells + the collector

        proc = cli(cluster, "cancel", str(sweep_dir))
        assert proc.returncode == 0, output(proc)
        assert "cancelled 3 job(s)" in proc.stdout, output(proc)
        for job in [*jobs.values(), collector]:
            assert sacct_of(cluster, job) == "CANCELLED", job

        proc = cli(cluster, "status", str(sweep_dir))
        assert proc.returncode == 0, output(proc)
        assert "2 failed" in proc.stdout and "CANCELLED" in proc.stdout, output(proc)
        for cid, job in jobs.items():
            status = status_of(sweep_dir, cid)
            assert status["state"] == "failed", status
            assert status["error"] == f"SLURM job {job} ended CANCELLED", status
    finally:
        cluster.run("scancel", str(blocker))

    proc = cli(cluster, "resubmit", str(sweep_dir), "--failed")
    assert proc.returncode == 0, output(proc)
    assert "resubmitted 2 cell(s)" in proc.stdout, output(proc)
    sweep = read_json(sweep_dir / "sweep.json")
    new_jobs, new_collector = sweep["jobs"], sweep["collector_job"]
    assert set(new_jobs) == set(jobs) and not set(new_jobs.values()) & set(jobs.values())
    assert new_collector != collector and len(sweep["arrays"]) == 2

    assert cluster.wait_job(new_collector, timeout=ENDED) == {new_collector: "COMPLETED"}
    for cid, job in new_jobs.items():
        assert sacct_of(cluster, job) == "COMPLETED"
        status = status_of(sweep_dir, cid)
        assert status["state"] == "done" and status["error"] is None, status
        assert status["job_id"] == job
    assert read_json(sweep_dir / "report" / "summary.json")["cell_counts"] == {"done": 2}
    proc = cli(cluster, "status", str(sweep_dir))
    assert "2 done" in proc.stdout, output(proc)
    proc = cli(cluster, "resubmit", str(sweep_dir), "--failed")
    assert proc.returncode == 0 and "nothing to resubmit" in proc.stdout, output(proc)


# ------------------------------------------------------------------------- MaxArraySize and dry runs
def test_max_array_size_is_read_from_the_cluster(slurm_activated):
    from ablate.sweep.slurm import max_array_size

    assert max_array_size(None) == slurm_activated.max_array_size == 8
    assert max_array_size(3) == 3


def test_dry_run_writes_the_plan_and_submits_nothing(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "dry"  # also the job name: ablate-dry
    proc = run_ablate(slurm_cluster, "-m", *GRID, "seed=0,1", *SLURM, PROFILES, "hydra.launcher.dry_run=true",
                      f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode == 0, output(proc)
    assert "dry run: 8 cells valid, 8 to submit in 2 resource profile(s)" in proc.stdout, output(proc)
    assert "nothing submitted" in proc.stdout
    sweep = read_json(sweep_dir / "sweep.json")
    assert len(sweep["cells"]) == 8 and "jobs" not in sweep and "collector_job" not in sweep
    configs = sorted((sweep_dir / "cells").glob("*/config.yaml"))
    assert sorted(p.parent.name for p in configs) == sorted(c["cell_id"] for c in sweep["cells"])
    assert not list((sweep_dir / "cells").glob("*/status.json"))
    assert not (sweep_dir / "slurm").exists()
    assert not sweep_jobs(slurm_cluster, sweep_dir)
    assert slurm_cluster.run("squeue", "-h", "-n", f"ablate-{sweep_dir.name}").stdout.strip() == ""


def test_broken_data_stops_the_sweep_before_anything_is_submitted(slurm_cluster, tmp_path):
    """Not a dry run: the real submission path. The launcher reads the data at planning time, so the bad line is
    named (file + 1-based line), the command exits 2, and no job reaches the cluster."""
    rows = [{"prompt": "echo a b c", "chosen": "rev : c b a", "rejected": "copy : a b c"},
            {"prompt": "echo d e f", "chosen": "rev : f e d", "rejected": "rev : f e d"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"prompt": "echo p", "chosen": "copy : p", "rejected": "rev : p"}) + "\n")
    sweep_dir = tmp_path / "baddata"  # also the job name: ablate-baddata
    not_data = [o for o in TINY if not o.startswith("data.")]  # TINY's data.* keys are the embedded task's
    proc = run_ablate(slurm_cluster, "-m", "objective=dpo,simpo", "seed=0", *SLURM, "data=files",
                      f"data.train_files=[{train}]", f"data.heldout_files=[{heldout}]", "data.max_length=64",
                      "data.max_prompt_length=16", f"hydra.sweep.dir={sweep_dir}", *not_data)
    assert proc.returncode == 2, output(proc)
    assert f"{train} line 2: 'chosen' and 'rejected' are identical" in proc.stderr, output(proc)
    assert not (sweep_dir / "cells").exists() and not (sweep_dir / "sweep.json").exists()
    assert not (sweep_dir / "slurm").exists()  # submitit's folder: created by the first submission
    assert slurm_cluster.run("squeue", "-h", "-n", f"ablate-{sweep_dir.name}").stdout.strip() == ""
    history = slurm_cluster.run("sacct", "-n", "-X", "-P", "-S", "now-1hour", "--name", f"ablate-{sweep_dir.name}",
                                "-o", "JobID")
    assert history.returncode == 0 and history.stdout.strip() == "", history.stdout + history.stderr


def test_cells_beyond_max_array_size_go_to_another_array_and_resubmission_keeps_the_collector_last(
        slurm_activated, tmp_path):
    """9 cells of one profile: an array of 8 (MaxArraySize) and one more job. Submitted held, so nothing runs.
    One cell is cancelled and resubmitted while the others stay queued: the new collector job waits for them too."""
    from ablate.sweep.status import slurm_states

    cluster = slurm_activated
    sweep_dir = tmp_path / "held"  # also the job name: ablate-held
    proc = run_ablate(cluster, "-m", "seed=range(9)", *SLURM, "hydra.launcher.gpus_per_node=0",
                      "+hydra.launcher.additional_parameters.hold=true", f"hydra.sweep.dir={sweep_dir}", *TINY)
    try:
        assert proc.returncode == 0, output(proc)
        sweep = read_json(sweep_dir / "sweep.json")
        assert [a["cells"] for a in sweep["arrays"]] == [8, 1], sweep["arrays"]
        jobs = sweep["jobs"]
        assert len(set(jobs.values())) == 9
        masters = sorted({j.split("_")[0] for j in jobs.values()}, key=int)
        assert len(masters) == 2
        assert re.search(r"job arrays:\s+\d+ \(8 cells\), \d+ \(1 cells\)", proc.stdout), output(proc)
        held = cluster.run("squeue", "-h", "-r", "-o", "%i %T %r", "-n", f"ablate-{sweep_dir.name}").stdout
        assert len(held.splitlines()) == 9 and all("PENDING" in line for line in held.splitlines()), held

        # cancel one task of the big array; the others stay queued. SLURM keeps no record of a task cancelled
        # before it started (neither squeue nor sacct list it): ablate infers CANCELLED from its array's record.
        victim_cell, victim = next((c, j) for c, j in jobs.items() if j.startswith(f"{masters[0]}_"))
        cluster.run("scancel", victim, check=True)
        wait_for(lambda: slurm_states([victim]) == {victim: "CANCELLED"}, 60, f"{victim} CANCELLED", cluster)
        proc = cli(cluster, "resubmit", str(sweep_dir), "--failed")
        assert proc.returncode == 0 and "resubmitted 1 cell(s)" in proc.stdout, output(proc)
        sweep = read_json(sweep_dir / "sweep.json")
        new_job, collector = sweep["jobs"][victim_cell], sweep["collector_job"]
        assert new_job != victim
        status = cli(cluster, "status", str(sweep_dir))  # judged by its new job, not by the cancelled one
        assert "9 pending" in status.stdout, output(status)
        dependency = cluster.run("scontrol", "show", "job", collector).stdout
        (dependency,) = re.findall(r"Dependency=(\S+)", dependency)
        waits_for = set(re.findall(r"after\w*:(\d+)", dependency))
        assert waits_for == {new_job.split("_")[0], *masters}, dependency
    finally:
        cancel = cli(cluster, "cancel", str(sweep_dir))
    # 8 queued cells + the resubmitted one + both collector jobs
    assert cancel.returncode == 0 and "cancelled 11 job(s)" in cancel.stdout, output(cancel)
    wait_for(lambda: not cluster.run("squeue", "-h", "-o", "%i", "-n",
                                     f"ablate-{sweep_dir.name},ablate-{sweep_dir.name}-collect").stdout.strip(),
             60, "the held jobs to go", cluster)


# ------------------------------------------------------------------------------- pre-submit checks
def test_a_request_the_partition_can_never_run_is_refused_before_submission(slurm_cluster, tmp_path):
    """The test node has 8 CPUs, 8000 MB and 2 GPUs: 16 CPUs would wait forever (PartitionConfig), 64 GB and 4 GPUs
    would make sbatch fail half-way through the submission. All refused together, exit 2, nothing submitted;
    hydra.launcher.force=true submits anyway (the 16-CPU cell then pends)."""
    sweep_dir = tmp_path / "toobig"  # also the job name: ablate-toobig
    too_big = "hydra.launcher.profiles=[{when: {lora.r: 8}, cpus_per_task: 16}, {when: {lora.r: 16}, mem_gb: 64, " \
              "gpus_per_node: 4}]"
    proc = run_ablate(slurm_cluster, "-m", "objective=dpo", "lora.r=8,16", "seed=0", *SLURM, too_big,
                      f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode == 2, output(proc)
    node = f"largest: {slurm_cluster.nodename}: 8 CPUs, 8000 MB, 2 GPUs"
    assert "cpus_per_task=16 x tasks_per_node=1 = 16 CPUs" in proc.stderr and node in proc.stderr, output(proc)
    assert "mem_gb=64 (65536 MB), gpus_per_node=4" in proc.stderr, output(proc)
    cells = cells_by(sweep_dir, "lora.r")
    assert f"[{cells['8']}]" in proc.stderr and f"[{cells['16']}]" in proc.stderr
    assert "hydra.launcher.force=true" in proc.stderr
    assert not list((sweep_dir / "cells").glob("*/status.json")) and not (sweep_dir / "slurm").exists()
    assert not sweep_jobs(slurm_cluster, sweep_dir)

    forced = run_ablate(slurm_cluster, "-m", "objective=dpo", "lora.r=8", "seed=0", *SLURM, too_big,
                        "hydra.launcher.force=true", "hydra.launcher.collector.enabled=false",
                        f"hydra.sweep.dir={sweep_dir}", *TINY)
    try:
        assert forced.returncode == 0, output(forced)
        assert len(sweep_jobs(slurm_cluster, sweep_dir)) == 1

        def reason() -> str | None:  # the scheduler names it within a scheduling cycle or two
            cells = json.loads(cli(slurm_cluster, "status", str(sweep_dir), "--json").stdout)["cells"]
            (cell,) = [c for c in cells if c["cell_id"] == cells_by(sweep_dir, "lora.r")["8"]]
            return cell["reason"] == "PartitionConfig" and cell

        cell = wait_for(reason, 60, "squeue's reason PartitionConfig in `ablate status --json`", slurm_cluster, 2)
        assert (cell["slurm_state"], cell["state"], cell["step"]) == ("PENDING", "pending", 0)
        assert "PENDING (PartitionConfig)" in cli(slurm_cluster, "status", str(sweep_dir)).stdout
    finally:
        cli(slurm_cluster, "cancel", str(sweep_dir))


# ------------------------------------------------------------------------------- multi-task cell
def test_a_two_task_cell_in_a_slurm_job_matches_one_process(slurm_cluster, embedded_model, compose_cfg, tmp_path):
    """tasks_per_node=2: srun starts two tasks in one job; submitit's JobEnvironment gives them the
    torch.distributed environment (gloo on CPU) and they train one cell data-parallel. Its held-out metrics equal
    the same cell trained in one process here, up to float summation order."""
    from ablate.sweep.run import run_cell

    overrides = ["objective=dpo", "seed=0", *TINY]
    # a micro-batch of 5 pairs cannot be shared by 2 tasks: refused before submission, even when forced
    uneven = [o if not o.startswith("trainer.batch_size=") else "trainer.batch_size=5" for o in overrides]
    proc = run_ablate(slurm_cluster, "-m", *uneven, *SLURM, "hydra.launcher.gpus_per_node=0",
                      "hydra.launcher.tasks_per_node=2", "hydra.launcher.force=true",
                      f"hydra.sweep.dir={tmp_path / 'uneven'}")
    assert proc.returncode == 2, output(proc)
    assert "5 pairs per micro-batch do not split evenly over 2 tasks" in proc.stderr, output(proc)
    assert "submitted" not in proc.stdout, output(proc)

    sweep_dir = tmp_path / "twotasks"
    proc = run_ablate(slurm_cluster, "-m", *overrides, *SLURM, "hydra.launcher.gpus_per_node=0",
                      "hydra.launcher.tasks_per_node=2", "hydra.launcher.collector.enabled=false",
                      f"hydra.sweep.dir={sweep_dir}")
    assert proc.returncode == 0, output(proc)
    (cell,) = read_json(sweep_dir / "sweep.json")["cells"]
    job = read_json(sweep_dir / "sweep.json")["jobs"][cell["cell_id"]]
    single = run_cell(compose_cfg(overrides), tmp_path / "single")  # meanwhile, the one-process reference
    assert sacct_of(slurm_cluster, job) == "COMPLETED", slurm_cluster.diagnostics()
    steps = slurm_cluster.run("sacct", "-n", "-P", "-o", "JobID,NTasks", "-j", job.split("_")[0]).stdout
    assert any(line.endswith("|2") for line in steps.splitlines()), steps  # the job step ran two tasks

    status = status_of(sweep_dir, cell["cell_id"])
    assert status["state"] == "done" and status["attempts"] == 1, status
    spread = read_json(sweep_dir / "cells" / cell["cell_id"] / "metrics.json")
    for key, value in single.items():
        assert spread[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_two_launchers_started_together_submit_each_cell_once(slurm_cluster, tmp_path):
    """The same sweep command twice at once into one sweep dir (jobs held, so nothing runs): the sweep's lock
    makes the second wait for the first's job ids, then skip those cells as queued."""
    sweep_dir = tmp_path / "twice"  # also the job name: ablate-twice
    command = [sys.executable, "-m", "ablate", "-m", "seed=0,1,2", *SLURM, "hydra.launcher.gpus_per_node=0",
               "+hydra.launcher.additional_parameters.hold=true", f"hydra.sweep.dir={sweep_dir}", *TINY]
    launchers = [subprocess.Popen(command, cwd=REPO_ROOT, env=slurm_cluster.client_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=180) for p in launchers]
        assert [p.returncode for p in launchers] == [0, 0], outs
        submitted = sorted(re.search(r"submitted (\d+);", out).group(1) for out, _ in outs)
        assert submitted == ["0", "3"], outs
        queued = slurm_cluster.run("squeue", "-h", "-r", "-o", "%i", "-n", f"ablate-{sweep_dir.name}").stdout
        assert len(queued.split()) == 3, queued
        assert len(set(read_json(sweep_dir / "sweep.json")["jobs"].values())) == 3
    finally:
        cli(slurm_cluster, "cancel", str(sweep_dir))


# ----------------------------------------------------------------------------------------------- races
def test_a_race_runs_round_after_round_on_slurm_with_no_terminal_attached(slurm_cluster, embedded_model, tmp_path):
    """`hydra.sweeper.race` on SLURM: the command submits round 1 and returns; after each round a race job takes the
    look, writes the report and submits the next round, until the race stops (race.json, the report)."""
    sweep_dir = tmp_path / "race"
    # futility and equivalence stops off, so that the tiny cells (which barely learn) run both rounds: 3 and 4 seeds
    args = ["-m", "objective=dpo,simpo", "hydra.sweeper.race={max_seeds:4,futility_power:0}",
            "select.equivalence_margin=null", *SLURM, "hydra.launcher.gpus_per_node=0", f"hydra.sweep.dir={sweep_dir}",
            *TINY]
    proc = run_ablate(slurm_cluster, *args)
    assert proc.returncode == 0, output(proc)
    assert "race round 1: 2 arms x seeds 0..2" in proc.stdout, output(proc)
    assert sweep_jobs(slurm_cluster, sweep_dir), "the command waited for the race instead of returning"
    status = cli(slurm_cluster, "status", str(sweep_dir))
    assert status.returncode == 0 and "race round 1 in flight (3 seeds per live arm); cells 6 of 8" in status.stdout, \
        output(status)

    def race_ended():
        record = read_json(sweep_dir / "race.json")
        return record["rounds"] and record["rounds"][-1]["stop"] and not sweep_jobs(slurm_cluster, sweep_dir)

    wait_for(race_ended, 3 * ENDED, "the race to end", slurm_cluster)
    record = read_json(sweep_dir / "race.json")
    rounds = record["rounds"]
    print(f"\nrace on SLURM: {len(rounds)} round(s), {[len(r['new_cells']) for r in rounds]} new cells, "
          f"stop {rounds[-1]['stop']}")
    assert [r["n"] for r in rounds] == list(range(3, 3 + len(rounds))) and "pending" not in record
    assert len(rounds) == 2 or rounds[0]["stop"] == "winner", rounds  # round 2 was submitted by the race job
    sweep = read_json(sweep_dir / "sweep.json")
    assert len(sweep["collector_jobs"]) == len(rounds)  # one race job after each round
    for job in sweep["collector_jobs"]:
        assert slurm_cluster.wait_job(job, timeout=60) == {job: "COMPLETED"}
    assert len(sweep["cells"]) == sum(len(r["new_cells"]) for r in rounds)
    for cell in sweep["cells"]:
        assert status_of(sweep_dir, cell["cell_id"])["state"] == "done", cell
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["race"]["stop"] == rounds[-1]["stop"] and len(summary["race"]["rounds"]) == len(rounds)
    assert summary["decisive"] == (rounds[-1]["stop"] == "winner")

    again = run_ablate(slurm_cluster, *args)  # the ended race: nothing is submitted
    assert again.returncode == 0 and "race already ended" in again.stdout, output(again)
    assert not sweep_jobs(slurm_cluster, sweep_dir)


def test_a_race_begun_locally_goes_on_on_slurm_from_the_round_its_process_left(slurm_cluster, embedded_model,
                                                                               tmp_path):
    """A race run with the local launcher and stopped during round 2 goes on on SLURM with the same command plus
    hydra/launcher=slurm. Stopped after round 2's cells, before its look: the command takes the look (here the race
    ends, at max_seeds). Stopped after one of the two cells: round 2 is submitted again less its finished cell, and
    the race job ends the race. While the local process lives, the command refuses (exit 2), submitting nothing; while
    the race's jobs live, the command without hydra/launcher=slurm refuses too, training nothing."""
    import os
    import socket

    from ablate.sweep.race import next_round
    from ablate.sweepdir.atomic import atomic_write_json
    from ablate.sweepdir.layout import update_status

    sweep_dir = tmp_path / "race"
    race = ["-m", "objective=dpo,simpo", "hydra.sweeper.race={max_seeds:4,futility_power:0}",
            "select.equivalence_margin=null", f"hydra.sweep.dir={sweep_dir}", *TINY]
    local = run_ablate(slurm_cluster, *race, timeout=600)
    assert local.returncode == 0, output(local)
    ran = read_json(sweep_dir / "race.json")
    assert [r["n"] for r in ran["rounds"]] == [3, 4], ran["rounds"]  # the tiny cells never decide at 3 seeds
    cells = {" ".join(c["overrides"]): c["cell_id"] for c in read_json(sweep_dir / "sweep.json")["cells"]}
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    def stopped_in_round_2(pid: int) -> dict:
        """race.json as the local race leaves it when stopped in round 2: the round pending, with its process."""
        record = {**ran, "rounds": ran["rounds"][:1]}
        plan = next_round(sweep_dir, record)
        assert plan["new"] == ran["rounds"][1]["new_cells"]
        record["pending"] = {**plan, "process": {"host": socket.gethostname(), "pid": pid}}
        atomic_write_json(sweep_dir / "race.json", record)
        return plan

    plan = stopped_in_round_2(os.getpid())  # the local race's process lives (this one stands in for it)
    proc = run_ablate(slurm_cluster, *race, *SLURM, "hydra.launcher.gpus_per_node=0")
    assert proc.returncode == 2 and f"round 2 of this race is running in process {os.getpid()}" in proc.stderr, \
        output(proc)
    assert not sweep_jobs(slurm_cluster, sweep_dir) and "pending" in read_json(sweep_dir / "race.json")

    stopped_in_round_2(int(gone.stdout))  # both cells of round 2 done, its look not taken
    proc = run_ablate(slurm_cluster, *race, *SLURM, "hydra.launcher.gpus_per_node=0")
    assert proc.returncode == 0 and "race ended at round 2 (4 seeds per live arm)" in proc.stdout, output(proc)
    record = read_json(sweep_dir / "race.json")
    assert [r["n"] for r in record["rounds"]] == [3, 4] and "pending" not in record
    assert not sweep_jobs(slurm_cluster, sweep_dir) and not read_json(sweep_dir / "sweep.json").get("jobs")

    plan = stopped_in_round_2(int(gone.stdout))  # one cell of round 2 done, one not
    update_status(sweep_dir / "cells" / cells[plan["new"][0]], state="running")
    held = "+hydra.launcher.additional_parameters.hold=true"  # held (alive) until released below
    proc = run_ablate(slurm_cluster, *race, *SLURM, "hydra.launcher.gpus_per_node=0", held)
    assert proc.returncode == 0, output(proc)
    assert "race round 2 again (its cells that did not finish): 2 arms x seeds 0..3" in proc.stdout, output(proc)
    assert "submitted 1; skipped 7 done" in proc.stdout, output(proc)
    # the same command without hydra/launcher=slurm while the race's jobs live: refused, nothing trains here
    local = run_ablate(slurm_cluster, *race)
    assert local.returncode == 2 and f"a race is running in {sweep_dir} on SLURM (round 2)" in local.stderr, \
        output(local)
    assert read_json(sweep_dir / "race.json")["pending"]["round"] == 2
    for job in sweep_jobs(slurm_cluster, sweep_dir):
        slurm_cluster.run("scontrol", "release", job.split("_")[0], check=True)

    def race_ended():
        now = read_json(sweep_dir / "race.json")
        return len(now["rounds"]) == 2 and now["rounds"][-1]["stop"] and not sweep_jobs(slurm_cluster, sweep_dir)

    wait_for(race_ended, 2 * ENDED, "the race to end on SLURM", slurm_cluster)
    record = read_json(sweep_dir / "race.json")
    assert [r["n"] for r in record["rounds"]] == [3, 4] and "pending" not in record
    assert record["rounds"][-1]["new_cells"] == plan["new"]
    assert len(read_json(sweep_dir / "sweep.json")["collector_jobs"]) == 1  # the race job that took round 2's look
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["race"]["stop"] == record["rounds"][-1]["stop"] and len(summary["race"]["rounds"]) == 2


def test_a_cancelled_slurm_race_is_resubmitted_with_its_race_job_and_goes_on_locally(slurm_cluster, embedded_model,
                                                                                     tmp_path):
    """The other way round: a race on SLURM whose jobs are cancelled (a maintenance window, a lost allocation).
    `ablate cancel` says how it goes on; `ablate resubmit` submits the round's cells again with the race job after
    them (not a plain collector, which would leave the race stalled at that round), and the race job takes the look and
    submits round 2; cancelled again, the race's command less hydra/launcher=slurm trains round 2 in this terminal,
    takes its look and ends the race, submitting nothing."""
    sweep_dir = tmp_path / "race"
    race = ["-m", "objective=dpo,simpo", "hydra.sweeper.race={max_seeds:4,futility_power:0}",
            "select.equivalence_margin=null", f"hydra.sweep.dir={sweep_dir}", *TINY]
    held = "+hydra.launcher.additional_parameters.hold=true"  # every submission of this sweep is held until released
    proc = run_ablate(slurm_cluster, *race, *SLURM, "hydra.launcher.gpus_per_node=0", held)
    assert proc.returncode == 0 and "race round 1: 2 arms x seeds 0..2" in proc.stdout, output(proc)
    assert len(sweep_jobs(slurm_cluster, sweep_dir)) == 7  # 6 cells and the race job

    cancel = cli(slurm_cluster, "cancel", str(sweep_dir))
    assert cancel.returncode == 0 and "cancelled 7 job(s)" in cancel.stdout, output(cancel)
    assert "a race: resubmitted, its round is followed by its race job" in cancel.stdout, output(cancel)
    here = cancel.stdout.split("go on in this terminal with: ")[1].strip().removesuffix(")")  # less its launcher
    assert f"hydra.sweep.dir={sweep_dir.resolve()}" in here and "hydra.sweeper.race=" in here, output(cancel)
    assert "hydra/launcher=slurm" not in here and "hydra.launcher." not in here, output(cancel)
    wait_sweep_ended(slurm_cluster, sweep_dir, 60)
    assert read_json(sweep_dir / "race.json")["pending"]["round"] == 1
    status = wait_for(lambda: (s := cli(slurm_cluster, "status", str(sweep_dir))).returncode == 0
                      and "race round 1 stopped on SLURM" in s.stdout and s, 30, "status to see the round stopped")
    assert f"`ablate resubmit {sweep_dir}` submits what did not finish with its race job" in status.stdout
    watch = cli(slurm_cluster, "status", str(sweep_dir), "--watch", "1", timeout=30)  # nothing left to follow: returns
    assert watch.returncode == 0, output(watch)

    again = cli(slurm_cluster, "resubmit", str(sweep_dir))
    assert again.returncode == 0 and re.search(r"resubmitted 6 cell\(s\) .*; race job \d+", again.stdout), output(again)
    for job in {j.split("_")[0] for j in sweep_jobs(slurm_cluster, sweep_dir)}:
        slurm_cluster.run("scontrol", "release", job, check=True)

    def round_2_submitted():
        now = read_json(sweep_dir / "race.json")
        return len(now["rounds"]) == 1 and (now.get("pending") or {}).get("round") == 2

    wait_for(round_2_submitted, 2 * ENDED, "the race job to take round 1's look and submit round 2", slurm_cluster)
    wait_for(lambda: len(sweep_jobs(slurm_cluster, sweep_dir)) == 3, 60, "round 2's jobs (held)", slurm_cluster)
    cancel = cli(slurm_cluster, "cancel", str(sweep_dir))
    assert cancel.returncode == 0 and "cancelled 3 job(s)" in cancel.stdout, output(cancel)
    wait_sweep_ended(slurm_cluster, sweep_dir, 60)
    looked_at = next(c["cell_id"] for c in read_json(sweep_dir / "sweep.json")["cells"] if "seed=0" in c["overrides"])
    refused = cli(slurm_cluster, "resubmit", str(sweep_dir), "--cells", looked_at)  # round 1's: its look is taken
    assert refused.returncode == 2 and "not in the race's round in flight" in refused.stderr, output(refused)

    assert here.startswith("python -m ablate -m ")
    local = run_ablate(slurm_cluster, *shlex.split(here)[3:], timeout=600)  # the command ablate cancel printed
    assert local.returncode == 0, output(local)
    assert "race round 2: 2 live arm(s) x seeds 0..3 (2 new cells)" in local.stdout, output(local)
    record = read_json(sweep_dir / "race.json")
    assert [r["n"] for r in record["rounds"]] == [3, 4] and record["rounds"][-1]["stop"] and "pending" not in record
    assert not sweep_jobs(slurm_cluster, sweep_dir)
    assert len(read_json(sweep_dir / "sweep.json")["collector_jobs"]) == 3  # round 1's, resubmitted, round 2's
    summary = read_json(sweep_dir / "report" / "summary.json")
    assert summary["race"]["stop"] == record["rounds"][-1]["stop"] and summary["cell_counts"] == {"done": 8}
    nothing = cli(slurm_cluster, "resubmit", str(sweep_dir))  # an ended race: its cells are done, nothing to submit
    assert nothing.returncode == 0 and nothing.stdout.strip() == "nothing to resubmit", output(nothing)


# ------------------------------------------------------------------------------------- tuned + confirm
def test_a_tuned_sweep_confirms_itself_from_its_collector_job(slurm_cluster, embedded_model, tmp_path):
    """hydra.sweeper.confirm on SLURM: the tuning sweep's collector job writes its report, then submits the
    confirmation (the selected settings on fresh seeds), whose own collector decides on the test pairs."""
    sweep_dir = tmp_path / "tuned"
    proc = run_ablate(slurm_cluster, "-m", "++hydra.sweeper.tune={dpo:{objective.beta:[0.1,0.3]},"
                      "simpo:{objective.beta:[2.0,5.0]}}", "data.validation_pairs=12", "seed=0",
                      "hydra.sweeper.confirm=3", *SLURM, "hydra.launcher.gpus_per_node=0",
                      f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode == 0, output(proc)
    assert "the collector job submits the confirmation" in proc.stdout, output(proc)
    confirm_dir = tmp_path / "tuned_confirm"
    wait_for(lambda: (confirm_dir / "report" / "summary.json").exists() and not sweep_jobs(slurm_cluster, sweep_dir)
             and not sweep_jobs(slurm_cluster, confirm_dir), 3 * ENDED, "the confirmation's report", slurm_cluster)
    tuned = read_json(sweep_dir / "report" / "summary.json")
    assert tuned["decisive"] is False and tuned["decision"]["exploratory"].startswith("a tuning sweep")
    record = read_json(confirm_dir / "tuning.json")
    assert record["confirms"] == str(sweep_dir.resolve()) and "confirm" not in record
    picked = {o: e["selected"] for o, e in tuned["tuning"]["groups"][0]["selection"].items()}
    assert record["spaces"] == {o: {k: [v] for k, v in s.items()} for o, s in picked.items()}
    confirmed = read_json(confirm_dir / "report" / "summary.json")
    assert confirmed["cell_counts"] == {"done": 6} and confirmed["decision"]["pairs"] == 32 - 12
    assert confirmed["explanation"].startswith(f"Confirmation of {sweep_dir.resolve()}")
    assert read_json(confirm_dir / "sweep.json")["launcher"] == "slurm"


def test_a_tuning_race_on_slurm_ends_in_its_race_job_which_submits_the_confirmation(slurm_cluster, embedded_model,
                                                                                     tmp_path):
    """A tuning race (hydra.sweeper.tune + hydra.sweeper.race) on SLURM: its race job takes the look on validation
    pairs, ends the race at its cell budget (one round of 2 seeds x 4 settings = max_cells; with futility and
    equivalence off, and 2 seeds too few to drop a setting, no space settles at round 1) and, as a tuning sweep's
    collector job does, submits the confirmation asked for with hydra.sweeper.confirm; no terminal attached."""
    sweep_dir = tmp_path / "tuning_race"
    proc = run_ablate(slurm_cluster, "-m", "++hydra.sweeper.tune={dpo:{objective.beta:[0.1,0.3]},"
                      "simpo:{objective.beta:[2.0,5.0]}}", "data.validation_pairs=12", "select.min_seeds=2",
                      "select.equivalence_margin=0", "hydra.sweeper.race={max_seeds:3,max_cells:8,futility_power:0}",
                      "hydra.sweeper.confirm=2", *SLURM,
                      "hydra.launcher.gpus_per_node=0", f"hydra.sweep.dir={sweep_dir}", *TINY)
    assert proc.returncode == 0, output(proc)
    assert "race round 1: 4 arms x seeds 0..1" in proc.stdout, output(proc)
    confirm_dir = tmp_path / "tuning_race_confirm"
    wait_for(lambda: (confirm_dir / "report" / "summary.json").exists() and not sweep_jobs(slurm_cluster, sweep_dir)
             and not sweep_jobs(slurm_cluster, confirm_dir), 3 * ENDED, "the confirmation's report", slurm_cluster)
    rounds = read_json(sweep_dir / "race.json")["rounds"]
    assert len(rounds) == 1 and rounds[0]["stop"] == "budget" and rounds[0]["pairs"] == 12
    assert "max_cells = 8" in rounds[0]["stop_reason"] and not rounds[0]["drops"]
    tuned = read_json(sweep_dir / "report" / "summary.json")
    assert tuned["decisive"] is False and tuned["decision"]["exploratory"].startswith("a tuning sweep")
    picked = {o: e["selected"] for o, e in tuned["tuning"]["groups"][0]["selection"].items()}
    record = read_json(confirm_dir / "tuning.json")
    assert record["confirms"] == str(sweep_dir.resolve())
    assert record["spaces"] == {o: {k: [v] for k, v in s.items()} for o, s in picked.items()}
    confirmed = read_json(confirm_dir / "report" / "summary.json")
    assert confirmed["cell_counts"] == {"done": 4} and confirmed["decision"]["pairs"] == 32 - 12
    assert read_json(confirm_dir / "sweep.json")["launcher"] == "slurm"
