"""The command that adds seeds to a sweep in place: finished cells are skipped, so only the new seeds train.

Printed by the collector whenever the evidence is short of a decision (too few seeds, or a rival
within noise): a user copies one line instead of reconstructing the grid by hand.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ablate.collect.load import Sweep
from ablate.sweepdir.layout import override_values

_SWEEP_DIR = "hydra.sweep.dir="


def seed_list(present: list[int], n: int) -> list[int]:
    """n seeds per arm: the ones already run first, then the smallest unused non-negative integers."""
    seeds = sorted(set(present))[:n]
    candidate = 0
    while len(seeds) < n:
        if candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return sorted(seeds)


def add_seeds_command(sweep: Sweep, n_seeds: int) -> str:
    """`python -m ablate -m <the sweep's overrides> seed=<n seeds> hydra.sweep.dir=<this sweep>`."""
    present = [int(s) for s in sweep.cells.seed.dropna()]
    return sweep_command(sweep, [f"seed={','.join(map(str, seed_list(present, n_seeds)))}"])


def sweep_command(sweep: Sweep, extra: list[str]) -> str:
    """`python -m ablate -m <the sweep's overrides but seed=> <extra> hydra.sweep.dir=<this sweep>`.

    From the recorded command line (sweep.json "argv": launcher and config-dir options included) when
    there is one, else rebuilt from the cells' own overrides (each key with every value it took).
    """
    argv = sweep.record.get("argv")
    if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
        args = [a for a in argv if not a.lstrip("+~").startswith(("seed=", _SWEEP_DIR))]
        if not {"-m", "--multirun"} & set(args):
            args.insert(0, "-m")
    else:
        values: dict[str, list[str]] = {}
        for overrides in sweep.cells.overrides.dropna():
            for key, value in override_values(str(overrides).split()).items():
                if key != "seed" and value not in values.setdefault(key, []):
                    values[key].append(value)
        args = ["-m", *(f"{key}={','.join(v)}" for key, v in values.items())]
    args += [*extra, f"{_SWEEP_DIR}{Path(sweep.sweep_dir).resolve()}"]
    return "python -m ablate " + " ".join(shlex.quote(a) for a in args)
