"""Read W&B's offline run files (`run-<id>.wandb`) back, so tests assert what W&B would upload.

wandb 0.31 ships no Python reader. The format (docs/ARCHITECTURE.md §9) is a LevelDB log: a 7-byte file header
(":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of records, each with a 7-byte header
(CRC-32 of type byte + data, little-endian length, type FULL/FIRST/MIDDLE/LAST); a record never
starts in the last 6 bytes of a block (zero padding). Each reassembled record is a protobuf
`wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a .wandb file; a CRC mismatch or a torn record is an error, not a skip."""
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER.size:  # created, header not written yet
        return []
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B run file"
    records, pending, offset = [], None, FILE_HEADER.size
    while offset < len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < RECORD_HEADER.size:  # the block's zero trailer
            offset += left_in_block
            continue
        crc, length, kind = RECORD_HEADER.unpack_from(data, offset)
        if (crc, length, kind) == (0, 0, 0):  # zero-filled rest of a block
            offset += left_in_block
            continue
        chunk = data[offset + RECORD_HEADER.size: offset + RECORD_HEADER.size + length]
        assert len(chunk) == length, f"{path}: record torn at byte {offset}"
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: CRC mismatch at byte {offset}"
        offset += RECORD_HEADER.size + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = bytearray(chunk)
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending = bytes(pending + chunk)
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
    return records


def _update(target: dict, item) -> None:
    """Apply one config/summary/history item; a nested key (a logged Table's fields) becomes nested dicts."""
    *parents, last = list(item.nested_key) or [item.key]
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What one offline run file holds, as plain Python."""

    run_id: str
    project: str
    group: str
    job_type: str
    name: str
    tags: list[str]
    config: dict = field(default_factory=dict)  # key -> value (W&B's {"value": ...} envelope removed)
    history: list[dict] = field(default_factory=list)  # one dict per logged step, `_step` included
    summary: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)  # define_metric records
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def finished_records(path: str | Path, timeout_s: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """The records of a finished run's file. wandb-core writes it asynchronously: run.finish() returns
    before the last records reach the disk, so wait for the exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def read_run(path: str | Path) -> OfflineRun:
    """The run a .wandb file describes: its RunRecord, then config/history/summary updates in order."""
    records = finished_records(path)
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    run = OfflineRun(run_record.run_id, run_record.project, run_record.run_group, run_record.job_type,
                     run_record.display_name, list(run_record.tags))
    for item in run_record.config.update:
        _update(run.config, item)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                _update(run.config, item)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _update(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _update(run.summary, item)
        elif kind == "metric":
            run.metrics.append(record.metric)
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in run.config.items()
                  if k != "_wandb"}
    return run


def offline_runs(root: str | Path) -> list[tuple[Path, OfflineRun]]:
    """Every offline run file under `root`, oldest first, with what it holds."""
    paths = sorted(Path(root).rglob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [(path, read_run(path)) for path in paths]
