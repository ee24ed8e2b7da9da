"""The decision ledger, <sweep_dir>/decisions.jsonl: what every collection of the sweep tested and announced.

One JSON object per line, appended, never rewritten: the sweep's memory of the looks it has had, so a
later collection on more seeds knows it is look 2 of the same test and how much of alpha is spent
(ablate.collect.sequential gives the entries their meaning). A line that cannot be read is reported by
its number, not skipped in silence: past looks the ledger cannot vouch for make the verdict exploratory.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

LEDGER = "decisions.jsonl"
FORMAT = 1


def ledger_path(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / LEDGER


def read_ledger(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(entries in order, problems): each problem names the file and line it could not read."""
    path = ledger_path(sweep_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as error:
        return [], [f"{path}: unreadable ({error})"]
    entries, problems = [], []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            # a last line cut short by a crash mid-append is still a look that may have been shown: reported too
            problems.append(f"{path} line {number}: not JSON ({error.msg})")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("test"), dict):
            problems.append(f"{path} line {number}: not a ledger entry (an object with a 'test')")
            continue
        entries.append(entry)
    return entries, problems


def append_entry(sweep_dir: str | Path, entry: dict) -> None:
    """Append one line under an exclusive lock (two collectors at once each get their own whole line)."""
    line = json.dumps({"format": FORMAT, **entry}, sort_keys=True, allow_nan=False) + "\n"
    path = ledger_path(sweep_dir)
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # one line per collection: cheap, and a look once shown must not be forgotten
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
