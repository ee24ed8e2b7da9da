"""End-to-end checks of the private SLURM test cluster (tests/slurm/cluster.py) and of submitit against it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .cluster import SlurmCluster, _alive, _pids_with_env

pytestmark = pytest.mark.slurm


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_node_idle_in_default_partition(slurm_cluster: SlurmCluster) -> None:
    res = slurm_cluster.run("sinfo", "-h", "-o", "%P %t %D %G", check=True)
    assert res.stdout.split() == [f"{slurm_cluster.partition}*", "idle", "1", f"gpu:{slurm_cluster.gpus}"]
    res = slurm_cluster.run("sacctmgr", "-n", "-P", "show", "cluster", "format=Cluster", check=True)
    assert res.stdout.split() == [slurm_cluster.cluster_name]


def test_config_as_designed(slurm_cluster: SlurmCluster) -> None:
    conf = dict(
        line.split("=", 1)
        for line in (ln.replace(" ", "") for ln in slurm_cluster.run("scontrol", "show", "config").stdout.splitlines())
        if "=" in line
    )
    assert conf["MaxArraySize"] == str(slurm_cluster.max_array_size)
    assert conf["JobRequeue"] == "1"
    assert conf["AccountingStorageType"] == "accounting_storage/slurmdbd"
    assert conf["ProctrackType"] == "proctrack/linuxproc"
    assert conf["TaskPlugin"] == "task/none"


def test_sbatch_wrap_completes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    job_id = slurm_cluster.sbatch("--wrap", "echo hi", "-o", str(out))
    assert slurm_cluster.wait_job(job_id) == {str(job_id): "COMPLETED"}
    res = slurm_cluster.run("sacct", "-j", str(job_id), "--format=State", "-n", "-X", check=True)
    assert res.stdout.split() == ["COMPLETED"]
    assert out.read_text().strip() == "hi"


def test_gpus_set_cuda_visible_devices(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    ids = {}
    for n in (1, 2):
        out = tmp_path / f"gpus{n}.txt"
        ids[n] = slurm_cluster.sbatch(f"--gpus-per-node={n}", "-o", str(out), "--wrap", "echo $CUDA_VISIBLE_DEVICES")
    for job_id in ids.values():
        assert slurm_cluster.wait_job(job_id) == {str(job_id): "COMPLETED"}
    assert (tmp_path / "gpus1.txt").read_text().strip() in {"0", "1"}
    assert (tmp_path / "gpus2.txt").read_text().strip() == "0,1"


def test_failing_job_is_failed(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.sbatch("-o", "/dev/null", "--wrap", "exit 3")
    assert slurm_cluster.wait_job(job_id) == {str(job_id): "FAILED"}
    res = slurm_cluster.run("sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "State,ExitCode", check=True)
    assert res.stdout.strip() == "FAILED|3:0"


def test_array_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    job_id = slurm_cluster.sbatch(
        "--array=0-2", "-o", str(tmp_path / "task-%a.txt"), "--wrap", "echo $SLURM_ARRAY_TASK_ID"
    )
    states = slurm_cluster.wait_job(job_id, n_tasks=3)
    assert states == {f"{job_id}_{i}": "COMPLETED" for i in range(3)}
    assert [(tmp_path / f"task-{i}.txt").read_text().strip() for i in range(3)] == ["0", "1", "2"]
    # MaxArraySize bounds the array indices: max_array_size tasks fit, one more does not
    too_big = slurm_cluster.run("sbatch", f"--array=0-{slurm_cluster.max_array_size}", "--hold", "--wrap", "true")
    assert too_big.returncode != 0
    assert "array" in too_big.stderr.lower()
    fits = slurm_cluster.sbatch(f"--array=0-{slurm_cluster.max_array_size - 1}", "--hold", "--wrap", "true")
    slurm_cluster.run("scancel", str(fits), check=True)


def test_four_concurrent_one_cpu_jobs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The node declares more CPUs than the machine has, so ~4 single-CPU jobs run side by side."""
    ids = [slurm_cluster.sbatch("-c", "1", "-o", "/dev/null", "--wrap", "sleep 3") for _ in range(4)]

    def all_running() -> bool:
        res = slurm_cluster.run("squeue", "-h", "-o", "%T", "-j", ",".join(map(str, ids)))
        return res.stdout.split() == ["RUNNING"] * 4

    _wait_for(all_running, 15, "4 concurrent running jobs")
    for job_id in ids:
        assert slurm_cluster.wait_job(job_id) == {str(job_id): "COMPLETED"}


def test_requeue(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    script = (
        f'echo "run ${{SLURM_RESTART_COUNT:-0}}" >> {runs}; '
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi'
    )
    job_id = slurm_cluster.sbatch("--requeue", "-o", "/dev/null", "--wrap", script)
    _wait_for(lambda: runs.exists() and "run 0" in runs.read_text(), 20, "first run")
    slurm_cluster.run("scontrol", "requeue", str(job_id), check=True)
    assert slurm_cluster.wait_job(job_id, timeout=60) == {str(job_id): "COMPLETED"}
    assert runs.read_text().split("\n")[:2] == ["run 0", "run 1"]


def test_submitit_result(slurm_activated: SlurmCluster, tmp_path: Path) -> None:
    import submitit

    # defined locally so cloudpickle ships it by value: the job cannot import this test module
    def answer() -> int:
        return 42

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_activated.partition, timeout_min=2, slurm_signal_delay_s=15)
    job = executor.submit(answer)
    assert job.result() == 42
    assert job.watcher.get_state(job.job_id, mode="force") == "COMPLETED"


def test_submitit_sees_job_that_died_without_result(slurm_activated: SlurmCluster, tmp_path: Path) -> None:
    import submitit

    def die() -> None:
        os._exit(3)

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_activated.partition, timeout_min=2, slurm_signal_delay_s=15)
    job = executor.submit(die)
    job._results_timeout_s = 1  # submitit otherwise waits 15 s for a result file that will never come
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        job.result()
    assert job.watcher.get_state(job.job_id, mode="force") == "FAILED"  # known from sacct alone


def test_second_cluster_side_by_side_and_stop(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    other = SlurmCluster(tmp_path / "other")
    assert {other.ctld_port, other.slurmd_port, other.dbd_port, other.mysql_port}.isdisjoint(
        {slurm_cluster.ctld_port, slurm_cluster.slurmd_port, slurm_cluster.dbd_port, slurm_cluster.mysql_port}
    )
    other.start()
    try:
        job_id = other.sbatch("-o", "/dev/null", "--wrap", "sleep 300")
        assert job_id == 1  # a fresh cluster numbers its jobs from 1
        _wait_for(
            lambda: other.run("squeue", "-h", "-o", "%T", "-j", "1").stdout.strip() == "RUNNING", 20, "job running"
        )
        daemons = [p.pid for p in other._procs.values()]
        marker = f"ABLATE_SLURM_CLUSTER={other.root}".encode()
        job_pids = _pids_with_env(marker)
        assert job_pids, "slurmstepd/job processes carry the cluster marker"
    finally:
        other.stop()
    other.stop()  # idempotent
    assert not [p for p in daemons + job_pids if _alive(p)]
    assert not _pids_with_env(marker)
    # the session cluster is untouched
    res = slurm_cluster.run("sinfo", "-h", "-o", "%t", check=True)
    assert res.stdout.strip() in {"idle", "mix", "alloc"}
