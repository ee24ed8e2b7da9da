"""Files that readers never see half-written: write to a temporary name, then rename into place."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; colleagues and the collector job read these
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # rename is atomic for readers and concurrent writers; no fsync: durability across a power
        # loss is not worth an fsync per file when a sweep writes thousands of them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` in the place of `target` as a whole: readers see the old or the new one, never a mix.

    Linux's renameat2(RENAME_EXCHANGE) swaps the two atomically; where it is missing or the filesystem
    refuses it (some network filesystems), two renames leave a moment with no `target` at all, but
    still never a mix of old and new files. `new` ends up holding the old content (or gone).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


# what a killed writer leaves: atomic_write_bytes' mkstemp files (8 random characters), replace_dir's old folders,
# build_directory_once's mkdtemp staging folders (the embedded model and GGUF caches)
_LEFTOVERS = (re.compile(r"\..+\.[a-z0-9_]{8}"), re.compile(r"\..+\.old-\d+"), re.compile(r"\.[0-9a-f]+-[a-z0-9_]{8}"))


def clean_stale_temp_files(root: Path, older_than_s: float = 900.0) -> list[Path]:
    """Remove the leftovers of killed writers under `root` once older than `older_than_s` (a live writer's are
    milliseconds old). Returns what was removed."""
    removed = []
    now = time.time()
    for path in Path(root).rglob(".*"):
        if "wandb" in path.parts or not any(p.fullmatch(path.name) for p in _LEFTOVERS):
            continue
        try:
            if now - path.lstat().st_mtime < older_than_s:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except FileNotFoundError:  # another launcher cleaned it first
            continue
        removed.append(path)
    return removed


def build_directory_once(target: Path, build, *, done: str, stale_after_s: float = 6 * 3600) -> Path:
    """`target`, built once: `build(staging)` fills a staging folder beside it, which is then renamed into place, so
    no reader sees a half-built directory; concurrent builders race, one rename wins and every builder returns the
    full directory. `done`: a file whose presence in `target` means it is complete. Staging folders of builds killed
    before their rename are removed once older than `stale_after_s` (a live build's is minutes old)."""
    target = Path(target)
    if (target / done).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(target.parent, older_than_s=stale_after_s)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another builder's rename won
            if not (target / done).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
