"""What a SLURM partition can ever give, and the requests it never will: checked before submission.

A request no node of the partition can satisfy is not rejected by sbatch: the job waits forever with
reason `PartitionConfig` (or `Resources`). The limits come from the cluster's configuration, not its
current load: `scontrol show partition` (MaxTime, MaxNodes, MaxCPUsPerNode, MaxMemPerNode, nodes),
`scontrol show node` (CPUTot, RealMemory, Gres) and MaxArraySize from `scontrol show config`. A node
that is down or drained still counts: it may come back.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "N/A", "")


class ImpossibleRequest(ValueError):
    """Some cells ask for more than the partition can ever give; the message names cells, request and limit."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: list[Node]
    max_time_min: float | None = None  # None: unlimited
    max_nodes: int | None = None
    max_cpus_per_node: int | None = None
    max_mem_per_node_mb: int | None = None
    max_array_size: int | None = None


def _fields(line: str) -> dict[str, str]:
    # one `scontrol -o` record; some values hold spaces (OS=Linux 6.1 #1 SMP), their tails are dropped
    return dict(re.findall(r"(\w+)=(\S*)", line))


def _limit(value: str | None) -> int | None:
    if value is None or value.upper() in UNLIMITED:
        return None
    return int(re.match(r"\d+", value).group())


def parse_minutes(value: str | None) -> float | None:
    """SLURM's time formats (minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]])
    in minutes; None for unlimited."""
    if value is None or value.upper() in UNLIMITED:
        return None
    days, dash, clock = value.partition("-") if "-" in value else ("0", "", value)
    parts = [int(p) for p in clock.split(":")]
    if dash:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = 0, parts[0], 0
    return (int(days) * 24 + hours) * 60 + minutes + seconds / 60


def parse_gpus(gres: str | None) -> int:
    """GPUs in a node's Gres: `gpu:2`, `gpu:a100:4(S:0-1)`, `gpu:2,shard:8`, `(null)`."""
    if not gres:
        return 0
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.split(":")
        if parts[0] == "gpu" and len(parts) > 1 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def parse_partition(partition_line: str, node_lines: list[str], config_text: str = "") -> Partition:
    """A Partition from `scontrol show partition -o` (one line), `scontrol show node -o` and `show config`."""
    p = _fields(partition_line)
    name = p["PartitionName"]
    nodes = []
    for line in node_lines:
        n = _fields(line)
        if not n.get("NodeName") or name not in (n.get("Partitions") or "").split(","):
            continue
        nodes.append(Node(n["NodeName"], int(n.get("CPUTot") or 0), int(n.get("RealMemory") or 0),
                          parse_gpus(n.get("Gres"))))
    array = re.search(r"^MaxArraySize\s*=\s*(\d+)", config_text, re.MULTILINE)
    return Partition(name=name, nodes=nodes, max_time_min=parse_minutes(p.get("MaxTime")),
                     max_nodes=_limit(p.get("MaxNodes")), max_cpus_per_node=_limit(p.get("MaxCPUsPerNode")),
                     max_mem_per_node_mb=_limit(p.get("MaxMemPerNode")),
                     max_array_size=int(array.group(1)) if array else None)


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=True).stdout


def read_partition(name: str | None) -> Partition:
    """The partition `name` (None: the cluster's default one) as the cluster is configured now."""
    lines = [line for line in _scontrol("show", "partition", "-o").splitlines() if line.strip()]
    if name is None:
        lines = [line for line in lines if _fields(line).get("Default") == "YES"] or lines[:1]
    else:
        lines = [line for line in lines if _fields(line).get("PartitionName") == name]
    if not lines:
        known = [_fields(line).get("PartitionName") for line in _scontrol("show", "partition", "-o").splitlines()]
        raise ImpossibleRequest(f"SLURM has no partition {name!r} (known: {', '.join(filter(None, known))})")
    return parse_partition(lines[0], _scontrol("show", "node", "-o").splitlines(), _scontrol("show", "config"))


def request_problems(resources: dict, partition: Partition) -> list[str]:
    """Why `resources` (cell_resources' keys) can never run in `partition`; empty when some node fits it."""
    problems = []
    tasks = int(resources.get("tasks_per_node") or 1)
    cpus = int(resources.get("cpus_per_task") or 1) * tasks
    mem_mb = int(float(resources.get("mem_gb") or 0) * 1024)  # submitit passes --mem=<n>GB; SLURM's GB is 1024 MB
    gpus = int(resources.get("gpus_per_node") or 0)
    nodes = int(resources.get("nodes") or 1)
    timeout = resources.get("timeout_min")

    if partition.max_time_min is not None and timeout and timeout > partition.max_time_min:
        problems.append(f"timeout_min={timeout} > MaxTime {partition.max_time_min:g} min")
    if partition.max_nodes is not None and nodes > partition.max_nodes:
        problems.append(f"nodes={nodes} > MaxNodes {partition.max_nodes}")
    if nodes > len(partition.nodes):
        problems.append(f"nodes={nodes} > {len(partition.nodes)} node(s) in the partition")
    if partition.max_cpus_per_node is not None and cpus > partition.max_cpus_per_node:
        problems.append(f"{cpus} CPUs per node > MaxCPUsPerNode {partition.max_cpus_per_node}")
    if partition.max_mem_per_node_mb is not None and mem_mb > partition.max_mem_per_node_mb:
        problems.append(f"mem_gb={resources.get('mem_gb')} ({mem_mb} MB) > MaxMemPerNode "
                        f"{partition.max_mem_per_node_mb} MB")
    if not partition.nodes:
        return problems + ["the partition has no nodes"]
    # One node must hold all of it at once: the largest node for each resource may be different nodes.
    if not any(n.cpus >= cpus and n.mem_mb >= mem_mb and n.gpus >= gpus for n in partition.nodes):
        asked = (f"cpus_per_task={resources.get('cpus_per_task')} x tasks_per_node={tasks} = {cpus} CPUs, "
                 f"mem_gb={resources.get('mem_gb')} ({mem_mb} MB), gpus_per_node={gpus}")
        biggest = "; ".join(f"{n.name}: {n.cpus} CPUs, {n.mem_mb} MB, {n.gpus} GPUs"
                            for n in sorted(partition.nodes, key=lambda n: (n.cpus, n.mem_mb, n.gpus))[-3:])
        problems.append(f"no node has {asked} (largest: {biggest})")
    return problems


def check_requests(groups: list[tuple[dict, list[str]]], partitions: dict[str | None, Partition],
                   array_size: int | None = None) -> None:
    """Raise ImpossibleRequest naming every (resources, cell labels) group some limit rules out."""
    lines = []
    for resources, labels in groups:
        partition = partitions[resources.get("partition")]
        problems = request_problems(resources, partition)
        if problems:
            shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
            lines.append(f"  {len(labels)} cell(s) [{shown}] on partition {partition.name!r}: " + "; ".join(problems))
    limits = [p.max_array_size for p in partitions.values() if p.max_array_size]
    if array_size and limits and array_size > min(limits):
        lines.append(f"  hydra.launcher.max_array_size={array_size} > the cluster's MaxArraySize {min(limits)}")
    if lines:
        raise ImpossibleRequest("these requests can never run on this cluster (they would wait forever, reason "
                                "PartitionConfig); nothing was submitted:\n" + "\n".join(lines) +
                                "\nLower them (hydra.launcher.*, or a profile), choose another partition, or submit "
                                "anyway with hydra.launcher.force=true")
