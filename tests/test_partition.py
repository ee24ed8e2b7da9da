"""Requests checked against what a SLURM partition can ever give (ablate.sweep.partition), from scontrol's own lines.

The lines below were printed by the test cluster of tests/slurm/ (SLURM 22.05, `scontrol show partition -o`,
`scontrol show node -o`); the SLURM-marked end-to-end check is in tests/test_slurm_launcher.py.
"""

from __future__ import annotations

import pytest

from ablate.sweep.partition import ImpossibleRequest, check_requests, parse_gpus, parse_minutes, parse_partition

PARTITION = ("PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
             "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
             "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 "
             "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
             "TotalCPUs=8 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
             "MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=8000M,node=1,billing=8")
NODE = ("NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=8 CPUTot=8 CPULoad=6.96 "
        "AvailableFeatures=(null) ActiveFeatures=(null) Gres=gpu:2 NodeAddr=127.0.0.1 NodeHostName=vm "
        "Version=22.05.8 OS=Linux 6.18.44-fc-v857 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=8000 AllocMem=0 "
        "FreeMem=19716 Sockets=8 Boards=1 State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A "
        "Partitions=gpu  BootTime=2026-12-02T12:46:33 CfgTRES=cpu=8,mem=8000M,billing=8")
# a second, bigger node in another partition must not count for `gpu`
OTHER_NODE = NODE.replace("NodeName=vm", "NodeName=big").replace("CPUTot=8", "CPUTot=64").replace(
    "Partitions=gpu", "Partitions=cpu")
FITS = {"partition": "gpu", "cpus_per_task": 4, "tasks_per_node": 2, "mem_gb": 7, "gpus_per_node": 2, "nodes": 1,
        "timeout_min": 600}


@pytest.fixture
def gpu():
    return parse_partition(PARTITION, [NODE, OTHER_NODE], "MaxArraySize            = 8\n")


def test_the_partition_is_read_from_scontrol_lines(gpu):
    assert gpu.name == "gpu" and gpu.max_array_size == 8 and gpu.max_time_min is None
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in gpu.nodes] == [("vm", 8, 8000, 2)]


def test_a_request_the_node_can_hold_passes(gpu):
    check_requests([(FITS, ["a1"])], {"gpu": gpu}, array_size=8)


@pytest.mark.parametrize("change, named", [
    ({"cpus_per_task": 8}, "cpus_per_task=8 x tasks_per_node=2 = 16 CPUs"),
    ({"mem_gb": 32}, "mem_gb=32 (32768 MB)"),
    ({"gpus_per_node": 4}, "gpus_per_node=4"),
    ({"nodes": 2}, "nodes=2 > 1 node(s) in the partition"),
])
def test_a_request_no_node_can_hold_is_refused_naming_cells_request_and_limit(gpu, change, named):
    with pytest.raises(ImpossibleRequest) as error:
        check_requests([(FITS | change, ["c1", "c2"]), (FITS, ["ok"])], {"gpu": gpu})
    message = str(error.value)
    assert "2 cell(s) [c1, c2] on partition 'gpu'" in message and named in message
    if "nodes" not in change:
        assert "largest: vm: 8 CPUs, 8000 MB, 2 GPUs" in message
    assert "[ok]" not in message and "hydra.launcher.force=true" in message


def test_time_nodes_and_array_size_limits(gpu):
    limited = parse_partition(PARTITION.replace("MaxTime=UNLIMITED", "MaxTime=1-00:00:00").replace(
        "MaxNodes=UNLIMITED", "MaxNodes=1"), [NODE], "MaxArraySize = 8")
    with pytest.raises(ImpossibleRequest, match=r"timeout_min=2000 > MaxTime 1440 min"):
        check_requests([(FITS | {"timeout_min": 2000}, ["t"])], {"gpu": limited})
    with pytest.raises(ImpossibleRequest, match=r"max_array_size=100 > the cluster's MaxArraySize 8"):
        check_requests([(FITS, ["a"])], {"gpu": gpu}, array_size=100)


def test_slurm_time_and_gres_formats():
    assert [parse_minutes(v) for v in ("30", "30:30", "02:00:00", "1-00:00:00", "2-12", "UNLIMITED")] == [
        30, 30.5, 120, 1440, 3600, None]
    assert [parse_gpus(g) for g in ("gpu:2", "gpu:a100:4(S:0-1)", "gpu:2,shard:8", "(null)", "")] == [2, 4, 2, 0, 0]
