"""Cells on disk: content-addressed ids, atomic files, status.json (DESIGN §3)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The keys that decide what a cell computes. Paths, launcher, logger and device are not among
# them, so moving a sweep or switching launchers keeps every finished cell.
SEMANTIC_KEYS = ("objective", "lora", "model", "data", "trainer", "seed")

_UMASK = os.umask(0)
os.umask(_UMASK)


# The validation/test split keys came after sweeps were already on disk: while the split is off they
# change nothing a cell computes, so they are left out of its id and those sweeps keep their cells.
_SPLIT_KEYS_OFF = ("validation_pairs", "test_pairs", "split_seed")


def semantic_config(cfg: DictConfig | dict) -> dict:
    plain = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    semantic = {key: plain[key] for key in SEMANTIC_KEYS}
    data = semantic.get("data")
    if isinstance(data, dict) and data.get("validation_pairs") is None:
        # split_seed stays where it predates the split (files, hub: the train/held-out split)
        dropped = _SPLIT_KEYS_OFF if data.get("kind") == "verbosity_trap" else _SPLIT_KEYS_OFF[:2]
        semantic["data"] = {k: v for k, v in data.items() if k not in dropped}
    trainer = semantic.get("trainer")
    if isinstance(trainer, dict) and not trainer.get("group_by_length", False):
        # likewise trainer.group_by_length (later still): off, the batches are what they always were
        semantic["trainer"] = {k: v for k, v in trainer.items() if k != "group_by_length"}
    return semantic


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def cell_id(cfg: DictConfig | dict) -> str:
    """12 hex digits of the hash of the semantic config (a DictConfig, or its plain resolved form)."""
    return config_hash(semantic_config(cfg))[:12]


def config_yaml(plain: dict) -> str:
    """config.yaml text of a plain resolved config; libyaml's C dumper when present (thousands per sweep)."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(plain, Dumper=dumper, sort_keys=False, default_flow_style=False)


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


def read_status(cell_dir: Path) -> dict:
    try:
        return json.loads((cell_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def update_status(cell_dir: Path, **fields) -> dict:
    status = read_status(cell_dir) | fields | {"updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(cell_dir / "status.json", status)
    return status


def is_done(cell_dir: Path) -> bool:
    """Finished = metrics.json present (written last) and state done (DESIGN §3), and its results readable."""
    return (cell_dir / "metrics.json").exists() and read_status(cell_dir).get("state") == "done" \
        and done_problem(cell_dir) is None


def done_problem(cell_dir: Path) -> str | None:
    """Why a cell whose status.json says done cannot be trusted (a result file truncated or unreadable since), else
    None. A re-run trains such a cell again instead of skipping it for ever."""
    cell_dir = Path(cell_dir)
    if read_status(cell_dir).get("state") != "done":
        return None
    try:
        json.loads((cell_dir / "metrics.json").read_text())
    except (OSError, ValueError) as error:
        return f"metrics.json is unreadable ({type(error).__name__}: {error})"
    try:
        import pyarrow.parquet as pq

        pq.read_metadata(cell_dir / "heldout_pairs.parquet")
    except Exception as error:  # missing, truncated, not parquet: pyarrow raises several kinds
        return f"heldout_pairs.parquet is unreadable ({type(error).__name__}: {error})"
    return None


# what a killed writer leaves: atomic_write_bytes' mkstemp files (8 random characters), replace_dir's old folders,
# the embedded model cache's mkdtemp staging folders (ablate.embedded)
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
