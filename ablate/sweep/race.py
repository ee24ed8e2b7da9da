"""`hydra.sweeper.race`: run a grid in rounds of seeds, dropping arms as they are decisively beaten.

    python -m ablate -m objective=dpo,simpo lora.r=8,16 hydra.sweeper.race=true
    python -m ablate -m objective=dpo,simpo lora.r=8,16 'hydra.sweeper.race={max_seeds:10,round_seeds:2}'

Round 1 trains select.min_seeds seeds (ids 0..) of every arm; after each round ablate.collect.race
decides on the live arms (drop, or stop: winner, equivalent, futile, budget) and the next round gives
the live arms `round_seeds` more seed ids, the same ids in every live arm (paired comparisons). The
race's record, <sweep_dir>/race.json, holds its settings, its arms and every round's look: a race
that is interrupted and started again with the same command continues from it and never repeats a
look; a command with another grid or other race settings is refused (RaceError, exit 2) before
anything runs. The collector reports the race (ablate.collect.race.race_summary).

Local launcher only: on SLURM each round would need a dependent job that decides and submits the
next one, which is not built yet (refused with a clear error).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.sweepdir.atomic import atomic_write_json
from ablate.sweepdir.layout import RACE_JSON, arm_label, override_values


class RaceError(ValueError):
    """A race that cannot run as asked (one arm, a budget below one round, a changed grid); nothing is run."""


@dataclass
class RaceSettings:
    max_seeds: int = 8  # seeds per arm at most; also the horizon over which alpha is spent
    round_seeds: int = 1  # seeds added per live arm per round
    max_cells: int | None = None  # cells in all (every round, every arm) at most
    futility_power: float = 0.3  # stop when a live rival cannot be resolved within max_seeds this often


def settings_of(race) -> RaceSettings | None:
    """None when racing is off: `hydra.sweeper.race` unset, false, or a mapping with enabled: false. `true`: the
    defaults; a mapping sets any of RaceSettings' fields (`hydra.sweeper.race={max_seeds:10,round_seeds:2}`)."""
    if not race:
        return None
    if race is True:
        return RaceSettings()
    if not isinstance(race, dict):
        raise RaceError(f"hydra.sweeper.race = {race!r}: true, false, or a mapping of "
                        f"{', '.join(asdict(RaceSettings()))}")
    race = dict(race)
    if not race.pop("enabled", True):
        return None
    unknown = set(race) - set(asdict(RaceSettings()))
    if unknown:
        raise RaceError(f"hydra.sweeper.race: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(known: enabled, {', '.join(asdict(RaceSettings()))})")
    return RaceSettings(**race)


def plan_arms(swept: dict[str, list[str]], settings: RaceSettings, min_seeds: int) -> list[list[str]]:
    """The arms (override lists without a seed) of the grid; RaceError for a race that cannot be run."""
    if any(key.lstrip("+~") == "seed" for key in swept):
        raise RaceError("seed=: a race chooses its seeds round by round (0, 1, 2, ...); drop seed= from the command")
    arms = [list(combo) for combo in itertools.product(*swept.values())] if swept else [[]]
    if len(arms) < 2:
        raise RaceError(f"a race needs at least two arms; this grid has {len(arms)}")
    if settings.max_seeds < min_seeds:
        raise RaceError(f"hydra.sweeper.race.max_seeds = {settings.max_seeds} is below one round of "
                        f"select.min_seeds = {min_seeds} seeds")
    if settings.round_seeds < 1:
        raise RaceError(f"hydra.sweeper.race.round_seeds = {settings.round_seeds}: must be at least 1")
    if settings.max_cells is not None and settings.max_cells < len(arms) * min_seeds:
        raise RaceError(f"hydra.sweeper.race.max_cells = {settings.max_cells} is below one round: {len(arms)} arms x "
                        f"{min_seeds} seeds = {len(arms) * min_seeds} cells")
    return arms


def read_record(sweep_dir: Path) -> dict | None:
    import json

    path = Path(sweep_dir) / RACE_JSON
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RaceError(f"{path}: unreadable ({error}); move it aside to start the race anew") from None
    return record


def run_race(sweep_dir: Path, arms: list[list[str]], settings: RaceSettings, select,
             launch: Callable[[list[list[str]]], None], log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the race in sweep_dir; `launch(jobs)` trains the given cells and returns when they ended."""
    from ablate.collect.decide import ACCURACY_METRICS, evidence, scope_strata
    from ablate.collect.load import load_sweep
    from ablate.collect.race import race_look

    sweep_dir = Path(sweep_dir)
    record = read_record(sweep_dir)
    if record is None:
        record = {"format": 1, "settings": asdict(settings), "select": _plain(select), "arms": arms, "rounds": []}
    elif record.get("arms") != arms or record.get("settings") != asdict(settings):
        raise RaceError(f"{sweep_dir / RACE_JSON}: this race ran another grid or other race settings "
                        f"({record.get('arms')} with {record.get('settings')}); run it with its own command, or "
                        f"start a new race in another hydra.sweep.dir")
    atomic_write_json(sweep_dir / RACE_JSON, record)  # from the first round on, the collector reports a race
    rounds = record["rounds"]
    if rounds and rounds[-1]["stop"]:
        log(f"race already ended at round {len(rounds)}: {rounds[-1]['stop']}")
        return record
    factor = select.factor
    while True:
        n = min(rounds[-1]["n"] + settings.round_seeds, settings.max_seeds) if rounds else select.min_seeds
        live = rounds[-1]["live"] if rounds else [" ".join(a) for a in arms]
        cells = sum(len(r["new_cells"]) for r in rounds)
        by_name = {" ".join(a): a for a in arms}
        jobs = [[*by_name[arm], f"seed={s}"] for arm in live for s in range(n)]
        new = [j for j in jobs if not _ran(j, rounds)]
        if settings.max_cells is not None and cells + len(new) > settings.max_cells:
            _stop(sweep_dir, record, "budget", f"the next round needs {len(new)} cells, {settings.max_cells - cells} "
                                               f"of max_cells = {settings.max_cells} are left")
            return record
        log(f"race round {len(rounds) + 1}: {len(live)} live arm(s) x seeds 0..{n - 1} ({len(new)} new cells)")
        launch(jobs)
        sweep = load_sweep(sweep_dir)
        labels = {arm: arm_label(override_values(by_name[arm]), sweep.axes) for arm in live}
        ev = evidence(sweep, select.metric, select.failed_cells)
        values = {}
        for label in labels.values():
            seeds, x = ev["values"].get(label, ([], None))
            keep = [i for i, s in enumerate(seeds) if s < n]
            if label in ev["missing"] or len(keep) < n:
                # no look without the whole round: the same command trains what is missing and looks then
                log(f"race round {len(rounds) + 1} incomplete: {label} lacks finished, readable seeds among "
                    f"0..{n - 1}; run the same command again (finished cells are kept, no look was taken)")
                record["incomplete"] = label
                return record
            values[label] = ([seeds[i] for i in keep], x[keep])
        mask, strata, weights = scope_strata(ev["slices"], select.slice)
        values = {label: (s, x[:, mask]) for label, (s, x) in values.items()}
        factor_of = {labels[a]: override_values(by_name[a]).get(factor, labels[a]) for a in live}
        for r in rounds:  # arms dropped earlier still count as rivals for the winner
            for arm in r["drops"]:
                factor_of.setdefault(arm, r["factor_of"].get(arm, arm))
        dropped = {arm: why for r in rounds for arm, why in r["drops"].items()}
        history = [{"n": r["n"], "z": r["z"]} for r in rounds]
        look = race_look(values, strata, weights, factor_of, select, history, dropped,
                         max_seeds=settings.max_seeds, accuracy=select.metric in ACCURACY_METRICS,
                         futility_power=settings.futility_power)
        live_after = [arm for arm in live if labels[arm] not in look["drops"]]
        rounds.append({"round": len(rounds) + 1, "n": n, "live": live_after, "ran": live,
                       "new_cells": [" ".join(j) for j in new], "z": look["z"], "level": look["level"],
                       "spent": look["spent"], "best": look["best"], "point": look["point"], "drops": look["drops"],
                       "factor_of": factor_of, "stop": look["stop"], "winner": look["winner"],
                       "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        atomic_write_json(sweep_dir / RACE_JSON, record)  # the look is on disk before anything else happens
        for arm, why in look["drops"].items():
            log(f"  dropped {arm}: beaten by {why['by']} ({why['difference']:+.3f}, CI [{why['ci_low']:+.3f}, "
                f"{why['ci_high']:+.3f}] at level {why['level']:.3g})")
        if look["stop"]:
            log(f"race ended at round {len(rounds)} ({n} seeds per live arm): {look['stop']}"
                + (f", winner {factor} = {look['winner']}" if look["winner"] is not None else ""))
            return record


def _ran(job: list[str], rounds: list[dict]) -> bool:
    name = " ".join(job)
    return any(name in r["new_cells"] for r in rounds)


def _stop(sweep_dir: Path, record: dict, stop: str, why: str) -> None:
    rounds = record["rounds"]
    if rounds:
        rounds[-1]["stop"], rounds[-1]["stop_reason"] = stop, why
    else:
        record["stop"] = why
    atomic_write_json(Path(sweep_dir) / RACE_JSON, record)


def _plain(select) -> dict:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(select, resolve=True)
    except ValueError:
        return dict(vars(select))
