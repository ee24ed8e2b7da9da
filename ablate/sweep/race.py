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

On SLURM (`hydra/launcher=slurm`) the command submits round 1 and returns: after each round's cells a
race job (afterany; RaceJob below) takes the look, writes the report and submits the next
round's cells (their configs: the arm's config.yaml with the seed changed) with the next race job, so
no terminal needs to stay open. `ablate status` follows the cells; race.json and the report the rounds.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ablate.sweepdir.atomic import atomic_write_json
from ablate.sweepdir.layout import RACE_JSON, arm_label, override_values

SEEDS_GIVEN = "seed=: a race chooses its seeds round by round (0, 1, 2, ...); drop seed= from the command"


class RaceError(ValueError):
    """A race that cannot run as asked (one arm, a budget below one round, a changed grid); nothing is run."""


@dataclass
class RaceSettings:
    max_seeds: int = 12  # seeds per arm at most; also the horizon over which alpha is spent
    round_seeds: int = 1  # seeds added per live arm per round
    max_cells: int | None = None  # cells in all (every round, every arm) at most
    futility_power: float = 0.3  # stop when a live rival cannot be resolved within max_seeds this often; 0: never
    spending: str | float = 3.0  # how alpha is spent over the rounds: rho of alpha * t^rho, or "pocock"
    max_gpu_hours: float | None = None  # device-hours in all (GPUs held x hours; a CPU cell counts one device)
    first_seed: int = 0  # the race's seed ids start here (a confirmation race: past the tuning sweep's seeds)

    @property
    def rho(self) -> float | None:
        return None if self.spending == "pocock" else float(self.spending)


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
    settings = RaceSettings(**race)
    _check_settings(settings)
    return settings


def _number(value, whole: bool = False) -> bool:
    """A finite number (an int where `whole`); booleans and strings are not."""
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        return False
    return math.isfinite(value)


def _check_settings(settings: RaceSettings) -> None:
    """Types and ranges of every setting, before anything runs (the grid's own limits: plan_arms)."""
    key = "hydra.sweeper.race."
    for name in ("max_seeds", "round_seeds", "first_seed"):
        if not _number(getattr(settings, name), whole=True):
            raise RaceError(f"{key}{name} = {getattr(settings, name)!r}: a whole number")
    if settings.max_seeds < 2:
        raise RaceError(f"{key}max_seeds = {settings.max_seeds}: at least 2 (a seed variance needs two seeds)")
    if settings.round_seeds < 1:
        raise RaceError(f"{key}round_seeds = {settings.round_seeds}: must be at least 1")
    if settings.first_seed < 0:
        raise RaceError(f"{key}first_seed = {settings.first_seed}: seed ids start at 0 or above")
    if settings.max_cells is not None and not (_number(settings.max_cells, whole=True) and settings.max_cells > 0):
        raise RaceError(f"{key}max_cells = {settings.max_cells!r}: a positive whole number of cells, or null")
    if not (_number(settings.futility_power) and 0 <= settings.futility_power < 1):
        raise RaceError(f"{key}futility_power = {settings.futility_power!r}: a probability in [0, 1) (0: no futility "
                        f"stops)")
    spending = settings.spending
    if spending != "pocock" and not (_number(spending) and spending > 0):
        raise RaceError(f"{key}spending = {spending!r}: \"pocock\", or a positive rho (alpha * t^rho; 3 spends "
                        f"little on the first rounds)")
    if settings.max_gpu_hours is not None and not (_number(settings.max_gpu_hours) and settings.max_gpu_hours > 0):
        raise RaceError(f"{key}max_gpu_hours = {settings.max_gpu_hours!r}: a positive number of hours")


def plan_arms(swept: dict[str, list[str]], settings: RaceSettings, min_seeds: int,
              arms: list[list[str]] | None = None) -> list[list[str]]:
    """The arms (override lists without a seed) of the grid, or `arms` as given (a confirmation's selected
    settings); RaceError for a race that cannot be run."""
    if any(key.lstrip("+~") == "seed" for key in swept):
        raise RaceError(SEEDS_GIVEN)
    if arms is None:
        arms = [list(combo) for combo in itertools.product(*swept.values())] if swept else [[]]
    if len(arms) < 2:
        raise RaceError(f"a race needs at least two arms; this grid has {len(arms)}")
    if settings.max_seeds < min_seeds:
        raise RaceError(f"hydra.sweeper.race.max_seeds = {settings.max_seeds} is below one round of "
                        f"select.min_seeds = {min_seeds} seeds")
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


def open_race(sweep_dir: Path, arms: list[list[str]], settings: RaceSettings, select,
              groups: dict[str, str] | None = None) -> dict:
    """The race's record: a new one, or the one in sweep_dir when it is this race (else RaceError). `groups`: a
    tuning race's search space of each arm (see tuning_race_arms)."""
    record = read_record(sweep_dir)
    if record is None:
        _refuse_a_decided_sweep(Path(sweep_dir))
        record = {"format": 1, "settings": asdict(settings), "select": _plain(select), "arms": arms, "rounds": [],
                  **({"tuning": {"groups": groups}} if groups else {})}
    elif _grid(record.get("arms")) != _grid(arms) or tuning_groups(record) != groups:
        raise RaceError(f"{Path(sweep_dir) / RACE_JSON}: this race ran another grid ({record.get('arms')}); run it "
                        f"with its own command, or start a new race in another hydra.sweep.dir")
    elif asdict(recorded := RaceSettings(**record.get("settings", {}))) != asdict(settings):
        # e.g. a race begun under the former defaults (max_seeds 8, Pocock): the override that continues it
        own = {key: value for key, value in asdict(recorded).items() if value != getattr(RaceSettings, key)}
        override = "hydra.sweeper.race=" + ("{" + ",".join(f"{k}:{v}" for k, v in own.items()) + "}" if own else "true")
        flags = ("" if "first_seed" in own else  # `ablate race` has a flag for every other setting
                 " (ablate race: " + (" ".join(f"--{k.replace('_', '-')} {v}" for k, v in own.items()) or "no flags")
                 + ")")
        raise RaceError(f"{Path(sweep_dir) / RACE_JSON}: this race runs with other race settings "
                        f"({record.get('settings')}); continue it with '{override}'{flags}, or start a new race in "
                        f"another hydra.sweep.dir")
    else:  # its looks so far were taken under the recorded rule: the rest must be too (alpha is spent on it)
        now, then = _plain(select), record.get("select") or {}
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if changed:
            raise RaceError(f"{Path(sweep_dir) / RACE_JSON}: this race decides with "
                            f"{', '.join(f'select.{k}={then.get(k)!r}' for k in changed)}; the command asks for "
                            f"{', '.join(f'select.{k}={now.get(k)!r}' for k in changed)}. Its looks so far spent "
                            f"alpha under its own rule: continue it with that rule, or race in a new hydra.sweep.dir")
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(sweep_dir) / RACE_JSON, record)  # from the first round on, the collector reports a race
    return record


def stop_words(record: dict) -> str:
    """Why an ended race ended, in the words the log, a rerun and `ablate status` all use."""
    rounds = record.get("rounds") or []
    if not rounds:
        return str(record.get("stop"))
    last = rounds[-1]
    if last.get("stop") == "winner":
        return f"decisive winner {(record.get('select') or {}).get('factor', 'arm')} = {last['winner']}"
    return f"{last.get('stop')}" + (f" ({last['stop_reason']})" if last.get("stop_reason") else "")


def _grid(arms) -> list[list[str]] | None:
    """The arms without their `select.*` overrides: a command line's rule rides along in every arm's overrides, but it
    is the race's rule, not its grid (open_race checks it against the recorded rule, and names what changed)."""
    if not isinstance(arms, list):
        return None
    return [[o for o in arm if not o.lstrip("+~").startswith("select.")] for arm in arms]


def _refuse_a_decided_sweep(sweep_dir: Path) -> None:
    """A race spends alpha from nothing; in a sweep the collector has already tested (its ledger holds a primary look
    that spent alpha) it would test the same runs again with a fresh alpha, and a false winner would get a second
    chance. Such a sweep goes on with more seeds under its own looks (the add-seeds command its report gives)."""
    from ablate.sweepdir.ledger import ledger_path, read_ledger

    entries, problems = read_ledger(sweep_dir)
    if problems:
        raise RaceError(f"{problems[0]}: the looks this sweep has had cannot be read, so a race here could test "
                        f"its runs a second time; race in a new hydra.sweep.dir")
    looks = sum(1 for e in entries if e.get("primary") and not e.get("exploratory"))
    if looks:
        raise RaceError(f"{ledger_path(sweep_dir)}: the collector has already tested this sweep ({looks} look(s) "
                        f"that spent alpha); a race here would test the same runs again from a fresh alpha. Add seeds "
                        f"with the command its report gives (its looks keep the error at alpha), or race in a new "
                        f"hydra.sweep.dir")


SPLIT_KEYS = ("data.validation_pairs", "data.test_pairs", "data.split_seed")


def tuning_race_arms(spaces: dict, swept: dict[str, list[str]]) -> tuple[list[list[str]], dict[str, str]]:
    """A tuning race's arms (every setting of every objective's space x the other swept keys, as a tuning sweep's)
    and the search space each belongs to: its objective and the other keys' values, e.g. "objective=dpo lora.r=8"."""
    from ablate.sweep.search_space import expand

    swept = {k: v for k, v in swept.items() if k.lstrip("+~") != "seed"}
    split = sorted(k for k, v in swept.items() if k.lstrip("+~") in SPLIT_KEYS and len(v) > 1)
    if split:  # each space's settings must race on the same validation pairs
        raise RaceError(f"a tuning race selects on one validation split: {', '.join(split)} cannot be swept")
    jobs, _ = expand(spaces, swept)
    varied = {"objective"} | {k.lstrip("+~") for k, v in swept.items() if len(v) > 1}  # not the fixed overrides
    groups = {" ".join(job): " ".join(o for o in job if o.split("=", 1)[0].lstrip("+~") in varied) for job in jobs}
    return jobs, groups


def tuning_groups(record: dict) -> dict[str, str] | None:
    """A tuning race's search space of each arm (arm -> "objective=... other=..."), or None for another race."""
    return (record.get("tuning") or {}).get("groups")


def ended(record: dict) -> bool:
    rounds = record["rounds"]
    return bool(rounds and rounds[-1]["stop"]) or bool(record.get("stop"))


def next_round(sweep_dir: Path, record: dict) -> dict | None:
    """The next round's plan {"round", "n", "live", "jobs", "new"}; None (the stop recorded) when the budget cannot
    pay for it."""
    settings, rounds = RaceSettings(**record["settings"]), record["rounds"]
    first = record["select"]["min_seeds"]
    n = min(rounds[-1]["n"] + settings.round_seeds, settings.max_seeds) if rounds else first
    live = rounds[-1]["live"] if rounds else [" ".join(a) for a in record["arms"]]
    by_name = {" ".join(a): a for a in record["arms"]}
    seeds = range(settings.first_seed, settings.first_seed + n)
    jobs = [[*by_name[arm], f"seed={s}"] for arm in live for s in seeds]
    new = [j for j in jobs if not _ran(j, rounds)]
    spent = sum(len(r["new_cells"]) for r in rounds)
    if settings.max_cells is not None and spent + len(new) > settings.max_cells:
        _stop(sweep_dir, record, "budget", f"the next round needs {len(new)} cells, {settings.max_cells - spent} of "
                                           f"max_cells = {settings.max_cells} are left")
        return None
    if settings.max_gpu_hours is not None and rounds:
        used, per_cell = device_hours(sweep_dir)
        if used + len(new) * per_cell > settings.max_gpu_hours:
            need = len(new) * per_cell
            _stop(sweep_dir, record, "budget", f"the next round's {len(new)} cells need about {need:.3g} device-hours "
                                               f"({per_cell:.3g} per cell so far); {used:.3g} of max_gpu_hours = "
                                               f"{settings.max_gpu_hours:g} are spent")
            return None
    return {"round": len(rounds) + 1, "n": n, "live": live, "jobs": jobs, "new": [" ".join(j) for j in new],
            "seeds": f"{seeds[0]}..{seeds[-1]}"}


def device_hours(sweep_dir: Path) -> tuple[float, float]:
    """(device-hours the race's cells have spent, the mean per cell that ran): each cell's elapsed_s (status.json)
    times the GPUs it held (status.json's gpus; a cell on the CPU counts as one device)."""
    from ablate.sweepdir import layout

    hours = []
    for cell in layout.read_sweep(sweep_dir).cells:
        status = layout.read_status(layout.cell_dir(sweep_dir, cell["cell_id"]))
        if status.elapsed_s is not None:
            hours.append(status.elapsed_s * max(status.gpus or 0, 1) / 3600)
    return sum(hours), (sum(hours) / len(hours) if hours else 0.0)


def take_look(sweep_dir: Path, record: dict, plan: dict, select, log: Callable[[str], None] = print) -> dict | None:
    """The look after `plan`'s round has run: the race's decision appended to race.json; None when a cell of the round
    is missing (no look: the round must be completed first)."""
    from ablate.collect.decide import ACCURACY_METRICS, evidence, scope_strata
    from ablate.collect.load import load_sweep
    from ablate.collect.race import race_look
    from ablate.collect.tuning import read_tuning, test_pairs, validation_pairs

    settings, rounds, n, live = RaceSettings(**record["settings"]), record["rounds"], plan["n"], plan["live"]
    by_name = {" ".join(a): a for a in record["arms"]}
    sweep = load_sweep(sweep_dir)
    labels = {arm: arm_label(override_values(by_name[arm]), sweep.axes) for arm in live}
    ev = evidence(sweep, select.metric, select.failed_cells)
    first = settings.first_seed
    values = {}
    for label in labels.values():
        seeds, x = ev["values"].get(label, ([], None))
        keep = [i for i, s in enumerate(seeds) if first <= s < first + n]
        if label in ev["missing"] or len(keep) < n:
            _log_incomplete(sweep, select, plan["round"], label, f"{first}..{first + n - 1}", ev["missing"], log)
            return None
        values[label] = ([seeds[i] for i in keep], x[keep])
    slices = ev["slices"]
    groups = tuning_groups(record)
    if ((read_tuning(sweep) or {}).get("confirms") or groups) and ev["pair_ids"] is not None:
        # a confirmation race decides on the test pairs, as its collector (all pairs where the sweep has no split);
        # a tuning race selects on validation pairs, which the sweeper made sure it has
        pairs = (validation_pairs if groups else test_pairs)(sweep, ev["pair_ids"])
        if pairs is None and groups:
            raise RaceError(f"race round {plan['round']}: the cells' held-out pairs carry no one validation split "
                            f"(cells that split them differently?); no look was taken, the finished cells are kept")
        if pairs is not None:
            values = {label: (s, x[:, pairs]) for label, (s, x) in values.items()}
            slices = slices[pairs]
    mask, strata, weights = scope_strata(slices, select.slice)
    values = {label: (s, x[:, mask]) for label, (s, x) in values.items()}
    factor_of = {labels[a]: override_values(by_name[a]).get(select.factor, labels[a]) for a in live}
    for r in rounds:  # arms dropped earlier still count as rivals for the winner
        for arm in r["drops"]:
            factor_of.setdefault(arm, r["factor_of"].get(arm, arm))
    dropped = {arm: why for r in rounds for arm, why in r["drops"].items()}
    history = [{"n": r["n"], "z": r["z"]} for r in rounds]
    kw = dict(max_seeds=settings.max_seeds, accuracy=select.metric in ACCURACY_METRICS,
              futility_power=settings.futility_power, rho=settings.rho)
    if groups:
        look = _tuning_look(values, strata, weights, {labels[a]: groups[a] for a in live}, select, history, dropped,
                            **kw)
        factor_of = {label: label for label in factor_of}
    else:
        look = race_look(values, strata, weights, factor_of, select, history, dropped, **kw)
    still = look.get("live", set(values)) - set(look["drops"])
    why = None  # said with the stop (the log, `ablate status`, the report), kept in race.json
    if look["stop"] == "futile" and look.get("futile_against"):
        why = (f"{look['best']} vs {look['futile_against']}: the chance to resolve it within max_seeds = "
               f"{settings.max_seeds} is below futility_power = {settings.futility_power:g}")
    elif look["stop"] == "equivalent":
        why = f"every live rival within ±{select.equivalence_margin:g} of {look['best']} (two one-sided tests)"
    elif look["stop"] == "budget":
        why = f"max_seeds = {settings.max_seeds} seeds per arm reached"
    rounds.append({"round": plan["round"], "n": n, "live": [a for a in live if labels[a] in still],
                   "ran": live, "new_cells": plan["new"], "z": look["z"], "level": look["level"],
                   "spent": look["spent"], "best": look["best"], "point": look["point"], "drops": look["drops"],
                   "factor_of": factor_of, "stop": look["stop"], "winner": look["winner"],
                   "gpu_hours": round(device_hours(sweep_dir)[0], 4), "fixed_seeds": look["fixed_seeds"],
                   "pairs": int(len(strata)), **({"groups": look["groups"]} if groups else {}),
                   **({"stop_reason": why} if why else {}),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    record.pop("pending", None)
    atomic_write_json(Path(sweep_dir) / RACE_JSON, record)  # the look is on disk before anything else happens
    for arm, why in look["drops"].items():
        log(f"  dropped {arm}: beaten by {why['by']} ({why['difference']:+.3f}, CI [{why['ci_low']:+.3f}, "
            f"{why['ci_high']:+.3f}] at level {why['level']:.3g})")
    for group, decided in (look.get("groups") or {}).items():
        if decided["stop"] and decided["round"] == plan["round"]:
            log(f"  {group}: settled ({decided['stop']}), " + (f"selected {decided['selected']}" if decided["selected"]
                else f"the best validation mean of {', '.join(decided['live'])} is selected"))
    if look["stop"]:
        log(f"race ended at round {len(rounds)} ({n} seeds per live arm): {stop_words(record)}")
    return look


def _log_incomplete(sweep, select, round_number: int, label: str, seeds: str, missing: dict, log) -> None:
    """Why a round's look cannot be taken: the arm's cells that failed, did not finish or cannot be read."""
    from ablate.collect.decide import unfinished_cells

    failed = [row for row in unfinished_cells(sweep, select) if row["arm"] == label]
    why = [row["what"] for row in failed] + missing.get(label, [])
    log(f"race round {round_number} incomplete: {label} lacks finished, readable seeds among {seeds}"
        + (f" ({'; '.join(why)})" if why else "") + "; no look was taken (finished cells are kept: run the same "
        f"command again with hydra.sweep.dir={sweep.sweep_dir} to retry the others)")
    if any(row["state"] == "failed" for row in failed):
        log("  under select.failed_cells=undetermined this race takes no look while a run fails: if it fails again "
            "for a reason of its own (a learning rate that diverges), this race cannot go on; start a new one in "
            "another hydra.sweep.dir with select.failed_cells=worst, which counts a failed run as its arm's worst "
            "outcome")


def _tuning_look(values: dict, strata, weights, group_of: dict[str, str], select, history: list[dict],
                 dropped: dict[str, dict], **kw) -> dict:
    """A tuning race's look: within each search space (one objective, the other keys fixed) the settings race one
    another on validation pairs; a space ends when one setting is left (or its live settings are equivalent, or
    futility, or the budget), and its live arms then get no more seeds. The race ends when every space has."""
    from ablate.collect.race import race_look

    out = {"drops": {}, "point": {}, "groups": {}, "live": set(), "best": None, "winner": None,
           "fixed_seeds": None, "stop": None}
    for group in dict.fromkeys(group_of.values()):
        members = [label for label, g in group_of.items() if g == group]
        mine = {label: values[label] for label in members}
        rivals = {label: label for label in members} | {a: a for a, why in dropped.items() if why.get("group") == group}
        look = race_look(mine, strata, weights, rivals, select, history, dropped, yardstick=False, **kw)
        for why in look["drops"].values():
            why["group"] = group
        left = [label for label in members if label not in look["drops"]]
        stop = "selected" if len(left) == 1 else look["stop"]
        out["drops"] |= look["drops"]
        out["point"] |= look["point"]
        out["groups"][group] = {"live": left, "stop": stop, "best": look["best"], "round": len(history) + 1,
                                "selected": left[0] if len(left) == 1 else None}
        if not stop:
            out["live"] |= set(left)
        out |= {"z": look["z"], "level": look["level"], "spent": look["spent"]}  # the same looks in every space
    out["stop"] = None if out["live"] else "selected"
    return out


def run_race(sweep_dir: Path, arms: list[list[str]], settings: RaceSettings, select,
             launch: Callable[[list[list[str]]], None], log: Callable[[str], None] = print,
             groups: dict[str, str] | None = None, report: Callable[[], None] = lambda: None) -> dict:
    """Run (or continue) a race in this process; `launch(jobs)` trains the given cells and returns when they ended;
    `report()` collects after each look the race goes on from (the caller collects once at the end: the stop, a
    failed round, or a race that had ended before)."""
    sweep_dir = Path(sweep_dir)
    record = open_race(sweep_dir, arms, settings, select, groups)
    if ended(record):
        log(f"race already ended at round {len(record['rounds'])}: {stop_words(record)}")
        return record
    refuse_a_round_in_flight(sweep_dir, record)  # e.g. a race on SLURM, run again without hydra/launcher=slurm
    plan = next_round(sweep_dir, record)
    while plan is not None:
        log(f"race round {plan['round']}: {len(plan['live'])} live arm(s) x seeds {plan['seeds']} "
            f"({len(plan['new'])} new cells)")
        # the round in flight, with this process as its witness (`ablate status` follows it; take_look clears it)
        record["pending"] = {**plan, "process": {"host": socket.gethostname(), "pid": os.getpid()}}
        atomic_write_json(sweep_dir / RACE_JSON, record)
        launch(plan["jobs"])
        look = take_look(sweep_dir, record, plan, select, log)
        if look is None:
            record["incomplete"] = True
            return record
        # the next round, or the stop when the budget cannot pay for it, is settled before the report (as on SLURM)
        plan = None if look["stop"] else next_round(sweep_dir, record)
        if plan is not None:
            report()
        elif not look["stop"]:  # the budget cannot pay for the next round
            log(f"race ended at round {len(record['rounds'])}: {stop_words(record)}")
    return record


# ----------------------------------------------------------------------------------------------- on SLURM
def submit_round(sweep_dir: Path, record: dict, plan: dict, launcher, select) -> dict:
    """Submit a round's new cells (their configs: the arm's config.yaml with the seed changed) and, after them, the
    race job that takes the look and submits the next round (RaceJob)."""
    from omegaconf import OmegaConf

    from ablate.sweep.slurm import submit_cells
    from ablate.sweepdir import layout
    from ablate.sweepdir.ids import cell_id

    sweep = layout.read_sweep(sweep_dir)
    known = {" ".join(c["overrides"]): c["cell_id"] for c in sweep.cells}
    cells = []
    for name in plan["new"]:
        overrides = name.split(" ")
        arm = [o for o in overrides if not o.startswith("seed=")]
        template = next((cid for ov, cid in known.items()
                         if [o for o in ov.split(" ") if not o.startswith("seed=")] == arm), None)
        if template is None:
            raise RaceError(f"no planned cell of arm {' '.join(arm)} to take its config from")
        cfg = OmegaConf.load(layout.cell_dir(sweep_dir, template) / layout.CONFIG_YAML)
        cfg.seed = int(override_values(overrides)["seed"])
        cells.append((cfg, overrides, cell_id(cfg)))
    with layout.updating_sweep(sweep_dir) as rec:
        have = {c["cell_id"] for c in rec.cells}
        rec.cells = rec.cells + [{"cell_id": cid, "overrides": ov} for _, ov, cid in cells if cid not in have]
    record["pending"] = plan
    atomic_write_json(Path(sweep_dir) / RACE_JSON, record)
    return submit_cells(sweep_dir, cells, launcher, select, collector=RaceJob(str(sweep_dir)))


def race_round_job(sweep_dir: str | Path, log: Callable[[str], None] = print, launcher=None) -> dict:
    """What the race job does after a round on SLURM: the look, the report, and the next round (or the end), submitted
    with `launcher` (hydra.launcher's config; by default the one the sweep's cells were submitted with)."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from ablate.collect import collect, describe
    from ablate.config import select_config
    from ablate.sweepdir import layout

    sweep_dir = Path(sweep_dir)
    record = read_record(sweep_dir)
    ended_before = ended(record)
    plan = record.get("pending")
    select = SimpleNamespace(**record["select"])
    if plan is not None:
        look = take_look(sweep_dir, record, plan, select, log)
        if look is None:
            record["incomplete"] = True
    # the next round, or the stop when the budget cannot pay for it, is settled before the report, so the report
    # (collected once) shows how the race stands
    upcoming = None if record.get("incomplete") or ended(record) else next_round(sweep_dir, record)
    rule = select_config(base=OmegaConf.create(record["select"]))
    log(describe(collect(sweep_dir, rule)))
    if record.get("incomplete"):
        return record
    if upcoming is None:  # the race has ended: at this look, at the budget, or before this job
        if not ended_before:
            _confirm_tuning_race(sweep_dir, record, log)
        return record
    log(f"race round {upcoming['round']}: {len(upcoming['live'])} live arm(s) x seeds {upcoming['seeds']} "
        f"({len(upcoming['new'])} new cells), submitted")
    launcher = launcher if launcher is not None else OmegaConf.create(layout.read_sweep(sweep_dir).slurm)
    submit_round(sweep_dir, record, upcoming, launcher, rule)
    return record


def _confirm_tuning_race(sweep_dir: Path, record: dict, log: Callable[[str], None]) -> None:
    """A tuning race that has just ended submits its confirmation, if hydra.sweeper.confirm asked for one."""
    if not tuning_groups(record):
        return
    from ablate.sweep.confirm import ConfirmError, requested, run_confirmation

    seeds = requested(sweep_dir)
    if seeds:
        try:
            run_confirmation(sweep_dir, seeds)
        except ConfirmError as error:
            log(f"ablate confirm: {error}")


def status_lines(sweep_dir: str | Path) -> list[str]:
    """For `ablate status`: the round in flight, live arms, dropped arms with their reason, cells spent vs budget."""
    try:
        record = read_record(Path(sweep_dir))
    except RaceError as error:
        return [f"race: {error}"]
    if record is None:
        return []
    rounds, settings = record["rounds"], record["settings"]
    spent = sum(len(r["new_cells"]) for r in rounds) + len((record.get("pending") or {}).get("new", []))
    budget = settings.get("max_cells") or len(record["arms"]) * settings["max_seeds"]
    if ended(record):
        head = f"race ended at round {len(rounds)}: {stop_words(record)}"
    elif record.get("pending") and not _pending_alive(record["pending"]):
        head = (f"race round {record['pending']['round']} interrupted (the process that ran it is gone): run the "
                f"same command with hydra.sweep.dir={sweep_dir} to continue")
    elif record.get("pending") and "process" not in record["pending"] and _slurm_round_gone(Path(sweep_dir)):
        head = (f"race round {record['pending']['round']} stopped on SLURM (its jobs ended, none took its look): "
                f"`ablate resubmit {sweep_dir}` submits what did not finish with its race job, or run the race's "
                f"command (same hydra.sweep.dir; without hydra/launcher=slurm it goes on here)")
    elif record.get("pending"):
        head = f"race round {record['pending']['round']} in flight ({record['pending']['n']} seeds per live arm)"
    else:
        head = f"race: {len(rounds)} round(s) done"
    live = rounds[-1]["live"] if rounds else [" ".join(a) for a in record["arms"]]
    short = _short_labels(record["arms"])
    lines = [f"{head}; cells {spent} of {budget} ({'max_cells' if settings.get('max_cells') else 'arms x max_seeds'}); "
             f"live: {', '.join(short.get(name, name) for name in live)}"]
    if settings.get("max_gpu_hours"):
        used = rounds[-1].get("gpu_hours") if rounds else None
        lines.append(f"  device-hours {used if used is not None else 0:.3g} of max_gpu_hours = "
                     f"{settings['max_gpu_hours']:g} (GPUs held x hours; a CPU cell counts one device)")
    spaces = {}
    for r in rounds:  # a tuning race: each search space's state as of its last look
        spaces |= r.get("groups") or {}
    for space, state in spaces.items():
        lines.append(f"  {space}: " + (f"settled at round {state['round']} ({state['stop']}), live: " if state["stop"]
                                       else "racing, live: ") + ", ".join(state["live"]))
    for r in rounds:
        for arm, why in r["drops"].items():
            lines.append(f"  dropped at round {r['round']}: {arm} (beaten by {why['by']}, {why['difference']:+.3f}, "
                         f"CI [{why['ci_low']:+.3f}, {why['ci_high']:+.3f}] at {why['level']:.3g})")
    return lines


def _short_labels(arms: list[list[str]]) -> dict[str, str]:
    """Arm name (all its overrides) -> the values that tell the arms apart, as the collector labels arms."""
    values = [override_values(arm) for arm in arms]
    keys = [k for k in values[0] if len({v.get(k) for v in values}) > 1] if values else []
    return {" ".join(arm): arm_label(v, dict.fromkeys(keys)) for arm, v in zip(arms, values, strict=True)}


def in_flight(sweep_dir: str | Path) -> bool:
    """A race that has not ended (`ablate status --watch` keeps following it between rounds)."""
    try:
        record = read_record(Path(sweep_dir))
    except RaceError:
        return False
    if record is None or ended(record) or not record.get("pending"):
        return False
    pending = record["pending"]
    if "process" in pending:  # a local round
        return _pending_alive(pending)
    return not _slurm_round_gone(Path(sweep_dir))


def round_finished(sweep_dir: Path, plan: dict) -> bool:
    """Every cell of the round has finished (its look can be taken)."""
    from ablate.sweepdir import layout

    ids = {" ".join(c["overrides"]): c["cell_id"] for c in layout.read_sweep(sweep_dir).cells}
    return all(" ".join(job) in ids and layout.is_done(layout.cell_dir(sweep_dir, ids[" ".join(job)]))
               for job in plan["jobs"])


def refuse_a_round_in_flight(sweep_dir: Path, record: dict) -> None:
    """A RaceError while a round of this race runs elsewhere, whichever launcher this command uses: a SLURM job of the
    sweep is queued or running (its race job carries the race on), or the local process of the pending round lives.
    Once they have ended, the race goes on from its record with either launcher."""
    from ablate.sweep.status import ALIVE

    if not (record["rounds"] or record.get("pending")):
        return
    if ALIVE & set(_job_states(sweep_dir).values()):
        raise RaceError(f"a race is running in {sweep_dir} on SLURM (round {len(record['rounds']) + 1}); follow it "
                        f"with `ablate status {sweep_dir}` and its report")
    pending = record.get("pending") or {}
    process = pending.get("process")
    if process is not None and _pending_alive(pending):
        raise RaceError(f"round {pending['round']} of this race is running in process {process.get('pid')} on "
                        f"{process.get('host')} (the local launcher); let it end, or stop it, before going on")


def _job_states(sweep_dir: Path) -> dict[str, str]:
    """SLURM's state of every job of the sweep, cells' and race jobs' ({} for a sweep never submitted)."""
    from ablate.sweep.status import slurm_states
    from ablate.sweepdir.layout import read_sweep

    sweep = read_sweep(sweep_dir)
    return slurm_states([*(sweep.jobs or {}).values(), *(sweep.collector_jobs or [])])


def _slurm_round_gone(sweep_dir: Path) -> bool:
    """Every SLURM job of the sweep has ended, known ended (not merely unknown: SLURM's tools may be out of reach
    here): a SLURM round still pending then has lost its jobs (cancelled, or its race job lost) before its look."""
    from ablate.sweep.status import ALIVE, DEAD

    states = set(_job_states(sweep_dir).values())
    return bool(states) and not states & ALIVE and states <= DEAD | {"COMPLETED"}


def _pending_alive(pending: dict) -> bool:
    """A local round is alive while the process that runs it is (ablate.sweepdir.liveness; from another host it is
    not known, and counts as gone); a SLURM round's cells and race job are followed by ablate status itself."""
    from ablate.sweepdir.liveness import holder_alive

    process = pending.get("process")
    return process is None or holder_alive(process, None)


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


class RaceJob:
    """A race's decision between rounds on SLURM: after a round's cells (afterany), take the look, write the report and
    submit the next round with the next RaceJob (ablate.sweep.race.race_round_job)."""

    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self) -> dict:
        from ablate.sweep.status import reconcile

        time.sleep(1)  # let sacct record the cells' final states
        reconcile(self.sweep_dir)
        record = race_round_job(self.sweep_dir, log=lambda line: print(line, flush=True))
        last = record["rounds"][-1] if record["rounds"] else {}
        return {"round": last.get("round"), "stop": last.get("stop"), "winner": last.get("winner")}
