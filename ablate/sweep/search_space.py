"""Per-objective search spaces (`hydra.sweeper.tune`) expanded into ordinary cells, with an equal budget.

A tuned comparison gives every objective its own grid (`tune.dpo: {objective.beta: [0.05, 0.1]}`)
instead of one shared setting, and the SAME number of settings: an objective searched over more
settings would win more often by luck of the draw alone. Every other swept key (seed, lora.r, ...)
multiplies every objective's grid alike, so equal settings means equal cells per objective. The
expansion yields plain override lists, so the cells are ordinary cells: same ids, resume, SLURM.
The collector's half (select on validation pairs, decide on test pairs) is ablate/collect/tuning.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from ablate.sweepdir.layout import override_values

RESERVED = ("seed", "objective")  # the replication unit and the compared factor are never tuned


class TuningError(ValueError):
    """A search space that cannot give a fair comparison; nothing is run (exit status 2)."""


def override_value(value) -> str:
    """A YAML scalar as the command line writes it (the collector compares these strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def default_space(objective: str) -> dict[str, list]:
    """The objective's default search space, conf/objective_tuning/spaces/<objective>.yaml (6 settings each)."""
    import yaml

    from ablate.paths import CONF_DIR

    path = CONF_DIR / "objective_tuning" / "spaces" / f"{objective}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise TuningError(f"hydra.sweeper.tune: {objective} has no default search space ({path} does not exist; "
                          f"defaults exist for {', '.join(known)}); give its space: {{{objective}: {{key: [values]}}}}")
    return yaml.safe_load(path.read_text())


def check_spaces(tune) -> dict[str, dict[str, list[str]]]:
    """{objective: {key: [override values]}} from hydra.sweeper.tune, or TuningError naming the key. A list of
    objective names (`hydra.sweeper.tune=[dpo,apo_zero]`), or `default` for an objective, takes the objective's
    default space (`default_space`)."""
    if isinstance(tune, Sequence) and not isinstance(tune, str) and all(isinstance(t, str) for t in tune):
        tune = dict.fromkeys(tune, "default")
    if not isinstance(tune, Mapping):
        raise TuningError(f"hydra.sweeper.tune: must map objective names to search spaces, got {tune!r}")
    tune = {objective: default_space(str(objective)) if space == "default" else space
            for objective, space in tune.items()}
    spaces: dict[str, dict[str, list[str]]] = {}
    for objective, space in tune.items():
        where = f"hydra.sweeper.tune.{objective}"
        if not isinstance(space, Mapping) or not space:
            raise TuningError(f"{where}: must map config keys to lists of values, got {space!r}")
        spaces[str(objective)] = {}
        for key, values in space.items():
            key = str(key)
            if key in RESERVED or key.startswith("hydra."):
                raise TuningError(f"{where}.{key}: {key} cannot be tuned (seeds replicate, the objective is compared)")
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise TuningError(f"{where}.{key}: must be a non-empty list of values, got {values!r}")
            if any(isinstance(v, Mapping | list | tuple) for v in values):
                raise TuningError(f"{where}.{key}: values must be scalars, got {list(values)!r}")
            strings = [override_value(v) for v in values]
            if len(set(strings)) < len(strings):
                raise TuningError(f"{where}.{key}: a value is listed twice in {strings}")
            spaces[str(objective)][key] = strings
    if not spaces:
        raise TuningError("hydra.sweeper.tune: no objective to tune")
    return spaces


def settings(space: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every setting of one objective's space, in the space's order (the first key varies slowest)."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*space.values())]


def expand(spaces: dict[str, dict[str, list[str]]], swept: dict[str, list[str]]) -> tuple[list[list[str]], dict]:
    """(job overrides for every cell, the budget per objective) from the spaces and the other keys.

    swept: every other key of the sweep (command line and hydra.sweeper.params), each with its list
    of `key=value` overrides (one element for a fixed override), as Hydra's basic sweeper builds them.
    Raises TuningError when a key is both tuned and swept, when `objective=` names other objectives
    than the spaces, or when the budgets differ.
    """
    swept = dict(swept)
    if "objective" in swept:
        named = [override_values([o])["objective"] for o in swept.pop("objective")]
        if sorted(named) != sorted(spaces):
            raise TuningError(f"objective={','.join(named)}: a tuned sweep compares the objectives of "
                              f"hydra.sweeper.tune ({', '.join(spaces)}); drop objective= or make them agree")
    for objective, space in spaces.items():
        clash = sorted(set(space) & {k.lstrip("+~") for k in swept})
        if clash:
            outside = swept.get(clash[0]) or swept.get("+" + clash[0])
            raise TuningError(f"hydra.sweeper.tune.{objective}.{clash[0]}: also set outside the search space "
                              f"({outside}); a key is tuned or fixed, not both")
    seeds = len(swept.get("seed", [None]))
    others = math.prod(len(v) for k, v in swept.items() if k != "seed")
    budget = {objective: {"settings": len(settings(space)), "seeds": seeds,
                          "cells": len(settings(space)) * seeds * others} for objective, space in spaces.items()}
    if len({b["settings"] for b in budget.values()}) > 1:
        counts = ", ".join(f"{o} {b['settings']} settings x {b['seeds']} seeds = {b['settings'] * b['seeds']} runs"
                           for o, b in budget.items())
        raise TuningError(f"unequal tuning budgets: {counts} (per combination of the other swept keys); give every "
                          f"objective in hydra.sweeper.tune the same number of settings")
    jobs = []
    for rest in itertools.product(*swept.values()):
        for objective, space in spaces.items():
            for setting in settings(space):
                jobs.append([f"objective={objective}", *(f"{k}={v}" for k, v in setting.items()), *rest])
    return jobs, budget
