"""Is a locally run cell still alive? Claims and heartbeats, so that a kill -9 is seen and no cell is trained twice.

A SLURM job has SLURM as witness (ablate.sweep.status); a local cell has none: a killed launcher leaves
status.json at `running` for ever. So a local cell records its host and pid in status.json and holds
a claim, `cells/<id>/claim.json` (host, pid), created exclusively and touched by a heartbeat thread
every HEARTBEAT_S. The claim is alive while its process exists (same host: the pid is asked) or,
from another host, while its heartbeat is younger than STALE_S. A second launcher started on the same
sweep finds the claim alive and leaves the cell alone; a dead claim is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from ablate.sweepdir.layout import CellStatus

CLAIM = "claim.json"  # in the cell directory (ablate.sweepdir.layout)
HEARTBEAT_S = 30.0
LOCK = ".lock"  # in the sweep directory
STALE_S = 300.0  # ten missed heartbeats: the process on the other host is gone, or its disk is


class CellBusy(RuntimeError):
    """Another live process trains this cell."""


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_alive(record: dict, heartbeat_age_s: float | None) -> bool:
    """Whether the process of a claim (or of a running status.json: host, pid) is still there."""
    if record.get("host") == socket.gethostname() and record.get("pid"):
        return process_exists(int(record["pid"]))
    return heartbeat_age_s is not None and heartbeat_age_s < STALE_S


def read_claim(cell_dir: Path) -> tuple[dict, float | None]:
    """The claim's record and its heartbeat age in seconds ({}, None when there is none)."""
    path = Path(cell_dir) / CLAIM
    try:
        return json.loads(path.read_text()), time.time() - path.stat().st_mtime
    except (FileNotFoundError, json.JSONDecodeError):
        return {}, None


def claim_holder(cell_dir: Path) -> dict | None:
    """The live claim of another process on this cell, or None."""
    record, age = read_claim(cell_dir)
    mine = record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()
    return record if record and not mine and holder_alive(record, age) else None


class Claim:
    """`with Claim(cell_dir):` train the cell; CellBusy if a live process holds it. Heartbeat while held."""

    def __init__(self, cell_dir: Path):
        self.path = Path(cell_dir) / CLAIM
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claim:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = claim_holder(self.path.parent)
                if holder is not None:
                    raise CellBusy(f"trained by pid {holder.get('pid')} on {holder.get('host')} (another launcher; "
                                   f"{self.path} is its claim)") from None
                self.path.unlink(missing_ok=True)  # its process is gone: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            break
        else:
            raise CellBusy(f"{self.path}: another launcher claimed this cell at the same moment")
        self._thread = threading.Thread(target=self._beat, name="ablate-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def __exit__(self, *exc) -> None:
        self._stop.set()
        record, _ = read_claim(self.path.parent)
        if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)


def local_cell_dead(cell_dir: Path, status: CellStatus) -> str | None:
    """Why a cell run locally (no SLURM job) whose status.json says `running` is not running any more, else None."""
    if status.state != "running" or status.job_id or not status.pid:
        return None  # SLURM cells have SLURM as witness; a status.json from before pids were recorded: unknown
    record, age = read_claim(cell_dir)
    holder = record or {"host": status.host, "pid": status.pid}
    try:
        if holder_alive(holder, age):
            return None
    except (TypeError, ValueError):  # a garbled record proves nothing
        return None
    return (f"process {holder.get('pid')} on {holder.get('host')} is gone: the cell died while running "
            "(killed?); re-running the sweep resumes it")


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path):
    """One launcher at a time reads and updates the sweep's books (sweep.json, which cells are submitted).

    Two SLURM launchers started on the same sweep would otherwise both see a cell unsubmitted and both
    submit it. flock: released by the kernel when the holder dies, so a killed launcher never leaves it held
    (on network filesystems flock may be local to a node; cells' claims do not depend on it).
    """
    import fcntl

    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(sweep_dir) / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
